"""Intake of models as users bring them: a scikit-learn MLPClassifier converted with skl2onnx
(label and probabilities outputs after ArgMax/Softmax/Cast/ZipMap post-processing), and ONNX
files whose batch dimension is fixed (torch.onnx.export without dynamic axes), read by eval, by
compile's check against onnxruntime and by export's runner.

Expected values come from each model's own library, never from skip2lora: scikit-learn's
predict_proba, predict and score on the digits, torch's forward, onnxruntime on a dynamic-batch
export of the same module.
"""
import re
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType

from cli_helpers import one_line_error, run_cli
from skip2lora.model import compiler
from skip2lora.model.evaluate import load_classifier
from skip2lora.model.export import run_onnx
from skip2lora.model.importers import SOFTMAX, import_model
from skip2lora.training.pretrain import export_onnx as project_export_onnx

nn = torch.nn
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits (features 0..16): the first 1200 to train, the other 597 to test."""
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    return (x[:1200], y[:1200]), (x[1200:], y[1200:])


def fit(model, x, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning of the short runs
        return model.fit(x, y)


def to_onnx(model, path, zipmap=True, batch=None):
    """skl2onnx's conversion as its documentation shows it; zipmap=False is its common option."""
    onx = convert_sklearn(model, initial_types=[("input", FloatTensorType([batch, 64]))],
                          options=None if zipmap else {"zipmap": False})
    path.write_bytes(onx.SerializeToString())
    return path


@pytest.fixture(scope="module")
def classifiers(digits):
    """An MLPClassifier (ReLU, the default) and the same behind a StandardScaler."""
    (x, y), _ = digits
    return {"mlp": fit(MLPClassifier((32, 16), max_iter=300, random_state=0), x, y),
            "scaled": fit(make_pipeline(StandardScaler(),
                                        MLPClassifier((32, 16), max_iter=300, random_state=0)),
                          x, y)}


# ------------------------------------------------------------------ skl2onnx classifiers

@pytest.mark.parametrize("zipmap", [True, False], ids=["zipmap", "no-zipmap"])
@pytest.mark.parametrize("which", ["mlp", "scaled"])
def test_sklearn_classifier_imports_the_logits_before_post_processing(
        tmp_path, digits, classifiers, which, zipmap):
    clf = classifiers[which]
    _, (x, y) = digits
    imported = import_model(to_onnx(clf, tmp_path / "m.onnx", zipmap))
    net = imported.network
    assert net.dims == [64, 32, 16, 10] and imported.output == SOFTMAX
    notes = " ".join(net.notes)
    assert "left out the post-processing" in notes and "ArgMax" in notes
    assert ("folded Scaler node" in notes) == (which == "scaled")
    assert ("int8 weights (one step per row)" in notes) == (which == "scaled")  # factors 0.15..35
    z = net.forward(x)
    np.testing.assert_allclose(softmax(z), clf.predict_proba(x), atol=1e-5)
    assert np.array_equal(z.argmax(1), clf.predict(x))  # 100 % agreement on the held-out digits
    for inputs in (x, compiler.random_inputs(64)):  # compile's own check, on real and random data
        check = compiler.check_against_runtime(
            imported, compiler.compile_network(net, "f32"), inputs)
        assert check.relative_error <= compiler.F32_TOLERANCE and check.argmax_agreement == 1.0


def test_sklearn_classifier_through_compile_and_eval(tmp_path, capsys, digits, classifiers):
    """The README flow on a skl2onnx file: compile --test-data and eval print the accuracy
    scikit-learn's own score gives, for the .onnx and for the compiled .s2lm."""
    clf = classifiers["scaled"]
    _, (x, y) = digits
    np.savez(tmp_path / "test.npz", x=x, y=y)
    path = to_onnx(clf, tmp_path / "m.onnx")
    expected = f"{100 * clf.score(x, y):.2f} %"
    code, out, err = run_cli(capsys, "compile", path, "-o", tmp_path / "m.s2lm", "--board", "unix",
                             "--test-data", tmp_path / "test.npz")
    assert code == 0, err
    assert re.search(r"float32 arrays vs onnxruntime: .* ok \(tolerance", out), out
    assert f"float32 accuracy {expected}" in out, out
    for model in (path, tmp_path / "m.s2lm"):
        code, out, err = run_cli(capsys, "eval", model, "--data", tmp_path / "test.npz")
        assert code == 0, err
        assert f"accuracy: {expected}" in out, out


def test_sklearn_binary_classifier_becomes_two_logits(tmp_path, digits):
    """Two classes: scikit-learn has one logistic output unit z; the board gets logits [0, z]."""
    (x, y), (tx, ty) = digits
    clf = fit(MLPClassifier((16,), max_iter=300, random_state=0), x, (y == 3).astype(int))
    imported = import_model(to_onnx(clf, tmp_path / "m.onnx", zipmap=False))
    net = imported.network
    assert net.dims == [64, 16, 2]
    assert any("two logits [0, z]" in n for n in net.notes)
    z = net.forward(tx)
    np.testing.assert_array_equal(z[:, 0], 0.0)
    np.testing.assert_allclose(softmax(z), clf.predict_proba(tx), atol=1e-5)
    assert np.array_equal(z.argmax(1), clf.predict(tx))
    assert 0 < clf.predict(tx).sum() < len(tx)  # both classes really occur
    for dtype in ("f32", "int8"):  # the zero row quantizes
        check = compiler.check_against_runtime(
            imported, compiler.compile_network(net, dtype), compiler.random_inputs(64))
        assert check.argmax_agreement >= (1.0 if dtype == "f32" else 0.97)
        if dtype == "f32":
            assert check.relative_error <= compiler.F32_TOLERANCE


@pytest.mark.parametrize("labels", ["ints", "strings"])
def test_sklearn_labels_that_are_not_indexes_are_named(tmp_path, digits, labels):
    (x, y), (tx, _) = digits
    names = (np.arange(10) + 1 if labels == "ints"
             else np.array(["zero", "one", "two", "three", "four", "five", "six", "seven",
                            "eight", "nine"]))
    clf = fit(MLPClassifier((16,), max_iter=60, random_state=0), x, names[y])
    net = import_model(to_onnx(clf, tmp_path / "m.onnx")).network
    note = next(n for n in net.notes if "labels are" in n)
    assert f"labels are [{', '.join(map(str, clf.classes_[:3]))}," in note, note
    assert "0..9 in that order" in note
    assert np.array_equal(clf.classes_[net.forward(tx).argmax(1)], clf.predict(tx))


@pytest.mark.parametrize("activation, found", [("tanh", "Tanh node"),
                                               ("logistic", "Sigmoid node"),
                                               ("identity", "no ReLU between")])
def test_sklearn_activation_that_changes_the_maths_is_refused(tmp_path, capsys, digits,
                                                              activation, found):
    (x, y), _ = digits
    clf = fit(MLPClassifier((8,), activation=activation, max_iter=5, random_state=0), x, y)
    path = to_onnx(clf, tmp_path / "m.onnx")
    code, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "m.s2lm")
    assert code == 2
    one_line_error(err, f"{path}: ", found, "activation='relu'")
    assert not (tmp_path / "m.s2lm").exists()


# ------------------------------------------------------------------ fixed batch dimension

def issue_model():
    """The issue's model: 64-32(BatchNorm, Dropout)-16-10, BatchNorm statistics far from the
    identity so that folding matters."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))
    with torch.no_grad():
        model[1].running_mean.normal_(0.0, 2.0)
        model[1].running_var.uniform_(0.5, 4.0)
    return model.eval()


@pytest.fixture(scope="module")
def exports(tmp_path_factory, digits, classifiers):
    """One module exported with a dynamic batch (the project's exporter) and with fixed ones:
    batch 1 by the TorchScript exporter (the issue's file), batch 4 (the last chunk needs
    padding), batch 1 by torch.onnx.export's default (dynamo) exporter; and a skl2onnx file
    with a fixed batch of 1."""
    root = tmp_path_factory.mktemp("exports")
    model = issue_model()
    _, (x, y) = digits
    np.savez(root / "test.npz", x=x, y=y)
    project_export_onnx(model, root / "dynamic.onnx", 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, batch, dynamo in (("fixed1", 1, False), ("fixed4", 4, False),
                                    ("fixed1-dynamo", 1, True)):
            torch.onnx.export(model, (torch.zeros(batch, 64),), str(root / f"{name}.onnx"),
                              dynamo=dynamo, input_names=["input"], output_names=["logits"])
    to_onnx(classifiers["mlp"], root / "sklearn-fixed1.onnx", batch=1)
    return root, model


FIXED = ["fixed1", "fixed4", "fixed1-dynamo"]


def ort_dynamic(root, x):
    session = ort.InferenceSession(str(root / "dynamic.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def test_the_fixed_exports_really_fix_the_batch(exports, digits):
    root, _ = exports
    _, (x, _) = digits
    for name in FIXED:
        session = ort.InferenceSession(str(root / f"{name}.onnx"),
                                       providers=["CPUExecutionProvider"])
        assert session.get_inputs()[0].shape[0] in (1, 4)
        with pytest.raises(Exception, match="Expected: [14]"):  # the issue's traceback
            session.run(None, {"input": x})


@pytest.mark.parametrize("name", FIXED)
def test_fixed_batch_onnx_in_eval(exports, digits, capsys, name):
    root, model = exports
    _, (x, _) = digits
    expected = ort_dynamic(root, x)
    with torch.no_grad():
        np.testing.assert_allclose(expected, model(torch.from_numpy(x)).numpy(), atol=1e-4)
    clf = load_classifier(root / f"{name}.onnx")
    assert (clf.n_features, clf.n_classes) == (64, 10)
    np.testing.assert_allclose(clf.logits(x), expected, rtol=1e-5, atol=1e-5)
    lines = []
    for file in (f"{name}.onnx", "dynamic.onnx"):
        code, out, err = run_cli(capsys, "eval", root / file, "--data", root / "test.npz")
        assert code == 0, err
        lines.append(out.split("accuracy:")[1])
    assert lines[0] == lines[1]


@pytest.mark.parametrize("name", FIXED)
def test_fixed_batch_onnx_in_compile_check(exports, digits, capsys, tmp_path, name):
    root, _ = exports
    _, (x, _) = digits
    imported = import_model(root / f"{name}.onnx")
    np.testing.assert_allclose(imported.run(x), ort_dynamic(root, x), rtol=1e-5, atol=1e-5)
    code, out, err = run_cli(capsys, "compile", root / f"{name}.onnx", "-o", tmp_path / "m.s2lm",
                             "--board", "unix")
    assert code == 0, err
    assert re.search(r"float32 arrays vs onnxruntime: .* of 256 inputs: ok", out), out
    np.testing.assert_allclose(compiler.logits(compiler.compile_network(imported.network), x),
                               ort_dynamic(root, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", FIXED)
def test_fixed_batch_onnx_in_run_onnx(exports, digits, name):
    root, _ = exports
    _, (x, _) = digits
    np.testing.assert_allclose(run_onnx(str(root / f"{name}.onnx"), x), ort_dynamic(root, x),
                               rtol=1e-5, atol=1e-5)
    one = run_onnx(str(root / f"{name}.onnx"), x[:1])  # fewer rows than the batch
    np.testing.assert_allclose(one, ort_dynamic(root, x[:1]), rtol=1e-5, atol=1e-5)


def test_fixed_batch_sklearn_classifier(exports, digits, classifiers, capsys):
    """Both at once: a skl2onnx file with its batch fixed at 1."""
    root, _ = exports
    _, (x, y) = digits
    clf = classifiers["mlp"]
    imported = import_model(root / "sklearn-fixed1.onnx")
    np.testing.assert_allclose(imported.run(x), clf.predict_proba(x), atol=1e-5)
    code, out, err = run_cli(capsys, "eval", root / "sklearn-fixed1.onnx", "--data",
                             root / "test.npz")
    assert code == 0, err
    assert f"accuracy: {100 * clf.score(x, y):.2f} %" in out, out

"""ONNX export of model + adapters against the numpy reference, and `skip2lora eval`."""
import json

import numpy as np
import onnx
import pytest

from skip2lora.model import compiler
from skip2lora.errors import UserError
from skip2lora.data.files import load_labelled
from skip2lora.metrics import confusion_matrix, score
from skip2lora.model.evaluate import format_confusion, load_classifier
from skip2lora.model.export import (
    INPUT, OUTPUT, adapted_logits, build_onnx, check_adapters, export_onnx, resolve_adapters,
    run_onnx)
from skip2lora.config import FinetuneConfig
from skip2lora.model.formats import (
    KIND_DELTA, KIND_PARALLEL, KIND_SKIP, Adapter, AdapterFile, ModelFile, ModelLayer,
    dataset_from_arrays, read_adapters, read_model, write_adapters, write_dataset, write_model)
from skip2lora.model.network import Dense, Network
from skip2lora.training.reference import finetune
from cli_helpers import one_line_error as assert_one_line_error, run_cli

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
DIMS = (7, 6, 5, 3)
RANK, ALPHA = 2, 3.0  # scale alpha/r = 1.5, so the branches' Mul is exercised


def make_model(directory, dtype="f32", seed=0, name="m.s2lm", dims=DIMS):
    """A random compiled model written to directory/name and read back (so file_crc is set)."""
    rng = np.random.default_rng(seed)
    net = Network([Dense(rng.normal(size=(o, i)) / np.sqrt(i), rng.normal(size=o) * 0.3)
                   for i, o in zip(dims[:-1], dims[1:])])
    path = directory / name
    write_model(path, compiler.compile_network(net, dtype, RANK, ALPHA))
    return path, read_model(path)


def train(model, method, targets="all", epochs=3, seed=1):
    """A few reference training steps; (FinetuneResult, the AdapterFile of its adapters)."""
    rng = np.random.default_rng(seed)
    dims = model.dims
    X = rng.normal(size=(24, dims[0]))
    y = rng.integers(0, dims[-1], size=24)
    cfg = FinetuneConfig(method=method, rank=RANK, alpha=ALPHA, epochs=epochs, lr=0.3,
                         momentum=0.5, batch_size=4, targets=targets, seed=seed)
    result = finetune(model.to_network(), X, y, cfg)
    adapters = [Adapter(layer, kind, np.asarray(A, np.float32), np.asarray(B, np.float32))
                for layer, kind, A, B in result.adapters()]
    return result, AdapterFile(model.file_crc, RANK, dims[-1], ALPHA, adapters, epochs, method)


def save_adapters(directory, af, name="adapters.s2la"):
    path = directory / name
    write_adapters(path, af)
    return path


def test_inputs(n=64, seed=5):
    return np.random.default_rng(seed).normal(size=(n, DIMS[0])).astype(np.float32)


test_inputs.__test__ = False  # a helper, not a test


# ---------------------------------------------------------------- ONNX against the reference

# (method, targets, merged (layer, kind), branches (layer, kind)) on a 3-layer net
CASES = [
    ("skip2lora", "all", [(2, KIND_SKIP)], [(0, KIND_SKIP), (1, KIND_SKIP)]),
    ("skip2lora", "hidden", [(2, KIND_SKIP)], [(1, KIND_SKIP)]),
    ("lora-all", "all", [(2, KIND_PARALLEL)], [(0, KIND_PARALLEL), (1, KIND_PARALLEL)]),
    ("ft-last", "all", [(2, KIND_DELTA)], []),
]


@pytest.mark.parametrize("dtype", ["f32", "int8"])
@pytest.mark.parametrize("method, targets, merged, branches", CASES)
def test_onnxruntime_equals_reference_predict(tmp_path, dtype, method, targets, merged,
                                              branches):
    _, model = make_model(tmp_path, dtype)
    result, af = train(model, method, targets)
    read_back = read_adapters(save_adapters(tmp_path, af))
    x = test_inputs()
    expected = result.predict(x)
    frozen = model.to_network().forward(x)
    assert np.max(np.abs(expected - frozen)) > 1e-2  # the adapters really change the logits

    out = tmp_path / "adapted.onnx"
    report = export_onnx(model, read_back, out)
    got = run_onnx(str(out), x)
    assert got.dtype == np.float32 and got.shape == (len(x), DIMS[-1])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(adapted_logits(model, read_back, x), expected, rtol=1e-6,
                               atol=1e-6)
    assert report.relative_error < 1e-5

    # what was merged and what became a branch
    def entries(lines):
        return sorted((int(line.split("on layer ")[1].split()[0]),
                       {"skip": KIND_SKIP, "parallel": KIND_PARALLEL, "dense": KIND_DELTA}[
                           line.split()[0]]) for line in lines)

    assert entries(report.merged) == merged and entries(report.branches) == branches
    graph = onnx.load(str(out)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("Gemm") == len(DIMS) - 1 and ops.count("Relu") == len(DIMS) - 2
    assert ops.count("MatMul") == 2 * len(branches)
    assert ops.count("Mul") == len(branches)  # scale 1.5 != 1
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in graph.initializer)
    if method == "lora-all":  # parallel branches join before the hidden layers' ReLU
        relu_inputs = {n.input[0] for n in graph.node if n.op_type == "Relu"}
        assert relu_inputs == {"layers.0.adapted", "layers.1.adapted"}

    # keeping the last layer's adapter as a branch computes the same logits
    unmerged = export_onnx(model, read_back, tmp_path / "unmerged.onnx", merge=False)
    np.testing.assert_allclose(run_onnx(str(tmp_path / "unmerged.onnx"), x), expected,
                               rtol=1e-5, atol=1e-5)
    if method != "ft-last":
        assert unmerged.merged == [] and len(unmerged.branches) == len(branches) + 1


def test_graph_interface_and_checker(tmp_path):
    _, model = make_model(tmp_path)
    _, af = train(model, "skip2lora")
    proto, _, _ = build_onnx(model, af)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == 17
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name) == (INPUT, OUTPUT) == ("input", "logits")

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert dims(inp) == ["batch", DIMS[0]] and dims(out) == ["batch", DIMS[-1]]
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["skip2lora_model_crc"] == f"0x{model.file_crc:08x}"
    assert props["skip2lora_adapters_method"] == "skip2lora"


@pytest.mark.parametrize("dtype", ["f32", "int8"])
def test_frozen_export_equals_the_compiled_model(tmp_path, dtype):
    _, model = make_model(tmp_path, dtype)
    report = export_onnx(model, None, tmp_path / "frozen.onnx")
    assert report.merged == report.branches == []
    x = test_inputs()
    np.testing.assert_allclose(run_onnx(str(tmp_path / "frozen.onnx"), x),
                               model.to_network().forward(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(adapted_logits(model, None, x), model.to_network().forward(x))


def test_scale_one_needs_no_mul(tmp_path):
    _, model = make_model(tmp_path)
    _, af = train(model, "skip2lora", "hidden")
    af.alpha = float(af.rank)
    proto, _, branches = build_onnx(model, af)
    assert "Mul" not in [n.op_type for n in proto.graph.node] and len(branches) == 1


# ---------------------------------------------------------------- adapters that do not fit

def test_export_refuses_adapters_of_another_model(tmp_path, capsys):
    a_path, model_a = make_model(tmp_path, name="a.s2lm", seed=0)
    b_path, model_b = make_model(tmp_path, name="b.s2lm", seed=1)
    _, af = train(model_a, "skip2lora")
    s2la = save_adapters(tmp_path, af, "trained-on-a.s2la")
    out = tmp_path / "x.onnx"
    code, _, err = run_cli(capsys, "export", b_path, "--adapters", s2la, "-o", out)
    assert code == 2
    assert_one_line_error(err, "b.s2lm", "trained-on-a.s2la", f"0x{model_a.file_crc:08x}",
                          f"0x{model_b.file_crc:08x}", "another model")
    assert not out.exists()
    with pytest.raises(UserError, match="another model"):
        export_onnx(model_b, af, out)
    with pytest.raises(UserError, match="another model"):
        adapted_logits(model_b, af, test_inputs())


def test_check_adapters_refuses_wrong_classes_layers_and_shapes(tmp_path):
    _, model = make_model(tmp_path)
    _, af = train(model, "skip2lora")

    def refused(change, *fragments, names=("m.s2lm", "a.s2la")):
        bad = AdapterFile(af.model_crc, af.rank, af.n_classes, af.alpha,
                          [Adapter(a.layer, a.kind, a.A, a.B) for a in af.adapters])
        change(bad)
        with pytest.raises(UserError) as info:
            check_adapters(model, bad, "m.s2lm", "a.s2la")
        for fragment in names + fragments:
            assert fragment in str(info.value), str(info.value)

    refused(lambda f: setattr(f, "n_classes", 4), "4 classes")
    refused(lambda f: setattr(f.adapters[0], "layer", 5), "layers 0..2")
    refused(lambda f: setattr(f.adapters[1], "A", np.zeros((RANK, 9), np.float32)), "(2, 9)")
    refused(lambda f: setattr(f.adapters[2], "B", np.zeros((5, RANK), np.float32)), "(5, 2)")
    refused(lambda f: f.adapters.append(f.adapters[0]), "already has a low-rank adapter",
            names=("a.s2la",))


def test_wrong_input_width(tmp_path):
    _, model = make_model(tmp_path)
    with pytest.raises(UserError, match=r"needs \(n, 7\)"):
        adapted_logits(model, None, np.zeros((2, 4)))


# ---------------------------------------------------------------- the export command

def test_export_command_with_a_directory(tmp_path, capsys):
    model_path, model = make_model(tmp_path)
    result, af = train(model, "skip2lora")
    pulled = tmp_path / "pulled"
    pulled.mkdir()
    save_adapters(pulled, af)
    out, peft_dir = tmp_path / "adapted.onnx", tmp_path / "peft"
    code, stdout, err = run_cli(capsys, "export", model_path, "--adapters", pulled, "-o", out,
                                "--peft", peft_dir)
    assert code == 0, err
    assert "merged: skip adapter on layer 2 (reads x3) -> layers.2.weight" in stdout
    assert "branch: skip adapter on layer 0 (reads x1) -> added to the logits" in stdout
    assert "branch: skip adapter on layer 1 (reads x2) -> added to the logits" in stdout
    assert "onnx.checker: ok" in stdout and f"wrote {out}" in stdout
    np.testing.assert_allclose(run_onnx(str(out), test_inputs()), result.predict(test_inputs()),
                               rtol=1e-5, atol=1e-5)
    assert (peft_dir / "adapter_config.json").is_file()

    # the PEFT directory works as --adapters too, and gives the same graph
    out2 = tmp_path / "from-peft.onnx"
    code, stdout, err = run_cli(capsys, "export", model_path, "--adapters", peft_dir, "-o", out2,
                                "--no-merge")
    assert code == 0, err
    assert "merged:" not in stdout and stdout.count("branch:") == 3
    np.testing.assert_allclose(run_onnx(str(out2), test_inputs()), result.predict(test_inputs()),
                               rtol=1e-5, atol=1e-5)


def test_resolve_adapters(tmp_path):
    _, model = make_model(tmp_path)
    _, af = train(model, "lora-all")
    s2la = save_adapters(tmp_path, af)
    from skip2lora.model.peft import write_peft_dir

    write_peft_dir(af, tmp_path / "p")
    for source in (s2la, tmp_path, tmp_path / "p", tmp_path / "p" / "adapter_config.json"):
        loaded, _ = resolve_adapters(source)
        assert loaded.file_crc == read_adapters(s2la).file_crc
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds neither adapters.s2la nor the PEFT files"):
        resolve_adapters(tmp_path / "empty")
    with pytest.raises(UserError, match="no such file or directory"):
        resolve_adapters(tmp_path / "absent")


@pytest.mark.parametrize("argv, fragments", [
    (["--adapters", "{a}"], ["nothing to write"]),
    (["-o", "{t}/x.txt"], ["must end in .onnx"]),
    (["--peft", "{t}/p"], ["--peft writes adapters"]),
    (["--adapters", "{t}/absent", "-o", "{t}/x.onnx"], ["absent", "no such file"]),
])
def test_export_command_errors(tmp_path, capsys, argv, fragments):
    model_path, model = make_model(tmp_path)
    _, af = train(model, "ft-last")
    a = save_adapters(tmp_path, af)
    argv = [s.format(a=a, t=tmp_path) for s in argv]
    code, _, err = run_cli(capsys, "export", model_path, *argv)
    assert code == 2
    assert_one_line_error(err, *fragments)


# ---------------------------------------------------------------- evaluation

def identity_model(tmp_path):
    """dims 3-3-3, both layers W = I, b = 0: the logits are relu(x), hand-checkable."""
    eye, zero = np.eye(3, dtype=np.float32), np.zeros(3, np.float32)
    path = tmp_path / "id.s2lm"
    write_model(path, ModelFile([ModelLayer(eye, zero), ModelLayer(eye, zero, relu=False)],
                                rank=2, alpha=2.0))
    return path, read_model(path)


# predictions 0, 1, 2, 2, 0 against labels 0, 1, 1, 2, 2: samples 0, 1 and 3 are right
HAND_X = np.array([[2, 0, 0], [0, 1, 0], [0, 0, 3], [0.5, 0, 1], [4, 1, 2]], np.float32)
HAND_Y = np.array([0, 1, 1, 2, 2])
HAND_CONFUSION = [[1, 0, 0], [0, 1, 1], [1, 0, 1]]


def test_score_hand_checked():
    result = score(HAND_X, HAND_Y)
    assert (result.n, result.correct, result.accuracy) == (5, 3, 0.6)
    assert result.confusion.tolist() == HAND_CONFUSION
    assert confusion_matrix([1, 1], [0, 1], 3).tolist() == [[0, 0, 0], [1, 1, 0], [0, 0, 0]]
    assert format_confusion(result.confusion) == [
        "true \\ predicted    0    1    2",
        "               0    1    0    0",
        "               1    0    1    1",
        "               2    1    0    1"]


def test_eval_command_hand_checked(tmp_path, capsys):
    model_path, model = identity_model(tmp_path)
    data = tmp_path / "d.npz"
    np.savez(data, x=HAND_X, y=HAND_Y)
    report = tmp_path / "r.json"
    code, stdout, err = run_cli(capsys, "eval", model_path, "--data", data, "--json", report)
    assert code == 0, err
    assert "accuracy: 60.00 % (3 of n = 5)" in stdout
    assert ("  true \\ predicted    0    1    2\n                 0    1    0    0\n"
            "                 1    0    1    1\n                 2    1    0    1\n") in stdout
    record = json.loads(report.read_text())
    assert (record["n"], record["correct"], record["accuracy"]) == (5, 3, 0.6)
    assert record["confusion"] == HAND_CONFUSION and record["n_classes"] == 3

    # an FT-Last delta that adds 10 to class 1's bias: every sample is predicted 1
    delta = Adapter(1, KIND_DELTA, np.zeros((3, 3), np.float32),
                    np.array([[0], [10], [0]], np.float32))
    save_adapters(tmp_path, AdapterFile(model.file_crc, 2, 3, 2.0, [delta], 1, "ft-last"))
    code, stdout, err = run_cli(capsys, "eval", model_path, "--adapters", tmp_path, "--data",
                                data, "--json", report)
    assert code == 0, err
    assert "accuracy: 40.00 % (2 of n = 5)" in stdout and "ft-last, 1 adapters" in stdout
    assert json.loads(report.read_text())["confusion"] == [[0, 1, 0], [0, 2, 0], [0, 2, 0]]


def test_eval_onnx_equals_eval_s2lm_with_adapters(tmp_path, capsys):
    model_path, model = make_model(tmp_path)
    _, af = train(model, "skip2lora", epochs=4)
    s2la = save_adapters(tmp_path, af)
    rng = np.random.default_rng(9)
    x = rng.normal(size=(50, DIMS[0])).astype(np.float32)
    y = np.argmax(adapted_logits(model, af, x) + rng.normal(size=(50, 3)), axis=1)
    data = tmp_path / "d.npz"
    np.savez(data, x=x, y=y)
    export_onnx(model, af, tmp_path / "a.onnx")
    outputs = []
    for argv in ([model_path, "--adapters", s2la], [tmp_path / "a.onnx"]):
        code, stdout, err = run_cli(capsys, "eval", *argv, "--data", data)
        assert code == 0, err
        outputs.append(stdout.split("accuracy:")[1])
    assert outputs[0] == outputs[1]
    clf = load_classifier(tmp_path / "a.onnx")
    assert (clf.n_features, clf.n_classes) == (DIMS[0], DIMS[-1])


def test_loaders_agree(tmp_path):
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    y = np.array([0, 2, 1, 1, 0, 2])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    rows = [",".join([repr(float(v)) for v in row] + [str(label)]) for row, label in zip(x, y)]
    (tmp_path / "plain.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "header.csv").write_text("f1, f2, f3, label\n" + "\n".join(rows) + "\n\n")
    write_dataset(tmp_path / "d.s2ld", dataset_from_arrays(x, y, 3))
    write_dataset(tmp_path / "q.s2ld", dataset_from_arrays(x, y, 3, dtype=1))
    for name in ("d.npz", "plain.csv", "header.csv", "d.s2ld"):
        gx, gy = load_labelled(tmp_path / name, 3, 3, "m.s2lm")
        assert gx.dtype == np.float32 and gy.dtype == np.int64, name
        np.testing.assert_array_equal(gx, x, err_msg=name)
        np.testing.assert_array_equal(gy, y, err_msg=name)
    qx, qy = load_labelled(tmp_path / "q.s2ld")  # int8 features: dequantized
    np.testing.assert_allclose(qx, x, atol=np.abs(x).max() / 127)
    np.testing.assert_array_equal(qy, y)
    # float labels that are whole numbers, and image-like x, are accepted
    np.savez(tmp_path / "f.npz", x=x.reshape(6, 3, 1), y=y.astype(np.float64))
    fx, fy = load_labelled(tmp_path / "f.npz")
    np.testing.assert_array_equal(fx, x)
    np.testing.assert_array_equal(fy, y)


def _npz(**arrays):
    def write(path):
        np.savez(path, **arrays)
    return write


def _text(text):
    def write(path):
        path.write_text(text)
    return write


def _s2ld(n_classes, corrupt=False):
    def write(path):
        write_dataset(path, dataset_from_arrays(np.ones((2, 3)), [0, 1], n_classes))
        if corrupt:
            data = bytearray(path.read_bytes())
            data[30] ^= 0xFF
            path.write_bytes(bytes(data))
    return write


GOOD_X = np.ones((2, 3), np.float32)
EVAL_ERRORS = [  # (data file name, writer, fragments of the one-line error)
    ("absent.npz", None, ["absent.npz", "no such file"]),
    ("d.txt", _text("1,2,3,0\n"), ["d.txt", "unknown data type '.txt'"]),
    ("d.npz", _npz(x=GOOD_X), ["d.npz", "lacks the array(s) y"]),
    ("d.npz", _text("not a zip"), ["d.npz", "cannot read it as a .npz archive"]),
    ("d.npz", _npz(x=np.ones(3), y=[0]), ["d.npz", "one row per sample"]),
    ("d.npz", _npz(x=GOOD_X, y=[0, 1, 2]), ["d.npz", "2 samples but labels of shape (3,)"]),
    ("d.npz", _npz(x=np.ones((0, 3)), y=np.ones(0)), ["d.npz", "holds no samples"]),
    ("d.npz", _npz(x=np.ones((2, 4)), y=[0, 1]),
     ["d.npz", "4 features per sample", "id.s2lm", "takes 3"]),
    ("d.npz", _npz(x=GOOD_X, y=[0, 3]), ["d.npz", "labels run 0..3", "0..2", "id.s2lm"]),
    ("d.npz", _npz(x=GOOD_X, y=[-1, 0]), ["d.npz", "labels run -1..0"]),
    ("d.npz", _npz(x=GOOD_X, y=[0.0, 1.5]), ["d.npz", "whole numbers"]),
    ("d.npz", _npz(x=np.array([[1, 2, 3], [1, np.nan, 0]]), y=[0, 1]),
     ["d.npz", "NaN or Inf (first in sample 1)"]),
    ("d.csv", _text("1,2,3,0\n4,5,inf,1\n"), ["d.csv", "NaN or Inf"]),
    ("d.csv", _text("a,b,c,label\n1,2,3,0\n1,2,1\n"), ["d.csv", "line 3 has 3 columns",
                                                       "line 1 has 4"]),
    ("d.csv", _text("1,2,3,0\n1,2,3,1\n1,abc,3,1\n"),
     ["d.csv", "line 3, column 2: 'abc' is not a number"]),
    ("d.csv", _text("a,b,c,label\n"), ["d.csv", "holds no samples"]),
    ("d.csv", _text("0\n1\n"), ["d.csv", "single column"]),
    ("d.s2ld", _s2ld(4), ["d.s2ld", "packed for 4 classes", "id.s2lm", "has 3"]),
    ("d.s2ld", _s2ld(3, corrupt=True), ["d.s2ld", "corrupt"]),
]


@pytest.mark.parametrize("name, writer, fragments", EVAL_ERRORS,
                         ids=[f"{i}-{e[0]}" for i, e in enumerate(EVAL_ERRORS)])
def test_eval_data_errors(tmp_path, capsys, name, writer, fragments):
    model_path, _ = identity_model(tmp_path)
    data = tmp_path / name
    if writer is not None:
        writer(data)
    code, _, err = run_cli(capsys, "eval", model_path, "--data", data)
    assert code == 2
    assert_one_line_error(err, *fragments)


def test_eval_model_errors(tmp_path, capsys):
    model_path, model = identity_model(tmp_path)
    data = tmp_path / "d.npz"
    np.savez(data, x=HAND_X, y=HAND_Y)
    onnx_path = tmp_path / "id.onnx"
    export_onnx(model, None, onnx_path)
    (tmp_path / "m.pt").write_bytes(b"x")
    other_path, other = make_model(tmp_path, dims=(3, 4, 3))
    _, af = train(other, "skip2lora")
    s2la = save_adapters(tmp_path, af, "other.s2la")
    (tmp_path / "broken.onnx").write_bytes(b"garbage")
    cases = [
        ([tmp_path / "m.pt"], ["m.pt", "unknown model type '.pt'"]),
        ([onnx_path, "--adapters", s2la], ["id.onnx", "--adapters goes with a .s2lm"]),
        ([model_path, "--adapters", s2la], ["id.s2lm", "other.s2la", "another model"]),
        ([tmp_path / "broken.onnx"], ["broken.onnx", "cannot load it with onnxruntime"]),
        ([tmp_path / "absent.s2lm"], ["absent.s2lm", "no such file"]),
    ]
    for argv, fragments in cases:
        code, _, err = run_cli(capsys, "eval", *argv, "--data", data)
        assert code == 2, argv
        assert_one_line_error(err, *fragments)

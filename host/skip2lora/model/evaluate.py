"""Accuracy and confusion matrix of a model (with its adapters) on labelled data: the `eval`
command's logic. The data comes through data.files.load_labelled, the scores from metrics."""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skip2lora.data.files import load_labelled
from skip2lora.errors import UserError
from skip2lora.metrics import score
from skip2lora.model.export import adapted_logits, check_adapters, resolve_adapters
from skip2lora.model.formats import read_model, write_atomic
from skip2lora.model.onnx_run import OnnxRunner

@dataclass
class Classifier:
    """Something that gives logits: a .s2lm (with optional adapters) or an .onnx file."""

    name: str
    n_features: int
    n_classes: int
    logits: object  # callable float32 (n, d) -> (n, C)
    description: str = ""


def load_classifier(model_path, adapters_path=None):
    model_name = str(model_path)
    suffix = Path(model_path).suffix.lower()
    if suffix == ".s2lm":
        model = read_model(model_path)
        dims = model.dims
        desc = f"{model_name} ({'-'.join(map(str, dims))}, " \
               f"{'int8' if model.layers[0].scale is not None else 'f32'})"
        adapters = None
        if adapters_path is not None:
            adapters, adapters_name = resolve_adapters(adapters_path)
            check_adapters(model, adapters, model_name, adapters_name)
            desc += (f" + {adapters_name} ({adapters.method}, {len(adapters.adapters)} "
                     f"adapters, {adapters.epochs_done} epochs)")
        return Classifier(model_name, dims[0], dims[-1],
                          lambda X: adapted_logits(model, adapters, X), desc)
    if suffix == ".onnx":
        if adapters_path is not None:
            raise UserError("--adapters goes with a .s2lm model; an exported .onnx already "
                            "holds its adapters (export them with `skip2lora export`)",
                            model_path)
        return _onnx_classifier(model_path)
    raise UserError(f"unknown model type '{suffix or '(no extension)'}'; eval reads a compiled "
                    f".s2lm (with --adapters) or an .onnx (e.g. from `skip2lora export`)",
                    model_path)


_FLOAT_TENSORS = ("tensor(float)", "tensor(double)")


def _scores_output(runner, path):
    """(output, to_table): the output holding the class scores, and how to make it (n, C).

    An exported or torch model has one, its logits. A scikit-learn classifier converted with
    skl2onnx has two, the label first and the probabilities second: a float table, or with
    ZipMap a list of {label: probability} dicts, whose keys are in class order.
    """
    outputs = runner.outputs
    tables = [o for o in outputs if o.type in _FLOAT_TENSORS]
    table = next((o for o in tables if len(o.shape) == 2), tables[0] if tables else None)
    if table is not None:
        return table, lambda out: np.asarray(out)
    maps = [o for o in outputs if o.type.startswith("seq(map(")]
    if maps:
        return maps[0], lambda out: np.asarray([list(row.values()) for row in out], np.float64)
    raise UserError(f"has outputs {[(o.name, o.type, o.shape) for o in outputs]}; eval needs one "
                    f"of class scores, shape (batch, classes)", path)


def _onnx_classifier(path):
    if not Path(path).is_file():
        raise UserError("no such file; check the path", path)
    runner = OnnxRunner(path, purpose=" on the data")
    inputs = runner.inputs
    if len(inputs) != 1 or len(runner.shape) < 2 or runner.n_features is None:
        raise UserError(f"takes inputs {[(i.name, i.shape) for i in inputs]}; eval needs one "
                        f"input of shape (batch, features)", path)
    n_features = runner.n_features
    output, to_table = _scores_output(runner, path)

    def logits(X):
        return to_table(runner.run(X, [output.name])[0])

    n_classes = output.shape[1] if len(output.shape) == 2 else None
    if not isinstance(n_classes, int):
        probe = logits(np.zeros((1, n_features), np.float32))
        if probe.ndim != 2:
            raise UserError(f"returns shape {probe.shape}; eval needs (batch, classes)", path)
        n_classes = probe.shape[1]
    notes = [f"{n_features} inputs", f"{n_classes} classes"]
    if runner.batch:
        notes.append(f"fixed batch {runner.batch}, fed in chunks of that size")
    if output is not runner.outputs[0] or len(runner.outputs) > 1:
        notes.append(f"scores from output '{output.name}'")
    return Classifier(str(path), n_features, n_classes, logits,
                      f"{path} (ONNX, {', '.join(notes)})")


def evaluate(model_path, data_path, adapters_path=None):
    """(Classifier, EvalResult) of a model file (with optional adapters) on a data file."""
    clf = load_classifier(model_path, adapters_path)
    X, y = load_labelled(data_path, clf.n_features, clf.n_classes, clf.name)
    return clf, score(clf.logits(X), y, clf.n_classes)


def format_confusion(confusion):
    """Text table: one row per true class, one column per predicted class."""
    n = len(confusion)
    width = max(4, len(str(int(confusion.max()) if confusion.size else 0)), len(str(n - 1)))
    lines = ["true \\ predicted " + " ".join(f"{j:>{width}}" for j in range(n))]
    for i in range(n):
        lines.append(f"{i:>16} " + " ".join(f"{int(v):>{width}}" for v in confusion[i]))
    return lines


def write_json(path, record):
    try:
        write_atomic(path, (json.dumps(record, indent=2) + "\n").encode("utf-8"))
    except OSError as exc:
        raise UserError(f"cannot write the JSON file: {exc.strerror or exc}", path) from None

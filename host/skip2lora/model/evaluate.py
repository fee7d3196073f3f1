"""Accuracy and confusion matrix of a model (with its adapters) on labelled data: the `eval`
command's logic. The data comes through data.files.load_labelled, the scores from metrics."""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skip2lora.data.files import load_labelled
from skip2lora.errors import UserError
from skip2lora.metrics import score
from skip2lora.model.export import adapted_logits, check_adapters, resolve_adapters, run_onnx
from skip2lora.model.formats import read_model, write_atomic

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
        return _onnx_classifier(model_path, run_onnx)
    raise UserError(f"unknown model type '{suffix or '(no extension)'}'; eval reads a compiled "
                    f".s2lm (with --adapters) or an .onnx (e.g. from `skip2lora export`)",
                    model_path)


def _onnx_classifier(path, run_onnx):
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("reading ONNX models needs the Python package 'onnxruntime': "
                        "pip install 'skip2lora[onnx]'") from None
    if not Path(path).is_file():
        raise UserError("no such file; check the path", path)
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise UserError(f"cannot load it with onnxruntime ({' '.join(str(exc).split())[:300]})",
                        path) from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = inputs[0].shape
    if len(inputs) != 1 or len(shape) != 2 or not isinstance(shape[1], int):
        raise UserError(f"takes inputs {[(i.name, i.shape) for i in inputs]}; eval needs one "
                        f"input of shape (batch, features)", path)

    def logits(X):
        return np.asarray(session.run(None, {inputs[0].name: np.asarray(X, np.float32)})[0])

    n_classes = outputs[0].shape[1] if len(outputs[0].shape) == 2 else None
    if not isinstance(n_classes, int):
        probe = logits(np.zeros((1, shape[1]), np.float32))
        if probe.ndim != 2:
            raise UserError(f"returns shape {probe.shape}; eval needs (batch, classes)", path)
        n_classes = probe.shape[1]
    return Classifier(str(path), shape[1], n_classes, logits,
                      f"{path} (ONNX, {shape[1]} inputs, {n_classes} classes)")


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

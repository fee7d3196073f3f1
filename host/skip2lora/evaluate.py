"""Accuracy and confusion matrix of a model (with its adapters) on labelled data.

`load_labelled` is the one loader of labelled samples for every command (eval, finetune):
`.npz` (arrays x and y), `.csv` (one sample per line, the label in the last column, an
optional header line) or `.s2ld` (the board's dataset format). Every problem with the data,
or between the data and the model, is a UserError naming the file(s) and what to do.
"""
import csv
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skip2lora.errors import UserError

DATA_SUFFIXES = (".npz", ".csv", ".s2ld")
MODEL_SUFFIXES = (".s2lm", ".onnx")


# ---------------------------------------------------------------- loading labelled data

def _load_npz(path):
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UserError("no such file; check the path", path) from None
    except IsADirectoryError:
        raise UserError("is a directory, expected a .npz file", path) from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"cannot read it as a .npz archive ({' '.join(str(exc).split())}); "
                        f"save it with numpy.savez(path, x=..., y=...)", path) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise UserError("holds a single .npy array, not a .npz archive; save it with "
                        "numpy.savez(path, x=..., y=...)", path)
    with archive:
        missing = {"x", "y"} - set(archive.files)
        if missing:
            raise UserError(f"the archive lacks the array(s) {', '.join(sorted(missing))} "
                            f"(it holds {', '.join(archive.files) or 'nothing'}); it needs x "
                            f"(samples, features) and y (labels)", path)
        try:
            x, y = archive["x"], archive["y"]
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise UserError(f"cannot read its arrays ({' '.join(str(exc).split())})",
                            path) from None
    if x.dtype.kind not in "biuf" or y.dtype.kind not in "biuf":
        raise UserError(f"x ({x.dtype}) and y ({y.dtype}) must be numeric arrays", path)
    if x.ndim < 2:
        raise UserError(f"x has shape {x.shape}; it needs one row per sample: (samples, "
                        f"features)", path)
    return x.reshape(len(x), int(np.prod(x.shape[1:]))), y


def _load_csv(path):
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            lines = list(enumerate(csv.reader(f), 1))
    except FileNotFoundError:
        raise UserError("no such file; check the path", path) from None
    except IsADirectoryError:
        raise UserError("is a directory, expected a .csv file", path) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read it as a text CSV file ({exc})", path) from None
    rows, width, first = [], None, None
    for lineno, row in lines:
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        try:
            values = [float(c) for c in cells]
        except ValueError:
            if first is None:  # a header line: names, not numbers
                first, width = lineno, len(cells)
                continue
            col, cell = next((k, c) for k, c in enumerate(cells, 1) if not _is_number(c))
            raise UserError(f"line {lineno}, column {col}: {cell!r} is not a number; every "
                            f"line after the optional header holds comma-separated numbers, "
                            f"the label last", path) from None
        if width is not None and len(values) != width:
            raise UserError(f"line {lineno} has {len(values)} columns but line {first} has "
                            f"{width}; every line needs the same features and a label", path)
        first = lineno if first is None else first
        width = len(values)
        rows.append(values)
    if not rows:
        raise UserError("holds no samples; one line per sample: features, then the label",
                        path)
    if width < 2:
        raise UserError("has a single column; each line needs the features and then the label",
                        path)
    table = np.array(rows, np.float64)
    return table[:, :-1], table[:, -1]


def _is_number(cell):
    try:
        float(cell)
        return True
    except ValueError:
        return False


def _load_s2ld(path, n_classes, model_name):
    from skip2lora.formats import read_dataset

    ds = read_dataset(path)
    if n_classes is not None and ds.n_classes != n_classes:
        raise UserError(f"was packed for {ds.n_classes} classes but {model_name} has "
                        f"{n_classes}; pack the data again for this model", path)
    return ds.float_features(), ds.labels


def load_labelled(path, n_features=None, n_classes=None, model_name=None):
    """(X float32 (n, d), y int64 (n,)) from a .npz, .csv or .s2ld file.

    With n_features / n_classes (the model's d_1 and C) the data is checked against the model;
    model_name is how messages name the model.
    """
    model_name = model_name or "the model"
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        x, y = _load_npz(path)
    elif suffix == ".csv":
        x, y = _load_csv(path)
    elif suffix == ".s2ld":
        x, y = _load_s2ld(path, n_classes, model_name)
    else:
        raise UserError(f"unknown data type '{suffix or '(no extension)'}'; expected .npz "
                        f"(arrays x and y), .csv (label in the last column) or .s2ld", path)
    if len(x) == 0:
        raise UserError("holds no samples", path)
    y = np.asarray(y)
    if y.shape != (len(x),):
        raise UserError(f"{len(x)} samples but labels of shape {y.shape}; y needs one label per "
                        f"sample", path)
    x = np.asarray(x, np.float64)
    if not np.all(np.isfinite(x)):
        row = int(np.argwhere(~np.isfinite(x))[0][0])
        raise UserError(f"features hold NaN or Inf (first in sample {row}); clean or drop those "
                        f"samples", path)
    if n_features is not None and x.shape[1] != n_features:
        raise UserError(f"has {x.shape[1]} features per sample but {model_name} takes "
                        f"{n_features}; they do not belong together", path)
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(np.mod(y, 1) == 0):
            raise UserError("labels must be whole numbers (class indexes 0, 1, ...)", path)
    labels = y.astype(np.int64)
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or (n_classes is not None and high >= n_classes):
        limit = f"0..{n_classes - 1}, the classes of {model_name}" if n_classes else "0 or more"
        raise UserError(f"labels run {low}..{high} but must lie in {limit}", path)
    return x.astype(np.float32), labels


# ---------------------------------------------------------------- the model side

@dataclass
class Classifier:
    """Something that gives logits: a .s2lm (with optional adapters) or an .onnx file."""

    name: str
    n_features: int
    n_classes: int
    logits: object  # callable float32 (n, d) -> (n, C)
    description: str = ""


def load_classifier(model_path, adapters_path=None):
    from skip2lora.export import adapted_logits, check_adapters, resolve_adapters, run_onnx

    model_name = str(model_path)
    suffix = Path(model_path).suffix.lower()
    if suffix == ".s2lm":
        from skip2lora.formats import read_model

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


# ---------------------------------------------------------------- scores

def confusion_matrix(y_true, y_pred, n_classes):
    """counts[t, p]: samples of true class t predicted as p."""
    counts = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(counts, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return counts


@dataclass
class EvalResult:
    n: int
    correct: int
    confusion: np.ndarray  # (C, C), rows true class, columns predicted class

    @property
    def accuracy(self):
        return self.correct / self.n

    @property
    def n_classes(self):
        return len(self.confusion)

    def to_dict(self):
        return {"n": self.n, "correct": self.correct, "accuracy": self.accuracy,
                "n_classes": self.n_classes, "confusion": self.confusion.tolist(),
                "confusion_axes": "rows: true class, columns: predicted class"}


def accuracy(logits, y):
    """Share of rows of logits (n, C) whose largest entry is at the label: the one definition
    every accuracy in the project (compile, experiments, pretrain, bench) goes through."""
    return float(np.mean(np.argmax(np.asarray(logits), axis=1) == np.asarray(y)))


def score(logits, y, n_classes=None):
    """EvalResult of logits (n, C) against integer labels y."""
    logits = np.asarray(logits)
    n_classes = n_classes or logits.shape[1]
    pred = np.argmax(logits, axis=1)
    y = np.asarray(y, np.int64)
    return EvalResult(len(y), int(np.sum(pred == y)), confusion_matrix(y, pred, n_classes))


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
    from skip2lora.formats import write_atomic

    try:
        write_atomic(path, (json.dumps(record, indent=2) + "\n").encode("utf-8"))
    except OSError as exc:
        raise UserError(f"cannot write the JSON file: {exc.strerror or exc}", path) from None

"""The one loader of labelled samples for every command (eval, finetune, compile --test-data).

`.npz` (arrays x and y), `.csv` (one sample per line, the label in the last column, an
optional header line) or `.s2ld` (the board's dataset format). Every problem with the data,
or between the data and the model, is a UserError naming the file(s) and what to do.
"""
import csv
import zipfile
from pathlib import Path

import numpy as np

from skip2lora.errors import UserError
from skip2lora.model.formats import read_dataset

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

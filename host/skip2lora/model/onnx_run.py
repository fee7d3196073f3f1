"""Run an ONNX model with onnxruntime on any number of samples, whatever batch size it declares.

`torch.onnx.export` without dynamic axes fixes the batch dimension at the size of the example
input (1 by default), and onnxruntime then refuses every other size ("Got 705 Expected 1").
Marking the dimension dynamic in memory is not enough in general, since such an export may bake
the batch into a constant (a Reshape's target shape), so a fixed batch is fed in chunks of exactly
that size, the last one zero-padded and its padding cut from the outputs. eval, compile's check
against the original model and export's verification all run ONNX through here, so all of them
read such a file, and all of them report onnxruntime's failures as one line.
"""
import math

import numpy as np

from skip2lora.errors import UserError

_INPUT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64}


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UserError("running ONNX models needs the Python package 'onnxruntime': "
                        "pip install 'skip2lora[onnx]'") from None
    return onnxruntime


def _one_line(exc, limit=300):
    return " ".join(str(exc).split())[:limit]


class OnnxRunner:
    """One onnxruntime session on a model file or its serialized bytes.

    `path` names the model in messages (defaults to the file); `purpose` ends the sentence
    "onnxruntime cannot run it ..." when a run fails.
    """

    def __init__(self, model, path=None, purpose=""):
        ort = _onnxruntime()
        is_bytes = isinstance(model, (bytes, bytearray))
        self.path = path if path is not None or is_bytes else str(model)
        self.purpose = purpose
        try:
            self.session = ort.InferenceSession(bytes(model) if is_bytes else str(model),
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime has no public exception base class
            raise UserError(f"cannot load it with onnxruntime ({_one_line(exc)})",
                            self.path) from None
        self.inputs = self.session.get_inputs()
        self.outputs = self.session.get_outputs()
        first = self.inputs[0]
        self.input_name = first.name
        # onnxruntime gives a named (str) or unknown (None) dimension for a dynamic one
        self.shape = [d if isinstance(d, int) and d > 0 else None for d in first.shape]
        self.input_dtype = _INPUT_DTYPES.get(first.type, np.float32)

    @property
    def batch(self):
        """The fixed batch size the model declares, or None when the batch is dynamic."""
        return self.shape[0] if self.shape else None

    @property
    def n_features(self):
        """Values per sample (the product of the non-batch dimensions), or None if unknown."""
        rest = self.shape[1:]
        return math.prod(rest) if rest and all(rest) else None

    def run(self, x, output_names=None):
        """The model's outputs (all, or those named) for the samples of x, one row each.

        x is (n, features), reshaped to the declared per-sample shape when that has more axes
        (e.g. (n, 1, 8, 8) before a Flatten). Tensor outputs come back as arrays, sequence
        outputs (a ZipMap's list of dicts) as lists.
        """
        x = np.asarray(x, self.input_dtype)
        if len(self.shape) > 2 and all(self.shape[1:]) and x.ndim == 2:
            x = x.reshape([len(x)] + self.shape[1:])
        batch = self.batch or max(len(x), 1)
        parts = None
        for start in range(0, max(len(x), 1), batch):
            chunk = x[start:start + batch]
            n = len(chunk)
            if self.batch and n < batch:
                chunk = np.concatenate([chunk, np.zeros((batch - n,) + x.shape[1:], x.dtype)])
            try:
                outs = self.session.run(output_names, {self.input_name: chunk})
            except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
                raise UserError(f"onnxruntime cannot run it{self.purpose}: {_one_line(exc)}",
                                self.path) from None
            if self.batch:
                outs = [_cut_padding(o, n, batch) for o in outs]
            parts = [[o] for o in outs] if parts is None else [p + [o] for p, o in zip(parts, outs)]
        return [np.concatenate(p) if isinstance(p[0], np.ndarray) else
                [row for piece in p for row in piece] for p in parts]


def _cut_padding(output, n, batch):
    """The first n rows of an output that has one row per fed sample; others as they are."""
    per_sample = isinstance(output, list) or getattr(output, "ndim", 0) >= 1
    return output[:n] if per_sample and len(output) == batch else output


def run_onnx(model, x, output_names=None, path=None, purpose=""):
    """The first requested output of an ONNX model (file path or bytes) on x."""
    return OnnxRunner(model, path, purpose).run(x, output_names)[0]

"""Symmetric per-output-channel int8 quantization of the frozen weights.

One scale per output row, because rows of a trained layer differ in magnitude by 10x or more
and a single per-layer scale would spend most codes of the small rows on nothing. Symmetric
(zero point 0) and -127..127 (never -128), so the board's integer kernel needs no offset term
and negating a code never overflows. Biases stay float32: they are few, and the board adds
them once per output.
"""
import numpy as np

QMAX = 127


def quantize_rows(weight):
    """(int8 codes, float32 scale per row) with weight[j] ~= codes[j] * scale[j].

    An all-zero row gets scale 1.0 rather than 0, so the file never holds a zero scale that a
    reader might divide by.
    """
    w = np.asarray(weight, np.float64)
    peak = np.max(np.abs(w), axis=1) if w.size else np.zeros(w.shape[0])
    scale = np.where(peak > 0, peak / QMAX, 1.0).astype(np.float32)
    codes = np.clip(np.rint(w / scale.astype(np.float64)[:, None]), -QMAX, QMAX).astype(np.int8)
    return codes, scale


# Fixed-point kernels on ulab, for firmware with ulab and without viper (most CircuitPython
# builds for the RP2040, RP2350 and ESP32-S3; some MicroPython builds).
#
# Why it can be exact: ulab has no int32 and computes in float (float32 on a board, double
# on the unix builds), and a CircuitPython board boxes every Python float in 30 bits (a 22-bit
# significand). So each ulab step here only ever holds integers of magnitude <= 2**24 inside
# ulab and <= 2**22 in any value it hands back to Python: exact in float32, in double and in
# CircuitPython's boxed floats alike, so every board gets the integers of kernels_py.py.
# int8 x int8 dots run in chunks of 256 (<= 128 * 128 * 256 = 2**22); an int16 operand is
# split into a signed high byte and an unsigned low byte (dots in chunks of 256 and 128).
# docs/device.md ("ulab kernels") gives each bound; tests/device/test_device_ulab.py checks
# the integers against kernels_py.py on both ulab interpreters.
#
# The other kernels are kernels_py.py's own functions, exact by definition: the C x r loops
# and the per-channel requantization are too short to gain from a dozen ulab calls, the
# float32-bit kernels (save, calibration) have no ulab form, and upd_a, exact in ulab as
# int16/uint16 halves of each master, took about 20 array operations per row: no faster
# than its Python loop on the unix interpreters, and its d-long float temporaries ran out of
# heap on a trained 192 KiB heap (docs/device.md, "ulab kernels"). A row shorter than MIN_D
# also runs the Python loop.
# ulab's operations return new arrays: every ulab step below allocates its result (at most
# 256 int16, or one float per row of a weight block); none is kept.
from ulab import numpy as np

from . import kernels_py as _py

NAME = "ulab"
LIM = 0x3FFFFFFF
MIN_D = 128   # shorter rows: the Python loop beats a dozen ulab calls (measured, docs)

requant8 = _py.requant8
logits_bu = _py.logits_bu
bg = _py.bg
upd_b = _py.upd_b
upd_a = _py.upd_a
to_f32 = _py.to_f32
absmax_f32 = _py.absmax_f32
quant_f32 = _py.quant_f32
_q16_out = _py.q16_out


def dense_q16(W, X, d_in, j0, nr, M, N, BETA, OUT, sx):
    # kernels_py.dense_q16, the row sums as int8 matrix x int8 vector products over column
    # chunks of 256: each sum |.| <= 128 * 128 * 256 = 2**22
    w = np.frombuffer(W, dtype=np.int8, count=nr * d_in).reshape((nr, d_in))
    x = np.frombuffer(X, dtype=np.int8, count=d_in)
    # the sums read back as lists: indexing a ulab array allocates a 224-byte view per
    # element, tolist() only the list (and on a unix build the boxed floats)
    s1 = parts = None
    if d_in <= 256:
        s0 = np.dot(w, x).tolist()
    elif d_in <= 512:
        s0, s1 = np.dot(w[:, :256], x[:256]).tolist(), np.dot(w[:, 256:], x[256:]).tolist()
    else:
        s0, parts = None, [np.dot(w[:, k:k + 256], x[k:k + 256]).tolist()
                           for k in range(0, d_in, 256)]
    i = 0
    for j in range(j0, j0 + nr):
        if parts is not None:
            acc = 0
            for s in parts:
                acc += int(s[i])
        elif s1 is None:
            acc = int(s0[i])
        else:
            acc = int(s0[i]) + int(s1[i])
        i += 1
        OUT[j] = _q16_out(acc, M[j], N[j], BETA[j])


def dot_a16x8(A, X, d, ps):
    # kernels_py.dot_a16x8 in chunks of 256: A = 256 hi + lo with hi = A >> 8 in -128..127
    # and lo = A & 255 in 0..255; sum hi x over the chunk (<= 128 * 128 * 256 = 2**22), sum
    # lo x over halves of it (<= 255 * 128 * 128 < 2**22), combined in Python ints
    if d < MIN_D:
        return _py.dot_a16x8(A, X, d, ps)
    a = np.frombuffer(A, dtype=np.int16, count=d)
    x = np.frombuffer(X, dtype=np.int8, count=d)
    acc = 0
    for k0 in range(0, d, 512):
        k2 = k0 + 512 if k0 + 512 < d else d
        c = 0
        for k in range(k0, k2, 256):
            k1 = k + 256 if k + 256 < k2 else k2
            ak, xk = a[k:k1], x[k:k1]
            c += int(np.dot(np.right_shift(ak, 8), xk)) << 8
            lo = np.bitwise_and(ak, 255)
            if k1 - k > 128:
                c += int(np.dot(lo[:128], xk[:128])) + int(np.dot(lo[128:], xk[128:]))
            else:
                c += int(np.dot(lo, xk))
        if ps > 0:
            c = (c + (1 << (ps - 1))) >> ps
        acc += c
    return acc


def adapter_u(A, X, d, ps, sh):
    return _py.u_of_dot(dot_a16x8(A, X, d, ps), sh)

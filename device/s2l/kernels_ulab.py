# Fixed-point kernels on ulab, for firmware with ulab and without viper (most CircuitPython
# builds for the RP2040, RP2350 and ESP32-S3; some MicroPython builds).
#
# Why it can be exact: ulab has no int32 and computes in float (float32 on a board, double
# on the unix builds), and a CircuitPython board boxes every Python float in 30 bits (a 22-bit
# significand). So each ulab step here only ever holds integers of magnitude <= 2**24 inside
# ulab and <= 2**22 in any value it hands back to Python: exact in float32, in double and in
# CircuitPython's boxed floats alike, so every board gets the integers of kernels_py.py.
# int8 x int8 dots run in chunks of 256 (<= 128 * 128 * 256 = 2**22); int16 operands are
# split into a signed high byte and an unsigned low byte (chunks of 256 and 128); upd_a
# keeps its int32 masters as int16/uint16 halves (little-endian views of the array('i')).
# docs/device.md ("ulab kernels") gives each bound; tests/device/test_device_ulab.py checks
# the integers against kernels_py.py on both ulab interpreters.
#
# The small kernels (C x r loops, per-channel requantization, the float32-bit kernels of
# save and calibration) are kernels_py.py's own functions: they have no exact ulab form worth
# its call overhead. A row shorter than MIN_D, or a parameter outside the range proven below,
# also runs the kernels_py.py statement: exact by definition.
# ulab's operations return new arrays: every ulab step below allocates its result (4 bytes
# per element on a board); nothing is kept between calls.
from ulab import numpy as np

from . import kernels_py as _py

NAME = "ulab"
LIM = 0x3FFFFFFF
MIN_D = 128   # shorter rows: the Python loop beats a dozen ulab calls (measured, docs)
E_MAX = 12582912  # 2**23 + 2**22: |e| the ulab upd_a is proven for (bg gives <= 8.44e6)
INV256 = 1 / 256
INV16 = 1 / 65536
INV = [1 / (1 << k) for k in range(25)]  # 2**-k, exact in float32 and in a boxed float

requant8 = _py.requant8
logits_bu = _py.logits_bu
bg = _py.bg
upd_b = _py.upd_b
to_f32 = _py.to_f32
absmax_f32 = _py.absmax_f32
quant_f32 = _py.quant_f32


def dense_q16(W, X, d_in, j0, nr, M, N, BETA, OUT, sx):
    # kernels_py.dense_q16, the row sums as int8 matrix x int8 vector products over column
    # chunks of 256: each sum |.| <= 128 * 128 * 256 = 2**22
    w = np.frombuffer(W, dtype=np.int8, count=nr * d_in).reshape((nr, d_in))
    x = np.frombuffer(X, dtype=np.int8, count=d_in)
    if d_in <= 256:
        s0, parts = np.dot(w, x), None
    else:
        s0, parts = None, [np.dot(w[:, k:k + 256], x[k:k + 256]) for k in range(0, d_in, 256)]
    i = 0
    for j in range(j0, j0 + nr):
        if parts is None:
            acc = int(s0[i])
        else:
            acc = 0
            for s in parts:
                acc += int(s[i])
        i += 1
        m = M[j]
        n = N[j]
        t = (acc >> 15) * m + (((acc & 0x7FFF) * m + 16384) >> 15)
        if n > 15:
            v = (t + (1 << (n - 16))) >> (n - 15) if n < 47 else 0
        elif n == 15:
            v = t
        elif n > -15:
            lim = LIM >> (15 - n)
            v = (lim if t > lim else (-lim if t < -lim else t)) << (15 - n)
        else:
            v = LIM if t > 0 else (-LIM if t < 0 else 0)
        v += BETA[j]
        OUT[j] = LIM if v > LIM else (-LIM if v < -LIM else v)


def dot_a16x8(A, X, d, ps):
    # kernels_py.dot_a16x8: A = 256 hi + lo, hi = A >> 8 in -128..127, lo = A & 255 in
    # 0..255; sum hi x in chunks of 256 (<= 2**22), sum lo x in chunks of 128 (<= 255 * 128
    # * 128 < 2**22), combined in Python ints
    if d < MIN_D:
        return _py.dot_a16x8(A, X, d, ps)
    a = np.frombuffer(A, dtype=np.int16, count=d)
    x = np.frombuffer(X, dtype=np.int8, count=d)
    hi = np.right_shift(a, 8)
    lo = np.bitwise_and(a, 255)
    acc = 0
    for k0 in range(0, d, 512):
        k1 = k0 + 512 if k0 + 512 < d else d
        h = 0
        for k in range(k0, k1, 256):
            h += int(np.dot(hi[k:k + 256 if k + 256 < k1 else k1],
                            x[k:k + 256 if k + 256 < k1 else k1]))
        c = h << 8
        for k in range(k0, k1, 128):
            c += int(np.dot(lo[k:k + 128 if k + 128 < k1 else k1],
                            x[k:k + 128 if k + 128 < k1 else k1]))
        if ps > 0:
            c = (c + (1 << (ps - 1))) >> ps
        acc += c
    return acc


def adapter_u(A, X, d, ps, sh):
    acc = dot_a16x8(A, X, d, ps)
    if sh > 0:
        acc = ((acc >> (sh - 1)) + 1) >> 1
    elif sh < 0:
        acc = (32767 if acc > 32767 else (-32767 if acc < -32767 else acc)) << (-sh)
    return 32767 if acc > 32767 else (-32767 if acc < -32767 else acc)


def upd_a(A32, A16, X, e, d, sh, refresh, sx):
    # kernels_py.upd_a for sh 8..32 and |e| <= E_MAX, with no master saturating; the step
    # p = round(e x / 2**sh) from e = 256 e1 + e0 (0 <= e0 < 256):
    #   n = e1 x + floor((e0 x + [sh == 8] 128) / 256),  p = floor((n + 2**(k-1)) / 2**k),
    # k = sh - 8 (p = n at k = 0), every step an integer below 2**24; the master
    # A32 = 65536 H + L (L = low uint16 half, H = high int16 half) minus p as
    # t = L - p, H' = H + floor(t / 65536), L' = t mod 65536
    if e == 0 and not refresh:
        return
    if d < MIN_D or sh < 8 or sh > 32 or e > E_MAX or e < -E_MAX:
        return _py.upd_a(A32, A16, X, e, d, sh, refresh, sx)
    xf = np.frombuffer(X, dtype=np.int8, count=d) * 1.0
    k = sh - 8
    if k:
        n = np.floor(xf * (e & 255) * INV256) + xf * (e >> 8) + (1 << (k - 1))
        p = np.floor(n * INV[k])
    else:
        p = np.floor((xf * (e & 255) + 128) * INV256) + xf * (e >> 8)
    lo = np.frombuffer(A32, dtype=np.uint16, count=2 * d)[0::2]
    hi = np.frombuffer(A32, dtype=np.int16, count=2 * d)[1::2]
    t = lo - p
    q = np.floor(t * INV16)
    h = hi + q
    if np.max(h) >= 16384 or np.min(h) <= -16384:  # a master may saturate: the exact loop
        return _py.upd_a(A32, A16, X, e, d, sh, refresh, sx)
    t = t - q * 65536
    lo[:] = t
    hi[:] = h
    if refresh:
        np.frombuffer(A16, dtype=np.int16, count=d)[:] = h + np.floor((t + 32768) * INV16)

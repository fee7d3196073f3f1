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
# The master update upd_a_rows uses no float at all: int16/uint16 arithmetic on the halves of
# each int32 master, viewed in place, on all the rank rows of an adapter per call (a per-row
# float version was no faster than Python and its float temporaries ran out of a trained
# 192 KiB heap; docs/device.md, "ulab kernels").
#
# The other kernels are kernels_py.py's own functions, exact by definition: the C x r loops
# and the per-channel requantization are too short to gain from a dozen ulab calls, and the
# float32-bit kernels (save, calibration) have no ulab form. A row (or block) shorter than
# MIN_D also runs the Python loop.
# ulab's operations return new arrays: every ulab step below allocates its result (at most
# 512 int16, or one float per row of a weight block); none is kept.
from ulab import numpy as np

from . import kernels_py as _py

NAME = "ulab"
LIM = 0x3FFFFFFF
MIN_D = 128   # shorter rows: the Python loop beats a dozen ulab calls (measured, docs)

requant8 = _py.requant8
logits_bu = _py.logits_bu
bg = _py.bg
upd_b = _py.upd_b
softmax = _py.softmax
row_table = _py.row_table
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


def adapter_u_rows(A16, X, d, ps, sh, U, r):
    # kernels_py.adapter_u_rows with each block's rows as one int16 matrix, read as bytes in
    # place: A = 256 hi + lo, hi the signed high byte, lo the unsigned low byte (strided
    # views, no operation). The Trainer's copies are within +-16384, so |hi| <= 64: a
    # 512-long dot of hi x sums at most 64 * 128 * 512 = 2**22. lo (0..255) meets x split
    # as 16 xh + xl (xh = x >> 4 in -8..7, xl = x & 15): 512-long dots of at most 255 * 8 *
    # 512 and 255 * 15 * 512 < 2**22. Three matrix x vector dots per 512 columns; a longer
    # row goes by 512-long chunks with kernels_py's pre-shift ps. A block of fewer than MIN_D
    # values runs kernels_py's loop.
    x = xh = xl = None
    q = 0
    for blk in A16:
        n = len(blk) // d
        if n * d < MIN_D:
            for b in range(0, n * d, d):
                U[q] = _py.adapter_u(memoryview(blk)[b:b + d], X, d, ps, sh)
                q += 1
            continue
        if x is None:
            x = np.frombuffer(X, dtype=np.int8, count=d)
            xh = np.right_shift(x, 4)
            xl = x & 15
        hi = np.frombuffer(blk, dtype=np.int8).reshape((n, 2 * d))[:, 1::2]
        lo = np.frombuffer(blk, dtype=np.uint8).reshape((n, 2 * d))[:, 0::2]
        for j in range(n):
            acc = 0
            for k0 in range(0, d, 512):
                k1 = k0 + 512 if k0 + 512 < d else d
                if n > 1 and d <= 512:  # the whole block in three matrix x vector dots
                    if j == 0:
                        s0 = np.dot(hi, x).tolist()
                        s1 = np.dot(lo, xh).tolist()
                        s2 = np.dot(lo, xl).tolist()
                    c = (int(s0[j]) << 8) + (int(s1[j]) << 4) + int(s2[j])
                else:
                    h, l = hi[j, k0:k1], lo[j, k0:k1]
                    c = ((int(np.dot(h, x[k0:k1])) << 8) + (int(np.dot(l, xh[k0:k1])) << 4)
                         + int(np.dot(l, xl[k0:k1])))
                if ps > 0:
                    c = (c + (1 << (ps - 1))) >> ps
                acc += c
            U[q] = _py.u_of_dot(acc, sh)
            q += 1


def _col(vals, n):
    """An (n, 1) int16 column of per-row values, broadcast along each row."""
    return np.array(vals, dtype=np.int16).reshape((n, 1))


def upd_a_rows(A32, A16, X, E, d, sh, refresh, r, sx):
    # kernels_py.upd_a_rows on each block's rows as matrices of int16 halves of the masters,
    # viewed in place (A32 = 65536 H + L, H the signed high half, L the unsigned low half),
    # with int16 arithmetic only (exact, no float; docs/device.md, "ulab kernels"):
    #   row step D = round(e x / 2**sh) = q x + F(x): q = e >> sh, F = floor((rm x +
    #   2**(sh-1)) / 2**sh) with rm = e - q 2**sh < 2**sh, so F is in -128..127 (sh <= 0:
    #   q = e << -sh, F = 0, if no product reaches the pre-saturation bound);
    #   F from the base-256 digits of rm / 2**sh, lowest first: G = (x dig + G) >> 8;
    #   q x = 65536 (x q2) + 256 (x q1) + (x q0) with q's bytes q0, q1 (0..255) and q2
    #   (|q| < 2**23 so |x q2| <= 2**14): each product within int16;
    #   D's low half Dl = (x q1 << 8) + (x q0 + F) mod 2**16 and high half
    #   Dh = x q2 + (x q1 >> 8) + carry; then L -= Dl with its borrow, H -= Dh + borrow.
    # A master can only leave +-LIM where H leaves -16383..16383: then the block is clamped
    # in Python. The copies A16 = (A32 + 2**15) >> 16 = H + (L >= 2**15). A row outside
    # these conditions (a step past the pre-saturation bound) runs kernels_py's upd_a.
    x = None
    q = 0
    for i in range(len(A32)):
        blk, b16 = A32[i], A16[i]
        n = len(blk) // d
        qs, fr = [], []
        anyf = anye = False
        ok = n * d >= MIN_D
        for j in range(n):
            e = E[q + j]
            if e:
                anye = True
            if sh > 0:
                t = e >> sh
                rm = e - (t << sh)
                if rm:
                    anyf = True
            else:
                if (e if e > 0 else -e) * 128 > LIM >> -sh:
                    ok = False
                t = e << -sh
                rm = 0
            if t >= 8388608 or t < -8388608:
                ok = False
            qs.append(t)
            fr.append(rm)
        if not ok:
            m32, m16 = memoryview(blk), memoryview(b16)
            for b in range(0, n * d, d):
                _py.upd_a(m32[b:b + d], m16[b:b + d], X, E[q], d, sh, refresh, sx)
                q += 1
            continue
        q += n
        if not anye and not refresh:
            continue
        w16 = np.frombuffer(blk, dtype=np.int16).reshape((n, 2 * d))
        H = w16[:, 1::2]
        if anye:
            if x is None:
                x = np.frombuffer(X, dtype=np.int8, count=d)
            P0 = x * _col([t & 255 for t in qs], n)
            if anyf:  # F, digit by digit from the lowest; the last adds the rounding half
                k = (sh + 7) >> 3
                F = None
                for m in range(k):
                    T = x * _col([((rm << (8 * k - sh)) >> (8 * m)) & 255 for rm in fr], n)
                    if F is not None:
                        T += F
                    if m == k - 1:
                        T += 128
                    F = np.right_shift(T, 8)
                P0 += F
            P1 = x * _col([(t >> 8) & 255 for t in qs], n)
            P2 = x * _col([t >> 16 for t in qs], n)
            Dl = np.left_shift(P1, 8)
            Dl += P0
            Dlu = np.frombuffer(Dl, dtype=np.uint16).reshape((n, d))
            # Dh = x q2 + (x q1 >> 8) + carry of (x q1 & 255) 256 + P0 into the high half:
            # 1 where Dl wrapped below P0's unsigned value, -1 for a negative P0
            P2 += np.right_shift(P1, 8)
            P2 += Dlu < np.frombuffer(P0, dtype=np.uint16).reshape((n, d))
            P2 += np.right_shift(P0, 15)
            Lu = np.frombuffer(blk, dtype=np.uint16).reshape((n, 2 * d))[:, 0::2]
            bw = Lu < Dlu
            Lu -= Dlu
            H -= P2
            H -= bw
            if np.max(H) > 16383 or np.min(H) < -16383:
                for k in range(n * d):  # |A32 - D| < 2**31: the int32 read is the true value
                    v = blk[k]
                    if v > LIM:
                        blk[k] = LIM
                    elif v < -LIM:
                        blk[k] = -LIM
        if refresh:
            a16 = np.frombuffer(b16, dtype=np.int16).reshape((n, d))
            a16[:] = H
            a16 -= np.right_shift(w16[:, 0::2], 15)

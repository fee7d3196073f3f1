# Pure-Python twins of kernels_viper.py: the same integers, for firmware without viper
# (CircuitPython) and as the readable statement of what each kernel computes. Buffers are
# typed arrays ('b' int8, 'h' int16, 'i' int32) so indexing gives signed values.
from struct import pack_into, unpack_from  # here, not in the kernels: an import inside a
# function searches the filesystem on every call (garbage in the training loop on a board)
from .qmath import EXP2_Q14

NAME = "py"
LIM = 0x3FFFFFFF


def _sat(v):
    return LIM if v > LIM else (-LIM if v < -LIM else v)


def dense_q16(W, X, d_in, j0, nr, M, N, BETA, OUT, sx):
    row = 0
    xs = range(d_in)
    for j in range(j0, j0 + nr):
        acc = 0
        for k in xs:
            acc += W[row + k] * X[k]
        OUT[j] = q16_out(acc, M[j], N[j], BETA[j])
        row += d_in


def q16_out(acc, m, n, beta):
    """One dense_q16 output from its row sum: acc * m / 2**n + beta, saturated (shared with
    kernels_ulab, whose row sums come from ulab)."""
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
    return _sat(v + beta)


def requant8(V, d, m, n, relu, OUT, sx):
    best = 0 if relu else -LIM
    lo_q = 0 if relu else -127
    for j in range(d):
        v = V[j]
        if v > best:
            best = v
        t = (v >> 15) * m + (((v & 0x7FFF) * m + 16384) >> 15)
        q = (t + (1 << (n - 16))) >> (n - 15)
        OUT[j] = 127 if q > 127 else (lo_q if q < lo_q else q)
    return best


def adapter_u(A, X, d, ps, sh):
    return u_of_dot(dot_a16x8(A, X, d, ps), sh)


def u_of_dot(acc, sh):
    """adapter_u's int16 u from the row's dot (shared with kernels_ulab)."""
    if sh > 0:
        acc = ((acc >> (sh - 1)) + 1) >> 1
    elif sh < 0:
        acc = max(-32767, min(32767, acc)) << (-sh)
    return max(-32767, min(32767, acc))


def logits_bu(B, U, C, r, Y, sx):
    base = 0
    for c in range(C):
        y = Y[c]
        for j in range(r):
            y = _sat(y + ((B[base + j] * U[j] + 4) >> 3))
        Y[c] = y
        base += r


def bg(B, G, C, r, m, t, E):
    for j in range(r):
        s = 0
        for c in range(C):
            s += B[c * r + j] * G[c]
        v = (s >> 15) * m + (((s & 0x7FFF) * m + 16384) >> 15)
        E[j] = (v + (1 << (t - 1))) >> t


def upd_b(B32, B16, G, U, C, r, sh, refresh, sx):
    i = 0
    for c in range(C):
        g = G[c]
        for j in range(r):
            p = g * U[j]
            if sh > 0:
                p = (p + (1 << (sh - 1))) >> sh
            elif sh < 0:
                lim = LIM >> (-sh)
                p = (lim if p > lim else (-lim if p < -lim else p)) << (-sh)
            v = _sat(B32[i] - p)
            B32[i] = v
            if refresh:
                B16[i] = (v + 32768) >> 16
            i += 1


def upd_a(A32, A16, X, e, d, sh, refresh, sx):
    if e == 0 and not refresh:
        return
    if sh > 30:
        s1 = sh - 1
        for k in range(d):
            v = A32[k] - (((e * X[k]) >> s1) + 1 >> 1)
            v = LIM if v > LIM else (-LIM if v < -LIM else v)
            A32[k] = v
            if refresh:
                A16[k] = (v + 32768) >> 16
    elif sh > 0:
        half = 1 << (sh - 1)
        for k in range(d):
            v = A32[k] - ((e * X[k] + half) >> sh)
            v = LIM if v > LIM else (-LIM if v < -LIM else v)
            A32[k] = v
            if refresh:
                A16[k] = (v + 32768) >> 16
    else:
        lim = LIM >> (-sh)
        for k in range(d):
            p = e * X[k]
            p = (lim if p > lim else (-lim if p < -lim else p)) << (-sh)
            v = A32[k] - p
            v = LIM if v > LIM else (-LIM if v < -LIM else v)
            A32[k] = v
            if refresh:
                A16[k] = (v + 32768) >> 16


def row_table(blocks, d, size):
    """The form the row kernels take an adapter's blocks of whole rows in (made once, outside
    the training loop): here the blocks themselves; kernels_thumb's is the rows' addresses."""
    return blocks


def adapter_u_rows(A16, X, d, ps, sh, U, r):
    """U[q] = adapter_u of every rank row of an adapter in one call. A16 is a list of blocks,
    each holding whole rows of d values (a block per row, or all r rows of a short row in one
    buffer, fixedpath.FixedPath), rows in order."""
    q = 0
    for blk in A16:
        if len(blk) == d:
            U[q] = adapter_u(blk, X, d, ps, sh)
            q += 1
        else:
            mv = memoryview(blk)
            for b in range(0, len(blk), d):
                U[q] = adapter_u(mv[b:b + d], X, d, ps, sh)
                q += 1


def upd_a_rows(A32, A16, X, E, d, sh, refresh, r, sx):
    """upd_a of every rank row of an adapter in one call, row q with the step E[q]; A32 and
    A16 are lists of blocks of whole rows as in adapter_u_rows."""
    q = 0
    for i in range(len(A32)):
        blk, b16 = A32[i], A16[i]
        if len(blk) == d:
            upd_a(blk, b16, X, E[q], d, sh, refresh, sx)
            q += 1
        else:
            m32, m16 = memoryview(blk), memoryview(b16)
            for b in range(0, len(blk), d):
                upd_a(m32[b:b + d], m16[b:b + d], X, E[q], d, sh, refresh, sx)
                q += 1


def softmax(Z, Y32, YQ, E14, C, m, sh, lab, F, G16, GE16, sx):
    """The Trainer's integer softmax (docs/device.md, "Integer softmax"): logits y = z +
    round(y32 * m / 2**(15 + sh)) in Q16 (Z the frozen logits, Y32 = sum B u in Q20, m the Q15
    mantissa of s = alpha / r), saturated; p = exp(y - max y) / sum in Q15 through EXP2_Q14;
    then, when F (eta's Q15 mantissa) is not 0, g = p - onehot(lab) as G16 (Q1.14) and
    g * F as GE16 (Q1.14). E14 has C + 2 entries: E14[C] receives the sum of exp (Q14) and
    E14[C + 1] max y - y[lab], what the printed loss needs. Returns the predicted class."""
    best = 0
    for c in range(C):
        y = Y32[c]
        t = (y >> 15) * m + (((y & 0x7FFF) * m + 16384) >> 15)
        if sh > 0:
            t = ((t >> (sh - 1)) + 1) >> 1
        elif sh < 0:
            lim = LIM >> -sh
            t = (lim if t > lim else (-lim if t < -lim else t)) << -sh
        y = _sat(Z[c] + t)
        YQ[c] = y
        if y > YQ[best]:
            best = c
    ymax = YQ[best]
    tot = 0
    for c in range(C):
        d = ymax - YQ[c]  # exp(-d / 2**16) = 2**(-w / 2**16), w = d * log2(e)
        v = 0
        if d < 720896:  # below exp(-11) the Q14 value rounds to 0
            w = (d >> 15) * 47274 + (((d & 0x7FFF) * 23637 + 8192) >> 14)
            ip = w >> 16
            if ip < 15:
                fr = w & 0xFFFF
                k = fr >> 10
                t0 = EXP2_Q14[k]
                v = t0 - (((t0 - EXP2_Q14[k + 1]) * (fr & 0x3FF) + 512) >> 10)
                if ip:
                    v = (v + (1 << (ip - 1))) >> ip
        E14[c] = v
        tot += v
    E14[C] = tot
    E14[C + 1] = ymax - YQ[lab]
    if F:
        half = tot >> 1
        for c in range(C):
            g = (E14[c] * 32768 + half) // tot
            if c == lab:
                g -= 32768
            G16[c] = (g + 1) >> 1
            GE16[c] = (g * F + 32768) >> 16
    return best


def to_f32(SRC, n, R, sh, OUT, sx):
    rh, rl = R >> 15, R & 0x7FFF
    for i in range(n):
        v = SRC[i]
        s = 0
        if v < 0:
            s, v = 1, -v
        if v == 0:
            pack_into("<I", OUT, 4 * i, 0)
            continue
        b = 0
        while v < 0x20000000:
            v <<= 1
            b += 1
        vh = v >> 15
        p = vh * rh + ((vh * rl) >> 15) + (((v & 0x7FFF) * rh) >> 15)
        t = 29 if p >= 0x20000000 else 28
        mant = (p + (1 << (t - 24))) >> (t - 23)
        if mant >= 0x1000000:
            mant >>= 1
            t += 1
        e = t + 157 - b - sh
        pack_into("<I", OUT, 4 * i, (s << 31) | (e << 23) | (mant & 0x7FFFFF) if e > 0 else 0)


def absmax_f32(SRC, d):
    best = 0
    for k in range(d):
        v = unpack_from("<I", SRC, 4 * k)[0] & 0x7FFFFFFF
        if v > best:
            best = v
    return best


def quant_f32(SRC, d, M, n, OUT):
    for k in range(d):
        v = unpack_from("<I", SRC, 4 * k)[0]
        ex = (v >> 23) & 0xFF
        m = v & 0x7FFFFF
        if ex:
            m |= 0x800000
        else:
            ex = 1
            if m:
                while m < 0x800000:
                    m <<= 1
                    ex -= 1
        p = (m >> 9) * M
        sh = 141 + n - ex
        if p == 0 or sh > 31:
            q = 0
        elif sh <= 0:
            q = 127
        else:
            q = min(127, (p + (1 << (sh - 1))) >> sh)
        OUT[k] = -q if v >> 31 else q


def dot_a16x8(A, X, d, ps):
    acc = 0
    for k0 in range(0, d, 512):
        c = 0
        for k in range(k0, min(k0 + 512, d)):
            c += A[k] * X[k]
        if ps > 0:
            c = (c + (1 << (ps - 1))) >> ps
        acc += c
    return acc

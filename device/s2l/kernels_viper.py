# Fixed-point kernels compiled to machine code by MicroPython's viper emitter.
#
# Imported by kernels.py inside try/except (SyntaxError, ImportError): on firmware without
# viper (CircuitPython) this module fails to compile and kernels_py.py is used instead.
# Every kernel has a twin in kernels_py.py that gives the same integers; the formats and the
# int32 bounds of every intermediate are in docs/device.md and checked by
# tests/device/test_device_int32_bounds.py.
#
# Viper facts relied on (measured in ../shared/PLATFORMS.md beside the checkout, outside this
# repository; restated in docs/device.md, "Bounds"): ptr8/ptr16 loads are unsigned, so
# int8/int16 are sign-extended with (v ^ 0x80) - 0x80; ptr32 loads are unsigned on the 64-bit
# unix port and signed on 32-bit boards, so int32 loads go through (v << sx) >> sx with sx = 32
# on 64-bit and 0 on 32-bit (passed in by kernels.py). Every literal fits a 31-bit small int.
import micropython
from .qmath import EXP2_Q14

NAME = "viper"


@micropython.viper
def dense_q16(W: ptr8, X: ptr8, d_in: int, j0: int, nr: int, M, N, BETA, OUT, sx: int):
    # rows j0..j0+nr-1 of one weight block (W holds only those rows):
    # OUT[j] = sat30(mulshift(sum_k W[j,k] X[k], M[j], N[j]) + BETA[j]); W, X int8. The sums
    # go into OUT (|sum| < 2**31, docs/device.md), then finish_q16 turns them into outputs.
    O = ptr32(OUT)
    j = j0
    row = 0
    j1 = j0 + nr
    while j < j1:
        acc = 0
        k = 0
        while k < d_in:
            w = W[row + k]
            x = X[k]
            acc += ((w ^ 0x80) - 0x80) * ((x ^ 0x80) - 0x80)
            k += 1
        O[j] = acc
        j += 1
        row += d_in
    finish_q16(OUT, j0, nr, M, N, BETA, sx)


@micropython.viper
def finish_q16(OUT: ptr32, j0: int, nr: int, M: ptr32, N: ptr8, BETA: ptr32, sx: int):
    # dense_q16's output step, shared with kernels_thumb.dense_q16: OUT[j] holds row j's int32
    # sum; OUT[j] = sat30(mulshift(sum, M[j], N[j]) + BETA[j]) for j in j0..j0+nr-1
    j = j0
    j1 = j0 + nr
    while j < j1:
        acc = OUT[j]
        acc = (acc << sx) >> sx
        m = M[j]
        m = (m << sx) >> sx
        n = int(N[j])
        n = (n ^ 0x80) - 0x80  # N is int8: every value it holds gives the exact result
        hi = acc >> 15
        lo = acc & 0x7FFF
        t = hi * m + ((lo * m + 16384) >> 15)
        if n > 15:
            if n < 47:
                v = (t + (1 << (n - 16))) >> (n - 15)
            else:  # a shift of 32 or more rounds any int32 t to 0 (and 1 << 31 would wrap)
                v = 0
        elif n == 15:
            v = t
        elif n > -15:
            lim = 0x3FFFFFFF >> (15 - n)
            if t > lim:
                t = lim
            elif t < 0 - lim:
                t = 0 - lim
            v = t << (15 - n)
        else:  # t * 2**30 or more: saturated unless t is 0 (LIM >> 30 would be 0)
            v = 0
            if t > 0:
                v = 0x3FFFFFFF
            elif t < 0:
                v = -0x3FFFFFFF
        b = BETA[j]
        b = (b << sx) >> sx
        v += b
        if v > 0x3FFFFFFF:
            v = 0x3FFFFFFF
        elif v < -0x3FFFFFFF:
            v = -0x3FFFFFFF
        OUT[j] = v
        j += 1


@micropython.viper
def requant8(V: ptr32, d: int, m: int, n: int, relu: int, OUT: ptr8, sx: int) -> int:
    # OUT[j] = clamp(round(V[j] * m / 2**n)); returns max(V) (0 if relu and all negative)
    best = 0 - 0x3FFFFFFF
    if relu:
        best = 0
    j = 0
    while j < d:
        v = V[j]
        v = (v << sx) >> sx
        if v > best:
            best = v
        hi = v >> 15
        lo = v & 0x7FFF
        t = hi * m + ((lo * m + 16384) >> 15)
        q = (t + (1 << (n - 16))) >> (n - 15)
        if q > 127:
            q = 127
        if relu:
            if q < 0:
                q = 0
        elif q < -127:
            q = -127
        OUT[j] = q
        j += 1
    return best


@micropython.viper
def adapter_u(A: ptr16, X: ptr8, d: int, ps: int, sh: int) -> int:
    # one row of A: sat16(round((sum_k A[k] X[k], chunks of 512 pre-shifted by ps) / 2**sh))
    acc = 0
    k0 = 0
    while k0 < d:
        k1 = k0 + 512
        if k1 > d:
            k1 = d
        c = 0
        k = k0
        while k < k1:
            a = A[k]
            x = X[k]
            c += ((a ^ 0x8000) - 0x8000) * ((x ^ 0x80) - 0x80)
            k += 1
        if ps > 0:
            c = (c + (1 << (ps - 1))) >> ps
        acc += c
        k0 = k1
    if sh > 0:  # round half up without acc + 2**(sh-1), which passes 2**31 at sh = 31
        acc = ((acc >> (sh - 1)) + 1) >> 1
    elif sh < 0:
        if acc > 32767:
            acc = 32767
        elif acc < -32767:
            acc = -32767
        acc = acc << (0 - sh)
    if acc > 32767:
        acc = 32767
    elif acc < -32767:
        acc = -32767
    return acc


@micropython.viper
def logits_bu(B: ptr16, U: ptr16, C: int, r: int, Y: ptr32, sx: int):
    # Y[c] = sat30(Y[c] + sum_j round(B[c,j] U[j] / 8))
    c = 0
    base = 0
    while c < C:
        y = Y[c]
        y = (y << sx) >> sx
        j = 0
        while j < r:
            b = B[base + j]
            u = U[j]
            y += (((b ^ 0x8000) - 0x8000) * ((u ^ 0x8000) - 0x8000) + 4) >> 3
            if y > 0x3FFFFFFF:
                y = 0x3FFFFFFF
            elif y < -0x3FFFFFFF:
                y = -0x3FFFFFFF
            j += 1
        Y[c] = y
        c += 1
        base += r


@micropython.viper
def bg(B: ptr16, G: ptr16, C: int, r: int, m: int, t: int, E: ptr32):
    # E[j] = round(sum_c B[c,j] G[c] * m / 2**(15 + t))
    j = 0
    while j < r:
        s = 0
        c = 0
        while c < C:
            b = B[c * r + j]
            g = G[c]
            s += ((b ^ 0x8000) - 0x8000) * ((g ^ 0x8000) - 0x8000)
            c += 1
        hi = s >> 15
        lo = s & 0x7FFF
        v = hi * m + ((lo * m + 16384) >> 15)
        E[j] = (v + (1 << (t - 1))) >> t
        j += 1


@micropython.viper
def upd_b(B32: ptr32, B16: ptr16, G: ptr16, U: ptr16, C: int, r: int, sh: int, refresh: int,
          sx: int):
    # B32[c,j] = sat30(B32 - round(G[c] U[j] / 2**sh)); if refresh: B16 = round(B32 / 2**16)
    c = 0
    i = 0
    while c < C:
        g = G[c]
        g = (g ^ 0x8000) - 0x8000
        j = 0
        while j < r:
            u = U[j]
            p = g * ((u ^ 0x8000) - 0x8000)
            if sh > 0:
                p = (p + (1 << (sh - 1))) >> sh
            elif sh < 0:
                lim = 0x3FFFFFFF >> (0 - sh)
                if p > lim:
                    p = lim
                elif p < 0 - lim:
                    p = 0 - lim
                p = p << (0 - sh)
            v = B32[i]
            v = ((v << sx) >> sx) - p
            if v > 0x3FFFFFFF:
                v = 0x3FFFFFFF
            elif v < -0x3FFFFFFF:
                v = -0x3FFFFFFF
            B32[i] = v
            if refresh:
                B16[i] = (v + 32768) >> 16
            i += 1
            j += 1
        c += 1


@micropython.viper
def upd_a(A32: ptr32, A16: ptr16, X: ptr8, e: int, d: int, sh: int, refresh: int, sx: int):
    # one row: A32[k] = sat30(A32[k] - round(e X[k] / 2**sh)); if refresh: A16 = round(A32 / 2**16)
    if e == 0 and refresh == 0:
        return
    k = 0
    if sh > 30:
        # sh 31, 32 (the Trainer's largest): e x + 2**(sh-1) could pass 2**31, so round
        # as ((e x >> (sh-1)) + 1) >> 1, the same integer; kept out of the common loop
        s1 = sh - 1
        while k < d:
            x = X[k]
            p = (((e * ((x ^ 0x80) - 0x80)) >> s1) + 1) >> 1
            v = A32[k]
            v = ((v << sx) >> sx) - p
            if v > 0x3FFFFFFF:
                v = 0x3FFFFFFF
            elif v < -0x3FFFFFFF:
                v = -0x3FFFFFFF
            A32[k] = v
            if refresh:
                A16[k] = (v + 32768) >> 16
            k += 1
    elif sh > 0:
        half = 1 << (sh - 1)
        while k < d:
            x = X[k]
            p = (e * ((x ^ 0x80) - 0x80) + half) >> sh
            v = A32[k]
            v = ((v << sx) >> sx) - p
            if v > 0x3FFFFFFF:
                v = 0x3FFFFFFF
            elif v < -0x3FFFFFFF:
                v = -0x3FFFFFFF
            A32[k] = v
            if refresh:
                A16[k] = (v + 32768) >> 16
            k += 1
    else:
        lim = 0x3FFFFFFF >> (0 - sh)
        while k < d:
            x = X[k]
            p = e * ((x ^ 0x80) - 0x80)
            if p > lim:
                p = lim
            elif p < 0 - lim:
                p = 0 - lim
            p = p << (0 - sh)
            v = A32[k]
            v = ((v << sx) >> sx) - p
            if v > 0x3FFFFFFF:
                v = 0x3FFFFFFF
            elif v < -0x3FFFFFFF:
                v = -0x3FFFFFFF
            A32[k] = v
            if refresh:
                A16[k] = (v + 32768) >> 16
            k += 1


@micropython.viper
def softmax(Z: ptr32, Y32: ptr32, YQ: ptr32, E14: ptr32, C: int, m: int, sh: int, lab: int,
            F: int, G16: ptr16, GE16: ptr16, sx: int) -> int:
    # kernels_py.softmax: y = sat30(z + round(y32 m / 2**(15 + sh))), exp through EXP2_Q14,
    # g = p - onehot and g F; sh in -30..32 (clamped where it is set: the same integers)
    EXP = ptr16(EXP2_Q14)
    best = 0
    ybest = 0
    c = 0
    while c < C:
        y = (Y32[c] << sx) >> sx
        t = (y >> 15) * m + (((y & 0x7FFF) * m + 16384) >> 15)
        if sh > 0:
            t = ((t >> (sh - 1)) + 1) >> 1
        elif sh < 0:
            lim = 0x3FFFFFFF >> (0 - sh)
            if t > lim:
                t = lim
            elif t < 0 - lim:
                t = 0 - lim
            t = t << (0 - sh)
        y = ((Z[c] << sx) >> sx) + t
        if y > 0x3FFFFFFF:
            y = 0x3FFFFFFF
        elif y < -0x3FFFFFFF:
            y = -0x3FFFFFFF
        YQ[c] = y
        if c == 0 or y > ybest:
            best = c
            ybest = y
        c += 1
    tot = 0
    c = 0
    while c < C:
        d = ybest - ((YQ[c] << sx) >> sx)
        v = 0
        if d < 720896:
            w = (d >> 15) * 47274 + (((d & 0x7FFF) * 23637 + 8192) >> 14)
            ip = w >> 16
            if ip < 15:
                fr = w & 0xFFFF
                k = fr >> 10
                t0 = EXP[k]
                v = t0 - (((t0 - EXP[k + 1]) * (fr & 0x3FF) + 512) >> 10)
                if ip:
                    v = (v + (1 << (ip - 1))) >> ip
        E14[c] = v
        tot += v
        c += 1
    E14[C] = tot
    E14[C + 1] = ybest - ((YQ[lab] << sx) >> sx)
    if F:
        half = tot >> 1
        c = 0
        while c < C:
            g = (E14[c] * 32768 + half) // tot
            if c == lab:
                g -= 32768
            G16[c] = (g + 1) >> 1
            GE16[c] = (g * F + 32768) >> 16
            c += 1
    return best


@micropython.viper
def to_f32(SRC: ptr32, n: int, R: int, sh: int, OUT: ptr32, sx: int):
    # OUT[i] = float32 bits of SRC[i] * R / 2**sh (R in [2**29, 2**30), |SRC[i]| < 2**30),
    # built from integers alone: normalise to 30 bits, multiply in 15-bit halves, round the
    # top 24 bits half up; results below the normal range flush to 0
    i = 0
    rh = R >> 15
    rl = R & 0x7FFF
    while i < n:
        v = SRC[i]
        v = (v << sx) >> sx
        s = 0
        if v < 0:
            s = 1
            v = 0 - v
        if v == 0:
            OUT[i] = 0
        else:
            b = 0
            while v < 0x20000000:
                v = v << 1
                b += 1
            vh = v >> 15
            p = vh * rh + ((vh * rl) >> 15) + (((v & 0x7FFF) * rh) >> 15)
            t = 28
            if p >= 0x20000000:
                t = 29
            mant = (p + (1 << (t - 24))) >> (t - 23)
            if mant >= 0x1000000:
                mant = mant >> 1
                t += 1
            e = t + 157 - b - sh
            if e <= 0:
                OUT[i] = 0
            else:
                OUT[i] = (s << 31) | (e << 23) | (mant & 0x7FFFFF)
        i += 1


@micropython.viper
def absmax_f32(SRC: ptr32, d: int) -> int:
    # the largest |x| of d float32 values, as a bit pattern (the order of |x| is the order of
    # its bits with the sign cleared)
    mask = 0x3FFFFFFF
    mask = (mask << 1) | 1  # 0x7FFFFFFF, built at run time: as a literal it is a long int
    best = 0
    k = 0
    while k < d:
        v = SRC[k] & mask
        if v > best:
            best = v
        k += 1
    return best


@micropython.viper
def quant_f32(SRC: ptr32, d: int, M: int, n: int, OUT: ptr8):
    # OUT[k] = clamp127(round(x * M / 2**n)) for the float32 bits x = SRC[k], with the
    # mantissa cut to its top 15 bits so that the product stays below 2**30
    k = 0
    while k < d:
        v = SRC[k]
        ex = (v >> 23) & 0xFF
        m = v & 0x7FFFFF
        if ex:
            m = m | 0x800000
        else:  # a subnormal: normalised first, or its top 15 bits would be zeros
            ex = 1
            if m:
                while m < 0x800000:
                    m = m << 1
                    ex -= 1
        p = (m >> 9) * M
        sh = 141 + n - ex
        if p == 0 or sh > 31:
            q = 0
        elif sh <= 0:
            q = 127
        else:
            q = (p + (1 << (sh - 1))) >> sh
            if q > 127:
                q = 127
        if (v >> 31) & 1:
            q = 0 - q
        OUT[k] = q
        k += 1


@micropython.viper
def dot_a16x8(A: ptr16, X: ptr8, d: int, ps: int) -> int:
    # sum_k A[k] X[k] over chunks of 512, each rounded / 2**ps (adapter_u without its final
    # shift and saturation): |chunk| <= 512 * 32767 * 127 < 2**31, and with 2**ps >= the
    # chunk count the total stays below 2**31 too. adapter_u repeats this loop rather than
    # calling it: a viper call boxes its int result, a heap long on a board.
    acc = 0
    k0 = 0
    while k0 < d:
        k1 = k0 + 512
        if k1 > d:
            k1 = d
        c = 0
        k = k0
        while k < k1:
            a = A[k]
            x = X[k]
            c += ((a ^ 0x8000) - 0x8000) * ((x ^ 0x80) - 0x80)
            k += 1
        if ps > 0:
            c = (c + (1 << (ps - 1))) >> ps
        acc += c
        k0 = k1
    return acc


# Fixed-point kernels in Thumb machine code (@micropython.asm_thumb), for Cortex-M boards.
#
# Why: the viper dense loop costs ~54 instructions per multiply-add on armv6m (it loads,
# sign-extends and boxes nothing, but keeps every value in memory); the loop here keeps the
# row in registers and costs ~5.3 (measured in docs/BENCHMARKS.md, "Cortex-M"). Only the
# armv6m (Thumb-1) subset is used, so the same code runs on an RP2040's M0+ and on any
# M3/M4/M7/M33. The emitter has no register-offset LDRSB, so those two loads are emitted as
# data() halfwords (0x5600 | Rm << 6 | Rn << 3 | Rt); every load is a byte load (aligned).
#
# The same integers as kernels_viper.py / kernels_py.py: the dot products are exact int32 sums
# (|sum| <= d_in * 127 * 127 < 2**31 for d_in <= 4095), and each row's output step is the
# viper one, run over the block's rows in one call (this module needs viper as well; the
# firmware with asm_thumb has it). Kernels with no Thumb version are the viper ones. A firmware
# without the inline assembler (unix, ESP32, CircuitPython) fails to compile this module and
# kernels.py falls back to viper.
import micropython
from .kernels_viper import dense_q16 as _dense_viper
from .kernels_viper import (adapter_u, absmax_f32, bg, dot_a16x8, logits_bu, quant_f32,
                            requant8, to_f32, upd_a, upd_b)

NAME = "thumb"


@micropython.asm_thumb
@micropython.asm_thumb
def _dots(r0, r1, r2, r3):
    # r0 W (nr rows of d int8), r1 X (d int8), r2 OUT (int32), r3 = j0 | d/4 << 12 | nr << 23:
    # OUT[j0 + j] = sum_k W[j, k] X[k], d a multiple of 4. Indices run from -d up to 0 from
    # the rows' ends, so the last add of each group of four sets the loop's flags.
    mov(r4, r3)
    lsl(r4, r4, 20)
    lsr(r4, r4, 18)   # 4 * j0
    add(r2, r2, r4)
    mov(r4, r3)
    lsr(r4, r4, 23)   # nr
    mov(r12, r4)
    lsl(r3, r3, 9)
    lsr(r3, r3, 21)
    lsl(r3, r3, 2)    # d
    add(r1, r1, r3)
    label(row)
    add(r0, r0, r3)
    neg(r4, r3)
    mov(r5, 0)
    label(inner)
    data(2, 0x5706, 0x570F)
    mul(r6, r7)
    add(r5, r5, r6)
    add(r4, r4, 1)
    data(2, 0x5706, 0x570F)
    mul(r6, r7)
    add(r5, r5, r6)
    add(r4, r4, 1)
    data(2, 0x5706, 0x570F)
    mul(r6, r7)
    add(r5, r5, r6)
    add(r4, r4, 1)
    data(2, 0x5706, 0x570F)
    mul(r6, r7)
    add(r5, r5, r6)
    add(r4, r4, 1)
    bne(inner)
    str(r5, [r2, 0])
    add(r2, 4)
    mov(r4, r12)
    sub(r4, 1)
    mov(r12, r4)
    bne(row)


# j0, d_in / 4 and nr packed in one small int (12 + 11 + 7 bits): what _dots takes; a block
# outside these (rows of fewer than 16 values, or d_in not a multiple of 4) runs on viper
D_MAX, J_MAX, NR_MAX = 4096, 4095, 127


def dense_q16(W, X, d_in, j0, nr, M, N, BETA, OUT, sx):
    # rows j0..j0+nr-1 of one weight block (W holds only those rows): the sums in Thumb code,
    # then OUT[j] = sat30(mulshift(sum, M[j], N[j]) + BETA[j]) as kernels_viper.dense_q16
    if d_in & 3 or d_in > D_MAX or j0 > J_MAX or nr > NR_MAX or nr < 1 or d_in < 4:
        return _dense_viper(W, X, d_in, j0, nr, M, N, BETA, OUT, sx)
    _dots(W, X, OUT, j0 | (d_in << 10) | (nr << 23))
    _out_q16(OUT, j0, nr, M, N, BETA, sx)


@micropython.viper
def _out_q16(OUT: ptr32, j0: int, nr: int, M: ptr32, N: ptr8, BETA: ptr32, sx: int):
    # OUT[j] holds row j's int32 sum; replaced by kernels_viper.dense_q16's output step
    j = j0
    j1 = j0 + nr
    while j < j1:
        acc = OUT[j]
        acc = (acc << sx) >> sx
        m = M[j]
        m = (m << sx) >> sx
        n = int(N[j])
        n = (n ^ 0x80) - 0x80
        hi = acc >> 15
        lo = acc & 0x7FFF
        t = hi * m + ((lo * m + 16384) >> 15)
        if n > 15:
            if n < 47:
                v = (t + (1 << (n - 16))) >> (n - 15)
            else:
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
        else:
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

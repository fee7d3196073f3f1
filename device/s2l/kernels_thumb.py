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
from .kernels_viper import dense_q16 as _dense_viper, finish_q16
from .kernels_viper import (absmax_f32, bg, dot_a16x8, logits_bu, quant_f32, requant8,
                            to_f32, upd_b)

NAME = "thumb"


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


# dense_q16 packs j0, d_in / 4 and nr in one small int (12 + 11 + 7 bits) for _dots; a block
# outside these (rows of fewer than 16 values, or d_in not a multiple of 4) runs on viper.
# The kernels here are viper functions that call the Thumb code (one call from Python each).


@micropython.viper
def dense_q16(W, X, d_in: int, j0: int, nr: int, M, N, BETA, OUT, sx: int):
    # rows j0..j0+nr-1 of one weight block (W holds only those rows): the sums in Thumb code,
    # then kernels_viper.finish_q16: OUT[j] = sat30(mulshift(sum, M[j], N[j]) + BETA[j])
    if d_in & 3 or d_in > 4096 or d_in < 4 or j0 > 4095 or nr > 127 or nr < 1:
        _dense_viper(W, X, d_in, j0, nr, M, N, BETA, OUT, sx)
        return
    _dots(W, X, OUT, j0 | (d_in << 10) | (nr << 23))
    finish_q16(OUT, j0, nr, M, N, BETA, sx)


@micropython.asm_thumb
def _adapter_u(r0, r1, r2, r3):
    # r0 A (rows of d int16), r1 X (d int8), r2 d >= 1, r3 = ps | (sh + 16) << 4 | row << 10:
    # kernels_viper's adapter_u of A's row `row`. Chunks of 512: X and A advance to each
    # chunk's end, the index runs from -n.
    lsr(r4, r3, 10)
    mul(r4, r2)
    add(r0, r0, r4)
    add(r0, r0, r4)         # the row's start
    mov(r4, 0)              # the row's sum
    label(chunk)
    mov(r6, 1)
    lsl(r6, r6, 9)          # 512
    cmp(r2, r6)
    bge(full)
    mov(r6, r2)
    label(full)
    sub(r2, r2, r6)         # what is left after this chunk
    mov(r12, r2)
    add(r1, r1, r6)
    add(r0, r0, r6)
    add(r0, r0, r6)
    neg(r6, r6)
    mov(r5, 0)              # the chunk's sum
    label(inner)
    lsl(r7, r6, 1)
    data(2, 0x5FC7)         # ldrsh r7, [r0, r7]
    data(2, 0x578A)         # ldrsb r2, [r1, r6]
    mul(r7, r2)
    add(r5, r5, r7)
    add(r6, r6, 1)
    bne(inner)
    mov(r2, r12)
    lsl(r7, r3, 28)
    lsr(r7, r7, 28)         # ps
    beq(noshift)
    sub(r7, 1)              # round half up: ((c >> (ps - 1)) + 1) >> 1
    asr(r5, r7)
    add(r5, 1)
    asr(r5, r5, 1)
    label(noshift)
    add(r4, r4, r5)
    cmp(r2, 0)
    bgt(chunk)
    mov(r6, 0x7F)
    lsl(r6, r6, 8)
    add(r6, 0xFF)           # 32767
    lsl(r7, r3, 22)
    lsr(r7, r7, 26)
    sub(r7, 16)             # sh
    ble(notpos)
    sub(r7, 1)              # ((acc >> (sh - 1)) + 1) >> 1 (a shift of 32 or more fills signs)
    asr(r4, r7)
    add(r4, 1)
    asr(r4, r4, 1)
    b(clamp)
    label(notpos)
    beq(clamp)
    cmp(r4, r6)             # sh < 0: saturate, then shift left
    ble(lo1)
    mov(r4, r6)
    label(lo1)
    neg(r5, r6)
    cmp(r4, r5)
    bge(hi1)
    mov(r4, r5)
    label(hi1)
    neg(r7, r7)
    lsl(r4, r7)
    label(clamp)
    cmp(r4, r6)
    ble(lo2)
    mov(r4, r6)
    label(lo2)
    neg(r5, r6)
    cmp(r4, r5)
    bge(hi2)
    mov(r4, r5)
    label(hi2)
    mov(r0, r4)


@micropython.viper
def adapter_u(A, X, d: int, ps: int, sh: int) -> int:
    # one row of A: sat16(round((sum_k A[k] X[k], chunks of 512 pre-shifted by ps) / 2**sh))
    return int(_adapter_u(A, X, d, ps | ((sh + 16) << 4)))


@micropython.viper
def adapter_u_rows(A16, X, d: int, ps: int, sh: int, U, r: int):
    # adapter_u of every rank row (A16: blocks of whole rows, as kernels_py's), one Thumb
    # call per row
    UU = ptr16(U)
    pk = ps | ((sh + 16) << 4)
    nb = int(len(A16))
    q = 0
    b = 0
    while b < nb:
        blk = A16[b]
        nrow = int(len(blk)) // d
        row = 0
        while row < nrow:
            UU[q] = int(_adapter_u(blk, X, d, pk | (row << 10)))
            q += 1
            row += 1
        b += 1


@micropython.asm_thumb
def _upd_a(r0, r1, r2, r3):
    # r0 A32, r1 A16, r2 X (int8), r3 P = [e, d, sh, refresh, k0] (int32): kernels_viper's
    # upd_a on A32[k0:k0+d], A16[k0:k0+d], for d >= 1. Pointers advance by one element; r12
    # holds LIM, r8 the refresh flag (saved).
    ldr(r4, [r3, 16])
    lsl(r5, r4, 2)
    add(r0, r0, r5)
    lsl(r5, r4, 1)
    add(r1, r1, r5)
    mov(r7, r8)
    push({r7})
    ldr(r7, [r3, 12])
    mov(r8, r7)             # refresh
    ldr(r4, [r3, 4])        # d
    ldr(r5, [r3, 8])        # sh
    ldr(r3, [r3, 0])        # e
    mov(r7, 1)
    lsl(r7, r7, 30)
    sub(r7, 1)
    mov(r12, r7)            # LIM = 0x3FFFFFFF
    cmp(r5, 0)
    ble(nonpos)
    sub(r5, 1)              # sh > 0: p = ((e x >> (sh - 1)) + 1) >> 1, as (e x + 2**(sh-1)) >> sh
    label(pos)
    ldrb(r6, [r2, 0])
    data(2, 0xB276)         # sxtb r6, r6
    mul(r6, r3)
    asr(r6, r5)
    add(r6, 1)
    asr(r6, r6, 1)
    ldr(r7, [r0, 0])
    sub(r7, r7, r6)         # v = A32 - p, saturated to +-LIM
    mov(r6, r12)
    cmp(r7, r6)
    ble(p1)
    mov(r7, r6)
    label(p1)
    neg(r6, r6)
    cmp(r7, r6)
    bge(p2)
    mov(r7, r6)
    label(p2)
    str(r7, [r0, 0])
    mov(r6, r8)
    cmp(r6, 0)
    beq(p3)
    mov(r6, 1)
    lsl(r6, r6, 15)
    add(r6, r6, r7)
    asr(r6, r6, 16)
    strh(r6, [r1, 0])
    label(p3)
    add(r0, 4)
    add(r1, 2)
    add(r2, 1)
    sub(r4, 1)
    bne(pos)
    b(done)
    label(nonpos)
    neg(r5, r5)             # sh <= 0: p = clamp(e x, LIM >> -sh) << -sh
    label(neg)
    ldrb(r6, [r2, 0])
    data(2, 0xB276)         # sxtb r6, r6
    mul(r6, r3)
    mov(r7, r12)
    lsr(r7, r5)
    cmp(r6, r7)
    ble(n1)
    mov(r6, r7)
    label(n1)
    neg(r7, r7)
    cmp(r6, r7)
    bge(n2)
    mov(r6, r7)
    label(n2)
    lsl(r6, r5)
    ldr(r7, [r0, 0])
    sub(r7, r7, r6)
    mov(r6, r12)
    cmp(r7, r6)
    ble(n3)
    mov(r7, r6)
    label(n3)
    neg(r6, r6)
    cmp(r7, r6)
    bge(n4)
    mov(r7, r6)
    label(n4)
    str(r7, [r0, 0])
    mov(r6, r8)
    cmp(r6, 0)
    beq(n5)
    mov(r6, 1)
    lsl(r6, r6, 15)
    add(r6, r6, r7)
    asr(r6, r6, 16)
    strh(r6, [r1, 0])
    label(n5)
    add(r0, 4)
    add(r1, 2)
    add(r2, 1)
    sub(r4, 1)
    bne(neg)
    label(done)
    pop({r7})
    mov(r8, r7)


_P = bytearray(20)  # upd_a's e, d, sh, refresh, k0 as int32, for _upd_a's fourth register


@micropython.viper
def upd_a(A32, A16, X, e: int, d: int, sh: int, refresh: int, sx: int):
    # one row: A32[k] = sat30(A32[k] - round(e X[k] / 2**sh)); if refresh: A16 = round(A32 / 2**16)
    if (e == 0 and refresh == 0) or d < 1:
        return
    P = ptr32(_P)
    P[0] = e
    P[1] = d
    P[2] = sh
    P[3] = refresh
    P[4] = 0
    _upd_a(A32, A16, X, _P)


@micropython.viper
def upd_a_rows(A32, A16, X, E, d: int, sh: int, refresh: int, r: int, sx: int):
    # upd_a of every rank row, row q with the step E[q] (A32, A16: blocks of whole rows), one
    # Thumb call per row
    if d < 1:
        return
    EE = ptr32(E)
    P = ptr32(_P)
    P[1] = d
    P[2] = sh
    P[3] = refresh
    nb = int(len(A32))
    q = 0
    b = 0
    while b < nb:
        b32 = A32[b]
        b16 = A16[b]
        end = int(len(b32))
        k0 = 0
        while k0 < end:
            e = EE[q]
            if e != 0 or refresh != 0:
                P[0] = e
                P[4] = k0
                _upd_a(b32, b16, X, _P)
            q += 1
            k0 += d
        b += 1

# Fixed-point kernels in Thumb machine code (@micropython.asm_thumb), for Cortex-M boards.
#
# Why: the viper dense loop costs ~52 instructions per multiply-add on armv6m (it loads,
# sign-extends and boxes nothing, but keeps every value in memory); the loop here keeps two
# rows' sums in registers and loads each x once for both: 33 instructions per 8 multiply-adds,
# 6.4 per multiply-add with the call and output step (docs/BENCHMARKS.md, "Cortex-M"). The
# adapters' row kernels walk all rank rows of an adapter in one call, through the rows'
# addresses (row_table), since a call into machine code costs thousands of instructions. Only
# the armv6m (Thumb-1) subset is used, so the same code runs on an RP2040's M0+ and on any
# M3/M4/M7/M33. The emitter has no register-offset LDRSB and no two-register CMP with r8..r15,
# so those are data() halfwords (LDRSB: 0x5600 | Rm << 6 | Rn << 3 | Rt); every load is a byte
# load or an aligned word load.
#
# The same integers as kernels_viper.py / kernels_py.py: the dot products are exact int32 sums
# (|sum| <= d_in * 127 * 127 < 2**31 for d_in <= 4095), and each row's output step is the
# viper one, run over the block's rows in one call (this module needs viper as well; the
# firmware with asm_thumb has it). Kernels with no Thumb version are the viper ones. A firmware
# without the inline assembler (unix, ESP32, CircuitPython) fails to compile this module and
# kernels.py falls back to viper.
import micropython
from array import array
from .formats import zeros
from .kernels_viper import dense_q16 as _dense_viper, finish_q16
from .kernels_viper import (absmax_f32, bg, dot_a16x8, logits_bu, quant_f32, requant8,
                            softmax, to_f32, upd_b)

NAME = "thumb"


@micropython.asm_thumb
def _dots(r0, r1, r2, r3):
    # r0 W (nr rows of d int8), r1 X (d int8), r2 OUT (int32), r3 = j0 | d/4 << 12 | nr << 23:
    # OUT[j0 + j] = sum_k W[j, k] X[k], d a multiple of 4. Rows go in pairs, each x loaded
    # once for both (8 instructions per 2 multiply-adds), then an odd last row alone. Indices
    # run from -d up to 0 from the rows' ends, so the last add of each group of four sets the
    # loop's flags. r8..r11 (saved) hold OUT, the pairs left, d and r3.
    mov(r4, r8)
    mov(r5, r9)
    mov(r6, r10)
    mov(r7, r11)
    push({r4, r5, r6, r7})
    mov(r11, r3)
    mov(r4, r3)
    lsl(r4, r4, 20)
    lsr(r4, r4, 18)         # 4 * j0
    add(r2, r2, r4)
    mov(r8, r2)
    lsl(r4, r3, 9)
    lsr(r4, r4, 21)
    lsl(r4, r4, 2)          # d
    mov(r10, r4)
    add(r1, r1, r4)         # X's end
    lsr(r4, r3, 24)         # pairs of rows
    mov(r9, r4)
    cmp(r4, 0)
    beq(single)
    label(pair)
    mov(r7, r10)
    add(r0, r0, r7)         # row A's end
    add(r2, r0, r7)         # row B's end
    neg(r3, r7)
    mov(r4, 0)
    mov(r5, 0)
    label(inner2)
    data(2, 0x56CF, 0x56C6)  # ldrsb r7, [r1, r3]; ldrsb r6, [r0, r3]
    mul(r6, r7)
    add(r4, r4, r6)
    data(2, 0x56D6)         # ldrsb r6, [r2, r3]
    mul(r6, r7)
    add(r5, r5, r6)
    add(r3, r3, 1)
    data(2, 0x56CF, 0x56C6)  # ldrsb r7, [r1, r3]; ldrsb r6, [r0, r3]
    mul(r6, r7)
    add(r4, r4, r6)
    data(2, 0x56D6)         # ldrsb r6, [r2, r3]
    mul(r6, r7)
    add(r5, r5, r6)
    add(r3, r3, 1)
    data(2, 0x56CF, 0x56C6)  # ldrsb r7, [r1, r3]; ldrsb r6, [r0, r3]
    mul(r6, r7)
    add(r4, r4, r6)
    data(2, 0x56D6)         # ldrsb r6, [r2, r3]
    mul(r6, r7)
    add(r5, r5, r6)
    add(r3, r3, 1)
    data(2, 0x56CF, 0x56C6)  # ldrsb r7, [r1, r3]; ldrsb r6, [r0, r3]
    mul(r6, r7)
    add(r4, r4, r6)
    data(2, 0x56D6)         # ldrsb r6, [r2, r3]
    mul(r6, r7)
    add(r5, r5, r6)
    add(r3, r3, 1)
    bne(inner2)
    mov(r7, r8)
    str(r4, [r7, 0])
    str(r5, [r7, 4])
    add(r7, 8)
    mov(r8, r7)
    mov(r0, r2)
    mov(r7, r9)
    sub(r7, 1)
    mov(r9, r7)
    bne(pair)
    label(single)
    mov(r3, r11)
    lsr(r3, r3, 23)
    mov(r4, 1)
    and_(r3, r4)            # nr odd: its last row
    beq(done)
    mov(r7, r10)
    add(r0, r0, r7)
    neg(r3, r7)
    mov(r4, 0)
    label(inner1)
    data(2, 0x56CF, 0x56C6)  # ldrsb r7, [r1, r3]; ldrsb r6, [r0, r3]
    mul(r6, r7)
    add(r4, r4, r6)
    add(r3, r3, 1)
    data(2, 0x56CF, 0x56C6)  # ldrsb r7, [r1, r3]; ldrsb r6, [r0, r3]
    mul(r6, r7)
    add(r4, r4, r6)
    add(r3, r3, 1)
    data(2, 0x56CF, 0x56C6)  # ldrsb r7, [r1, r3]; ldrsb r6, [r0, r3]
    mul(r6, r7)
    add(r4, r4, r6)
    add(r3, r3, 1)
    data(2, 0x56CF, 0x56C6)  # ldrsb r7, [r1, r3]; ldrsb r6, [r0, r3]
    mul(r6, r7)
    add(r4, r4, r6)
    add(r3, r3, 1)
    bne(inner1)
    mov(r7, r8)
    str(r4, [r7, 0])
    label(done)
    pop({r4, r5, r6, r7})
    mov(r8, r4)
    mov(r9, r5)
    mov(r10, r6)
    mov(r11, r7)


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
def _adapter_u_tab(r0, r1, r2, r3):
    # r0 table of row addresses (int16 rows), r1 X (d int8), r2 U (int16), r3 = ps | (sh + 16)
    # << 4 | rows << 10 | d << 17: U[q] = _adapter_u of row q, every row in one call. r8..r11
    # (saved) hold the table, X and U pointers and the rows left.
    mov(r4, r8)
    mov(r5, r9)
    mov(r6, r10)
    mov(r7, r11)
    push({r4, r5, r6, r7})
    mov(r8, r0)
    mov(r9, r1)
    mov(r10, r2)
    lsl(r4, r3, 15)
    lsr(r4, r4, 25)         # rows
    mov(r11, r4)
    label(nextrow)
    mov(r7, r8)
    ldr(r0, [r7, 0])        # the row's start
    add(r7, 4)
    mov(r8, r7)
    mov(r1, r9)
    lsr(r2, r3, 17)         # d
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
    mov(r7, r10)
    strh(r4, [r7, 0])
    add(r7, 2)
    mov(r10, r7)
    mov(r7, r11)
    sub(r7, 1)
    mov(r11, r7)
    beq(finish)
    b(nextrow)
    label(finish)
    pop({r4, r5, r6, r7})
    mov(r8, r4)
    mov(r9, r5)
    mov(r10, r6)
    mov(r11, r7)


@micropython.viper
def adapter_u_rows(A16, X, d: int, ps: int, sh: int, U, r: int):
    # adapter_u of every rank row, A16 the rows' addresses (row_table): one Thumb call
    _adapter_u_tab(A16, X, U, ps | ((sh + 16) << 4) | (r << 10) | (d << 17))


@micropython.asm_thumb
def _upd_a_tab(r0, r1, r2, r3):
    # r0, r1 tables of row addresses (A32 rows, A16 rows), r2 X (int8), r3 P = [address of E,
    # d, sh, refresh, rows, (rows left), (X), (A32 table), (A16 table)] (int32): for each row q
    # with e = E[q] (skipped when e = 0 and no refresh), A32[k] = sat30(A32[k] - round(e X[k] /
    # 2**sh)) and, with refresh, A16[k] = (A32[k] + 32768) >> 16, as kernels_py.upd_a. The
    # loop state of the rows sits in P; r8..r11 (saved) hold 32768, LIM, -LIM and P. The
    # emitter's two-register CMP takes r0..r7 only, so CMP r7, r9 / r10 are data() halfwords.
    mov(r4, r8)
    mov(r5, r9)
    mov(r6, r10)
    mov(r7, r11)
    push({r4, r5, r6, r7})
    mov(r11, r3)
    str(r2, [r3, 24])       # X
    str(r0, [r3, 28])       # A32 table
    str(r1, [r3, 32])       # A16 table
    ldr(r4, [r3, 16])
    str(r4, [r3, 20])       # rows left
    mov(r7, 1)
    lsl(r7, r7, 15)
    mov(r8, r7)             # 32768
    lsl(r7, r7, 15)
    sub(r7, 1)
    mov(r9, r7)             # LIM = 0x3FFFFFFF
    neg(r7, r7)
    mov(r10, r7)            # -LIM
    label(nextrow)
    mov(r3, r11)
    ldr(r7, [r3, 0])
    ldr(r6, [r7, 0])        # e = E[q]
    add(r7, 4)
    str(r7, [r3, 0])
    ldr(r7, [r3, 28])
    ldr(r0, [r7, 0])        # A32 row
    add(r7, 4)
    str(r7, [r3, 28])
    ldr(r7, [r3, 32])
    ldr(r1, [r7, 0])        # A16 row
    add(r7, 4)
    str(r7, [r3, 32])
    ldr(r2, [r3, 24])
    ldr(r4, [r3, 4])        # d
    ldr(r5, [r3, 8])        # sh
    ldr(r7, [r3, 12])       # refresh
    cmp(r6, 0)
    bne(go)
    cmp(r7, 0)
    bne(go)
    b(rowdone)
    label(go)
    mov(r3, r6)             # e
    cmp(r5, 0)
    ble(nonpos)
    sub(r5, 1)              # sh > 0: p = ((e x >> (sh - 1)) + 1) >> 1
    cmp(r7, 0)
    beq(posn)
    label(posr)             # ... with the refresh of A16
    ldrb(r6, [r2, 0])
    data(2, 0xB276)         # sxtb r6, r6
    mul(r6, r3)
    asr(r6, r5)
    add(r6, 1)
    asr(r6, r6, 1)
    ldr(r7, [r0, 0])
    sub(r7, r7, r6)         # v = A32 - p, saturated to +-LIM
    data(2, 0x454F)         # cmp r7, r9
    bgt(prhi)
    data(2, 0x4557)         # cmp r7, r10
    blt(prlo)
    label(prback)
    str(r7, [r0, 0])
    mov(r6, r8)
    add(r6, r6, r7)
    asr(r6, r6, 16)
    strh(r6, [r1, 0])
    add(r0, 4)
    add(r1, 2)
    add(r2, 1)
    sub(r4, 1)
    bne(posr)
    b(rowdone)
    label(prhi)
    mov(r7, r9)
    b(prback)
    label(prlo)
    mov(r7, r10)
    b(prback)
    label(posn)             # ... without it
    ldrb(r6, [r2, 0])
    data(2, 0xB276)         # sxtb r6, r6
    mul(r6, r3)
    asr(r6, r5)
    add(r6, 1)
    asr(r6, r6, 1)
    ldr(r7, [r0, 0])
    sub(r7, r7, r6)
    data(2, 0x454F)         # cmp r7, r9
    bgt(pnhi)
    data(2, 0x4557)         # cmp r7, r10
    blt(pnlo)
    label(pnback)
    str(r7, [r0, 0])
    add(r0, 4)
    add(r2, 1)
    sub(r4, 1)
    bne(posn)
    b(rowdone)
    label(pnhi)
    mov(r7, r9)
    b(pnback)
    label(pnlo)
    mov(r7, r10)
    b(pnback)
    label(nonpos)
    neg(r5, r5)             # sh <= 0: p = clamp(e x, LIM >> -sh) << -sh
    mov(r6, r9)
    lsr(r6, r5)
    mov(r12, r6)            # lim
    label(negl)
    ldrb(r6, [r2, 0])
    data(2, 0xB276)         # sxtb r6, r6
    mul(r6, r3)
    mov(r7, r12)
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
    data(2, 0x454F)         # cmp r7, r9
    bgt(nhi)
    data(2, 0x4557)         # cmp r7, r10
    blt(nlo)
    label(nback)
    str(r7, [r0, 0])
    mov(r6, r11)
    ldr(r6, [r6, 12])       # refresh
    cmp(r6, 0)
    beq(n5)
    mov(r6, r8)
    add(r6, r6, r7)
    asr(r6, r6, 16)
    strh(r6, [r1, 0])
    label(n5)
    add(r0, 4)
    add(r1, 2)
    add(r2, 1)
    sub(r4, 1)
    bne(negl)
    b(rowdone)
    label(nhi)
    mov(r7, r9)
    b(nback)
    label(nlo)
    mov(r7, r10)
    b(nback)
    label(rowdone)
    mov(r3, r11)
    ldr(r4, [r3, 20])
    sub(r4, 1)
    str(r4, [r3, 20])
    beq(finish)
    b(nextrow)
    label(finish)
    pop({r4, r5, r6, r7})
    mov(r8, r4)
    mov(r9, r5)
    mov(r10, r6)
    mov(r11, r7)


@micropython.viper
def upd_a_rows(A32, A16, X, E, d: int, sh: int, refresh: int, r: int, sx: int):
    # upd_a of every rank row, row q with the step E[q] (A32, A16: the rows' addresses,
    # row_table): one Thumb call
    if d < 1:
        return
    P = ptr32(_P)
    P[0] = int(ptr32(E))
    P[1] = d
    P[2] = sh
    P[3] = refresh
    P[4] = r
    _upd_a_tab(A32, A16, X, _P)


@micropython.viper
def _address(b) -> int:
    return int(ptr8(b))


def row_table(blocks, d, size):
    """The row kernels' form of an adapter's blocks of whole rows (size bytes per value): the
    address of every row, in order, made once (a board's heap never moves an object)."""
    n = 0
    for b in blocks:
        n += len(b) // d
    out = zeros("I", n)
    i = 0
    for b in blocks:
        a = _address(b)
        for k in range(len(b) // d):
            out[i] = a + k * d * size
            i += 1
    return out


_P = bytearray(36)  # _upd_a_tab's int32 parameters and row state (its fourth register)
_T32 = array("I", [0])  # one row's addresses (A32 / A16), for the single-row kernels
_T16 = array("I", [0])
_U1 = array("h", [0])
_E1 = array("i", [0])


@micropython.viper
def adapter_u(A, X, d: int, ps: int, sh: int) -> int:
    # one row of A: adapter_u_rows on a one-row table
    T = ptr32(_T16)
    T[0] = int(ptr8(A))
    adapter_u_rows(_T16, X, d, ps, sh, _U1, 1)
    U = ptr16(_U1)
    return ((U[0] ^ 0x8000) - 0x8000)


@micropython.viper
def upd_a(A32, A16, X, e: int, d: int, sh: int, refresh: int, sx: int):
    # one row: upd_a_rows on one-row tables, with the step e
    if (e == 0 and refresh == 0) or d < 1:
        return
    T = ptr32(_T32)
    T[0] = int(ptr8(A32))
    T = ptr32(_T16)
    T[0] = int(ptr8(A16))
    E = ptr32(_E1)
    E[0] = e
    upd_a_rows(_T32, _T16, X, _E1, d, sh, refresh, 1, sx)

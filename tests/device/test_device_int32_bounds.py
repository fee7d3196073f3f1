"""The fixed-point kernels cannot overflow a 32-bit viper int, over every parameter the
Trainer and the int8 predict can pass them.

The unix port's viper ints are 64 bits, so a kernel that overflows int32 still gives the right
answer here and the wrong one on a board. This test runs the device's own pure-Python kernels
(device/s2l/kernels_py.py, the line-by-line twin of kernels_viper.py) on CPython with every
value wrapped in I32, an int that raises as soon as any intermediate leaves the int32 range,
on the worst-case inputs the trainer can produce (docs/device.md, "Bounds"). It then runs the
viper kernels on the same inputs on the MicroPython unix port and on the 32-bit Cortex-M
firmware (tests/device/mpyrun.py) and requires identical results, so the viper code computes
exactly what was checked.

The float32 kernels (to_f32, absmax_f32, quant_f32) read and write bit patterns through struct
in the twin. For the check, unpack_from gives what a board's ptr32 load gives, a signed int32
(as an I32), and to_f32's `(s << 31) | ...` may set the sign bit (a Pattern: nothing may
compute with it). Their results are also compared with exact Fraction arithmetic on the host.

Every kernel parameter (shifts, multipliers) has a range, clamped where it is set
(fixedpath.py FixedPath._set_scales/_batch_consts, int8forward._shifts; docs/device.md
"Bounds"):
test_trainer_parameters_stay_in_the_kernel_ranges drives the real code that sets them with
float32 scales, lr and alpha at their extremes, test_clamps_keep_the_integers shows that a
clamp gives the integers the unclamped parameter gives, and CASES holds each kernel's worst
data at both ends of each range (test_cases_reach_every_end).
"""
import importlib.util
import json
from array import array
import math
import random
import struct
import sys
import types
from fractions import Fraction
from unittest import mock

import pytest

from mpyrun import DEVICE, KINDS, run

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
LIM = 0x3FFFFFFF


class Overflow(AssertionError):
    pass


class I32(int):
    """An int whose every arithmetic result must fit int32 (what a viper int is on a board)."""

    def __new__(cls, v):
        v = int(v)
        if not INT32_MIN <= v <= INT32_MAX:
            raise Overflow("int32 overflow: %d" % v)
        return int.__new__(cls, v)


def _op(name):
    base = getattr(int, name)

    def f(self, other):
        r = base(self, other)
        return r if r is NotImplemented else I32(r)
    return f


for _name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
              "__rshift__", "__rrshift__", "__lshift__", "__rlshift__", "__and__", "__rand__",
              "__xor__", "__rxor__", "__or__", "__ror__", "__floordiv__", "__rfloordiv__"):
    setattr(I32, _name, _op(_name))
I32.__neg__ = lambda self: I32(-int(self))

SIGN = 1 << 31


class Pattern(int):
    """A float32 bit pattern with the sign bit set, as to_f32 assembles it: `(s << 31) | (e << 23)
    | mant`. On a board `1 << 31` is a viper int's sign bit (INT32_MIN) and the ORs only set
    bits, so this is no arithmetic overflow; but nothing may compute with the pattern: it can
    only take more bits (OR with a non-negative I32) and be stored."""

    def __or__(self, other):
        if isinstance(other, I32) and other >= 0:
            return Pattern(int(self) | int(other))
        return NotImplemented
    __ror__ = __or__


def _no_arith(name):
    def f(self, *other):
        raise Overflow("arithmetic on a sign-bit pattern (%s)" % name)
    return f


for _name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__neg__",
              "__rshift__", "__rrshift__", "__lshift__", "__rlshift__", "__and__", "__rand__",
              "__xor__", "__rxor__"):
    setattr(Pattern, _name, _no_arith(_name))


def _i32_or(self, other):
    if isinstance(other, Pattern):
        return NotImplemented
    if type(other) is int and other == SIGN and self >= 0:  # the literal sign bit, 1 << 31
        return Pattern(SIGN | int(self))
    return I32(int.__or__(self, other))


I32.__or__ = I32.__ror__ = _i32_or


def _kernels_py():
    sys.path.insert(0, str(DEVICE))
    try:
        return importlib.import_module("s2l.kernels_py")
    finally:
        sys.path.remove(str(DEVICE))


K = _kernels_py()


def w(values):
    return [I32(v) for v in values]


def test_i32_catches_overflow():
    with pytest.raises(Overflow):
        I32(65536) * I32(65536)
    with pytest.raises(Overflow):
        0 + I32(INT32_MAX) + 1


def _ps(d):
    n, ps = (d + 511) // 512, 0
    while (1 << ps) < n:
        ps += 1
    return ps


# Worst cases. A16/B16 come from masters saturated at +-LIM: (LIM + 32768) >> 16 = 16384.
# U16 and x codes are clamped to +-32767 / int8 (a board-appended sample may hold -128).
# g16 = round((p - onehot) * 16384): sum |g16| <= 2 * 16384 + C / 2.
A16_MAX = (LIM + 32768) >> 16
CASES = []
# The parameter ranges, as fixedpath.py and int8forward.py clamp them (imported from the device
# code below, and checked against these literals).
N_RANGE = (-15, 46)     # dense_q16 shift (the kernel is exact for all of int8 N: -128..127)
RQ_RANGE = (16, 46)     # requant8 shift
SHU_RANGE = (-15, 32)   # adapter_u final shift
SHB_RANGE = (-29, 30)   # upd_b shift
SHA_RANGE = (-29, 32)   # upd_a shift
# adapter_u: every shift of its range, at the row lengths where a chunk or the whole row peaks
for d in (1, 512, 513, 4096):
    for sign in (1, -1):
        for sh in ((-16, -15, -3, 0, 10, 24, 30, 31, 32) if d in (512, 4096) else (-15, 0, 32)):
            CASES.append(("adapter_u", [[sign * A16_MAX] * d, [-128] * d, d, _ps(d), sh]))
# dense_q16: |acc| up to 128 * 128 * 4096 = 2**26 in both signs (row 0 +, row 1 -), M at both
# ends of q15's [2**14, 2**15), every kind of shift N can hold; and a row of tiny weights
# (acc = +-1), where the old n >= 47 went wrong
DENSE_N = (-128, -16, -15, -14, 0, 8, 14, 15, 16, 40, 42, 43, 46, 47, 79, 80, 127)
for d_in in (512, 4096):
    for n in ((8, 15, 16, 40) if d_in == 512 else DENSE_N):
        for bias in (LIM, -LIM):
            CASES.append(("dense_q16", [[-128] * d_in + [127] * d_in, [-128] * d_in, d_in, 0,
                                        2, [32767, 16384], [n, n], [bias, bias], [0, 0], 0]))
# one row alone (the Thumb loop's rows go in pairs, an odd last row alone)
CASES.append(("dense_q16", [[-128] * 512, [-128] * 512, 512, 0, 1, [32767] * 6, [15] * 6,
                            [LIM] * 6, [0] * 6, 0]))
for n in DENSE_N:
    CASES.append(("dense_q16", [[1] + [0] * 7 + [-1] + [0] * 7 + [0] * 8, [1] * 8, 8, 0, 3,
                                [16384, 16384, 32767], [n, n, n], [5, -5, 5], [0, 0, 0], 0]))
for v in (LIM, -LIM, 0):
    for n in (16, 30, 45, 46):
        CASES.append(("requant8", [[v, -v, 1], 3, 32767, n, 1, [0, 0, 0], 0]))
        CASES.append(("requant8", [[v, -v, 1], 3, 32767, n, 0, [0, 0, 0], 0]))


def _g_worst(C):
    """g16 at the largest sum |g16| the integer softmax can give: -16384 for the label, and the
    others summing to at least 16384 + 3 (C - 1) / 4 (each p rounded up by 1/2 at most, then
    (p + 1) >> 1)."""
    G = [-16384] + [(16384 + C // 2) // (C - 1) + 1] * (C - 1)
    assert 4 * sum(G[1:]) >= 4 * 16384 + 3 * (C - 1)
    return G


BG_CASES = []
for C, r in ((3, 4), (255, 64)):
    for y0 in (LIM, -LIM):
        for sign in (1, -1):
            CASES.append(("logits_bu", [[sign * A16_MAX] * (C * r), [32767] * r, C, r,
                                        [y0] * C, 0]))
            CASES.append(("logits_bu", [[sign * A16_MAX] * (C * r), [-32767] * r, C, r,
                                        [y0] * C, 0]))
    # bg: the largest |sum_c B[c,j] G[c]|: every B saturated, its sign matched to G's (both
    # directions), and the old same-sign B (which cancels) kept
    G = _g_worst(C)
    for sign in (1, -1):
        Bw = [sign * (A16_MAX if g > 0 else -A16_MAX) for g in G for _ in range(r)]
        BG_CASES.append(("bg", [Bw, G, C, r, 32767, 6, [0] * r]))
        CASES.append(("bg", [[sign * A16_MAX] * (C * r), G, C, r, 32767, 6, [0] * r]))
    # upd_b: B32 - round(g u / 2**sh), the step in both directions from both saturated ends
    for sh in (-29, -4, 1, 2, 10, 29, 30):
        for b0 in (LIM, -LIM):
            for g, u in ((16384, -32767), (-16384, 32767), (16384, 32767), (-16384, -32767)):
                CASES.append(("upd_b", [[b0] * (C * r), [0] * (C * r), [g] * C, [u] * r, C,
                                        r, sh, 1, 0]))
CASES += BG_CASES
# softmax: y32 and z at both saturated ends, every kind of shift of its range (SHS_RANGE)
# with both ends of Ms; the exp table's edges (gaps around exp(-11), where the Q14 value
# rounds to 0), with and without a step; and the largest sum of exp (MAX_CLASSES equal logits)
SHS_RANGE = (-30, 32)
for sh in (SHS_RANGE[0], -16, -1, 0, 1, 15, 31, SHS_RANGE[1]):
    for m in (16384, 32767):
        for y in (LIM, -LIM):
            for z in (LIM, -LIM):
                CASES.append(("softmax", [[z, -z, 0], [y, -y, 1], [0] * 3, [0] * 5, 3, m, sh, 0,
                                          32767, [0] * 3, [0] * 3, 0]))
_GAPS = [0, -1, -65536, -720895, -720896, -(1 << 20), -LIM]
for F in (16384, 0):
    CASES.append(("softmax", [_GAPS, [0] * 7, [0] * 7, [0] * 9, 7, 16384, 0, 6, F, [0] * 7,
                              [0] * 7, 0]))
MAX_CLASSES = 255  # formats.MAX_CLASSES
CASES.append(("softmax", [[LIM] * MAX_CLASSES, [LIM] * MAX_CLASSES, [0] * MAX_CLASSES,
                          [0] * (MAX_CLASSES + 2), MAX_CLASSES, 32767, SHS_RANGE[1],
                          MAX_CLASSES - 1, 32767, [0] * MAX_CLASSES, [0] * MAX_CLASSES, 0]))
# the bound on e = E[j] (upd_a's multiplier): the largest |E| of the bg worst cases


def _bg_out(args):
    E = [0] * len(args[-1])
    K.bg(*args[:-1], E)
    return E


E_MAX = max(abs(v) for _, args in BG_CASES for v in _bg_out(args))
for d in (8, 512):
    for sh in (-29, -3, 1, 6, 30, 31, 32):
        for a0 in (LIM, -LIM):
            for e in (E_MAX, -E_MAX):
                CASES.append(("upd_a", [[a0] * d, [0] * d, [-128] * d, e, d, sh, 1, 0]))
                CASES.append(("upd_a", [[a0] * d, [0] * d, [127] * d, e, d, sh, 1, 0]))
# within a batch (no refresh of A16: it must stay as it was), and a zero step
for sh in (-3, 6):
    for e in (E_MAX, -E_MAX, 0):
        CASES.append(("upd_a", [[LIM, -LIM, 5, -5] * 2, [7] * 8, [-128, 127] * 4, e, 8, sh, 0, 0]))



# ---- the float32 kernels: to_f32, absmax_f32, quant_f32 (bit patterns in and out), dot_a16x8
def f32_bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


def f32_value(b):
    """The exact value of a float32 bit pattern, as a Fraction (host struct, no device code)."""
    return Fraction(struct.unpack("<f", struct.pack("<I", b))[0])


def trainer_R(mi):
    """(R, Rsh) of the Trainer's A conversion for a 24-bit scale mantissa mi: R / 2**Rsh is
    2**-6 / mi rounded half up to 30 bits, R in [2**29, 2**30) (computed here with Fraction)."""
    x = Fraction(1, mi * 64)
    for sh in (58, 59):
        R = int(x * 2 ** sh + Fraction(1, 2))
        if (1 << 29) <= R < (1 << 30):
            return R, sh
    raise AssertionError(mi)


_rnd = random.Random(20240611)
# masters saturate at +-LIM; 0, +-1; every normalisation shift b from 0 to 29
V_F32 = ([LIM, -LIM, 0, 1, -1, 2, -3, 1 << 29, -(1 << 29), (1 << 29) - 1, (1 << 29) + 1,
          0x3FFF8000, -0x20007FFF, 0x2AAAAAAA, -0x15555555, 32767, -32768, 65535]
         + [(1 << b) + _rnd.randrange(1 << b) for b in range(30)]
         + [-_rnd.randrange(1, LIM + 1) for _ in range(6)])
R_TRAINER = [trainer_R(mi) for mi in (1 << 23, (1 << 23) + 1, 0xB504F3, 0xC00000, (1 << 24) - 1,
                                      _rnd.randrange(1 << 23, 1 << 24))]
assert {sh for _, sh in R_TRAINER} == {58, 59}
for R, sh in R_TRAINER + [(1 << 29, 58)]:  # A rows, and B = B32 / 2**29
    CASES.append(("to_f32", [V_F32, len(V_F32), R, sh, [0] * len(V_F32), 0]))
# R at both ends of [2**29, 2**30), other shifts, and shifts where small or all values flush
# to 0 (v * R / 2**sh < 2**-126: from sh = 156 for v = 1, R = 2**29; all of them from 187)
for R in (1 << 29, (1 << 30) - 1):
    for sh in (-40, 0, 30, 100, 155, 156, 170, 186, 187, 200):
        CASES.append(("to_f32", [V_F32, len(V_F32), R, sh, [0] * len(V_F32), 0]))

F32_MAX, F32_MIN_NORMAL = 0x7F7FFFFF, 0x00800000
for xs in ([0x3F800000, 0xFF7FFFFF, 0x7F7FFFFE, 0xBF800000],  # -largest finite wins
           [0x80000000, 0],  # -0 and 0
           [1, 0x807FFFFF, 0x00400000],  # subnormals, the largest one with the sign bit
           [0x80000001], [0xFF7FFFFF], [F32_MAX],
           [0x807FFFFF, F32_MIN_NORMAL, 0x80000000],
           [f32_bits(_rnd.uniform(-3, 3)) for _ in range(64)]):
    CASES.append(("absmax_f32", [xs, len(xs)]))


def _quant_inputs(M, n, k0):
    """x for quant_f32(M, n): the fixed specials, x at every 11th code k * 2**n / M from k0
    and at the ties between (short lines: the boards' heap is full of pools),
    and exponents giving sh = 141 + n - ex at -1, 0, 1, 31, 32 (clamp to 127 or flush to 0)."""
    xs = [0, 0x80000000, 1, 0x80000001, 0x1FF, 0x200, 0x7FFFFF, 0x807FFFFF, F32_MIN_NORMAL,
          0x3F800000, 0xBF800000, F32_MAX, 0xFF7FFFFF]
    for k in range(k0, 130, 11):
        for frac in (Fraction(0), Fraction(1, 2)):
            x = (k + frac) * Fraction(2) ** n / M
            if abs(x) < Fraction(2) ** 127:
                xs.append(f32_bits(float(x)))
    for sh in (-1, 0, 1, 31, 32):
        ex = 141 + n - sh
        if 1 <= ex <= 254:
            for sign in (0, 1):
                xs.append((sign << 31) | (ex << 23) | _rnd.randrange(1 << 23))
    return xs


# M: Q15 reciprocals of a float32 scale (2**14..2**15-1) and predict()'s 16384; n over what
# q15(1, m, -e) gives for any positive float32 scale (-135..142: a cache header may hold a
# subnormal x_1 scale) and predict()'s 14 - p (-141..135 for a sample of any finite floats)
for k0, (M, n) in enumerate(((16384, -141), (16384, -135), (16384, -118), (32767, -112), (16385, -60), (23170, 0), (16384, 7), (32767, 14),
             (20000, 22), (32767, 40), (16384, 100), (30000, 135), (16384, 142))):
    xs = _quant_inputs(M, n, k0 - 129)
    CASES.append(("quant_f32", [xs, len(xs), M, n, [0] * len(xs)]))

# dot_a16x8 (int8 predict's skip adapters): A int16, x codes from quant_f32 / requant8, d up to
# MAX_DIM 4096 with ps = ceil(log2(chunks))
for d in (1, 512, 513, 1024, 1025, 4096):
    for a, x in ((32767, -128), (-32767, -128), (-32768, 127), (32767, 127), (-32767, 127)):
        CASES.append(("dot_a16x8", [[a] * d, [x] * d, d, _ps(d)]))
CASES.append(("dot_a16x8", [[32767] * 256 + [-32768] * 256, [-128] * 256 + [127] * 256, 512, 0]))


# What a board's ptr32 load gives (a signed int32), for the twins' struct.unpack_from: every
# value the float32 kernels compute from a pattern is then an I32 as well.
BOARD_STRUCT = types.ModuleType("struct")
BOARD_STRUCT.pack_into = struct.pack_into  # "<I" refuses anything outside [0, 2**32)


def _load_signed(fmt, buf, offset):
    assert fmt == "<I", fmt
    u = struct.unpack_from("<I", buf, offset)[0]
    return (I32(u - (1 << 32) if u & SIGN else u),)


BOARD_STRUCT.unpack_from = _load_signed


def _types(name, args):
    return TYPES[name] + [None] * (len(args) - len(TYPES[name]))


def _wrap(name, args, checked=True):
    out = []
    for a, t in zip(args, _types(name, args)):
        if t == "I":  # float32 bit patterns: a byte buffer, read and written through struct
            out.append(bytearray(struct.pack("<%dI" % len(a), *a)))
        elif isinstance(a, list):
            out.append(w(a) if checked else list(a))
        else:
            out.append(I32(a) if checked else a)
    return out


def _run_py(name, args, checked=True):
    """The twin on CPython: I32 values and signed 32-bit loads (checked), or plain ints."""
    args = _wrap(name, args, checked)
    with mock.patch.dict(sys.modules, {"struct": BOARD_STRUCT} if checked else {}):
        ret = getattr(K, name)(*args)
    outs = [list(struct.unpack("<%dI" % (len(a) // 4), a)) if isinstance(a, bytearray)
            else list(map(int, a)) for a in args if isinstance(a, (list, bytearray))]
    return {"ret": None if ret is None else int(ret), "outs": outs}


_PY = {}


def _checked(i):
    if i not in _PY:
        _PY[i] = _run_py(*CASES[i])
    return _PY[i]


def test_bounds_hold_in_int32_for_worst_cases():
    assert E_MAX < (1 << 24)
    for i, (name, args) in enumerate(CASES):
        try:
            _checked(i)
        except Overflow as e:
            pytest.fail("%s overflows int32 with args %s: %s"
                        % (name, [a if not isinstance(a, list) else a[:3] for a in args], e))


def test_bounds_would_be_violated_without_the_guards():
    """The guards matter: without the 512-chunk pre-shift a 4096-long row overflows."""
    with pytest.raises(Overflow):
        _run_py("adapter_u", [[A16_MAX] * 4096, [-128] * 4096, 4096, 0, 0])


def _device(name):
    """A module of the device package, imported on CPython (the same code a board runs)."""
    sys.path.insert(0, str(DEVICE))
    try:
        return importlib.import_module("s2l." + name)
    finally:
        sys.path.remove(str(DEVICE))


def _rhu(num, den):
    """round half up of num / den (Fractions or ints), exactly."""
    return math.floor(Fraction(num) / Fraction(den) + Fraction(1, 2))


def _sat(v, lim=LIM):
    return max(-lim, min(lim, v))


def dense_ref(acc, M, n, beta):
    """dense_q16's statement for one row, any shift n: t = acc * M / 2**15 rounded half up,
    then / 2**(n-15) rounded half up (n >= 15), or * 2**(15-n) pre-saturated to LIM >> (15-n)
    (15 - n <= 29), or saturated (15 - n >= 30: t * 2**30 passes LIM unless t is 0); + beta,
    saturated at LIM."""
    t = _rhu(acc * M, 1 << 15)
    if n >= 15:
        v = _rhu(t, 1 << (n - 15))
    elif 15 - n <= 29:
        lim = LIM >> (15 - n)
        v = _sat(t, lim) << (15 - n)
    else:
        v = _sat(t << (15 - n))
    return _sat(v + beta)


def _dense_accs(args):
    W, X, d_in, j0, nr = args[:5]
    return [sum(W[j * d_in + k] * X[k] for k in range(d_in)) for j in range(nr)]


def test_dense_q16_against_exact_statement():
    """Every dense_q16 case, every shift int8 N holds (-128..127), against dense_ref."""
    seen = set()
    for i, (name, args) in enumerate(CASES):
        if name != "dense_q16":
            continue
        out = _checked(i)["outs"][-1]
        M, N, BETA = args[5], args[6], args[7]
        for j, acc in enumerate(_dense_accs(args)):
            assert out[j] == dense_ref(acc, M[j], N[j], BETA[j]), (acc, M[j], N[j], BETA[j])
            seen.add(N[j])
    assert {-128, 127, N_RANGE[0], N_RANGE[1], 47, 80} <= seen


def test_cases_reach_every_end():
    """CASES holds each kernel's worst data at both ends of every parameter range, in both
    signs: the proof is only as complete as this list."""
    by = {}
    for i, (name, args) in enumerate(CASES):
        by.setdefault(name, []).append(args)
    # dense_q16: +-2**26 sums at both ends of N (and past them), acc = +-1 too
    accs = {(a[6][j], acc) for a in by["dense_q16"] for j, acc in enumerate(_dense_accs(a))}
    for n in (-128, N_RANGE[0], N_RANGE[1], 127):
        assert {(n, 1 << 26), (n, -127 * 128 * 4096), (n, 1), (n, -1), (n, 0)} <= accs, n
    # requant8: |v| = LIM in both signs at both ends of n
    rq = {(a[3], v) for a in by["requant8"] for v in a[0]}
    assert {(n, v) for n in RQ_RANGE for v in (LIM, -LIM)} <= rq
    # adapter_u: |sum| = 2**30 in both signs at both ends of sh
    au = {(a[4], a[0][0] * a[1][0] * min(a[2], 512) >> a[3] << a[3]) for a in by["adapter_u"]}
    for sh in SHU_RANGE:
        assert {(sh, (1 << 30) >> 9 << 9), (sh, -(1 << 30))} <= {(s, v) for s, v in au}, sh
    # upd_b: from both saturated ends, steps g u of both signs, at both ends of sh
    ub = {(a[6], a[0][0] > 0, a[2][0] * a[3][0] > 0) for a in by["upd_b"]}
    assert {(sh, b, p) for sh in SHB_RANGE for b in (0, 1) for p in (0, 1)} <= ub
    # upd_a: |e x| = E_MAX * 128 in both signs, at both ends of sh, from both ends
    ua = {(a[5], a[0][0] > 0, a[3] * a[2][0]) for a in by["upd_a"]}
    for sh in SHA_RANGE:
        for a0 in (0, 1):
            assert {(sh, a0, E_MAX * 128), (sh, a0, -E_MAX * 128)} <= ua, sh
    assert E_MAX * 128 > 1 << 30  # so that upd_a's sh = 31 needs its own rounding
    # bg: the largest |sum B G| of the softmax's g16, in both signs
    sums = [sum(a[0][c * a[3]] * a[1][c] for c in range(a[2])) for a in by["bg"]]
    bound = A16_MAX * (16384 + 16384 + 3 * 254 // 4)
    assert max(sums) >= bound and min(sums) <= -bound
    # logits_bu: products of both signs onto both saturated ends
    lb = {(a[4][0], a[0][0] * a[1][0] > 0) for a in by["logits_bu"]}
    assert lb == {(y, p) for y in (LIM, -LIM) for p in (False, True)}
    # softmax: y32 and z at +-LIM at both ends of its shift, and the most classes
    sm = {(a[6], a[1][0], a[0][0]) for a in by["softmax"]}
    assert {(sh, y, z) for sh in SHS_RANGE for y in (LIM, -LIM) for z in (LIM, -LIM)} <= sm
    assert max(a[4] for a in by["softmax"]) == MAX_CLASSES


# every float32 at an end of its range or of the exponent range: the smallest subnormal, the
# largest subnormal, the smallest normal, 1.0, 1.5, the largest finite
F32_ENDS = (1, 0x007FFFFF, 0x00800000, 0x3F800000, 0x3FC00000, 0x7F7FFFFF)


def _f32_bytes(patterns):
    return bytearray(struct.pack("<%dI" % len(patterns), *patterns))


def _fixed_path(fixedpath, d0, rank, w_scales, C, alpha=1.0):
    """A Trainer's FixedPath as its constructor makes it, for a 2-layer model d0-C-C with the
    weight scales w_scales on both layers' C channels, skip adapters on both layers."""
    formats = _device("formats")
    lay = [types.SimpleNamespace(d_in=d, d_out=C, scale=_f32_bytes(w_scales),
                                 bias=_f32_bytes([0x7F7FFFFF, 0xFF7FFFFF, 0] + [0] * (C - 3)))
           for d in (d0, C)]
    model = types.SimpleNamespace(dims=[d0, C, C], n_layers=2, layers=lay)
    data = types.SimpleNamespace(dtype=formats.I8)
    # formats.zeros fills a large array from range(n), which CPython's array('b') refuses
    with mock.patch.object(fixedpath, "zeros", lambda t, n: array(t, [0]) * n):
        T = fixedpath.FixedPath(model, data, "skip-lora", [0, 1], rank, alpha, 1.0, 0.0, None,
                                None, K)
    for a in T.ads:
        a.drawn = True  # the A draws are glue code (Python ints), not a kernel parameter
    return T


def test_trainer_parameters_stay_in_the_kernel_ranges():
    """The code that sets the kernels' parameters (FixedPath._set_scales, _batch_consts), run with
    every float32 at an end of its range for the weight scales, the activation scales (a
    dataset's or a cache header's: any positive float32), lr and alpha, rank 1 and 64, batches
    of 1 and 2**20 samples, rows of 1..4096: each parameter lands in the range over which
    CASES checks its kernel, and the clamps are reached from both sides."""
    fp, qmath = _device("fixedpath"), _device("qmath")
    assert (fp.N_LO, fp.N_HI) == N_RANGE and fp.RQ_HI == RQ_RANGE[1]
    assert (fp.SHU_LO, fp.SHU_HI) == SHU_RANGE
    assert (fp.SHB_LO, fp.SHB_HI) == SHB_RANGE and (fp.SHA_LO, fp.SHA_HI) == SHA_RANGE
    assert (fp.SHS_LO, fp.SHS_HI) == SHS_RANGE
    seen = {k: set() for k in ("n", "rq", "shu", "shb", "sha")}
    scales = F32_ENDS + (fp.SCALE_FLOOR - 1, fp.SCALE_FLOOR)
    lrs = (1, 0x3B800000, 0x7F7FFFFF)  # the smallest subnormal, 1/256, the largest
    for d0, rank in ((1, 64), (513, 1), (4096, 2)):
        T = _fixed_path(fp, d0, rank, F32_ENDS, len(F32_ENDS))
        for s0 in scales:
            for s1 in scales:
                T._set_scales([s0, s1])
                for i in range(2):
                    for M, n in zip(T.dM[i], T.dN[i]):
                        assert N_RANGE[0] <= n <= N_RANGE[1] and 0 <= M < 1 << 15, (s0, s1, n)
                        assert M >= 1 << 14 or (M, n) == (0, 15)  # 0: clamped past N_HI
                        seen["n"].add(n if M else N_RANGE[1])
                M, n = T.rq[0]
                assert RQ_RANGE[0] <= n <= RQ_RANGE[1] and 0 <= M < 1 << 15, (s1, M, n)
                assert M >= 1 << 14 or (M, n) == (0, 16)  # 0: clamped past RQ_HI
                seen["rq"].add(n if M else RQ_RANGE[1])
                for a in T.ads:
                    assert SHU_RANGE[0] <= a.shu <= SHU_RANGE[1] and 0 <= a.ps <= 3
                    seen["shu"].add(a.shu)
                for lr in lrs:
                    for alpha in lrs:
                        T._lr_parts = qmath.split(lr)
                        T._alpha_parts = qmath.split(alpha)
                        for nb in (1, 1 << 20):
                            T._batch_consts(nb)
                            if T._eta is None:  # lr * alpha flushed: no update at all
                                continue
                            assert (1 << 14) <= T._eta < (1 << 15)
                            assert SHB_RANGE[0] <= T._shb <= SHB_RANGE[1]
                            seen["shb"].add(T._shb)
                            for a in T.ads:
                                assert SHA_RANGE[0] <= a.sha <= SHA_RANGE[1]
                                assert 0 <= a.Mp < 1 << 15
                                seen["sha"].add(a.sha)
    for k, rng in (("n", N_RANGE), ("rq", (16, 46)), ("shu", SHU_RANGE), ("shb", SHB_RANGE),
                   ("sha", SHA_RANGE)):
        assert min(seen[k]) == rng[0] and max(seen[k]) == rng[1], (k, min(seen[k]),
                                                                   max(seen[k]))


def test_softmax_shift_stays_in_its_range():
    """The softmax's shift (FixedPath._s15, from alpha / rank) for alpha at every end of the
    float32 range and rank 1 and 64 lands in SHS_RANGE, and the clamp is reached from both
    sides; its Ms is a Q15 mantissa."""
    fp, qmath, formats = _device("fixedpath"), _device("qmath"), _device("formats")
    assert formats.MAX_CLASSES == MAX_CLASSES
    seen = set()
    for alpha in F32_ENDS:
        for rank in (1, 64):
            T = _fixed_path(fp, 8, rank, F32_ENDS, len(F32_ENDS), qmath.value(alpha))
            Ms, sh = T._s15
            assert SHS_RANGE[0] <= sh <= SHS_RANGE[1] and (1 << 14) <= Ms < (1 << 15)
            seen.add(sh)
    assert min(seen) == SHS_RANGE[0] and max(seen) == SHS_RANGE[1], seen


def test_int8_predict_parameters_stay_in_the_kernel_ranges():
    """Int8Forward: dense_q16's (M, N) from the weight scales and the input shift p (from any
    finite float32 sample: 7 - bitlen(m) - e, -121..155; hidden layers -7..14), and the
    requant8 / quant_f32 shifts, land in the checked ranges; a clamped channel gives the
    integers of dense_ref at the unclamped shift (the old code zeroed every n < 0)."""
    i8f, qmath = _device("int8forward"), _device("qmath")
    assert (i8f.N_MIN, i8f.N_MAX) == N_RANGE
    C = len(F32_ENDS)
    lay = [types.SimpleNamespace(d_in=C, d_out=C, scale=_f32_bytes(F32_ENDS),
                                 bias=_f32_bytes([0] * C)) for _ in range(2)]
    model = types.SimpleNamespace(dims=[C, C, C], n_layers=2, layers=lay)
    fw = i8f.Int8Forward(model, backend="py")
    ps = []
    for b in (1, 0x007FFFFF, 0x00800000, 0x3F800000, 0x7F7FFFFF):
        mx, ex = qmath.split(b)
        ps.append(7 - qmath.bitlen(mx) - ex)
    assert (min(ps), max(ps)) == (-121, 155)
    for best in (1, 255, 1 << 20, LIM):  # requant8's 30 - p for the hidden layers
        p = min(14, 23 - qmath.bitlen(best))
        assert RQ_RANGE[0] <= 30 - p <= RQ_RANGE[1]
        ps.append(p)
    ps += [14, 0, -7]
    seen = set()
    for p in ps:
        fw._shifts(0, p)
        for j in range(C):
            M0, n0, M, n = fw.M0[0][j], fw.N0[0][j] + p, fw.M[0][j], fw.N[0][j]
            assert N_RANGE[0] <= n <= N_RANGE[1] and 0 <= M < 1 << 15
            seen.add(n if M or not M0 else "past N_MAX")
            for acc in (1 << 26, -127 * 128 * 4096, 1, -1, 0, 12345):
                for beta in (0, LIM, -LIM):
                    got = _run_py("dense_q16", [[acc], [1], 1, j, 1, [0] * j + [M],
                                                [0] * j + [n], [0] * j + [beta], [0] * C, 0],
                                  checked=False)["outs"][-1][j]
                    assert got == dense_ref(acc, M0, n0, beta), (acc, M0, n0, p)
    assert N_RANGE[0] in seen and "past N_MAX" in seen  # both clamps reached
    # quant_f32's n: 14 - p in predict, q15(1, scale) in the Trainer for any positive scale
    qn = [14 - p for p in ps[:5]] + [qmath.q15(1, m, -e)[1] for m, e in map(qmath.split, F32_ENDS)]
    cased = [a[3] for name, a in CASES if name == "quant_f32"]
    assert min(cased) <= min(qn) and max(cased) >= max(qn), (min(qn), max(qn))


def test_clamps_keep_the_integers():
    """Past each clamp end the kernel's statement gives the same integers as at the end
    (checked on the twin with plain ints, which has no int32 limit, so it computes the
    statement at any shift): dense_q16 (dense_ref above), requant8 past 46, adapter_u past
    -15 and 32, upd_b past 30, upd_a past 32. The two left ends of upd_b and upd_a (-29) are
    caps, not such clamps: at -30 and beyond the old kernels made no update at all (LIM >> 30
    is 0), now the step is the one of -29."""
    rnd = random.Random(7)
    accs = [1 << 26, -127 * 128 * 4096, 1, -1, 0] + [rnd.randrange(-(1 << 26), 1 << 26)
                                                     for _ in range(20)]
    for n in list(range(-60, 120)) + [255, 1000]:
        Mc, nc = (0, 15) if n > N_RANGE[1] else (None, max(N_RANGE[0], n))
        for M in (16384, 32767):
            for acc in accs:
                want = dense_ref(acc, M, n, 7)
                assert dense_ref(acc, M if Mc is None else Mc, nc, 7) == want, (acc, M, n)

    def run(name, args):
        return _run_py(name, args, checked=False)

    vs = [LIM, -LIM, 1, -1, 0, 1 << 29, -(1 << 29)] + [rnd.randrange(-LIM, LIM) for _ in range(9)]
    for n in range(RQ_RANGE[1], 200):
        for relu in (0, 1):
            a = run("requant8", [vs, len(vs), 32767, n, relu, [0] * len(vs), 0])
            b = run("requant8", [vs, len(vs), 0, RQ_RANGE[0], relu, [0] * len(vs), 0])
            assert a == b, n
    for sh in list(range(-100, SHU_RANGE[0])) + list(range(SHU_RANGE[1], 100)):
        shc = max(SHU_RANGE[0], min(SHU_RANGE[1], sh))
        for a16, x in ((A16_MAX, -128), (-A16_MAX, -128), (1, 1), (-1, 1), (0, 1), (3, -5)):
            for d in (1, 512, 4096):
                args = [[a16] * d, [x] * d, d, _ps(d)]
                assert run("adapter_u", args + [sh]) == run("adapter_u", args + [shc]), sh
    for sh in range(SHB_RANGE[1], 100):
        for g, u in ((16384, 32767), (-16384, 32767), (1, 1), (-1, 1), (16383, -32767)):
            for b0 in (LIM, -LIM, 0):
                args = [[b0] * 2, [0] * 2, [g], [u, -u], 1, 2]
                assert run("upd_b", args + [sh, 1, 0]) == run("upd_b", args + [SHB_RANGE[1], 1, 0])
    for sh in range(SHA_RANGE[1], 100):
        for e in (E_MAX, -E_MAX, 1, -1):
            for a0 in (LIM, -LIM, 0):
                args = [[a0] * 3, [0] * 3, [-128, 127, 1], e, 3]
                assert run("upd_a", args + [sh, 1, 0]) == run("upd_a", args + [SHA_RANGE[1], 1, 0])


def test_i32_allows_only_the_sign_bit_as_a_pattern():
    """to_f32's `(s << 31) | (e << 23) | mant` is checked except for the literal sign bit."""
    assert int((1 << 31) | I32(0x3F800000) | I32(5)) == 0xBF800005
    with pytest.raises(Overflow):
        ((1 << 31) | 1) | I32(4)  # only the sign bit itself
    with pytest.raises(Overflow):
        ((1 << 31) | I32(1)) + I32(1)
    with pytest.raises(Overflow):
        I32(256) << 23  # an exponent past 255 would reach the sign bit


def test_dot_a16x8_bound_needs_codes_above_minus_128():
    """The one excluded input: 512 * (-32768) * (-128) = 2**31. dot_a16x8 reads x codes made
    by quant_f32 (clamped to +-127, checked below) and requant8 with relu (0..127), and int16
    rows with |A| <= 32767 (predict's _rows16) or <= 16384 (the Trainer's copies)."""
    with pytest.raises(Overflow):
        _run_py("dot_a16x8", [[-32768] * 512, [-128] * 512, 512, 0])
    codes = [v for i, (name, _) in enumerate(CASES) if name == "quant_f32"
             for v in _checked(i)["outs"][1]]
    assert min(codes) == -127 and max(codes) == 127


def _ulp(b):
    """The spacing of float32 values at the normal pattern b."""
    return Fraction(2) ** (max((b >> 23) & 0xFF, 1) - 150)


def _f32_cases(name):
    return [(i, args) for i, (n, args) in enumerate(CASES) if n == name]


def test_f32_kernels_against_exact_arithmetic():
    """The twins' outputs (equal to viper's on every kind, next test) against Fractions:
    to_f32 within 1 ulp of v * R / 2**sh (0 only below 2**-126, never a subnormal),
    quant_f32 within 1 code of clamp127(round(x * M / 2**n)), absmax_f32 the largest |x|,
    dot_a16x8 the sum of its 512-chunks each rounded half up / 2**ps. Also: the twins give the
    same with plain ints and CPython's unsigned struct loads as with I32 and signed loads."""
    worst_ulps, flushed = Fraction(0), 0
    for i, (v, n, R, sh, _, _) in _f32_cases("to_f32"):
        out = _checked(i)["outs"][1]
        for x, b in zip(v, out):
            exact = Fraction(x * R) / Fraction(2) ** sh
            if b == 0:
                assert abs(exact) < Fraction(2) ** -126, (x, R, sh)
                flushed += exact != 0
                continue
            assert (b >> 23) & 0xFF not in (0, 255), (x, R, sh, hex(b))
            err = abs(f32_value(b) - exact) / _ulp(b)
            assert err <= 1, (x, R, sh, hex(b), float(err))
            worst_ulps = max(worst_ulps, err)
    assert flushed > 0 and worst_ulps > Fraction(1, 4)  # the cases reach both
    for i, (xs, M, n) in [(i, (a[0], a[2], a[3])) for i, a in _f32_cases("quant_f32")]:
        out = _checked(i)["outs"][1]
        for b, q in zip(xs, out):
            want = f32_value(b) * M / Fraction(2) ** n
            want = max(-127, min(127, round(want)))
            assert abs(q - want) <= 1, (hex(b), M, n, q, want)
    for i, (xs, d) in _f32_cases("absmax_f32"):
        want = max(abs(f32_value(b)) for b in xs)
        assert _checked(i)["ret"] == f32_bits(float(want)), [hex(b) for b in xs[:4]]
    for i, (A, X, d, ps) in _f32_cases("dot_a16x8"):
        want = 0
        for k0 in range(0, d, 512):
            c = sum(a * x for a, x in zip(A[k0:k0 + 512], X[k0:k0 + 512]))
            want += (c + (1 << ps >> 1)) >> ps
        assert _checked(i)["ret"] == want, (A[0], X[0], d, ps)
    for name in ("to_f32", "absmax_f32", "quant_f32", "dot_a16x8"):
        for i, args in _f32_cases(name):
            assert _run_py(name, args, checked=False) == _checked(i), name


# Arrays cross as runs [[value, count], ...] both ways: the worst cases are long constant rows
# (6 MB as plain lists, more than the boards' 4 MB disk).
# Arrays cross as runs [[value, count], ...] both ways: the worst cases are long constant rows
# (6 MB as plain lists, more than the boards' 4 MB disk). The first line gives the elements each
# typecode needs at most in one case: one pool per typecode, allocated before anything else
# (later, a 192 KB heap has no 64 KB block left), cut into the case's arrays by memoryview.
RLE = """
def rle(values):
    runs = []
    for v in values:
        if runs and runs[-1][0] == v:
            runs[-1][1] += 1
        else:
            runs.append([v, 1])
    return runs
"""
_ns = {}
exec(RLE, _ns)  # the same rle() on the host and on the board
rle = _ns["rle"]

VIPER = r"""
from array import array


class Runs:  # the values of [[value, count], ...]; a len lets array() allocate once
    def __init__(self, runs):
        self.runs = runs

    def __len__(self):
        return sum(c for _, c in self.runs)

    def __iter__(self):
        for v, c in self.runs:
            for _ in range(c):
                yield v


""" + RLE + r"""

f = open("cases.jsonl")
POOL = {t: array(t, Runs([[0, n]])) for t, n in sorted(json.loads(f.readline()).items(),
                                                           key=lambda tn: -tn[1])}
from s2l import kernels
K = kernels.get(BACKEND)
from s2l.kernels import SX
with open("out.jsonl", "w") as out:
    for line in f:
        name, args, types = json.loads(line)
        conv, used = [], {}
        for a, t in zip(args, types):
            if isinstance(a, list):
                n, at = sum(c for _, c in a), used.get(t, 0)
                mv = memoryview(POOL[t])[at:at + n]
                used[t] = at + n
                i = 0
                for v in Runs(a):
                    mv[i] = v
                    i += 1
                a = mv
            conv.append(a)
        if name in ("dense_q16", "requant8", "logits_bu", "upd_b", "upd_a", "to_f32", "softmax"):
            conv[-1] = SX
        args = types = line = None
        ret = getattr(K, name)(*conv)
        out.write('{"ret": %s, "outs": [' % json.dumps(ret))
        sep = ""
        for a in conv:  # the runs of each array, streamed: no list of them on a full heap
            if not isinstance(a, int):
                out.write(sep + "[")
                sep, rsep, v, c = ", ", "", None, 0
                for x in a:
                    if c and x == v:
                        c += 1
                        continue
                    if c:
                        out.write("%s[%d, %d]" % (rsep, v, c))
                        rsep = ", "
                    v, c = x, 1
                if c:
                    out.write("%s[%d, %d]" % (rsep, v, c))
                out.write("]")
        out.write("]}\n")
        conv = mv = None
        gc.collect()
f.close()
RESULT(sx=SX, name=K.NAME)
"""


TYPES = {"to_f32": ["i", None, None, None, "I"], "absmax_f32": ["I"],
         "quant_f32": ["I", None, None, None, "b"], "dot_a16x8": ["h", "b"],
         "adapter_u": ["h", "b"], "dense_q16": ["b", "b", None, None, None, "i", "b", "i", "i"],
         "requant8": ["i", None, None, None, None, "b"], "logits_bu": ["h", "h", None, None, "i"],
         "bg": ["h", "h", None, None, None, None, "i"],
         "upd_b": ["i", "h", "h", "h"], "upd_a": ["i", "h", "b"],
         "softmax": ["i", "i", "i", "i", None, None, None, None, None, "h", "h"]}


@pytest.mark.parametrize("kind,backend", [(k, "viper") for k in KINDS]
                         + [(k, "thumb") for k in KINDS[1:]])
def test_viper_kernels_equal_checked_twin(tmp_path, kind, backend):
    """On the unix port (64-bit viper ints, SX=32) and on the 32-bit boards (SX=0, where an
    overflow wraps silently); the Thumb kernels (asm_thumb, kernels_thumb.py) on both
    Cortex-M kinds, every case through the same module."""
    cases = []
    for name, args in CASES:
        types = TYPES[name] + [None] * (len(args) - len(TYPES[name]))
        cases.append((name, [rle(a) if isinstance(a, list) else a for a in args], types))
    pools = {}
    for name, args, types in cases:
        need = {}
        for a, t in zip(args, types):
            if isinstance(a, list):
                need[t] = need.get(t, 0) + sum(c for _, c in a)
        for t, n in need.items():
            pools[t] = max(pools.get(t, 0), n)
    (tmp_path / "cases.jsonl").write_text("".join(json.dumps(c) + "\n"
                                                  for c in [pools] + cases))
    script = VIPER.replace("kernels.get(BACKEND)", "kernels.get(%r)" % backend)
    res, _ = run(script, tmp_path, heap="16M", kind=kind, deploy="py" if kind == "unix" else "mpy")
    assert res == [{"sx": 32 if kind == "unix" else 0, "name": backend}]
    got = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(got) == len(cases)
    for i, ((name, args, _), g) in enumerate(zip(cases, got)):
        want = _checked(i)
        assert g["ret"] == want["ret"], (name, g["ret"], want["ret"])
        assert g["outs"] == [rle(o) for o in want["outs"]], (name, i, args[4:9])


# ---- the row-block kernels (adapter_u_rows, upd_a_rows): all rank rows of an adapter in one
# call, over blocks of whole rows (fixedpath.FixedPath). Their statement is the row kernel on
# each row, so the expected values are kernels_py's checked row kernels, row by row; the
# worst rows above, mixed in one call (rows of both signs in one block, steps of both signs).
def _row_cases():
    out = []
    for d, k in ((8, 4), (64, 4), (512, 1), (513, 1)):
        r = 4
        for sh in (SHA_RANGE[0], -3, 1, 31, SHA_RANGE[1]):
            for x in (-128, 127):
                A = [[LIM if q % 2 else -LIM] * d for q in range(r)]
                E = [E_MAX, -E_MAX, -E_MAX, E_MAX]
                out.append(("upd_a_rows", A, [[0] * d for _ in range(r)], [x] * d, E, d, sh, r, k))
        for sh in (SHU_RANGE[0], 0, 10, 31, SHU_RANGE[1]):
            A16 = [[A16_MAX if q % 2 else -A16_MAX] * d for q in range(r)]
            out.append(("adapter_u_rows", A16, None, [-128] * d, None, d, sh, r, k))
    return out


ROW_CASES = _row_cases()


def row_case_expected(case):
    """The rows after the call (A32 and A16 for upd_a_rows, U for adapter_u_rows), from the
    checked kernels_py row kernels."""
    name, A, A16, X, E, d, sh, r, k = case
    if name == "upd_a_rows":
        outs32, outs16 = [], []
        for q in range(r):
            res = _run_py("upd_a", [A[q], A16[q], X, E[q], d, sh, 1, 0])
            outs32.append(res["outs"][0])
            outs16.append(res["outs"][1])
        return {"A32": outs32, "A16": outs16}
    return {"U": [_run_py("adapter_u", [A[q], X, d, _ps(d), sh])["ret"] for q in range(r)]}


def row_cases_file(path):
    """cases.jsonl for ROWS: the blocks as runs [[value, count], ...]."""
    lines = []
    for name, A, A16, X, E, d, sh, r, k in ROW_CASES:
        blocks = [sum(A[q:q + k], []) for q in range(0, r, k)]
        b16 = [sum(A16[q:q + k], []) for q in range(0, r, k)] if A16 else None
        lines.append(json.dumps([name, [rle(b) for b in blocks], b16 and [rle(b) for b in b16],
                                 rle(X), E, d, sh, r]))
    path.write_text("\n".join(lines) + "\n")


ROWS = RLE + r"""
from array import array
from s2l import kernels
K = kernels.get(BACKEND)
from s2l.kernels import SX


def unrle(t, runs):
    a = array(t, [0] * sum(c for _, c in runs))
    i = 0
    for v, c in runs:
        for _ in range(c):
            a[i] = v
            i += 1
    return a


for line in open("cases.jsonl"):
    name, blocks, b16, X, E, d, sh, r = json.loads(line)
    X = unrle("b", X)
    if name == "upd_a_rows":
        A32 = [unrle("i", b) for b in blocks]
        A16 = [unrle("h", b) for b in b16]
        K.upd_a_rows(K.row_table(A32, d, 4), K.row_table(A16, d, 2), X, array("i", E), d, sh,
                     1, r, SX)
        RESULT(A32=[rle(b) for b in A32], A16=[rle(b) for b in A16])
    else:
        A16 = [unrle("h", b) for b in blocks]
        U = array("h", [0] * r)
        ps = 0
        while (512 << ps) < d:
            ps += 1
        K.adapter_u_rows(K.row_table(A16, d, 2), X, d, ps, sh, U, r)
        RESULT(U=list(U))
    blocks = b16 = A32 = A16 = None
    gc.collect()
"""


def row_results_match(case, got):
    """Whether a device's RESULT for a row case is the rows' expected values."""
    name, A, A16, X, E, d, sh, r, k = case
    want = row_case_expected(case)
    if name == "upd_a_rows":
        return (got["A32"] == [rle(sum(want["A32"][q:q + k], [])) for q in range(0, r, k)]
                and got["A16"] == [rle(sum(want["A16"][q:q + k], [])) for q in range(0, r, k)])
    return got["U"] == want["U"]


def test_row_cases_reach_the_ends():
    """Both ends of upd_a's and adapter_u's shift ranges, saturated masters of both signs in
    one block, and the blocks of several rows and of one row."""
    ups = [c for c in ROW_CASES if c[0] == "upd_a_rows"]
    assert {c[6] for c in ups} >= set(SHA_RANGE)
    assert {c[6] for c in ROW_CASES if c[0] == "adapter_u_rows"} >= set(SHU_RANGE)
    assert {c[8] for c in ROW_CASES} == {1, 4}
    for c in ups:  # each step pushes some master past LIM before the saturation
        assert max(abs(c[1][q][0] - c[4][q] * c[3][0]) for q in range(c[7])) > LIM


@pytest.mark.parametrize("kind,backend", [("unix", "py")] + [(k, "thumb") for k in KINDS[1:]])
def test_row_kernels_equal_their_rows(tmp_path, kind, backend):
    """kernels_py's row-block kernels (the statement the ulab ones are held to) on the unix
    port, and the Thumb ones (all rows of an adapter in one machine-code call, through the rows'
    addresses of row_table) on both Cortex-M kinds, give the checked row kernels' integers row
    by row. viper has none: the Trainer calls its row kernels per row (a viper row-block
    version cost 3.1 KB of heap on the Cortex-M0+, loaded with kernels_viper even where thumb
    runs, for no measurable gain)."""
    row_cases_file(tmp_path / "cases.jsonl")
    res, _ = run(ROWS.replace("kernels.get(BACKEND)", "kernels.get(%r)" % backend), tmp_path,
                 heap="16M", kind=kind, deploy="py" if kind == "unix" else "mpy")
    assert len(res) == len(ROW_CASES)
    bad = [i for i, (c, g) in enumerate(zip(ROW_CASES, res)) if not row_results_match(c, g)]
    assert bad == []

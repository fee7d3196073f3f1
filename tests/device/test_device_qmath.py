"""device/s2l/qmath.py on real interpreters: the unix port (64-bit small ints, float64) and the
Cortex-M0+ / M4F firmware (30-bit small ints, long ints beyond, float32), one run per kind.

qmath is what makes every board derive the same fixed-point constants (docs/device.md, "One
result on every board"), so its answers are compared with an independent statement of each
function written here with fractions.Fraction and math.isqrt, on a few hundred inputs: big
ints, negative numbers, exact ties (f32_ratio rounds half to even, the others half up),
results that flush to 0 or overflow float32, subnormal and signed bit patterns.
"""
import json
import math
import random
import struct
from fractions import Fraction

import pytest

from mpyrun import KINDS, run

HALF = Fraction(1, 2)


# ------------------------------------------------------------------ the host's statement

def f32_exact(b):
    """The value of float32 bit pattern b, exactly (None for NaN / Inf)."""
    if (b >> 23) & 0xFF == 0xFF:
        return None
    return Fraction(struct.unpack("<f", struct.pack("<I", b))[0])


def rne_f32_bits(x):
    """The float32 nearest to the Fraction x, ties to even, as bits; 0 when that rounded value
    is below 2**-126 (flushed, no subnormals); OverflowError when it is 2**128 or more."""
    if x == 0:
        return 0
    sign = 0x80000000 if x < 0 else 0
    x = abs(x)
    E = x.numerator.bit_length() - x.denominator.bit_length()
    while Fraction(2) ** E > x:
        E -= 1
    while Fraction(2) ** (E + 1) <= x:
        E += 1  # 2**E <= x < 2**(E+1)
    m = round(x / Fraction(2) ** (E - 23))  # Fraction.__round__: half to even
    if m == 1 << 24:
        m, E = 1 << 23, E + 1
    if E < -126:
        return 0
    if E > 127:
        raise OverflowError
    return sign | ((E + 127) << 23) | (m - (1 << 23))


def round_half_up(x):
    return math.floor(x + HALF)


def want(fn, args):
    """What qmath.fn(*args) must be, from its docstring's statement."""
    if fn == "bits_of_value":  # bits(value(b)): a round trip through the port's float
        return args[0]
    if fn == "bits_div":  # bits(p / q): the port's float division, rounded to float32
        return rne_f32_bits(Fraction(args[0], args[1]))
    if fn == "bits_at":
        return args[0][args[1]]
    if fn == "split":
        return "ValueError" if f32_exact(args[0]) is None else ("value", f32_exact(args[0]))
    if fn == "bitlen":
        return args[0].bit_length()
    if fn == "rshift_round":
        v, s = args
        return round_half_up(Fraction(v) / Fraction(2) ** s)
    if fn in ("q15", "qbits"):
        num, den, e = args[:3]
        width = args[3] if fn == "qbits" else 15
        if num <= 0:
            return [0, width]
        return ("qbits", Fraction(num, den) * Fraction(2) ** e, width)
    if fn == "f32_ratio":
        num, den, e = args
        try:
            return rne_f32_bits(Fraction(num, den) * Fraction(2) ** e)
        except OverflowError:
            return "ValueError"
    if fn == "isqrt":
        return math.isqrt(args[0]) if args[0] > 0 else 0
    raise AssertionError(fn)


def check(fn, args, got):
    w = want(fn, args)
    if isinstance(w, tuple) and w[0] == "value":  # split: m * 2**e is the value, |m| < 2**24
        m, e = got
        assert abs(m) < (1 << 24) and e >= -149, (fn, args, got)
        assert Fraction(m) * Fraction(2) ** e == w[1], (fn, args, got)
        # the exponent is the pattern's ulp: m holds the whole mantissa, nothing rescaled
        ex = (args[0] >> 23) & 0xFF
        assert e == max(ex, 1) - 150, (fn, args, got)
    elif isinstance(w, tuple) and w[0] == "qbits":  # M / 2**n = x rounded half up, M `width` bits
        x, width = w[1], w[2]
        M, n = got
        assert (1 << (width - 1)) <= M < (1 << width), (fn, args, got)
        assert M == round_half_up(x * Fraction(2) ** n), (fn, args, got)
    else:
        assert got == w, (fn, args, got, w)


# ------------------------------------------------------------------ the inputs

def cases():
    rnd = random.Random(7)
    out = []
    pats = [0, 0x80000000, 1, 0x80000001, 0x7FFFFF, 0x807FFFFF, 0x800000, 0x3F800000,
            0xBF800000, 0x7F7FFFFF, 0xFF7FFFFF, 0x3EAAAAAB, 0x7F800000, 0xFF800000,
            0x7FC00000, 0xFFFFFFFF] + [rnd.randrange(1 << 32) & ~(0x7F800000 if k % 2 else 0)
                                       for k in range(24)]
    for b in pats:
        out.append(("split", [b]))
        if (b >> 23) & 0xFF != 0xFF:
            out.append(("bits_of_value", [b]))
    for p, q in ((1, 3), (-2, 3), (1, 10), (7, 1), (16777217, 1), (16777219, 1), (1, 7),
                 (-5, 12345), (2, 1 << 20), (1 << 23, 3)):
        out.append(("bits_div", [p, q]))
    out.append(("bits_at", [pats[:12], 9]))
    out.append(("bits_at", [pats[:12], 1]))
    for n in [1, 2, 3, 255, 256, 65535, 65536, 65537, (1 << 30) - 1, 1 << 30, 1 << 31,
              (1 << 32) - 1, (1 << 64) + 1, 3 ** 80] + [rnd.randrange(1, 1 << 70) for _ in range(4)]:
        out.append(("bitlen", [n]))
    for v in [0, 1, -1, 2, -2, 3, -3, 5, -5, 7, -7, (1 << 30) - 1, -(1 << 30), (1 << 40) + 3,
              -(3 << 50) - 1, 12345678901234567, -98765432109876543]:
        for s in (-20, -1, 0, 1, 2, 16, 31, 48, 70):
            out.append(("rshift_round", [v, s]))
    # q15 / qbits: the constants the Trainer builds (products of 24-bit mantissas, a rank and a
    # batch size, scale exponents over the float32 range), ties, num <= 0
    for num, den, e in [(1, 1, 0), (3, 1, 0), (1, 3, 0), (-1, 1, 0), (0, 5, 3),
                        (32767, 2, 0),  # 16383.5: a tie, up to 16384
                        (65535, 4, 0),  # 16383.75
                        ((1 << 15) - 1, 1, 1), ((1 << 16) - 1, 1, -1),  # 32767.5: up, then 2**15
                        ((1 << 24) - 1, 1, 104), (1 << 23, 1, -149), (1, (1 << 24) - 1, -104),
                        (1, 1 << 23, 149), (1, 1, 300), (1, 1, -300)]:
        out.append(("q15", [num, den, e]))
    for _ in range(30):
        mw, mx = rnd.randrange(1 << 23, 1 << 24), rnd.randrange(1 << 23, 1 << 24)
        out.append(("q15", [mw * mx, rnd.choice([1, 2, 7, 64 * 5]), rnd.randrange(-200, 100)]))
    for width in (15, 24, 30):
        for num, den, e in [(1, 1 << 23, -6), (1, (1 << 24) - 1, -6), (1, 0xB504F3, -6),
                            (1, 1, 0), (7, 3, 11), ((1 << 31) - 1, 1, 0), (-4, 1, 0)]:
            out.append(("qbits", [num, den, e, width]))
    # f32_ratio: ties to even (odd and even mantissas), sticky bits, negative, flush and overflow
    for num, den, e in [(0, 1, 0), (1, 1, 0), (-1, 1, 0), (1, 3, 0), (-2, 3, 5), (1, 127, -3),
                        ((1 << 24) + 1, 1, 0), ((1 << 24) + 3, 1, 0), (-((1 << 24) + 1), 1, 0),
                        (((1 << 24) + 1) << 40, 1, -40), (3 * ((1 << 25) + 1), 6, 0),
                        (3 * ((1 << 25) + 3), 6, 0), ((((1 << 24) + 1) << 40) + 1, 1, -40),
                        ((1 << 24) - 1, 1 << 24, -125), ((1 << 25) - 1, 1 << 25, -126),
                        ((1 << 24) - 1, 1 << 24, -126), (1, 1, -126), (1, 1, -127),
                        (1, 1, -149), (1, 1, -200), ((1 << 24) - 1, 1, 104),
                        ((1 << 25) - 1, 1, 103), (1, 1, 128), (1, 1, 127), (255, 127 * 65536, 0),
                        (1 << 80, 3, -100), (5, 1 << 90, 0)]:
        out.append(("f32_ratio", [num, den, e]))
    for _ in range(30):
        out.append(("f32_ratio", [rnd.randrange(-(1 << 40), 1 << 40), rnd.randrange(1, 1 << 20),
                                  rnd.randrange(-160, 100)]))
    for n in [0, -5, 1, 2, 3, 4, 15, 16, 17, (1 << 30) - 1, 1 << 30, (1 << 31) + 1,
              ((1 << 40) + 5) ** 2, ((1 << 40) + 5) ** 2 - 1, 10 ** 40, (1 << 100) - 1] \
            + [rnd.randrange(1 << 90) for _ in range(6)]:
        out.append(("isqrt", [n]))
    return out


CASES = cases()

SCRIPT = r"""
from s2l import qmath as Q
import struct
f = open("qmath_cases.jsonl")
out = open("qmath_out.jsonl", "w")
for line in f:
    fn, args = json.loads(line)
    try:
        if fn == "bits_of_value":
            r = Q.bits(Q.value(args[0]))
        elif fn == "bits_div":
            r = Q.bits(args[0] / args[1])
        elif fn == "bits_at":
            buf = bytearray(4 * len(args[0]))
            for i, b in enumerate(args[0]):
                struct.pack_into("<I", buf, 4 * i, b)
            r = Q.bits_at(buf, args[1])
        else:
            r = getattr(Q, fn)(*args)
    except ValueError:
        r = "ValueError"
    out.write(json.dumps(r) + "\n")
out.close()
f.close()
RESULT(n=len(Q.__dict__))
"""


def test_host_statement_is_sound():
    """The host's float32 rounding agrees with the hardware's (numpy float32 from float64,
    where one rounding of an exact double is enough) and flushes / overflows where it says."""
    import numpy as np
    rnd = random.Random(1)
    for _ in range(2000):
        x = rnd.uniform(-1, 1) * 2.0 ** rnd.randrange(-120, 120)
        assert rne_f32_bits(Fraction(x)) == int(np.float32(x).view(np.uint32)), x
    assert rne_f32_bits(Fraction(1, 2 ** 127)) == 0
    assert rne_f32_bits(Fraction(2 ** 24 - 1, 2 ** 150)) == 0  # 24 bits below 2**-126
    assert rne_f32_bits(Fraction(2 ** 25 - 1, 2 ** 151)) == 0x800000  # a tie, up into range
    with pytest.raises(OverflowError):
        rne_f32_bits(Fraction(2 ** 128))


@pytest.mark.parametrize("kind", KINDS)
def test_qmath_equals_exact_statement(tmp_path, kind):
    (tmp_path / "qmath_cases.jsonl").write_text(
        "".join(json.dumps([fn, args]) + "\n" for fn, args in CASES))
    run(SCRIPT, tmp_path, kind=kind)
    got = [json.loads(line) for line in (tmp_path / "qmath_out.jsonl").read_text().splitlines()]
    assert len(got) == len(CASES)
    bad = []
    for (fn, args), g in zip(CASES, got):
        try:
            check(fn, args, g)
        except AssertionError as e:
            bad.append(str(e))
    assert bad == [], "%d of %d differ: %s" % (len(bad), len(CASES), "; ".join(bad[:5]))

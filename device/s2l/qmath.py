# Integer arithmetic on float32 values, for the fixed-point path's constants.
#
# Why: a board computes `a * b` in float32, the unix port in float64, and CircuitPython in a
# 30-bit float, so any float product, quotient, exp or parse inside the fixed-point path gives
# different bits on different boards. Here a float32 is taken apart into its exact integer
# mantissa and exponent (struct, no float arithmetic), every constant is derived from those
# integers, and results are rounded by integer rules. Python ints are exact on every port
# (long ints where needed), so the same inputs give the same constants everywhere.
import struct
from array import array

ONE_BITS = 0x3F800000  # 1.0
LIM = 0x3FFFFFFF  # the fixed path's int32 values saturate at +-LIM (2**30 - 1)
# 2**(-k/64) in Q14 for k = 0..64: the integer softmax's exp, interpolated between entries
EXP2_Q14 = array("H", (16384, 16208, 16033, 15860, 15689, 15520, 15353, 15188, 15024, 14862,
                       14702, 14544, 14387, 14232, 14079, 13927, 13777, 13629, 13482, 13337,
                       13193, 13051, 12910, 12771, 12634, 12498, 12363, 12230, 12098, 11968,
                       11839, 11711, 11585, 11460, 11337, 11215, 11094, 10975, 10856, 10739,
                       10624, 10509, 10396, 10284, 10173, 10064, 9955, 9848, 9742, 9637, 9533,
                       9431, 9329, 9228, 9129, 9031, 8933, 8837, 8742, 8648, 8555, 8463, 8371,
                       8281, 8192))


def bits(x):
    """The float32 bit pattern of float x (x rounded to float32 first, as a file stores it)."""
    return struct.unpack("<I", struct.pack("<f", x))[0]


def bits_at(buf, i):
    """The bit pattern of item i of a float32 buffer, read without making a float."""
    return struct.unpack_from("<I", buf, 4 * i)[0]


def value(b):
    """The float of a bit pattern (for the float path and for printing only)."""
    return struct.unpack("<f", struct.pack("<I", b))[0]


def split(b):
    """(m, e) with the float32 value of bit pattern b equal to m * 2**e exactly; m is a signed
    int, |m| < 2**24. ValueError for NaN and Inf."""
    e = (b >> 23) & 0xFF
    m = b & 0x7FFFFF
    if e == 255:
        raise ValueError("NaN or Inf")
    if e:
        m |= 0x800000
    else:
        e = 1
    if b & 0x80000000:
        m = -m
    return m, e - 150


def bitlen(n):
    """Number of bits of n > 0 (MicroPython ints have no bit_length())."""
    k = 0
    while n >= 65536:
        n >>= 16
        k += 16
    while n:
        n >>= 1
        k += 1
    return k


def rshift_round(v, s):
    """round-half-up(v / 2**s) for any int v and s (s < 0 shifts left)."""
    if s <= 0:
        return v << -s
    return ((v >> (s - 1)) + 1) >> 1


def q15(num, den=1, e=0):
    """(M, n) with num/den * 2**e ~= M / 2**n, 2**14 <= M < 2**15, M rounded half up;
    (0, 15) when num <= 0. num and den are ints (den > 0)."""
    return qbits(num, den, e, 15)


def qbits(num, den, e, width):
    """q15() with a mantissa of `width` bits: 2**(width-1) <= M < 2**width."""
    if num <= 0:
        return 0, width
    top, low = 1 << width, 1 << (width - 1)
    k = width - bitlen(num) + bitlen(den)  # num * 2**k / den lies within a factor 2 of top
    while True:
        if k >= 0:  # M = round-half-up(num * 2**k / den), no bit of num dropped
            M = (((num << (k + 1)) // den) + 1) >> 1
        else:
            M = (((num << 1) // (den << -k)) + 1) >> 1
        if M >= top:
            k -= 1
        elif M < low:
            k += 1
        else:
            return M, k - e


def f32_ratio(num, den=1, e=0):
    """Bit pattern of the float32 nearest (ties to even) to num/den * 2**e; num, den ints,
    den > 0. Flushes results below the normal range to 0."""
    if num == 0:
        return 0
    sign = 0
    if num < 0:
        sign, num = 0x80000000, -num
    k = 26 - bitlen(num) + bitlen(den)  # quotient of num * 2**k / den: 25..27 bits
    if k >= 0:
        q, r = divmod(num << k, den)
    else:
        q, r = divmod(num, den << -k)
    while q >= 1 << 26:  # keep 26 bits: 24 kept, a guard bit, then the rest is sticky
        r |= q & 1
        q >>= 1
        k -= 1
    sticky = 1 if r else 0
    mant = q >> 2
    rest = (q & 3) * 2 + sticky  # guard, round and sticky as a number 0..7 (4 = a tie)
    if rest > 4 or (rest == 4 and mant & 1):
        mant += 1
        if mant == 1 << 24:
            mant >>= 1
            k -= 1
    exp = 23 + (2 - k) + e + 127  # value = mant * 2**(2 - k + e), mant in [2**23, 2**24)
    if exp <= 0:
        return 0
    if exp >= 255:
        raise ValueError("float32 overflow")
    return sign | (exp << 23) | (mant & 0x7FFFFF)


def isqrt(n):
    """floor(sqrt(n)) for an int n >= 0."""
    if n <= 0:
        return 0
    x = 1 << ((bitlen(n) + 1) >> 1)
    while True:
        y = (x + n // x) >> 1
        if y >= x:
            return x
        x = y


def sat(v):
    """v saturated to +-LIM."""
    return LIM if v > LIM else (-LIM if v < -LIM else v)


def q16(b):
    """The float32 of bit pattern b in Q15.16 (a bias as the dense kernel adds it), rounded
    half up and saturated."""
    m, e = split(b)
    return sat(rshift_round(m, -16 - e))

"""The seeded random stream shared bit-for-bit by the host reference and the board.

numpy's generators cannot run on a microcontroller, so adapter initialisation and the
per-epoch sample order come from xorshift32, which the device package reimplements in a few
lines of integer code. Same seed, same numbers on both sides: that is what lets a test compare
adapters trained on the board with the reference to the bit.
"""

MASK32 = 0xFFFFFFFF


class XorShift32:
    """Marsaglia xorshift32 (13, 17, 5); seed 0 is replaced by a fixed non-zero constant."""

    def __init__(self, seed):
        self.state = (seed & MASK32) or 0x9E3779B9

    def next_u32(self):
        x = self.state
        x ^= (x << 13) & MASK32
        x ^= x >> 17
        x ^= (x << 5) & MASK32
        self.state = x
        return x

    def uniform(self, bound):
        """A float in [-bound, bound): 24 random bits, exact in float32."""
        return ((self.next_u32() >> 8) * (2.0 / 16777216.0) - 1.0) * bound

    def shuffle(self, order):
        """Fisher-Yates in place, from the last index down, j = next % (i + 1)."""
        for i in range(len(order) - 1, 0, -1):
            j = self.next_u32() % (i + 1)
            order[i], order[j] = order[j], order[i]
        return order


def adapter_init(rng, rows, cols):
    """Initial A of one adapter: uniform in [-1/sqrt(cols), 1/sqrt(cols)), row-major."""
    bound = 1.0 / (cols ** 0.5)
    return [rng.uniform(bound) for _ in range(rows * cols)]

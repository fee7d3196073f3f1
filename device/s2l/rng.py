# xorshift32 (13, 17, 5): the same stream as host/skip2lora/training/rng.py, bit for bit.
# Small ints only: state kept as two 16-bit halves would be needed on a 30-bit small-int port
# to avoid heap longs, but MicroPython boards have long ints (mpz) so plain ints are used; it
# runs once per sample per epoch, never in an inner loop.
MASK32 = 0xFFFFFFFF


class XorShift32:
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
        return ((self.next_u32() >> 8) * (2.0 / 16777216.0) - 1.0) * bound

    def shuffle(self, order):
        for i in range(len(order) - 1, 0, -1):
            j = self.next_u32() % (i + 1)
            t = order[i]
            order[i] = order[j]
            order[j] = t
        return order


def adapter_init(rng, out, rows, cols):
    """Fill out (array, rows*cols) with the initial A of one adapter, row-major."""
    bound = 1.0 / (cols ** 0.5)
    for i in range(rows * cols):
        out[i] = rng.uniform(bound)
    return out

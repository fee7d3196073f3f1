"""Pinned values of the xorshift32 stream (host/skip2lora/training/rng.py, device/s2l/rng.py).

Host and board must draw the same numbers (adapter init, per-epoch shuffles) for a board's
adapters to be compared with the reference to the bit; these values are what both are held
to (tests/test_reference.py on the host, tests/device/test_device_rng.py on every board kind).
"""

SEED = 1
# XorShift32(1).next_u32() x 6. The first by hand: x = 1; x ^= x << 13 -> 8193;
# x ^= x >> 17 -> 8193; x ^= x << 5 -> 8193 ^ 262176 = 270369.
FIRST_U32 = [270369, 67634689, 2647435461, 307599695, 2398689233, 745495504]
# seed 0 is replaced by 0x9E3779B9
SEED0_U32 = [1359758873, 3761132862, 2075758394]
# adapter_init(XorShift32(1), 4, 3)[:5]: a 4 x 3 adapter (r = 4, d_1 = 3)
A0 = [-0.5772775894453507, -0.5591667056687937, 0.1344118267667426, -0.4946522140656105,
      0.06753648233389536]
# XorShift32(7).shuffle(list(range(10)))
SHUFFLE_7 = [0, 8, 4, 2, 6, 1, 5, 9, 7, 3]


def xorshift32_numpy(seed, n):
    """The stream computed with numpy uint32 arithmetic, independently of either rng.py."""
    import numpy as np
    x = np.uint32(seed or 0x9E3779B9)
    out = []
    with np.errstate(over="ignore"):
        for _ in range(n):
            x ^= np.uint32(x << np.uint32(13))
            x ^= np.uint32(x >> np.uint32(17))
            x ^= np.uint32(x << np.uint32(5))
            out.append(int(x))
    return out

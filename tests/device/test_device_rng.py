"""device/s2l/rng.py's XorShift32 on every interpreter kind (the unix port, and the
cortex-m0plus / cortex-m4f firmware under QEMU, whose small ints are 31-bit and whose floats
are float32) against the pinned values of tests/rng_pins.py and host/skip2lora/training/rng.py: the
board's adapter init and per-epoch shuffles are the host reference's, to the bit."""
import numpy as np
import pytest

import rng_pins as P
from mpyrun import KINDS, run
from skip2lora.training.rng import XorShift32, adapter_init

SEEDS = [1, 0, 7, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x123456789]  # the last is masked
N = 200

SCRIPT = r"""
from array import array
from binascii import hexlify
from s2l.rng import XorShift32, adapter_init
for seed in SEEDS:  # one line a seed, as packed u32: a board's heap holds no big lists
    r = XorShift32(seed)
    s = array("I", bytearray(4 * N))
    for i in range(N):
        s[i] = r.next_u32()
    RESULT(seed=seed, stream=hexlify(bytes(s)).decode())
    s = None
    gc.collect()
r = XorShift32(7)
shuffled = r.shuffle(list(range(10)))
after = r.next_u32()
a0 = adapter_init(XorShift32(1), array("f", bytearray(4 * 12)), 4, 3)
r = XorShift32(5)
u = array("f", [r.uniform(0.25) for _ in range(N)])
RESULT(shuffled=shuffled, after=after, a0=hexlify(bytes(a0)).decode(),
       uniform=hexlify(bytes(u)).decode(), double=1.0 + 2.0 ** -40 != 1.0)
"""


def f32(hexbytes):
    return np.frombuffer(bytes.fromhex(hexbytes), "<f4")


@pytest.mark.parametrize("kind", KINDS)
def test_xorshift32_on_the_board_equals_the_pins_and_the_host(tmp_path, kind):
    res, _ = run("SEEDS = %r\nN = %d\n" % (SEEDS, N) + SCRIPT, tmp_path, kind=kind)
    streams = {r["seed"]: np.frombuffer(bytes.fromhex(r["stream"]), "<u4").tolist()
               for r in res[:-1]}
    assert sorted(streams) == sorted(SEEDS)
    got = res[-1]
    assert got["double"] == (kind == "unix")  # the boards really compute in float32
    for seed in SEEDS:
        host = XorShift32(seed)
        want = [host.next_u32() for _ in range(N)]
        assert streams[seed] == want == P.xorshift32_numpy(seed & 0xFFFFFFFF, N), seed
    assert streams[1][:6] == P.FIRST_U32
    assert streams[0][:3] == P.SEED0_U32
    host = XorShift32(7)
    assert got["shuffled"] == host.shuffle(list(range(10))) == P.SHUFFLE_7
    assert got["after"] == host.next_u32()  # shuffle drew exactly 9 numbers, as on the host
    # adapter init: the pinned float64 values, stored in float32 arrays. The draw is exact in
    # float32; on the boards bound and the product are float32 too: measured one ulp off on
    # some values (-0.55916667 for -0.55916673), never more
    a0 = f32(got["a0"])
    want = np.array(adapter_init(XorShift32(1), 4, 3), np.float32)
    assert want[:5].tolist() == np.array(P.A0, np.float32).tolist()
    if kind == "unix":
        assert a0.tolist() == want.tolist()
    else:
        assert np.all(np.abs(a0 - want) <= np.spacing(np.abs(want))), (a0, want)
    host = XorShift32(5)
    u = np.array([host.uniform(0.25) for _ in range(N)], np.float32)  # bound a power of 2:
    assert f32(got["uniform"]).tolist() == u.tolist()                 # exact on every kind

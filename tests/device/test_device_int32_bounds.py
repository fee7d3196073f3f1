"""The fixed-point kernels cannot overflow a 32-bit viper int.

The unix port's viper ints are 64 bits, so a kernel that overflows int32 still gives the right
answer here and the wrong one on a board. This test runs the device's own pure-Python kernels
(device/s2l/kernels_py.py, the line-by-line twin of kernels_viper.py) on CPython with every
value wrapped in I32, an int that raises as soon as any intermediate leaves the int32 range,
on the worst-case inputs the trainer can produce (docs/device.md, "Bounds"). It then runs the
viper kernels on the same inputs on the MicroPython unix port and on the 32-bit Cortex-M
firmware (tests/device/mpyrun.py) and requires identical results, so the viper code computes
exactly what was checked.
"""
import importlib.util
import json

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
              "__xor__", "__rxor__", "__or__", "__ror__"):
    setattr(I32, _name, _op(_name))
I32.__neg__ = lambda self: I32(-int(self))


def _kernels_py():
    spec = importlib.util.spec_from_file_location("kernels_py", DEVICE / "s2l" / "kernels_py.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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
for d in (1, 512, 513, 4096):
    for sign in (1, -1):
        for sh in (-3, 0, 10, 24):
            CASES.append(("adapter_u", [[sign * A16_MAX] * d, [-128] * d, d, _ps(d), sh]))
for d_in in (512, 4096):
    for n in (8, 15, 16, 40):
        for bias in (LIM, -LIM):
            CASES.append(("dense_q16", [[-128] * (2 * d_in), [-128] * d_in, d_in, 0, 2,
                                        [32767, 32767], [n, n], [bias, bias], [0, 0], 0]))
for v in (LIM, -LIM, 0):
    for n in (16, 30):
        CASES.append(("requant8", [[v, -v, 1], 3, 32767, n, 1, [0, 0, 0], 0]))
        CASES.append(("requant8", [[v, -v, 1], 3, 32767, n, 0, [0, 0, 0], 0]))
for C, r in ((3, 4), (255, 64)):
    for y0 in (LIM, -LIM):
        for sign in (1, -1):
            CASES.append(("logits_bu", [[sign * A16_MAX] * (C * r), [32767] * r, C, r,
                                        [y0] * C, 0]))
    # bg: the largest |sum_c B[c,j] G[c]| the softmax can produce
    G = [-16384] + [(16384 + C // 2) // (C - 1) + 1] * (C - 1)
    for t in (6,):
        CASES.append(("bg", [[A16_MAX] * (C * r), G, C, r, 32767, t, [0] * r]))
        CASES.append(("bg", [[-A16_MAX] * (C * r), G, C, r, 32767, t, [0] * r]))
    for sh in (-4, 1, 2, 10):
        for b0 in (LIM, -LIM):
            CASES.append(("upd_b", [[b0] * (C * r), [0] * (C * r), [16384] * C, [-32767] * r, C,
                                    r, sh, 1, 0]))
            CASES.append(("upd_b", [[b0] * (C * r), [0] * (C * r), [-16384] * C, [32767] * r, C,
                                    r, sh, 1, 0]))
E_MAX = ((A16_MAX * (2 * 16384 + 128)) >> 15) * 32767 >> 6  # bound on e from bg (t = 6)
for d in (8, 512):
    for sh in (-3, 1, 6):
        for a0 in (LIM, -LIM):
            for e in (E_MAX, -E_MAX):
                CASES.append(("upd_a", [[a0] * d, [0] * d, [-128] * d, e, d, sh, 1, 0]))
                CASES.append(("upd_a", [[a0] * d, [0] * d, [127] * d, e, d, sh, 1, 0]))


def _wrap(args):
    return [w(a) if isinstance(a, list) else I32(a) for a in args]


def _run_py(name, args):
    args = _wrap(args)
    ret = getattr(K, name)(*args)
    outs = [list(map(int, a)) for a in args if isinstance(a, list)]
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
from s2l import kernels_viper as K
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
        if name in ("dense_q16", "requant8", "logits_bu", "upd_b", "upd_a"):
            conv[-1] = SX
        args = types = line = None
        ret = getattr(K, name)(*conv)
        out.write(json.dumps({"ret": ret, "outs": [rle(a) for a in conv
                                                   if not isinstance(a, int)]}) + "\n")
        conv = mv = None
        gc.collect()
f.close()
RESULT(sx=SX)
"""


TYPES = {"adapter_u": ["h", "b"], "dense_q16": ["b", "b", None, None, None, "i", "B", "i", "i"],
         "requant8": ["i", None, None, None, None, "b"], "logits_bu": ["h", "h", None, None, "i"],
         "bg": ["h", "h", None, None, None, None, "i"],
         "upd_b": ["i", "h", "h", "h"], "upd_a": ["i", "h", "b"]}


@pytest.mark.parametrize("kind", KINDS)
def test_viper_kernels_equal_checked_twin(tmp_path, kind):
    """On the unix port (64-bit viper ints, SX=32) and on the 32-bit boards (SX=0, where an
    overflow wraps silently)."""
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
    res, _ = run(VIPER, tmp_path, heap="16M", kind=kind, deploy="py" if kind == "unix" else "mpy")
    assert res == [{"sx": 32 if kind == "unix" else 0}]
    got = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(got) == len(cases)
    for i, ((name, args, _), g) in enumerate(zip(cases, got)):
        want = _checked(i)
        assert g["ret"] == want["ret"], (name, g["ret"], want["ret"])
        assert g["outs"] == [rle(o) for o in want["outs"]], name

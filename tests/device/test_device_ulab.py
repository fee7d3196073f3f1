"""The ulab kernels (device/s2l/kernels_ulab.py) give kernels_py.py's integers, on the two
interpreters that have ulab: CircuitPython 10.3 (ulab 6.5.3, no viper) and MicroPython with
ulab 6.12 (../shared/platforms, tests/device/mpyrun.py kinds "circuitpython" and
"micropython-ulab").

Both unix builds compute ulab floats in double, which would hide a float32 rounding; the
kernels are exact on a float32 board because every ulab dot they take sums terms whose
absolute values total at most 2**22 (docs/device.md, "ulab kernels"). The worst-case test
checks that bound on every dot the kernels take, through a stand-in for ulab's dot that
measures it, besides comparing the integers.
"""
import json
import random

import numpy as np
import pytest

from mpyrun import PLATFORM_UNIX_KINDS, run
from test_device_int32_bounds import (CASES, E_MAX, LIM, ROW_CASES, ROWS, SHA_RANGE, SHU_RANGE,
                                      TYPES, row_cases_file, row_results_match)
from skip2lora.model import formats as F
from skip2lora.model.compiler import compile_network
from skip2lora.model.network import Dense, Network

ULAB_KINDS = PLATFORM_UNIX_KINDS  # ("circuitpython", "micropython-ulab")
# the kernels kernels_ulab.py runs on ulab itself (the others are kernels_py's functions)
ULAB_KERNELS = ("dense_q16", "dot_a16x8", "adapter_u")


def _random_cases(seed=13):
    """Random rows at the lengths where the chunking changes (127/128 fall back to Python or
    not, 256/257 and 512/513 add a chunk, 4096 is MAX_DIM), random codes and A16 values."""
    rnd = random.Random(seed)
    out = []
    for d in (1, 127, 128, 129, 255, 256, 257, 300, 512, 513, 1000, 4096):
        ps = 0
        while (512 << ps) < d:
            ps += 1
        for lim in (16384, 32767):
            A = [rnd.randint(-lim, lim) for _ in range(d)]
            x = [rnd.randint(-128, 127) for _ in range(d)]
            out.append(("dot_a16x8", [A, x, d, ps]))
            out.append(("adapter_u", [A, x, d, ps, rnd.randint(-15, 32)]))
        nr = rnd.randint(1, 5)
        W = [rnd.randint(-128, 127) for _ in range(nr * d)]
        x = [rnd.randint(-128, 127) for _ in range(d)]
        j0 = rnd.randint(0, 2)
        C = j0 + nr
        M = [rnd.randint(16384, 32767) for _ in range(C)]
        N = [rnd.randint(-15, 46) for _ in range(C)]
        B = [rnd.randint(-(1 << 29), 1 << 29) for _ in range(C)]
        out.append(("dense_q16", [W, x, d, j0, nr, M, N, B, [0] * C, 0]))
    return out


# Board code for both scripts: kernels_ulab's numpy replaced by ulab's with a dot that records
# sum |a_k b_k| (what bounds every partial sum the dot can form, in any order, and its result)
CHECKED_NP = r"""
from ulab import numpy as real_np
worst = [0]
calls = [0]


class CheckedNp:
    def __getattr__(self, name):
        return getattr(real_np, name)

    def dot(self, a, b):
        calls[0] += 1
        s = real_np.dot(abs(a * 1.0), abs(b * 1.0))
        s = real_np.max(s) if isinstance(s, real_np.ndarray) else s
        if s > worst[0]:
            worst[0] = s
        return real_np.dot(a, b)


U.np = CheckedNp()
"""

COMPARE = r"""
from array import array
from s2l import kernels_py as P
import s2l.kernels_ulab as U
""" + CHECKED_NP + r"""
LIMIT = 1 << 22
shared = [k for k in ("requant8", "logits_bu", "bg", "upd_b", "upd_a", "to_f32", "absmax_f32",
                      "quant_f32") if getattr(U, k) is not getattr(P, k)]
bad = []
n = 0
for line in open("cases.jsonl"):
    name, args, types = json.loads(line)
    outs = []
    for impl in (P, U):
        conv = [array(t, a) if t else a for a, t in zip(args, types)]
        ret = getattr(impl, name)(*conv)
        outs.append([ret] + [list(a) for a in conv if not isinstance(a, int)])
    if outs[0] != outs[1]:
        bad.append([n, name])
    n += 1
    conv = outs = None
    gc.collect()
RESULT(n=n, bad=bad[:20], worst=worst[0], dots=calls[0], name=U.NAME, not_shared=shared)
"""


@pytest.mark.parametrize("kind", ULAB_KINDS)
def test_ulab_kernels_give_the_python_integers(tmp_path, kind):
    """Every worst case of the int32 proof and random rows: the same return value and the
    same output arrays as kernels_py, and no dot ever sums more than 2**22 in magnitude."""
    cases = [(n, a) for n, a in CASES if n in ULAB_KERNELS] + _random_cases()
    lines = []
    for name, args in cases:
        types = TYPES[name] + [None] * (len(args) - len(TYPES[name]))
        lines.append(json.dumps([name, args, types]))
    (tmp_path / "cases.jsonl").write_text("\n".join(lines) + "\n")
    res, _ = run(COMPARE, tmp_path, heap="16M", kind=kind, timeout=600)
    (r,) = res
    assert r["name"] == "ulab" and r["not_shared"] == []  # the rest are kernels_py's own
    assert r["n"] == len(cases) and r["bad"] == [], r["bad"]
    # the dots ran (not only the Python fallbacks), up to the bound and never past it
    assert r["dots"] > 1000
    assert r["worst"] == 1 << 22  # reached: 256 codes of -128 times 256 weights of -128


def _random_row_cases(seed=7):
    """Rows the Trainer gives (masters well inside +-LIM, steps up to E_MAX, any shift of the
    ranges), in blocks of one, two and four rows, both row kernels."""
    rnd = random.Random(seed)
    out = []
    for d, k in ((64, 4), (128, 4), (200, 2), (512, 1), (513, 1)):
        r = 4
        for _ in range(6):
            sh = rnd.randint(*SHA_RANGE)
            A = [[rnd.randint(-LIM, LIM) >> rnd.randint(1, 12) for _ in range(d)]
                 for _ in range(r)]
            E = [rnd.randint(-E_MAX, E_MAX) >> rnd.randint(0, 16) for _ in range(r)]
            X = [rnd.randint(-128, 127) for _ in range(d)]
            out.append(("upd_a_rows", A, [[0] * d for _ in range(r)], X, E, d, sh, r, k))
            A16 = [[rnd.randint(-16384, 16384) for _ in range(d)] for _ in range(r)]
            out.append(("adapter_u_rows", A16, None, X, None, d, rnd.randint(*SHU_RANGE), r,
                        k))
    return out


ROWS_ULAB = ROWS.replace("from s2l.kernels import SX\n", "from s2l.kernels import SX\n" + r"""
import s2l.kernels_ulab as U
from s2l import kernels_py as P
""" + CHECKED_NP + r"""
rows_py = [0]
_row = P.upd_a


def counted(*a):  # a row upd_a_rows leaves to kernels_py
    rows_py[0] += 1
    return _row(*a)


P.upd_a = counted
""").replace("kernels.get(BACKEND)", "kernels.get('ulab')") + """
RESULT(worst=worst[0], dots=calls[0], rows_py=rows_py[0])
"""


@pytest.mark.parametrize("kind", ULAB_KINDS)
def test_ulab_row_kernels_give_the_rows_integers(tmp_path, kind, monkeypatch):
    """upd_a_rows and adapter_u_rows on ulab: the worst rows of the int32 proof and rows the
    Trainer gives, the integers of kernels_py's row kernels row by row; adapter_u_rows' dots
    reach 2**22 and never pass it; most upd_a_rows rows take the int16 path, not Python."""
    import test_device_int32_bounds as B
    cases = ROW_CASES + _random_row_cases()
    monkeypatch.setattr(B, "ROW_CASES", cases)  # row_cases_file writes these
    row_cases_file(tmp_path / "cases.jsonl")
    res, _ = run(ROWS_ULAB, tmp_path, heap="16M", kind=kind, timeout=600)
    *got, stats = res
    assert len(got) == len(cases)
    bad = [i for i, (c, g) in enumerate(zip(cases, got)) if not row_results_match(c, g)]
    assert bad == []
    assert stats["dots"] > 30 and stats["worst"] == 1 << 22  # 64 * 128 * 512: hi of +-16384
    rows = sum(c[7] for c in cases if c[0] == "upd_a_rows")
    assert stats["rows_py"] < rows // 2  # the saturating steps past the bound, and d = 8


def _network(dims, seed=0):
    rng = np.random.default_rng(seed)
    return Network([Dense(rng.standard_normal((dims[i + 1], dims[i])).astype(np.float32)
                          / np.sqrt(dims[i]), 0.1 * rng.standard_normal(dims[i + 1])
                          .astype(np.float32)) for i in range(len(dims) - 1)])


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A 300-160-3 int8 model (rows past 256 and 128: every ulab path runs) and 24 samples
    with a label the network does not give for a quarter of them."""
    d = tmp_path_factory.mktemp("ulab")
    dims = (300, 160, 3)
    net = _network(dims)
    F.write_model(d / "model.s2lm", compile_network(net, dtype="int8", rank=4))
    x = np.random.default_rng(1).standard_normal((24, dims[0])).astype(np.float32)
    y = (np.argmax(net.forward(x), axis=1) + (np.arange(24) % 4 == 0)) % 3
    F.write_dataset(d / "data.s2ld", F.dataset_from_arrays(x, y, 3, F.DTYPE_I8))
    return d


TRAIN = r"""
from s2l import Trainer
for backend in BACKENDS:
    t = Trainer("model.s2lm", "data.s2ld", method="skip2lora", backend=backend, lr=0.05,
                batch_size=2, targets="all", cache=backend + ".s2lc", rank=4, log=None)
    t.fit(3)
    t.save(backend + ".s2la")
    RESULT(backend=t.backend, acc=t.history[-1]["acc"])
    t.close()
    t = None
    gc.collect()
"""


def _train(folder, kind, backends):
    res, _ = run("BACKENDS = %r\n" % (backends,) + TRAIN, folder, kind=kind, heap="1M",
                 timeout=600)
    assert [r["backend"] for r in res] == list(backends)
    return {b: [(folder / (b + ext)).read_bytes() for ext in (".s2la", ".s2la.state", ".s2lc")]
            for b in backends}


@pytest.fixture(scope="module")
def viper_bytes(wide):
    """The unix port's viper run: the reference every ulab run must equal byte for byte."""
    return _train(wide, "unix", ("viper",))["viper"]


@pytest.mark.parametrize("kind", ULAB_KINDS)
def test_training_with_ulab_writes_the_bytes_of_viper_and_py(wide, viper_bytes, kind,
                                                             tmp_path):
    for f in ("model.s2lm", "data.s2ld"):
        (tmp_path / f).write_bytes((wide / f).read_bytes())
    got = _train(tmp_path, kind, ("ulab", "py"))
    assert got["ulab"] == got["py"]  # adapters, .state masters and Skip-Cache
    assert got["ulab"] == viper_bytes


PICK = r"""
from s2l import kernels
RESULT(auto=kernels.get().NAME, available=kernels.available())
try:
    kernels.get("ulab")
    RESULT(error=None)
except ImportError as e:
    RESULT(error=str(e))
"""


@pytest.mark.parametrize("kind,auto,available,error", [
    ("circuitpython", "ulab", ["ulab", "py"], None),
    ("micropython-ulab", "viper", ["viper", "ulab", "py"], None),
    ("unix", "viper", ["viper", "py"], "backend 'ulab': this firmware has no ulab"),
])
def test_auto_picks_viper_then_ulab_then_python(tmp_path, kind, auto, available, error):
    res, _ = run(PICK, tmp_path, kind=kind)
    assert res[0] == {"auto": auto, "available": available}
    if error is None:
        assert res[1] == {"error": None}
    else:
        assert res[1]["error"].startswith(error) and "\n" not in res[1]["error"]


@pytest.fixture(scope="module")
def unix_board(tmp_path_factory):
    """A virtual board on the MicroPython unix port (viper, no ulab) with a small int8 model."""
    from skip2lora import cli
    from skip2lora.board.virtual import VirtualBoard

    d = tmp_path_factory.mktemp("ulabcli")
    net = _network((16, 12, 3))
    F.write_model(d / "int8.s2lm", compile_network(net, dtype="int8", rank=4))
    x = np.random.default_rng(1).random((12, 16)).astype(np.float32)
    np.savez(d / "data.npz", x=x, y=np.arange(12) % 3)
    with VirtualBoard(d / "flash.img", heap="192K", flash="2M", run_dir=d / "run") as vb:
        assert cli.main(["flash", str(d / "int8.s2lm"), "--port", vb.port]) == 0
        yield vb, d


def test_backend_ulab_on_a_board_without_ulab_is_one_line(capsys, unix_board):
    from cli_helpers import one_line_error, run_cli

    vb, d = unix_board
    capsys.readouterr()
    code, out, err = run_cli(capsys, "finetune", "--port", vb.port, "--data", d / "data.npz",
                             "--lr", "0.01", "--epochs", "1", "--backend", "ulab")
    assert code != 0
    line = one_line_error(err, "backend 'ulab': this firmware has no ulab", "backend auto")
    assert "Traceback" not in out + err and "no module named" in line

"""The device package on the CircuitPython interpreter (mpyrun kind "circuitpython").

CircuitPython 10.3's unix port (../shared/platforms/circuitpython), made to look like a board by
mpyrun's prelude: no viper, no time.ticks_*, a `supervisor` module, `array` values range-checked.
Every expected value comes from the MicroPython unix port running the same script (its viper
fixed path, float path, file writer) or from numpy on the host, never from a CircuitPython run:
the fixed-point path must give the same bytes everywhere, so pure Python on CircuitPython equals
viper on MicroPython byte for byte. Fixtures are small: pure Python on CircuitPython is slow.
"""
import numpy as np
import pytest

from mpyrun import DEVICE, FIXTURES, run
from skip2lora.model import formats as F
from test_device_kinds import make_dataset
from test_device_predict import host_logits
from test_export import make_model

CP = "circuitpython"
READ_ONLY = ("filesystem is read-only (CircuitPython: remount it writable in boot.py or call "
             "storage.unsafe_disable_usb_drive())")


@pytest.fixture
def boarddir(tmp_path):
    (tmp_path / "model-int8.s2lm").write_bytes((FIXTURES / "model-int8.s2lm").read_bytes())
    make_dataset(tmp_path / "d.s2ld")
    return tmp_path


# ------------------------------------------------------------------ the board's clock

def test_interpreter_has_a_boards_clock_and_the_package_uses_it(tmp_path):
    """No time.ticks_* (as on a board), supervisor.ticks_ms() 29 bits wide starting 65.536 s
    before its wrap; the package's clock is supervisor's, and its ticks_diff crosses the wrap."""
    res, _ = run(r"""
import time, supervisor
RESULT(impl=sys.implementation.name,
       hidden=[n for n in ("ticks_ms", "ticks_us", "ticks_diff", "ticks_add", "ticks_cpu")
               if hasattr(time, n)],
       has=[n for n in ("monotonic", "monotonic_ns", "sleep", "time", "localtime")
            if hasattr(time, n)],
       ticks=supervisor.ticks_ms())
from s2l import compat
RESULT(same=compat.ticks_ms is supervisor.ticks_ms,
       diffs=[compat.ticks_diff(5, (1 << 29) - 5), compat.ticks_diff((1 << 29) - 5, 5),
              compat.ticks_diff(1000, 400)])
a = compat.ticks_us(); time.sleep(0.02); b = compat.ticks_us()
RESULT(us=compat.ticks_us_diff(b, a))
""", tmp_path, kind=CP)
    assert res[0]["impl"] == "circuitpython"
    assert res[0]["hidden"] == []
    assert res[0]["has"] == ["monotonic", "monotonic_ns", "sleep", "time", "localtime"]
    assert (1 << 29) - (1 << 16) <= res[0]["ticks"] < (1 << 29) - (1 << 16) + 5000
    assert res[1] == {"same": True, "diffs": [10, -10, 600]}
    assert 20000 <= res[2]["us"] < 500000


# ------------------------------------------------------------------ loading and predicting

def test_model_wider_than_127_loads_and_predicts_as_numpy(tmp_path):
    """An int8 model with 16*24 = 384 weights in its first layer: its arrays are built by
    formats.empty(), which CircuitPython's range-checked array refused past 127 values."""
    path, mf = make_model(tmp_path, "int8", seed=4, name="w.s2lm", dims=(24, 16, 3))
    x = np.random.default_rng(2).uniform(-1, 1, (3, 24))
    res, _ = run("from s2l import Model\nm = Model('w.s2lm')\nfor x in %r:\n"
                 "    RESULT(logits=list(m.forward(x)), cls=m.predict(x))\n" % x.tolist(),
                 tmp_path, kind=CP)
    want = host_logits(mf, None, x)
    np.testing.assert_allclose([r["logits"] for r in res], want, rtol=1e-5, atol=1e-5)
    assert [r["cls"] for r in res] == list(np.argmax(want, axis=1))


# ------------------------------------------------------------------ training: the unix port's bytes

def every_method_script(fixed_backend):
    """Each board method, 2 epochs on the int8 fixture model; the skip methods on the fixed
    path with `fixed_backend`, the others in float."""
    s = "from s2l import Trainer\n"
    for m in ("skip2lora", "skip-lora", "lora-all", "ft-last"):
        backend = fixed_backend if m in ("skip2lora", "skip-lora") else None
        s += ("t = Trainer('model-int8.s2lm', 'd.s2ld', method=%r, rank=2, lr=1/16, batch_size=2,"
              " seed=3, backend=%r, cache='%s.s2lc', log=None)\n"
              "t.fit(2)\nt.save('%s.s2la')\nRESULT(method=%r, backend=t.backend)\n"
              "t = None\ngc.collect()\n" % (m, backend, m, m, m))
    return s


METHOD_FILES = ["skip2lora.s2la", "skip2lora.s2la.state", "skip2lora.s2lc", "skip-lora.s2la",
                "skip-lora.s2la.state", "lora-all.s2la", "ft-last.s2la"]


def test_every_method_gives_the_unix_ports_bytes(boarddir, tmp_path_factory):
    """skip2lora and skip-lora on pure Python (CircuitPython has no viper) write the adapters,
    .state and Skip-Cache of the unix port's viper run; lora-all and ft-last (float path, double
    floats on both unix ports) those of the unix port's float run."""
    unix = tmp_path_factory.mktemp("unix")
    for p in boarddir.iterdir():
        (unix / p.name).write_bytes(p.read_bytes())
    want, _ = run(every_method_script("viper"), unix)
    got, _ = run(every_method_script("py"), boarddir, kind=CP)
    assert [r["backend"] for r in want] == ["viper", "viper", "float", "float"]
    assert [r["backend"] for r in got] == ["py", "py", "float", "float"]
    written = sorted(p.name for p in boarddir.iterdir() if p.suffix != ".py")
    assert written == sorted(["model-int8.s2lm", "d.s2ld"] + METHOD_FILES)
    assert sorted(p.name for p in unix.iterdir() if p.suffix != ".py") == written
    assert [
        n for n in METHOD_FILES if (boarddir / n).read_bytes() != (unix / n).read_bytes()] == []
    assert F.read_adapters(boarddir / "ft-last.s2la").epochs_done == 2


def test_default_backend_is_ulab(boarddir):
    """Without backend= the Trainer picks the fastest the interpreter has: this build has ulab
    and no viper."""
    res, _ = run("from s2l import Trainer\nt = Trainer('model-int8.s2lm', 'd.s2ld', log=None)\n"
                 "RESULT(backend=t.backend)\n", boarddir, kind=CP)
    assert res[0]["backend"] == "ulab"


def test_save_and_resume_equal_the_unix_ports_straight_run(boarddir, tmp_path_factory):
    """fit 2 + save, then a new Trainer restores and fits 1 more, on CircuitPython == 3 epochs
    straight on the unix port (viper): same adapters, .state and cache."""
    def fit(out, epochs, backend, restore=None):
        return ("t = Trainer('model-int8.s2lm', 'd.s2ld', rank=2, lr=1/16, seed=3, backend=%r,"
                " cache='c.s2lc', log=None)\n%st.fit(%d)\nt.save(%r)\n"
                "RESULT(epochs=t.epochs_done, built=t.cache_built)\nt = None\ngc.collect()\n"
                % (backend, "t.restore(%r)\n" % restore if restore else "", epochs, out))
    unix = tmp_path_factory.mktemp("unix")
    for p in boarddir.iterdir():
        (unix / p.name).write_bytes(p.read_bytes())
    run("from s2l import Trainer\n" + fit("r.s2la", 3, "viper"), unix)
    res, _ = run("from s2l import Trainer\n" + fit("r.s2la", 2, "py")
                 + fit("r.s2la", 1, "py", restore="r.s2la"), boarddir, kind=CP)
    assert res == [{"epochs": 2, "built": True}, {"epochs": 3, "built": False}]
    for name in ("r.s2la", "r.s2la.state", "c.s2lc"):
        assert (boarddir / name).read_bytes() == (unix / name).read_bytes(), name


# ------------------------------------------------------------------ collecting samples

APPEND = r"""
from s2l import Dataset
d = Dataset.create('n.s2ld', 8, 3, dtype='int8', scale=0.25)
for k in range(4):
    d.append([((k * 5 + j * 3) % 13 - 6) / 5.0 for j in range(8)], k % 3)
d.close()
d = Dataset('n.s2ld')
RESULT(n=len(d), labels=[d.read(k) for k in range(len(d))], x3=list(d.x))
"""


def test_append_collects_samples_as_the_unix_port(tmp_path, tmp_path_factory):
    """Dataset.create + append on CircuitPython: the host reads back the features quantized
    as numpy says (round(x / scale), clipped to +-127), and the file is the unix port's."""
    res, _ = run(APPEND, tmp_path, kind=CP)
    x = np.array([[((k * 5 + j * 3) % 13 - 6) / 5.0 for j in range(8)] for k in range(4)])
    q = np.clip(np.round(x / 0.25), -127, 127)
    assert res == [{"n": 4, "labels": [0, 1, 2, 0], "x3": q[3].astype(int).tolist()}]
    ds = F.read_dataset(tmp_path / "n.s2ld")
    assert ds.dtype == F.DTYPE_I8 and ds.scale == 0.25
    np.testing.assert_array_equal(ds.features, q)
    np.testing.assert_array_equal(ds.labels, [0, 1, 2, 0])
    unix = tmp_path_factory.mktemp("unix")
    run(APPEND, unix)
    assert (tmp_path / "n.s2ld").read_bytes() == (unix / "n.s2ld").read_bytes()


# ------------------------------------------------------------------ a read-only filesystem

def test_read_only_filesystem_says_how_to_make_it_writable(boarddir):
    """With the drive read-only (USB holds it; every write raises OSError 30), each write of the
    package is one S2LError naming the file and the remount; a refused append leaves the
    dataset readable."""
    (boarddir / "a.s2la").write_bytes((FIXTURES / "adapters.s2la").read_bytes())
    res, _ = run(r"""
from s2l import Trainer, Dataset, S2LError
def attempt(what, f):
    try:
        f()
        RESULT(what=what, err=None)
    except S2LError as e:
        RESULT(what=what, err=str(e))
t = Trainer('model-int8.s2lm', 'd.s2ld', rank=2, backend='py', cache='c.s2lc', log=None)
attempt('cache', lambda: t.fit(1))
t2 = Trainer('model-int8.s2lm', 'd.s2ld', rank=2, backend='py', cache=None, method='skip-lora',
             log=None)
t2.fit(1)
attempt('save', lambda: t2.save('a.s2la'))
attempt('create', lambda: Dataset.create('n.s2ld', 8, 3))
d = Dataset('d.s2ld')
attempt('append', lambda: d.append([0.0] * 8, 1))
RESULT(n=len(d), label=d.read(35))
""", boarddir, kind=CP, read_only=True)
    assert res[:4] == [{"what": "cache", "err": "c.s2lc.tmp: " + READ_ONLY},
                       {"what": "save", "err": "a.s2la.tmp: " + READ_ONLY},
                       {"what": "create", "err": "n.s2ld: " + READ_ONLY},
                       {"what": "append", "err": "d.s2ld: " + READ_ONLY}]
    assert res[4] == {"n": 36, "label": 35 % 3}
    assert (boarddir / "a.s2la").read_bytes() == (FIXTURES / "adapters.s2la").read_bytes()
    assert not (boarddir / "n.s2ld").exists()


def test_finetune_job_on_a_read_only_drive_is_one_line(boarddir):
    """The board side of `skip2lora finetune` (s2l.job) on a read-only drive: the Skip-Cache
    is its first write, and the job ends with the one-line read-only S2LError, no adapters."""
    res, _ = run(r"""
from s2l import job, S2LError
try:
    job.finetune('model-int8.s2lm', 'd.s2ld', 'a.s2la', cache='c.s2lc', epochs=1, rank=2)
    RESULT(err=None)
except S2LError as e:
    RESULT(err=str(e))
""", boarddir, kind=CP, read_only=True)
    assert res == [{"err": "c.s2lc.tmp: " + READ_ONLY}]
    assert sorted(p.name for p in boarddir.iterdir() if p.suffix != ".py") == [
        "d.s2ld", "model-int8.s2lm"]


def test_mpy_is_refused_on_circuitpython(tmp_path):
    """CircuitPython refuses MicroPython's .mpy: the runner deploys only .py there."""
    with pytest.raises(ValueError, match="deploy='py' only"):
        run("", tmp_path, kind=CP, deploy="mpy")


# ------------------------------------------------------------------ the README's recipe

RECIPE = DEVICE / "circuitpython"


def test_recipe_boot_py_remounts_the_drive_writable(tmp_path):
    """device/circuitpython/boot.py, run as CircuitPython runs it at power-on, with `storage`
    stubbed as on a board: one remount of "/" writable to code."""
    res, _ = run(r"""
calls = []
class storage:
    def remount(*a, **kw):
        calls.append([list(a), kw])
sys.modules["storage"] = storage
exec(open(%r).read(), {})
RESULT(calls=calls)
""" % str(RECIPE / "boot.py"), tmp_path, kind=CP)
    assert res == [{"calls": [[["/"], {"readonly": False}]]}]


@pytest.mark.parametrize("read_only", [False, True])
def test_recipe_code_py_says_the_kernels_and_the_drive(tmp_path, read_only):
    """device/circuitpython/code.py on the CircuitPython interpreter (which has ulab, no
    viper): it names ulab, and says whether the drive is writable."""
    _, out = run("exec(open(%r).read(), {})\n" % str(RECIPE / "code.py"), tmp_path, kind=CP,
                 read_only=read_only)
    lines = out.splitlines()
    assert lines[0].startswith("s2l 0.1.0 on "), out
    assert lines[1] == "kernels: ulab (available: ulab, py)", out
    assert lines[2] == ("filesystem: read-only to code; copy boot.py to the board and reset it"
                        if read_only else "filesystem: writable"), out


def test_readme_recipe_copies_a_package_that_boots_and_picks_ulab(tmp_path):
    """The README's "On a CircuitPython board" commands, run with a folder for the CIRCUITPY
    drive; then the drive boots as a board does (boot.py with a stub `storage`, code.py) on the
    CircuitPython interpreter with the drive's /lib on the path."""
    import re
    import subprocess

    readme = (DEVICE.parent / "README.md").read_text()
    section = readme[readme.index("## On a CircuitPython board"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    commands = [c for c in commands if c]
    assert [c.split()[0] for c in commands] == ["cp", "cp", "cp"], block
    drive = tmp_path / "CIRCUITPY"
    (drive / "lib").mkdir(parents=True)
    for c in commands:
        subprocess.run(c.replace("/media/$USER/CIRCUITPY", str(drive)), shell=True, check=True,
                       cwd=DEVICE.parent)
    assert sorted(p.name for p in drive.iterdir()) == ["boot.py", "code.py", "lib"]
    assert (drive / "lib" / "s2l" / "train.py").is_file()
    _, out = run("class storage:\n    def remount(*a, **kw):\n        print('remount', a, kw)\n"
                 "sys.modules['storage'] = storage\n"
                 "exec(open('boot.py').read(), {})\nexec(open('code.py').read(), {})\n",
                 drive, kind=CP, device_dir=drive / "lib")
    lines = out.splitlines()
    assert lines[0] == "remount ('/',) {'readonly': False}", out
    assert lines[2:] == ["kernels: ulab (available: ulab, py)", "filesystem: writable"], out

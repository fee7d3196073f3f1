"""The divergence guard (device/s2l/guard.py) on the MicroPython unix port: an lr far too large
stops training at once, in the epoch it diverges, on every path (fixed viper and python, float
lora-all, ft-last and skip2lora); the adapters (and .state) saved before stay on flash byte for
byte; the job says `S2L diverged=<epoch> loss= kept=`; a fresh run's divergence leaves no
adapters at all, not even an older run's. A healthy run never loads guard.py while its loss
stays below ln C, and one that starts above it is not stopped.
"""
import numpy as np
import pytest

from mpyrun import run
from skip2lora.board.link import parse_progress
from skip2lora.model import formats as F
from skip2lora.model.compiler import compile_network
from skip2lora.model.network import Dense, Network

DIMS = (16, 12, 8, 3)
N = 24
SANE, HUGE = 1 / 64, 1000.0


def _network(gain=1.0):
    rng = np.random.default_rng(0)
    return Network([Dense(gain * rng.standard_normal((DIMS[i + 1], DIMS[i])).astype(np.float32)
                          / np.sqrt(DIMS[i]), np.zeros(DIMS[i + 1], np.float32))
                    for i in range(3)])


def _data():
    """Random spectra labelled by the network itself, a quarter of them moved to the next class
    (something to learn): the frozen network's loss is about ln 3, as a drifted model's."""
    x = np.random.default_rng(1).random((N, DIMS[0])).astype(np.float32)
    y = (np.argmax(_network().forward(x), axis=1) + (np.arange(N) % 4 == 0)) % 3
    return x, y


def frozen_loss_numpy(y=None, gain=1.0):
    """The frozen float network's mean cross-entropy on the data, in numpy (not the board's)."""
    x, labels = _data()
    labels = labels if y is None else y
    z = _network(gain).forward(x).astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(N), labels]))


@pytest.fixture
def work(tmp_path):
    net = _network()
    for dtype in ("int8", "f32"):
        F.write_model(tmp_path / f"m-{dtype}.s2lm", compile_network(net, dtype=dtype, rank=2))
    x, y = _data()
    F.write_dataset(tmp_path / "d8.s2ld", F.dataset_from_arrays(x, y, 3, F.DTYPE_I8))
    F.write_dataset(tmp_path / "d32.s2ld", F.dataset_from_arrays(x, y, 3, F.DTYPE_F32))
    # a network 3x as confident, and every label moved: a frozen loss far above ln 3
    F.write_model(tmp_path / "bold.s2lm", compile_network(_network(3.0), dtype="f32", rank=2))
    F.write_dataset(tmp_path / "wrong.s2ld", F.dataset_from_arrays(x, WRONG(y), 3, F.DTYPE_F32))
    return tmp_path


def WRONG(y):
    return (y + 1) % 3


PATHS = {
    "skip2lora-viper": dict(method="skip2lora", backend="viper", model="m-int8.s2lm",
                            data="d8.s2ld"),
    "skip-lora-python": dict(method="skip-lora", backend="python", model="m-int8.s2lm",
                             data="d8.s2ld"),
    "skip2lora-float": dict(method="skip2lora", backend="float", model="m-f32.s2lm",
                            data="d32.s2ld"),
    "lora-all": dict(method="lora-all", backend="float", model="m-f32.s2lm", data="d32.s2ld"),
    "ft-last": dict(method="ft-last", backend=None, model="m-f32.s2lm", data="d32.s2ld"),
}


def job(cwd, **kw):
    """One s2l.job.finetune in a fresh interpreter: (S2LError text or None, S2L records,
    whether s2l.guard was loaded)."""
    opts = dict(adapters="a.s2la", cache="c.s2lc", rank=2, seed=3, **kw)
    call = "s2l.job.finetune(%s)" % ", ".join("%s=%r" % kv for kv in sorted(opts.items()))
    res, out = run("""
import sys
import s2l.job
from s2l import S2LError
try:
    %s
    err = None
except S2LError as e:
    err = str(e)
RESULT(err=err, guard="s2l.guard" in sys.modules)
""" % call, cwd)
    lines = [parse_progress(l.encode()) for l in out.splitlines() if l.startswith("S2L ")]
    return res[-1]["err"], lines, res[-1]["guard"]


def files(d):
    return {p.name: p.read_bytes() for p in sorted(d.glob("a.s2la*"))}


@pytest.mark.parametrize("path", PATHS, ids=list(PATHS))
def test_a_huge_lr_stops_in_its_first_epoch_and_keeps_the_saved_adapters(work, path):
    kw = PATHS[path]
    err, lines, _ = job(work, epochs=2, lr=SANE, **kw)
    assert err is None and lines[-1] == {"done": 2, "adapters": "a.s2la"}
    saved = files(work)  # epoch 2's adapters (and, on the fixed path, their .state)
    fixed = kw["backend"] in ("viper", "python")
    assert sorted(saved) == (["a.s2la", "a.s2la.state"] if fixed else ["a.s2la"])
    cache = (work / "c.s2lc").read_bytes() if path.startswith("skip2lora") else None

    err, lines, guard = job(work, epochs=5, lr=HUGE, resume=True, **kw)
    assert guard
    stop = lines[-1]
    assert set(stop) == {"diverged", "loss", "kept"} and stop["diverged"] == 3
    assert stop["kept"] == 2
    assert {"resume": 2} in lines and not any("epoch" in p for p in lines)  # no epoch 3 line
    # past the bounds: either one sample's loss above 1e4 (or not finite), or the epoch's mean
    # above ln 3 and 4x the frozen network's loss (numpy, on the float network)
    loss = stop["loss"]
    assert not loss <= 1e4 or loss > max(np.log(3), 4 * frozen_loss_numpy())
    assert err == ("training diverged in epoch 3 (loss %s); the adapters saved after epoch 2 "
                   "are untouched; lower lr" % ("%.6g" % loss if loss == loss else "nan"))
    assert files(work) == saved  # byte for byte, and no .tmp left behind
    if cache is not None:
        assert (work / "c.s2lc").read_bytes() == cache
    assert F.read_adapters(work / "a.s2la").epochs_done == 2

    # the adapters kept are good ones: a sane lr carries on from them
    err, lines, _ = job(work, epochs=3, lr=SANE, resume=True, **kw)
    assert err is None and [p["epoch"] for p in lines if "epoch" in p] == [3]


def test_the_fixed_path_saturates_rather_than_exploding_and_is_stopped_by_the_mean(work):
    """Its int32 masters saturate, so no sample's loss passes 1e4; the epoch's mean, ~20x the
    frozen network's loss, does."""
    err, lines, _ = job(work, epochs=3, lr=HUGE, **PATHS["skip2lora-viper"])
    stop = lines[-1]
    assert stop["diverged"] == 1 and stop["kept"] == 0
    assert 4 * frozen_loss_numpy() < stop["loss"] < 1e4
    assert err.endswith("; no adapters were saved; lower lr")


def test_a_fresh_run_that_diverges_leaves_no_adapters_not_even_older_ones(work):
    kw = PATHS["lora-all"]
    assert job(work, epochs=2, lr=SANE, **kw)[0] is None  # an older run's adapters
    assert (work / "a.s2la").exists()
    err, lines, _ = job(work, epochs=2, lr=HUGE, **kw)
    assert lines[-1]["diverged"] == 1 and lines[-1]["kept"] == 0
    assert files(work) == {}


def test_a_float_lora_all_run_is_stopped_at_the_first_non_finite_or_huge_sample_loss(work):
    """LoRA-All at lr 1 (the digits case of issue 12 in miniature): the loss passes 1e4 within
    the first epoch, before float32 reaches NaN; the guard stops there, not at the epoch's end."""
    res, out = run("""
import s2l.job
from s2l.floatpath import FloatPath
losses = []
_step = FloatPath.step
def step(self, k, nb, last):
    l, ok = _step(self, k, nb, last)
    losses.append(l)
    return l, ok
FloatPath.step = step
try:
    s2l.job.finetune("m-f32.s2lm", "d32.s2ld", "a.s2la", method="lora-all", backend="float",
                     lr=1.0, rank=2, seed=3, epochs=3)
except Exception as e:
    pass
RESULT(losses=[l if l == l and l < 1e300 else str(l) for l in losses])
""", work)
    losses = res[-1]["losses"]
    assert len(losses) < N  # stopped inside epoch 1
    assert all(isinstance(l, float) and l <= 1e4 for l in losses[:-1])
    assert isinstance(losses[-1], str) or losses[-1] > 1e4


def test_adapters_that_overflow_in_an_epochs_last_step_are_never_saved(work):
    """One sample: its loss is the frozen network's (finite), then its step takes the adapters to
    inf; the epoch's mean looks fine, the adapters are not, and nothing is written."""
    x, y = _data()
    F.write_dataset(work / "one.s2ld", F.dataset_from_arrays(x[:1], y[:1], 3, F.DTYPE_F32))
    # 1e41: past float32's range times any gradient of this sample (the unix port's floats are
    # float64, its arrays float32: the step's value overflows as it is stored)
    err, lines, _ = job(work, epochs=2, lr=1e41, method="lora-all", backend="float",
                        model="m-f32.s2lm", data="one.s2ld")
    stop = lines[-1]
    assert (stop["diverged"], stop["kept"]) == (1, 0) and np.isnan(stop["loss"])
    assert err == "training diverged in epoch 1 (loss nan); no adapters were saved; lower lr"
    assert files(work) == {}


@pytest.mark.parametrize("method,model,data", [
    ("skip2lora", "m-f32.s2lm", "d32.s2ld"),  # logits from the Skip-Cache
    ("lora-all", "m-f32.s2lm", "d32.s2ld"),   # from the frozen forward
    ("skip2lora", "m-int8.s2lm", "d8.s2ld"),  # the fixed path's Q16 logits
])
def test_the_reference_is_the_frozen_networks_loss(work, method, model, data):
    res, _ = run("""
from s2l import Trainer
from s2l.guard import frozen_loss
t = Trainer(%r, %r, method=%r, rank=2, cache="c.s2lc", log=None)
RESULT(loss=frozen_loss(t))
""" % (model, data, method), work)
    # float: the same maths as numpy to float32 rounding; int8: weights and activations
    # rounded to int8 codes move it by a few per cent
    tol = 1e-5 if "f32" in model else 0.05
    assert res[-1]["loss"] == pytest.approx(frozen_loss_numpy(), rel=tol)


def test_healthy_runs_are_not_stopped_and_below_ln_c_never_load_the_guard(work):
    err, lines, guard = job(work, epochs=4, lr=0.25, **PATHS["lora-all"])
    assert err is None and [p["epoch"] for p in lines if "epoch" in p] == [1, 2, 3, 4]
    assert all(p["loss"] < np.log(3) for p in lines if "epoch" in p) and not guard
    # a confident network and every label wrong: the loss starts far above ln 3 and falls;
    # the guard is loaded and measures the frozen network's loss, but lets it train
    high = frozen_loss_numpy(y=WRONG(_data()[1]), gain=3.0)
    assert high > 4 * np.log(3)
    err, lines, guard = job(work, epochs=4, lr=0.01, method="lora-all", backend="float",
                            model="bold.s2lm", data="wrong.s2ld")
    epochs = [p for p in lines if "epoch" in p]
    assert err is None and len(epochs) == 4 and guard
    assert epochs[0]["loss"] > np.log(3) and epochs[-1]["loss"] < epochs[0]["loss"]


def test_the_guard_loads_only_on_demand():
    """train.py imports guard.py inside Trainer._guard only (a suspicious epoch), not at the
    top: its code stays off a heap that may have no room for it."""
    import ast
    from mpyrun import DEVICE

    tree = ast.parse((DEVICE / "s2l" / "train.py").read_text())
    top = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
    assert all(n.module != "guard" for n in top)
    inner = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "guard"]
    assert len(inner) == 1
    job_tree = ast.parse((DEVICE / "s2l" / "job.py").read_text())
    assert not [n for n in ast.walk(job_tree)
                if isinstance(n, ast.ImportFrom) and n.module == "guard"]


def test_no_room_for_the_guards_code_still_stops_a_sample_loss_and_lets_a_mean_through(work):
    """guard.py is imported mid-training; on a heap with no room left for it the Trainer stops
    on a sample's loss by itself, and lets an epoch's mean through rather than fail a run that
    fits (the import made to raise MemoryError, as a full heap does)."""
    res, _ = run("""
import builtins
_import = builtins.__import__
def no_room(name, *a):
    if name == "guard" or name.endswith(".guard"):
        raise MemoryError("memory allocation failed")
    return _import(name, *a)
builtins.__import__ = no_room
from s2l import Trainer, S2LError
out = []
for model, data, method, lr in (("m-f32.s2lm", "d32.s2ld", "lora-all", 1000.0),
                                ("m-int8.s2lm", "d8.s2ld", "skip2lora", 1000.0)):
    t = Trainer(model, data, method=method, rank=2, seed=3, lr=lr, cache="c.s2lc", log=None)
    try:
        t.fit(2)
        out.append(t.epochs_done)
    except S2LError as e:
        out.append(str(e))
RESULT(out=out)
""", work)
    sample, mean = res[-1]["out"]
    assert sample.startswith("training diverged in epoch 1 (loss ") and sample.endswith(
        "); lower lr")
    assert mean == 2

"""The device package on every kind of interpreter (mpyrun.KINDS): the 64-bit unix port (double
floats, 64-bit viper ints) and real MicroPython firmware for a Cortex-M0+ (armv6m, soft float32)
and a Cortex-M4F (armv7emsp) under QEMU, where ints are 32 bits and floats single.

Expected values come from the fixtures' .json twins (written by tools/make_fixtures.py from the
same arrays as the binary files) computed with numpy, or from another run compared byte for byte.
"""
import json

import numpy as np
import pytest

from mpyrun import FIXTURES, KINDS, build_mpy, progress_lines, run
from skip2lora.model import formats as F
from test_device_predict import SCRIPT as PREDICT_SCRIPT, X

ON_EVERY_KIND = pytest.mark.parametrize("kind", KINDS)


# ------------------------------------------------------------------ predict

def fixture_json(name):
    return json.loads((FIXTURES / name).read_text())


def json_logits(model, x, adapters=None):
    """float64 forward pass of a fixture model (and skip adapters) from its .json twin."""
    h, xs = np.asarray(x, np.float64), []
    for layer in model["layers"]:
        W = np.array(layer["weight"], np.float64)
        if layer["scale"] is not None:  # int8 weights, one scale per output row
            W = W * np.array(layer["scale"], np.float64)[:, None]
        xs.append(h)
        h = h @ W.T + np.array(layer["bias"], np.float64)
        if layer["relu"]:
            h = np.maximum(h, 0)
    if adapters:
        s = adapters["alpha"] / adapters["rank"]
        for a in adapters["adapters"]:
            assert a["kind"] == F.KIND_SKIP
            h = h + s * (xs[a["layer"]] @ np.array(a["A"]).T) @ np.array(a["B"]).T
    return h


@ON_EVERY_KIND
@pytest.mark.parametrize("model,adapters", [("model-f32", None), ("model-int8", None),
                                            ("model-f32", "adapters")])
def test_predict_equals_fixture_json(fixdir, kind, model, adapters):
    res, _ = run("MODEL=%r\nADAPTERS=%r\nXS=%r\n" % (
        model + ".s2lm", adapters and adapters + ".s2la", X.tolist()) + PREDICT_SCRIPT, fixdir,
        kind=kind, files=[model + ".s2lm"] + ([adapters + ".s2la"] if adapters else []))
    want = json_logits(fixture_json(model + ".json"), X,
                       adapters and fixture_json(adapters + ".json"))
    got = np.array([r["logits"] for r in res])
    # float32 on the boards: a few ulps of logits of order 1
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert [r["cls"] for r in res] == list(np.argmax(want, axis=1))


# ------------------------------------------------------------------ training on the boards

def make_dataset(path, n=36, seed=5, dtype=F.DTYPE_I8, amp=1.0):
    """n samples (int8, or f32) of the fixture models' 8 features in [-amp, amp], labels spread
    over the 3 classes."""
    rng = np.random.default_rng(seed)
    x = (rng.uniform(-1, 1, (n, 8)) * amp).astype(np.float32)
    y = (np.arange(n) % 3).astype(np.int64)
    F.write_dataset(path, F.dataset_from_arrays(x, y, 3, dtype))
    return path.name


def fit_script(out, epochs, backend=None, restore=None, cache="c.s2lc", data="d.s2ld", bs=1):
    """One Trainer on the int8 fixture model: [restore,] fit, save `out` (+ .state)."""
    return ("t = Trainer('model-int8.s2lm', %r, method='skip2lora', rank=2, lr=1/16, "
            "batch_size=%d, seed=3, backend=%r, cache=%r, log=None)\n"
            "%s"
            "t.fit(%d)\nt.save(%r)\nRESULT(out=%r, backend=t.backend, built=t.cache_built)\n"
            "t = None\ngc.collect()\n"
            % (data, bs, backend, cache, "t.restore(%r)\n" % restore if restore else "",
               epochs, out, out))


@pytest.fixture
def boarddir(tmp_path):
    """The int8 fixture model and a 36-sample int8 dataset d.s2ld."""
    (tmp_path / "model-int8.s2lm").write_bytes((FIXTURES / "model-int8.s2lm").read_bytes())
    make_dataset(tmp_path / "d.s2ld")
    return tmp_path


def same_bytes(folder, pairs):
    """The names of the file pairs whose bytes differ."""
    return ["%s != %s" % (a, b) for a, b in pairs
            if (folder / a).read_bytes() != (folder / b).read_bytes()]


@ON_EVERY_KIND
def test_viper_equals_py_byte_for_byte(boarddir, kind):
    """The viper kernels and their pure-Python twin, through kernels.get(name), give the
    same adapters, int32 masters and Skip-Cache on each interpreter."""
    res, _ = run("from s2l import Trainer, kernels\n"
                 "RESULT(names=[kernels.get(b).NAME for b in ('viper', 'py')])\n"
                 + fit_script("v.s2la", 2, "viper", cache="v.s2lc", bs=2)
                 + fit_script("p.s2la", 2, "py", cache="p.s2lc", bs=2), boarddir, kind=kind)
    assert res[0]["names"] == ["viper", "py"]
    assert [r["backend"] for r in res[1:]] == ["viper", "py"]
    assert F.read_adapters(boarddir / "v.s2la").epochs_done == 2
    assert same_bytes(boarddir, [("v.s2la", "p.s2la"), ("v.s2la.state", "p.s2la.state"),
                                 ("v.s2lc", "p.s2lc")]) == []


@ON_EVERY_KIND
def test_resume_equals_straight_run(boarddir, kind):
    """fit 2 + save, a new Trainer restores and fits 1 more == fit 3 straight: same bytes."""
    res, _ = run("from s2l import Trainer\n"
                 + fit_script("r.s2la", 2)
                 + fit_script("r.s2la", 1, restore="r.s2la")
                 + fit_script("s.s2la", 3, cache="s.s2lc"), boarddir, kind=kind)
    assert [r["built"] for r in res] == [True, False, True]
    assert F.read_adapters(boarddir / "r.s2la").epochs_done == 3
    assert same_bytes(boarddir, [("r.s2la", "s.s2la"), ("r.s2la.state", "s.s2la.state"),
                                 ("c.s2lc", "s.s2lc")]) == []


@ON_EVERY_KIND
@pytest.mark.parametrize("method,backend", [("skip2lora", "viper"), ("skip2lora", "py"),
                                            ("lora-all", "float")])
def test_training_loop_heap_does_not_grow(fixdir, kind, method, backend):
    """As tests/device/test_device_train.py's test of the same name, on each interpreter:
    gc.mem_alloc() after gc.collect() stays flat over 10 epochs (60 training steps)."""
    from test_device_train import HEAP
    res, _ = run("MODEL='model-int8.s2lm'\nDATA='dataset-int8.s2ld'\nMETHOD=%r\nBACKEND=%r\n"
                 % (method, backend) + HEAP, fixdir, kind=kind,
                 files=["model-int8.s2lm", "dataset-int8.s2ld"])
    seen = res[0]["seen"]
    assert max(seen) - seen[0] <= 64, seen


# ------------------------------------------------------------------ the float path on the boards

FLOAT_RUNS = [  # method, model, dataset, batch size, targets, momentum
    ("skip2lora", "model-f32.s2lm", "dataset-f32.s2ld", 1, "all", 0.0),
    ("lora-all", "model-int8.s2lm", "dataset-int8.s2ld", 4, "all", 0.5)]


@ON_EVERY_KIND
def test_float_backend_matches_reference_on_every_kind(fixdir, kind):
    """backend='float' Skip2-LoRA and lora-all (momentum 0.5, batch 4) on the fixtures, 10
    epochs at lr 1/16 (training accuracy climbs to 1.0 / 0.67), against the float64 numpy
    reference (skip2lora.training.reference.finetune) as test_device_train does on unix. On the boards
    every float operation is float32. Adapters, max |device - reference| / max |reference| per
    array: measured 2.8e-7 (skip2lora) and 4.3e-6 (lora-all) on both Cortex-M0+ and M4F, 2.3e-7
    and 3.7e-6 on unix (float32 storage dominates); tolerance 5e-5. Progress-line loss:
    measured 1.6e-6 relative, tolerance 1e-5; accuracy equal."""
    from test_device_train import TRAIN, reference, rel_err
    script = ""
    for i, (method, model, data, bs, targets, mom) in enumerate(FLOAT_RUNS):
        script += ("MODEL=%r\nDATA=%r\nMETHOD=%r\nBACKEND='float'\nLR=1/16\nBS=%d\nEPOCHS=10\n"
                   "TARGETS=%r\nMOM=%r\nCACHE='f%d.s2lc'\nOUT='f%d.s2la'\n"
                   % (model, data, method, bs, targets, mom, i, i)
                   + TRAIN + "t = None\ngc.collect()\nprint('S2L-RUN-END')\n")
    res, out = run(script, fixdir, kind=kind, files=sorted({n for r in FLOAT_RUNS for n in r[1:3]}))
    logs = out.split("S2L-RUN-END")
    for i, (method, model, data, bs, targets, mom) in enumerate(FLOAT_RUNS):
        assert res[i]["backend"] == "float"
        ref = reference(fixdir, model, data, method, 1 / 16, bs, 10, targets, mom)
        af = F.read_adapters(fixdir / ("f%d.s2la" % i))
        assert af.method == method and af.epochs_done == 10
        assert rel_err(ref, af) < 5e-5, (method, rel_err(ref, af))
        prog = progress_lines(logs[i])
        assert len(prog) == 10
        for p, h in zip(prog, ref.history):
            assert abs(p["loss"] - h["loss"]) < 1e-5 * max(1.0, abs(h["loss"])), (method, p, h)
            assert abs(p["acc"] - h["train_acc"]) < 1e-3, (method, p, h)


# ------------------------------------------------------------------ the same bytes everywhere

# Two configurations in one run per interpreter. The first: the int8 dataset, lr = 1/16 (a
# power of two), batch 1, alpha = rank. The second takes the rest of the integer code: an f32
# dataset (calibration through absmax_f32 and f32_ratio, x_1 through quant_f32 into the cache),
# lr = 0.01 as a decimal literal the interpreter parses with its own float (float64 on unix,
# float32 on the boards), batches of 3 with a short last one (35 samples), alpha 3.0 != rank 2,
# adapters on every layer.
CROSS = ("from s2l import Trainer\n" + fit_script("a.s2la", 2)
         + "t = Trainer('model-int8.s2lm', 'f.s2ld', method='skip2lora', rank=2, alpha=3.0, "
           "lr=0.01, batch_size=3, seed=11, targets='all', cache='f.s2lc', log=None)\n"
           "t.fit(2)\nt.save('f.s2la')\n"
           "RESULT(out='f.s2la', backend=t.backend, built=t.cache_built, alpha=t.alpha, "
           "targets=t.targets, n=t.n)\n")
CROSS_FILES = ("a.s2la", "a.s2la.state", "c.s2lc", "f.s2la", "f.s2la.state", "f.s2lc")
_unix_reference = {}


def cross_dir(d):
    (d / "model-int8.s2lm").write_bytes((FIXTURES / "model-int8.s2lm").read_bytes())
    make_dataset(d / "d.s2ld")
    make_dataset(d / "f.s2ld", n=35, seed=8, dtype=F.DTYPE_F32, amp=2.7)
    return d


def unix_reference(tmp_path_factory):
    """The unix port's files for CROSS (.py deploy), computed once."""
    if not _unix_reference:
        d = cross_dir(tmp_path_factory.mktemp("unix-ref"))
        res, _ = run(CROSS, d)
        assert [r["backend"] for r in res] == ["viper", "viper"]
        assert res[1]["alpha"] == 3.0 and res[1]["targets"] == [0, 1, 2] and res[1]["n"] == 35
        _unix_reference.update({n: (d / n).read_bytes() for n in CROSS_FILES})
        # the f32 dataset's cache holds x_1 in front, as int8 codes (from quant_f32)
        c, f = (F.decode_cache(_unix_reference[n]).segments for n in ("c.s2lc", "f.s2lc"))
        assert [(g.dim, g.dtype) for g in f] == [(8, F.DTYPE_I8)] + [(g.dim, g.dtype) for g in c]
    return _unix_reference


@pytest.mark.parametrize("kind,deploy", [("unix", "mpy"), ("cortex-m0plus", "py"),
                                         ("cortex-m0plus", "mpy"), ("cortex-m4f", "py"),
                                         ("cortex-m4f", "mpy")])
def test_fine_tune_gives_the_unix_ports_bytes(tmp_path, tmp_path_factory, kind, deploy):
    """Two short Skip2-LoRA fine-tunes of the int8 model (CROSS: an int8 dataset with lr 1/16,
    batch 1; an f32 dataset with lr 0.01 parsed on the board, batch 3, alpha 3 on rank 2, every
    layer) write the same adapters, .state and Skip-Cache bytes on every interpreter and
    deployment as on the unix port from .py (viper there, Thumb on the boards): the
    fixed-point path must not depend on the float width or the backend."""
    want = unix_reference(tmp_path_factory)
    boarddir = cross_dir(tmp_path)
    res, _ = run(CROSS, boarddir, kind=kind, deploy=deploy)
    # auto picks the Thumb kernels where the inline assembler exists (the boards)
    best = "viper" if kind == "unix" else "thumb"
    assert [r["backend"] for r in res] == [best, best]
    differ = []
    for n in CROSS_FILES:
        got = (boarddir / n).read_bytes()
        if got != want[n]:
            at = next((i for i, (a, b) in enumerate(zip(got, want[n])) if a != b),
                      min(len(got), len(want[n])))
            differ.append("%s (%d vs %d bytes, %d differ, the first at byte %d)"
                          % (n, len(got), len(want[n]),
                             sum(a != b for a, b in zip(got, want[n])), at))
    assert differ == [], "differ from the unix port's: " + "; ".join(differ)


# ------------------------------------------------------------------ board-only failures

def test_wrong_arch_viper_mpy_falls_back_to_python(boarddir, tmp_path):
    """A kernels_viper.mpy built for armv7emsp on the armv6m board: the package warns once and
    trains with the pure-Python kernels, again in the same session; backend='viper' says why."""
    lib = build_mpy(tmp_path / "lib", "armv7emsp")
    res, out = run(r"""
from s2l import Trainer, S2LError
""" + fit_script("a.s2la", 1) + fit_script("b.s2la", 1, cache="b.s2lc") + r"""
try:
    Trainer("model-int8.s2lm", "d.s2ld", backend="viper")
    RESULT(err=None)
except S2LError as e:
    RESULT(err=str(e))
""", boarddir, kind="cortex-m0plus", device_dir=lib)
    assert [r.get("backend") for r in res[:2]] == ["py", "py"]
    assert res[2]["err"] == "viper kernels unavailable on this firmware: incompatible .mpy arch"
    warn = [line for line in out.splitlines() if line.startswith("s2l: ")]
    assert warn == ["s2l: viper kernels unavailable (incompatible .mpy arch); using pure Python"]
    assert F.read_adapters(boarddir / "b.s2la").epochs_done == 1


def test_dataset_read_out_of_range_names_file_and_range(fixdir):
    res, _ = run(r"""
from s2l import Dataset, S2LError
out = []
for path, k in (("dataset-int8.s2ld", 6), ("dataset-int8.s2ld", -1), ("empty.s2ld", 0)):
    d = Dataset(path) if path != "empty.s2ld" else Dataset.create(path, 8, 3)
    try:
        d.read(k); out.append(None)
    except S2LError as e:
        out.append(str(e))
RESULT(out=out)
""", fixdir)
    assert res[0]["out"] == [
        "dataset-int8.s2ld: record 6 does not exist: valid records are 0..5",
        "dataset-int8.s2ld: record -1 does not exist: valid records are 0..5",
        "empty.s2ld: record 0 does not exist: valid records are none (the dataset is empty)"]

"""s2l.job.finetune, the board's side of `skip2lora finetune`, on the MicroPython unix port:
resume that is bit-exact against an uninterrupted run, a save after every epoch before its
progress line, Ctrl-C (SIGINT) mid-run, flash full (a real ENOSPC from /dev/full) and an
out-of-memory model.
"""
import os
import re
import signal
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from mpyrun import PRELUDE, DEVICE, micropython_binary, run
from skip2lora.model import formats as F
from skip2lora.board.link import parse_progress

INT8 = dict(model="model-int8.s2lm", data="dataset-int8.s2ld")
F32 = dict(model="model-f32.s2lm", data="dataset-f32.s2ld")
BASE = dict(adapters="a.s2la", cache="c.s2lc", lr=1 / 64, rank=2, seed=3)


def call(**kw):
    opts = dict(BASE, **INT8)
    opts.update(kw)
    return "s2l.job.finetune(%s)" % ", ".join("%s=%r" % kv for kv in sorted(opts.items()))


def job(cwd, **kw):
    """Run one finetune job in a fresh interpreter; returns (S2LError message or None, stdout)."""
    res, out = run("""
import s2l.job
from s2l import S2LError
try:
    %s
    RESULT(err=None)
except S2LError as e:
    RESULT(err=str(e))
""" % call(**kw), cwd)
    return res[-1]["err"], out


def s2l_lines(out):
    return [parse_progress(line.encode()) for line in out.splitlines() if line.startswith("S2L ")]


def epochs_of(out):
    return [p for p in s2l_lines(out) if "loss" in p]


@pytest.mark.parametrize("case", [
    dict(method="skip2lora", backend="viper", batch_size=1),
    dict(method="skip2lora", backend="viper", batch_size=1, drop_cache=True),
    dict(method="skip2lora", backend="python", batch_size=4, data="dataset-f32.s2ld"),
    dict(method="skip-lora", backend="viper", batch_size=2, targets="hidden"),
    dict(method="skip2lora", backend="float", batch_size=1, **F32),
    dict(method="lora-all", backend="float", batch_size=2, **F32),
    dict(method="ft-last", backend=None, batch_size=1),
], ids=lambda c: "-".join(str(v) for v in c.values()))
def test_resume_is_bit_exact(fixdir, case):
    """4 epochs straight == 2 epochs, then a new interpreter resuming to 4: the same bytes."""
    case = dict(case)
    drop_cache = case.pop("drop_cache", False)
    err, straight = job(fixdir, epochs=4, adapters="full.s2la", cache="full.s2lc", **case)
    assert err is None
    err, first = job(fixdir, epochs=2, resume=True, **case)
    assert err is None and "no adapters at a.s2la yet: starting from epoch 0" in first
    assert F.read_adapters(fixdir / "a.s2la").epochs_done == 2
    if drop_cache:  # the resumed run recalibrates: the same float32-rounded scales
        (fixdir / "c.s2lc").unlink()
    err, second = job(fixdir, epochs=4, resume=True, **case)
    assert err is None
    assert s2l_lines(second)[1] == {"resume": 2}
    assert "not bit for bit" not in second
    assert (fixdir / "a.s2la").read_bytes() == (fixdir / "full.s2la").read_bytes()
    fixed = case["backend"] in ("viper", "python")
    assert (fixdir / "a.s2la.state").exists() == fixed
    if fixed:
        assert (fixdir / "a.s2la.state").read_bytes() == (fixdir / "full.s2la.state").read_bytes()
    # the resumed epochs saw the same shuffles: the same losses, line for line (times aside,
    # and which run built the cache)
    def strip(lines):
        return [{k: v for k, v in p.items() if k not in ("ms", "saved_ms", "cache_built")}
                for p in lines]
    assert strip(epochs_of(first) + epochs_of(second)) == strip(epochs_of(straight))


def test_progress_lines_follow_the_save(fixdir):
    """Every epoch line is printed after that epoch is on flash (read back from the file at the
    moment the line is printed), then one done line; the host's parser reads them all."""
    res, out = run("""
import struct
import s2l.job
seen = []
def spy(line):
    print(line)
    if line.startswith("S2L epoch="):
        with open("a.s2la", "rb") as f:
            seen.append(struct.unpack_from("<I", f.read(24), 20)[0])
s2l.job.print = spy
n = %s
RESULT(seen=seen, n=n)
""" % call(epochs=3), fixdir)
    assert res[0] == {"seen": [1, 2, 3], "n": 3}
    lines = s2l_lines(out)
    # what the board trains with, as tests/fixtures/*.json and BASE say: rank 2, adapter_mask 7
    # (layers 0..2), 6 samples, lr 1/64, and viper, the unix port's fastest backend
    assert lines[0] == {"start": "skip2lora", "backend": "viper", "rank": 2, "targets": "0,1,2",
                        "lr": 0.015625, "n": 6}
    lines = lines[1:]
    assert [p["epoch"] for p in lines[:3]] == [1, 2, 3]
    # epoch 1 built the cache (the fixtures hold none): its reads are of the records it wrote
    assert set(lines[0]) == {"epoch", "loss", "acc", "ms", "cache_reads", "saved_ms",
                             "cache_built"} and lines[0]["cache_built"] == 1
    assert all(set(p) == {"epoch", "loss", "acc", "ms", "cache_reads", "saved_ms"}
               for p in lines[1:3])
    assert lines[3] == {"done": 3, "adapters": "a.s2la"} and len(lines) == 4
    assert sorted(p.name for p in fixdir.glob("a.s2la*")) == ["a.s2la", "a.s2la.state"]
    # nothing left to train: say so, touch nothing, report done
    before = (fixdir / "a.s2la").read_bytes()
    err, out = job(fixdir, epochs=2, resume=True)
    assert err is None and "3 epochs already done, 2 asked for: nothing to train" in out
    assert s2l_lines(out)[1:] == [{"resume": 3}, {"done": 3, "adapters": "a.s2la"}]
    assert (fixdir / "a.s2la").read_bytes() == before


def test_long_run_heap_stays_flat(fixdir):
    """300 epochs in one job: Trainer.fit alone keeps every epoch's record and fails near
    epoch 256 on a 192 KB heap; the job keeps only the last. gc.mem_alloc() after
    gc.collect() is read at every epoch line (the spy runs inside the job, after the epoch's
    save) into a list allocated before the job: from epoch 3 on (cache built, lazily made
    objects exist) it stays within the 64 bytes a conservative GC keeps alive through a stale
    pointer (test_device_train); one record kept per epoch would add >= 16 bytes an epoch,
    4.7 KB over the run."""
    res, out = run("""
import s2l.job
seen = [0] * 301
k = [0]
def spy(line):
    print(line)
    if line.startswith("S2L epoch="):
        gc.collect()
        seen[k[0]] = gc.mem_alloc()
        k[0] += 1
s2l.job.print = spy
n = %s
RESULT(n=n, k=k[0], seen=seen[:k[0]])
""" % call(epochs=300), fixdir)
    assert res[0]["n"] == 300 and len(epochs_of(out)) == 300 and res[0]["k"] == 300
    seen = res[0]["seen"][2:]
    assert max(seen) - min(seen) <= 64, (min(seen), max(seen), seen[:5], seen[-5:])
    assert seen[-1] - seen[0] <= 64, (seen[0], seen[-1])


def test_resume_without_state_file_rounds_the_f32_values(fixdir):
    """No matching .state (deleted, or left from another save): the f32 values are rounded back
    to int32 masters; training continues, close to but not bit for bit the uninterrupted run."""
    job(fixdir, epochs=4, adapters="full.s2la")
    job(fixdir, epochs=1)
    stale = (fixdir / "a.s2la.state").read_bytes()  # belongs to epoch 1's file
    job(fixdir, epochs=2, resume=True)
    (fixdir / "a.s2la.state").write_bytes(stale)
    err, out = job(fixdir, epochs=4, resume=True)
    assert err is None
    assert "resuming from the float32 values in a.s2la (no matching a.s2la.state)" in out
    got, want = F.read_adapters(fixdir / "a.s2la"), F.read_adapters(fixdir / "full.s2la")
    assert got.epochs_done == 4
    assert (fixdir / "a.s2la").read_bytes() != (fixdir / "full.s2la").read_bytes()
    for x, y in zip(got.adapters, want.adapters):
        for p, q in ((x.A, y.A), (x.B, y.B)):
            assert np.max(np.abs(p - q)) <= 1e-6 * np.max(np.abs(q))


def test_state_file_is_the_specs(fixdir):
    """<adapters>.state as docs/formats.md states it, read on the host: magic S2LS, the file CRC
    of the .s2la it belongs to, K, K float32 activation-scale mantissas in [0.5, 1), every
    adapter's A rows then B as raw int32 (little-endian here), a CRC32 of all before it; the
    masters in their units (A = A32 / (m * 2**30), B = B32 / 2**29) are the .s2la's values."""
    assert job(fixdir, epochs=2, targets="all")[0] is None
    raw = (fixdir / "a.s2la.state").read_bytes()
    ad = F.read_adapters(fixdir / "a.s2la")
    magic, crc, k = struct.unpack_from("<4sII", raw)
    assert (magic, crc, k) == (b"S2LS", ad.file_crc, len(ad.adapters)) and k >= 2
    ms = np.frombuffer(raw, "<f4", k, 12).astype(np.float64)
    assert np.all((0.5 <= ms) & (ms < 1))
    off = 12 + 4 * k
    for a, m in zip(ad.adapters, ms):
        A32 = np.frombuffer(raw, "<i4", a.A.size, off).reshape(a.A.shape)
        B32 = np.frombuffer(raw, "<i4", a.B.size, off + 4 * a.A.size).reshape(a.B.shape)
        off += 4 * (a.A.size + a.B.size)
        np.testing.assert_allclose(A32 / (m * 2.0 ** 30), a.A, rtol=2 ** -23, atol=0)
        np.testing.assert_allclose(B32 / 2.0 ** 29, a.B, rtol=2 ** -23, atol=0)
        assert np.abs(A32).max() > 1 << 20 and np.abs(B32).max() > 1 << 10  # not all zeros
    assert off + 4 == len(raw)
    assert struct.unpack("<I", raw[-4:])[0] == zlib.crc32(raw[:-4])


@pytest.mark.parametrize("change,what", [
    (dict(rank=3), "rank"),
    (dict(method="skip-lora"), "method"),
    (dict(targets="hidden"), "targets"),
    (dict(model="model-f32.s2lm", backend="float"), "model"),
])
def test_resume_refuses_another_setup(fixdir, change, what):
    assert job(fixdir, epochs=1)[0] is None
    before = (fixdir / "a.s2la").read_bytes()
    err, _ = job(fixdir, epochs=2, resume=True, **change)
    assert err.startswith("a.s2la: was saved for another model, method, rank or targets")
    assert "start without --resume" in err and "\n" not in err
    assert (fixdir / "a.s2la").read_bytes() == before


def test_restore_api(fixdir):
    """Trainer.restore directly: before any training only; epochs continue from the file."""
    res, _ = run("""
from s2l import Trainer, S2LError
t = Trainer("model-int8.s2lm", "dataset-int8.s2ld", rank=2, lr=1/64, cache="c.s2lc", log=None)
t.fit(2); t.save("x.s2la")
t2 = Trainer("model-int8.s2lm", "dataset-int8.s2ld", rank=2, lr=1/64, cache="c.s2lc", log=None)
n = t2.restore("x.s2la")
t2.fit(1); t.fit(1)
try:
    t.restore("x.s2la"); err = None
except S2LError as e:
    err = str(e)
RESULT(n=n, exact=t2.restored_exact, epochs=[t.epochs_done, t2.epochs_done],
       same=[list(a) for a in t.arith.ads[0].A32b] == [list(a) for a in t2.arith.ads[0].A32b],
       err=err)
""", fixdir)
    assert res[0] == {"n": 2, "exact": True, "epochs": [3, 3], "same": True,
                      "err": "x.s2la: restore() must come before any training"}


# The unix port raises KeyboardInterrupt straight from its SIGINT handler (a longjmp: it builds
# MICROPY_ASYNC_KBD_INTR in when there is no GIL), so a signal that lands inside the garbage
# collector leaves the interpreter broken (heap locked, a hang or a crash) whatever the program
# does; `while True: gc.collect()` shows it. A board schedules Ctrl-C to the next bytecode. So
# the job is held at a chosen bytecode boundary in a sleep, and the real SIGINT lands there.
PAUSE = r"""
import time
import s2l.job, s2l.train, s2l.formats
from s2l.fixedpath import FixedPath
WHERE = %r
calls = {}

def hook(name):
    calls[name] = calls.get(name, 0) + 1
    if (name, calls[name]) == WHERE:
        print("PAUSED")
        time.sleep(30)
        print("no SIGINT came")

_print = print
def spy_print(*a):
    _print(*a)
    if str(a[0]).startswith("S2L epoch="):
        hook("line")
s2l.job.print = spy_print

_step = FixedPath.step
def step(self, k, nb, last):
    hook("step")
    return _step(self, k, nb, last)
FixedPath.step = step

_wa = s2l.train.write_adapters
def write_adapters(*a):
    def payload():
        for b in a[-1]:
            yield b
            hook("adapters")
    return _wa(*(a[:-1] + (payload(),)))
s2l.train.write_adapters = write_adapters

_replace = s2l.formats.replace
def replace(tmp, path):
    if path.endswith(".state"):
        hook("state")
    _replace(tmp, path)
s2l.formats.replace = replace
"""


def paused_job(cwd, where, **kw):
    """Run a job that sleeps at `where` and SIGINT it there; returns (output, exit code)."""
    path = Path(cwd) / "_job.py"
    path.write_text(PRELUDE % str(DEVICE) + PAUSE % (where,) + call(**kw) + "\n")
    proc = subprocess.Popen([micropython_binary(), "-X", "heapsize=192K", path.name], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    out = []
    try:
        for line in proc.stdout:
            out.append(line)
            if line.startswith("PAUSED"):
                proc.send_signal(signal.SIGINT)
                break
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return "".join(out) + rest, proc.returncode


# POSIX-only conditions, both true on the Linux CI; under CI=true the tests run (and fail)
# whatever the platform, so a skip can never hide them there
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.mark.skipif(not hasattr(signal, "SIGINT") and not IN_CI, reason="needs POSIX signals")
@pytest.mark.parametrize("where,stopped", [
    (("step", 6 * 3 + 3), 3),      # epoch 4, sample 3: epoch 3 stays on flash
    (("line", 3), 3),              # just after epoch 3's line
    (("adapters", 9 * 3 + 2), 4),  # epoch 4's .s2la half written (9 buffers a save): completed
    (("state", 4), 4),             # epoch 4's .s2la renamed, its .state not: completed
], ids=["mid-epoch", "after-line", "mid-adapters-write", "before-state-rename"])
def test_sigint_keeps_the_last_epoch_and_resume_finishes_it(fixdir, where, stopped):
    total = 6
    assert job(fixdir, epochs=total, adapters="full.s2la", cache="full.s2lc")[0] is None
    out, rc = paused_job(fixdir, where, epochs=total)
    assert "PAUSED" in out and "no SIGINT came" not in out, out
    assert "KeyboardInterrupt" in out and rc != 0
    lines = s2l_lines(out)
    assert lines[-1] == {"stopped": stopped}, out
    assert [p["epoch"] for p in lines if "epoch" in p] == list(range(1, stopped + 1))
    assert F.read_adapters(fixdir / "a.s2la").epochs_done == stopped  # a valid, whole file
    assert sorted(p.name for p in fixdir.glob("a.s2la*")) == ["a.s2la", "a.s2la.state"]
    err, out = job(fixdir, epochs=total, resume=True)
    assert err is None and s2l_lines(out)[1] == {"resume": stopped}
    assert "not bit for bit" not in out
    assert (fixdir / "a.s2la").read_bytes() == (fixdir / "full.s2la").read_bytes()
    assert (fixdir / "a.s2la.state").read_bytes() == (fixdir / "full.s2la.state").read_bytes()


SWEEP = r"""
import s2l.job, s2l.train, s2l.formats, s2l.cache
from s2l.train import Trainer
from s2l.fixedpath import FixedPath

def load(p):
    with open(p, "rb") as f:
        return f.read()

def store(p, b):
    with open(p, "wb") as f:
        f.write(b)

base = {p: load(p) for p in ("a.s2la", "a.s2la.state")}
calls, fire, lines = [0], [0], []

def hook():
    calls[0] += 1
    if calls[0] == fire[0]:
        raise KeyboardInterrupt

def wrap(mod, name):
    f = getattr(mod, name)
    def w(*a):
        hook()
        return f(*a)
    setattr(mod, name, w)

for mod, name in ((s2l.formats, "crc32"), (s2l.cache, "crc32"), (s2l.formats, "replace"),
                  (s2l.formats, "open_write"), (s2l.formats, "sync")):
    wrap(mod, name)  # formats.py writes the .s2la and its .state
_step = FixedPath.step
def step(self, k, nb, last):
    hook()
    return _step(self, k, nb, last)
FixedPath.step = step
def spy_print(*a):
    lines.append(" ".join(str(x) for x in a))
    hook()
s2l.job.print = spy_print

out = []
n = 0
while True:
    n += 1
    for p in base:
        store(p, base[p])
    calls[0], fire[0] = 0, n
    del lines[:]
    try:
        JOB
        break  # n is past the last call: the epoch ran uninterrupted
    except KeyboardInterrupt:
        if lines[-1].startswith("S2L done="):
            break  # after the job's last line: nothing left to stop
    fire[0] = 0
    t = Trainer("model-int8.s2lm", "dataset-int8.s2ld", rank=2, lr=1/64, seed=3, cache="c.s2lc",
                log=None)
    on_flash = t.restore("a.s2la")
    shown = [int(l.split()[1][6:]) for l in lines if l.startswith("S2L epoch=")]
    out.append([n, lines[-1], shown[-1] if shown else 3, on_flash, t.restored_exact])
    t.close()
RESULT(out=out)
"""


def test_interrupt_at_every_step_of_an_epoch(fixdir):
    """KeyboardInterrupt as a board raises Ctrl-C (at a bytecode boundary), at each call an
    epoch, its save and its line make, in turn: flash always holds a whole .s2la with its
    .state, and `stopped` is both its epoch and the last epoch line printed."""
    assert job(fixdir, epochs=3)[0] is None
    res, _ = run(SWEEP.replace("JOB", call(epochs=4, resume=True)), fixdir)
    out = res[0]["out"]
    assert len(out) > 30  # the epoch's samples, the save's writes, the line
    for n, last, shown, on_flash, exact in out:
        assert last == "S2L stopped=%d" % on_flash, (n, last)
        assert shown == on_flash and on_flash in (3, 4) and exact, (n, last, shown)
    assert [o[3] for o in out][:6] == [3] * 6 and out[-1][3] == 4


needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full") and not IN_CI,
                                    reason="needs /dev/full for a real ENOSPC")


@needs_dev_full
@pytest.mark.parametrize("full", ["a.s2la.tmp", "a.s2la.state.tmp"])
def test_flash_full_while_saving_keeps_the_adapters(fixdir, full):
    """The save's temporary file is a link to /dev/full, so its write fails with a real
    OSError 28 (ENOSPC) in the interpreter's own file code, as on a full flash."""
    job(fixdir, epochs=4, adapters="full.s2la")
    assert job(fixdir, epochs=2)[0] is None
    before = {p: (fixdir / p).read_bytes() for p in ("a.s2la", "a.s2la.state")}
    (fixdir / full).symlink_to("/dev/full")
    err, out = job(fixdir, epochs=4, resume=True)
    assert err == ("flash full while writing a.s2la; the previous adapters are intact; free "
                   "space on the board's flash (delete files you do not need) and run again "
                   "with --resume")
    assert not (fixdir / full).exists() and not (fixdir / full).is_symlink()  # debris gone
    ad = F.read_adapters(fixdir / "a.s2la")
    if full == "a.s2la.tmp":  # the adapters of epoch 2 and their state, untouched
        assert {p: (fixdir / p).read_bytes() for p in before} == before
        assert "S2L epoch=3" not in out
    else:  # epoch 3's adapters made it, their state did not: still a valid file
        assert ad.epochs_done == 3 and (fixdir / "a.s2la.state").read_bytes() == before[
            "a.s2la.state"]
    err, out = job(fixdir, epochs=4, resume=True)  # space again: carries on
    assert err is None and F.read_adapters(fixdir / "a.s2la").epochs_done == 4
    if full == "a.s2la.tmp":
        assert (fixdir / "a.s2la").read_bytes() == (fixdir / "full.s2la").read_bytes()
    else:
        assert "not bit for bit" in out


@needs_dev_full
def test_flash_full_while_building_the_cache(fixdir):
    assert job(fixdir, epochs=1)[0] is None
    before = (fixdir / "a.s2la").read_bytes()
    (fixdir / "c.s2lc").unlink()
    (fixdir / "c.s2lc.tmp").symlink_to("/dev/full")
    err, _ = job(fixdir, epochs=3, resume=True)
    assert err.startswith("flash full while writing c.s2lc; the previous adapters are intact")
    assert (fixdir / "a.s2la").read_bytes() == before
    assert not (fixdir / "c.s2lc.tmp").is_symlink() and not (fixdir / "c.s2lc").exists()


def test_model_too_big_for_the_heap(tmp_path):
    from skip2lora.model.compiler import compile_network
    from skip2lora.model.network import Dense, Network
    rng = np.random.default_rng(0)
    dims = [2048, 96, 3]
    net = Network([Dense(rng.standard_normal((dims[i + 1], dims[i])).astype(np.float32) / 40,
                         np.zeros(dims[i + 1], np.float32)) for i in range(2)])
    F.write_model(tmp_path / "m.s2lm", compile_network(net, dtype="int8", rank=4))
    X = rng.random((4, dims[0])).astype(np.float32)
    F.write_dataset(tmp_path / "d.s2ld", F.dataset_from_arrays(X, np.arange(4) % 3, 3, F.DTYPE_I8))
    err, out = job(tmp_path, model="m.s2lm", data="d.s2ld", epochs=1)
    line = [p for p in s2l_lines(out) if "error" in p]
    assert line and line[0]["error"] == "memory" and line[0]["need"] == "model"
    assert line[0]["free"] > 0
    assert re.match(r"the model and dataset do not fit the board's heap \(out of memory at the "
                    r"model stage\); use an int8 model, adapters on the hidden layers only "
                    r"\(targets='hidden'\) or a smaller rank$", err)

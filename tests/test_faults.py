"""Faults, injected against the virtual board, and the state after each one.

Power cuts (VirtualBoard.kill) while the Skip-Cache is written, while adapters and their
.state are saved and while the model is copied; the link dropped mid fine-tuning (the host
process SIGKILLed); the flash full during the cache build, the adapter save and an upload;
Ctrl-C on the host during flash, finetune and pull; a second command on a busy port; a model
too big for the board's heap. Each fault is made deterministic by a pause at a chosen write
(tests/faults.py), and each state after it is read twice: through the real device code on the
restarted board and through the bytes on the flash image (open_image).

`with fault(name):` counts the fault and, when the block finishes, its consistent state;
the session prints `faults injected: N, consistent: N` (tests/conftest.py).
"""
import argparse
import signal
import time

import numpy as np
import pytest

from faults import (board_json, board_pause, board_run, cli, cli_popen, fault, finish,
                    install_pause, MARK, one_line_error, run_until_cut, soft_reset, wait_for)
from skip2lora.model import formats as F
from skip2lora.board.calls import call_code
from skip2lora.commands.finetune import job_arguments
from skip2lora.model.compiler import compile_network
from skip2lora.data.synthetic import make_drift
from skip2lora.board.link import (BOARD_ADAPTERS, BOARD_CACHE, BOARD_DATASET, BOARD_DIR, BOARD_MODEL,
                            BoardError, BoardLink)
from skip2lora.model.network import Dense, Network
from skip2lora.board.virtual import VirtualBoard, open_image

DIMS = (96, 32, 16, 3)  # the int8 model is 4104 bytes: two 2048-byte transfer chunks
STATE = BOARD_ADAPTERS + ".state"
SAVE_BUFFERS = 19  # payload buffers of one .s2la save for DIMS at rank 4 (64 floats each)


def random_model(path, dims, rank=4, seed=0):
    rng = np.random.default_rng(seed)
    net = Network([Dense((rng.standard_normal((dims[i + 1], dims[i])) / np.sqrt(dims[i]))
                         .astype(np.float32), (0.1 * rng.standard_normal(dims[i + 1]))
                         .astype(np.float32)) for i in range(len(dims) - 1)])
    F.write_model(path, compile_network(net, dtype="int8", rank=rank))
    return path.read_bytes()


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    random_model(d / "a.s2lm", DIMS, rank=4)
    random_model(d / "b.s2lm", DIMS, rank=2)  # same weights, another header: another CRC
    sc = make_drift(n_features=DIMS[0], n_train=10, n_finetune=240, n_test=10, seed=3)
    x, y = sc.finetune
    np.savez(d / "ft.npz", x=x, y=y)
    np.savez(d / "ft2.npz", x=x[::-1].copy(), y=y[::-1].copy())
    np.savez(d / "wide.npz", x=np.zeros((8, DIMS[0] + 4), np.float32), y=np.zeros(8, int))
    np.savez(d / "labels.npz", x=x[:8], y=np.arange(8))  # labels 0..7, the model has 3 classes
    return d


@pytest.fixture(scope="module")
def board(art):
    """A running 192K/2M virtual board flashed with a.s2lm; kill() and start() reuse it."""
    vb = VirtualBoard(art / "flash.img", heap="192K", flash="2M", run_dir=art / "run")
    with vb:
        assert cli("flash", art / "a.s2lm", "--port", vb.port).returncode == 0
        yield vb


def image(art, path):
    """Bytes of a board file as the flash image holds it, or None."""
    fs = open_image(art / "flash.img")
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:  # any other error is the test's failure
        return None


def listing(art):
    return sorted(open_image(art / "flash.img").listdir(BOARD_DIR))


def ok(*args):
    done = cli(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def failed(*args):
    """A command that must fail the user's way: exit 2, one line; returns that line."""
    done = cli(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    return one_line_error(done.stderr)


UNFILL = "import os\nfor _n in os.listdir('/'):\n if _n.startswith('fill'):\n  os.remove('/' + _n)\n"


def clean(board, art, model="a.s2lm"):
    """Back to a known board: the model flashed, no adapters, no cache, no filler, no debris,
    and a fresh interpreter."""
    soft_reset(board)
    board_run(board, "import os\nfor _n in os.listdir(%r):\n"
                     " if _n.startswith('adapters') or _n.startswith('data.s2lc') or "
                     "_n.endswith('.tmp'):\n  os.remove(%r + '/' + _n)\n" % (BOARD_DIR, BOARD_DIR)
                     + UNFILL)
    if image(art, BOARD_MODEL) != (art / model).read_bytes():
        ok("flash", art / model, "--port", board.port)


def finetune(board, art, epochs, *extra, data="ft.npz"):
    return ok("finetune", "--port", board.port, "--data", art / data, "--epochs", epochs, *extra)


def job(epochs, resume=True):
    """The board-side call `skip2lora finetune --epochs N [--resume]` makes, exactly."""
    args = argparse.Namespace(method="skip2lora", epochs=epochs, lr=0.01, batch_size=1, seed=0,
                              resume=resume, backend="auto", rank=None, targets=None)
    return call_code("s2l.job.finetune", **job_arguments(args, BOARD_DATASET))


PROBE = r"""
def _probe():
    import os, gc
    from s2l.model import Model
    from s2l.train import Trainer
    from s2l.formats import read_adapters
    from s2l.compat import S2LError
    out = {"files": sorted(os.listdir(%(dir)r))}
    try:
        m = Model(%(model)r)
        out["model_crc"] = m.file_crc
    except S2LError as e:
        out["model_error"] = str(e)
        return out
    t = Trainer(m, %(data)r, cache=%(cache)r, log=None)
    out["cache_ok"] = t.cache.open() is not None
    out["cache_reason"] = t.cache.reason
    t.close()
    try:
        out["epochs"] = read_adapters(%(adapters)r)["epochs_done"]
    except S2LError as e:
        out["adapters_error"] = str(e)
    return out
print("JSON", json.dumps(_probe()))
del _probe
""" % dict(dir=BOARD_DIR, model=BOARD_MODEL, data=BOARD_DATASET, cache=BOARD_CACHE,
           adapters=BOARD_ADAPTERS)


def probe(board):
    """What the device code itself makes of the board's files."""
    return board_json(board, PROBE)


def cut_power(board, point, count, epochs, resume=True):
    """Run the fine-tuning job on the board and cut the power at the count-th write of point;
    then power the board up again on the same image."""
    out = run_until_cut(board, board_pause(point, count) + job(epochs, resume))
    assert not board.running
    board.start()
    return out


@pytest.fixture(scope="module")
def reference(board, art):
    """Adapters and .state of an uninterrupted 4-epoch run: what every resumed run must equal."""
    clean(board, art)
    finetune(board, art, 4)
    return image(art, BOARD_ADAPTERS), image(art, STATE)


# ---------------------------------------------------------------------------- power cuts

def test_power_cut_while_the_cache_is_written(board, art, reference):
    clean(board, art)
    finetune(board, art, 2)
    before = image(art, BOARD_ADAPTERS), image(art, STATE)
    board_run(board, f"import os\nos.remove({BOARD_CACHE!r})")
    with fault("power cut while the Skip-Cache is written"):
        out = cut_power(board, "cache", 400, epochs=4)  # record 100 of 240
        assert "S2L resume=2" not in out  # the cache is built before the adapters are read back
        assert (image(art, BOARD_ADAPTERS), image(art, STATE)) == before
        assert image(art, BOARD_CACHE) is None  # the partial cache is only ever the .tmp
        state = probe(board)
        assert state["epochs"] == 2 and not state["cache_ok"], state
        assert state["cache_reason"] == "no cache file"
        tuned = finetune(board, art, 4, "--resume")
        assert "resuming after epoch 2" in tuned and "done: epoch 4" in tuned
        assert "not bit for bit" not in tuned
        cache = F.decode_cache(image(art, BOARD_CACHE), "cache on the image")
        assert len(cache.records) == 240 and all(r is not None for r in cache.records)
        assert (image(art, BOARD_ADAPTERS), image(art, STATE)) == reference
        assert probe(board)["cache_ok"]

    with fault("cache file cut short at its final path"):
        whole = image(art, BOARD_CACHE)
        board_run(board, f"_b = open({BOARD_CACHE!r}, 'rb').read({len(whole) // 2})\n"
                         f"_f = open({BOARD_CACHE!r}, 'wb')\n_f.write(_b)\n_f.close()\ndel _b, _f")
        state = probe(board)
        assert not state["cache_ok"] and state["cache_reason"].startswith("stale: incomplete")
        tuned = finetune(board, art, 5, "--resume")
        assert "resuming after epoch 4" in tuned and "done: epoch 5" in tuned
        assert image(art, BOARD_CACHE) == whole  # rebuilt, the same bytes
        assert probe(board)["cache_ok"]


def test_power_cut_during_the_first_adapter_save_leaves_none_and_says_so(board, art, reference):
    clean(board, art)
    with fault("power cut during the first adapter save"):
        cut_power(board, "adapters", 3, epochs=4, resume=False)
        assert image(art, BOARD_ADAPTERS) is None and image(art, STATE) is None
        assert probe(board)["adapters_error"].startswith(BOARD_ADAPTERS + ": no such file")
        line = failed("pull", "--port", board.port, "-o", art / "none")
        assert f"no file {BOARD_ADAPTERS} on the board" in line and "no trained adapters" in line
        assert not (art / "none").exists()
        tuned = finetune(board, art, 4, "--resume")
        assert f"no adapters at {BOARD_ADAPTERS} yet: starting from epoch 0" in tuned
        assert (image(art, BOARD_ADAPTERS), image(art, STATE)) == reference


@pytest.mark.parametrize("point", ["adapters", "state"])
def test_power_cut_while_adapters_are_saved(board, art, reference, point):
    clean(board, art)
    finetune(board, art, 2)
    epoch2 = image(art, BOARD_ADAPTERS), image(art, STATE)
    what = {"adapters": "the .s2la", "state": "its .state"}[point]
    with fault(f"power cut while saving {what} of an epoch"):
        out = cut_power(board, point, 2, epochs=4)
        assert "S2L resume=2" in out and "S2L epoch=3" not in out
        adapters = F.read_adapters(image(art, BOARD_ADAPTERS), "adapters on the image")
        if point == "adapters":  # epoch 3's file was half written: epoch 2's is what is there
            assert (image(art, BOARD_ADAPTERS), image(art, STATE)) == epoch2
            assert adapters.epochs_done == 2 and probe(board)["epochs"] == 2
        else:  # epoch 3's file is complete, its .state is not: the older .state stays
            assert adapters.epochs_done == 3 and probe(board)["epochs"] == 3
            assert image(art, STATE) == epoch2[1]
        tuned = finetune(board, art, 4, "--resume")
        assert f"resuming after epoch {adapters.epochs_done}" in tuned and "done: epoch 4" in tuned
        if point == "adapters":  # bit for bit the uninterrupted run
            assert "not bit for bit" not in tuned
            assert (image(art, BOARD_ADAPTERS), image(art, STATE)) == reference
        else:  # the .state does not belong to the .s2la: said, and the f32 values used
            assert "not bit for bit an uninterrupted run" in tuned
        pulled = ok("pull", "--port", board.port, "-o", art / f"cut-{point}")
        assert "4 epochs, CRC ok" in pulled


def test_power_cut_while_the_model_is_copied(board, art):
    clean(board, art)
    a, b = (art / "a.s2lm").read_bytes(), (art / "b.s2lm").read_bytes()
    with fault("power cut while the model is copied to the board"):
        proc = cli_popen("flash", art / "b.s2lm", "--port", board.port,
                         hook={"path": BOARD_MODEL, "after": 2048})
        wait_for(proc.stderr, MARK, proc=proc)
        board.kill()
        proc.send_signal(signal.SIGUSR1)  # let the host carry on into the dead link
        rc, out, err = finish(proc)
        assert rc == 2, out + err
        line = one_line_error(err)
        assert f"lost the board while writing {BOARD_MODEL}" in line
        board.start()
        assert image(art, BOARD_MODEL) == a  # the old model, whole; b only ever in the .tmp
        assert probe(board)["model_crc"] == F.read_model(art / "a.s2lm").file_crc
        line = failed("finetune", "--port", board.port, "--data", art / "ft.npz", "--model",
                      art / "b.s2lm", "--epochs", 1)
        assert "holds another model (or a partial copy)" in line and "b.s2lm" in line
        assert image(art, BOARD_ADAPTERS) is None  # caught before any training
        ok("flash", art / "b.s2lm", "--port", board.port)
        assert image(art, BOARD_MODEL) == b

    with fault("partial model at the final path (a copy by other means cut short)"):
        board_run(board, f"f = open({BOARD_MODEL!r}, 'wb')\nf.write({a[:2048]!r})\nf.close()\n"
                         f"del f")
        assert probe(board)["model_error"] == f"{BOARD_MODEL}: file CRC mismatch; the model file " \
                                              f"is corrupt or not a model file: rebuild it"
        line = failed("finetune", "--port", board.port, "--data", art / "ft.npz", "--epochs", 1)
        assert f"{BOARD_MODEL} on the board: file CRC mismatch" in line
        line = failed("finetune", "--port", board.port, "--data", art / "ft.npz", "--model",
                      art / "a.s2lm", "--epochs", 1)
        assert "holds another model (or a partial copy)" in line
        assert image(art, BOARD_ADAPTERS) is None
        ok("flash", art / "a.s2lm", "--port", board.port)
        assert image(art, BOARD_MODEL) == a


def test_a_damaged_board_config_is_reported_then_replaced(board, art):
    from skip2lora.board.deploy import read_board_config
    from skip2lora.board.link import BOARD_CONFIG

    clean(board, art)
    board_run(board, f"_f = open({BOARD_CONFIG!r}, 'w')\n_f.write('{{\"model\": 3')\n"
                     f"_f.close()\ndel _f")
    flashed = ok("flash", art / "a.s2lm", "--port", board.port)
    assert (f"on the board before: unreadable config ({BOARD_CONFIG} on the board: not a "
            f"skip2lora board config (not JSON") in flashed
    assert read_board_config(image(art, BOARD_CONFIG))["model_name"] == "a.s2lm"


# ---------------------------------------------------------------------------- the link

def test_link_dropped_mid_finetune_the_board_finishes(board, art):
    clean(board, art)
    with fault("link dropped mid fine-tuning (host killed), the board runs on"):
        proc = cli_popen("finetune", "--port", board.port, "--data", art / "ft.npz",
                         "--epochs", 60)
        wait_for(proc.stdout, "epoch 2/60", proc=proc)
        proc.kill()  # SIGKILL: no Ctrl-C reaches the board, the port just closes
        proc.wait()
        assert F.read_adapters(image(art, BOARD_ADAPTERS)).epochs_done < 60  # cut mid-run
        deadline = time.monotonic() + 90
        done = None
        while time.monotonic() < deadline and done != 60:
            time.sleep(0.3)
            try:
                done = F.read_adapters(image(art, BOARD_ADAPTERS)).epochs_done
            except Exception:  # a snapshot taken mid-save: look again
                pass
        assert done == 60
        assert "60 epochs, CRC ok" in ok("pull", "--port", board.port, "-o", art / "drop1")
        tuned = finetune(board, art, 62, "--resume")
        assert "resuming after epoch 60" in tuned and "done: epoch 62" in tuned
        assert "not bit for bit" not in tuned


def test_link_dropped_mid_finetune_then_pull_stops_the_board(board, art):
    clean(board, art)
    install_pause(board, "adapters", 2 * SAVE_BUFFERS + 5)  # inside epoch 3's save
    with fault("link dropped mid fine-tuning, then pull while the board still trains"):
        proc = cli_popen("finetune", "--port", board.port, "--data", art / "ft.npz",
                         "--epochs", 20)
        wait_for(proc.stdout, MARK, proc=proc)
        proc.kill()  # the host is gone; the board sits in epoch 3's save
        proc.wait()
        pulled = ok("pull", "--port", board.port, "-o", art / "drop2")  # its Ctrl-C stops the job
        got = F.read_adapters(art / "drop2" / "adapters.s2la")
        assert got.epochs_done == 3 and "3 epochs, CRC ok" in pulled  # the save was completed
        assert image(art, BOARD_ADAPTERS) == (art / "drop2" / "adapters.s2la").read_bytes()
        assert probe(board)["epochs"] == 3
        tuned = finetune(board, art, 5, "--resume")
        assert "resuming after epoch 3 " in tuned and "done: epoch 5," in tuned
        assert "not bit for bit" not in tuned  # the .state belongs to the .s2la pulled


def test_ctrl_c_during_finetune_and_a_second_command_on_the_busy_port(board, art):
    clean(board, art)
    install_pause(board, "adapters", SAVE_BUFFERS + 5)  # inside epoch 2's save
    proc = cli_popen("finetune", "--port", board.port, "--data", art / "ft.npz", "--epochs", 20)
    try:
        before = "".join(wait_for(proc.stdout, MARK, proc=proc))
        for second in (("pull", "-o", art / "busy"), ("flash", art / "a.s2lm")):
            with fault(f"`skip2lora {second[0]}` while finetune holds the port"):
                line = failed(*second, "--port", board.port)
                assert "the port is in use by another program" in line
                assert not (art / "busy").exists()
        with fault("Ctrl-C on the host during finetune (inside an adapter save)"):
            proc.send_signal(signal.SIGINT)
            rc, out, err = finish(proc)
            assert rc == 130, out + err
            assert "epoch 1/20" in before and "epoch 2/20" not in before
            # the save Ctrl-C interrupted is completed, its line shown, and the board stops
            assert "epoch 2/20" in out and "stopped on the board after epoch 2;" in out
            assert F.read_adapters(image(art, BOARD_ADAPTERS)).epochs_done == 2
            assert "2 epochs, CRC ok" in ok("pull", "--port", board.port, "-o", art / "ctrlc")
            tuned = finetune(board, art, 3, "--resume")
            assert "resuming after epoch 2 " in tuned and "not bit for bit" not in tuned
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("how", ["ctrl-c", "host killed"])
def test_interrupted_flash_keeps_the_old_model_and_the_next_flash_works(board, art, how):
    clean(board, art)
    a, b = (art / "a.s2lm").read_bytes(), (art / "b.s2lm").read_bytes()
    with fault(f"{how} on the host while flash copies the model"):
        proc = cli_popen("flash", art / "b.s2lm", "--port", board.port,
                         hook={"path": BOARD_MODEL, "after": 2048})
        wait_for(proc.stderr, MARK, proc=proc)
        if how == "ctrl-c":
            proc.send_signal(signal.SIGINT)
            rc, out, err = finish(proc)
            assert rc == 130 and one_line_error(err) == "skip2lora: interrupted", out + err
            assert BOARD_MODEL.rsplit("/", 1)[1] + ".tmp" not in listing(art)  # cleaned up
        else:
            proc.kill()
            proc.wait()
        assert image(art, BOARD_MODEL) == a
        assert probe(board)["model_crc"] == F.read_model(art / "a.s2lm").file_crc
        flashed = ok("flash", art / "b.s2lm", "--port", board.port)
        assert "on the board before: model a.s2lm (rank 4)" in flashed  # its config was kept
        assert image(art, BOARD_MODEL) == b and "model.s2lm.tmp" not in listing(art)


def test_ctrl_c_during_pull_keeps_both_sides(board, art):
    clean(board, art)
    finetune(board, art, 3)
    out = art / "pulled"
    ok("pull", "--port", board.port, "-o", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    on_board = image(art, BOARD_ADAPTERS)
    finetune(board, art, 4, "--resume")  # the board now holds newer adapters than `out`
    with fault("Ctrl-C on the host during pull"):
        proc = cli_popen("pull", "--port", board.port, "-o", out,
                         hook={"path": BOARD_ADAPTERS, "after": 2048})
        wait_for(proc.stderr, MARK, proc=proc)
        proc.send_signal(signal.SIGINT)
        rc, _, err = finish(proc)
        assert rc == 130 and one_line_error(err) == "skip2lora: interrupted"
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing half-written
        assert image(art, BOARD_ADAPTERS) != on_board  # the board's newer file, untouched:
        assert F.read_adapters(image(art, BOARD_ADAPTERS)).epochs_done == 4
        assert "4 epochs, CRC ok" in ok("pull", "--port", board.port, "-o", out)
        assert F.read_adapters(out / "adapters.s2la").epochs_done == 4


# ---------------------------------------------------------------------------- flash full

FILL = r"""
def _fill():
    import os
    free = os.statvfs('/')[3]  # LittleFS's estimate: it counts some free blocks as used
    n = 0
    if 16 < free < 100000:
        f = open('/fill0', 'wb')
        for _ in range(free - 16):
            f.write(bytes(4096))
        f.close()
        n = 1
    while n < 2000:  # then one block per file, each committed, until a block will not go
        f = None
        try:
            f = open('/fill%d' % n, 'wb')
            f.write(bytes(4096))
            f.close()
        except OSError:
            try:
                f.close()
            except Exception:
                pass
            try:
                os.remove('/fill%d' % n)
            except OSError:
                pass
            break
        n += 1
    try:  # not one more block fits now
        f = open('/fill.probe', 'wb')
        f.write(bytes(4096))
        f.close()
        full = False
    except OSError:
        full = True
    try:
        f.close()
    except Exception:
        pass
    try:
        os.remove('/fill.probe')
    except OSError:
        pass
    return full
print("JSON", json.dumps(_fill()))
del _fill
"""


def test_flash_full_during_cache_adapter_and_upload_writes(board, art):
    clean(board, art)
    finetune(board, art, 2)
    kept = {p: image(art, p) for p in (BOARD_ADAPTERS, STATE, BOARD_DATASET)}
    board_run(board, f"import os\nos.remove({BOARD_CACHE!r})")

    with fault("flash full while the Skip-Cache is written"):
        assert board_json(board, FILL) is True
        line = failed("finetune", "--port", board.port, "--data", art / "ft.npz", "--epochs", 4,
                      "--resume")
        assert (f"flash full while writing {BOARD_CACHE}; the previous adapters are intact"
                in line)
        assert {p: image(art, p) for p in kept} == kept
        assert "data.s2lc" not in listing(art) and "data.s2lc.tmp" not in listing(art)

    board_run(board, UNFILL)
    assert "done: epoch 3" in finetune(board, art, 3, "--resume")  # the cache is built again
    kept = {p: image(art, p) for p in (BOARD_ADAPTERS, STATE, BOARD_DATASET, BOARD_CACHE)}

    with fault("flash full while adapters are saved"):
        assert board_json(board, FILL) is True
        line = failed("finetune", "--port", board.port, "--data", art / "ft.npz", "--epochs", 5,
                      "--resume")
        assert (f"flash full while writing {BOARD_ADAPTERS}; the previous adapters are intact"
                in line)
        assert {p: image(art, p) for p in kept} == kept
        assert probe(board)["epochs"] == 3

    with fault("flash full while a new dataset is uploaded"):
        line = failed("finetune", "--port", board.port, "--data", art / "ft2.npz", "--epochs", 5,
                      "--resume")
        assert f"the board's flash is full writing {BOARD_DATASET}" in line
        assert f"the old {BOARD_DATASET} is intact" in line
        assert {p: image(art, p) for p in kept} == kept
        assert "data.s2ld.tmp" not in listing(art)
        board_run(board, UNFILL)
        tuned = finetune(board, art, 5, "--resume")
        assert "resuming after epoch 3" in tuned and "done: epoch 5" in tuned
        assert "not bit for bit" not in tuned


# ---------------------------------------------------------------------------- mismatches

def test_mismatched_inputs_are_refused_before_any_training(board, art):
    clean(board, art)
    finetune(board, art, 2)
    kept = {p: image(art, p) for p in (BOARD_ADAPTERS, STATE, BOARD_DATASET)}
    line = failed("finetune", "--port", board.port, "--data", art / "wide.npz", "--epochs", 3)
    assert "wide.npz" in line and f"has {DIMS[0] + 4} features per sample" in line
    assert f"{BOARD_MODEL} on the board takes {DIMS[0]}" in line
    line = failed("finetune", "--port", board.port, "--data", art / "labels.npz", "--epochs", 3,
                  "--model", art / "a.s2lm")
    assert "labels.npz" in line and "labels run 0..7 but must lie in 0..2" in line
    assert "a.s2lm" in line
    line = failed("finetune", "--port", board.port, "--data", art / "ft.npz", "--epochs", 3,
                  "--resume", "--rank", 2)  # adapters of rank 4 on the board
    assert "--resume: the adapters on the board are skip2lora rank 4 on layers" in line
    assert "this run asks for skip2lora rank 2" in line and "resume=False" not in line
    assert {p: image(art, p) for p in kept} == kept


# ---------------------------------------------------------------------------- the heap

@pytest.fixture(scope="module")
def small_board(tmp_path_factory):
    d = tmp_path_factory.mktemp("heap")
    random_model(d / "big.s2lm", (512, 64, 64, 3))
    rng = np.random.default_rng(0)
    np.savez(d / "big.npz", x=rng.random((30, 512)).astype(np.float32), y=np.arange(30) % 3)
    # 80K: the package imports (about 55 KB as x64 .mpy) and the job reaches the model stage,
    # where the 130 KB of float weights cannot fit
    with VirtualBoard(d / "flash.img", heap="80K", flash="1M", run_dir=d / "run") as vb:
        yield d, vb


def test_model_too_big_for_the_heap(small_board):
    d, vb = small_board
    line = failed("flash", d / "big.s2lm", "--port", vb.port)
    assert "does not fit" in line and "KiB needed of" in line and "heap" in line
    fs = open_image(d / "flash.img")
    assert "skip2lora" not in fs.listdir("/") and fs.listdir("/lib") == []  # nothing written
    with fault("out of memory on the board (a forced model too big for its heap)"):
        ok("flash", d / "big.s2lm", "--port", vb.port, "--force")
        line = failed("finetune", "--port", vb.port, "--data", d / "big.npz", "--epochs", 1)
        assert "do not fit the board's heap (out of memory at the model stage)" in line
        assert "Traceback" not in line and "adapters.s2la" not in open_image(
            d / "flash.img").listdir(BOARD_DIR)
        with BoardLink(vb.port) as link:  # a MemoryError outside the job: one clear line too
            with pytest.raises(BoardError) as info:
                link.run("_b = bytearray(1 << 20)")
            assert str(info.value).startswith(f"{vb.port}: the board ran out of memory "
                                              f"(MemoryError: memory allocation failed")
            assert "\n" not in str(info.value) and "reset the board" in str(info.value)
            link.transport.enter_raw_repl(soft_reset=True)  # as the message says: heap freed
            assert link.run("print(1 + 1)").strip() == "2"

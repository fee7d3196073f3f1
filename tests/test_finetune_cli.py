"""`skip2lora finetune` and `pull` as a user meets them (issue 12, items 1, 5, 8, 9, 10): a run
that diverges exits non-zero with one line naming the epoch and the remedy, keeping the adapters
saved before; every option is checked on the host, in the CLI's names, before anything is
uploaded; a dataset path on the board must exist; the start of training says what the board
trains with; epoch 1 says it built the Skip-Cache; a fresh run leaves no older run's adapters.

The option checks run without a board (a port that does not exist: the option's error comes
first). The rest runs in-process against a virtual board (the MicroPython unix port), whose
flash image is read back with open_image.
"""
import numpy as np
import pytest

from cli_helpers import one_line_error, run_cli
from skip2lora.board.link import BOARD_ADAPTERS, BOARD_DATASET, BOARD_DIR, BoardLink
from skip2lora.board.virtual import VirtualBoard, open_image
from skip2lora.commands.finetune import Progress, memory_error
from skip2lora.model import formats as F
from skip2lora.model.compiler import compile_network
from skip2lora.model.network import Dense, Network

DIMS = (16, 12, 8, 3)
N = 48
NO_PORT = "/dev/skip2lora-no-such-port"
STATE = BOARD_ADAPTERS + ".state"


def network():
    rng = np.random.default_rng(0)
    return Network([Dense(rng.standard_normal((DIMS[i + 1], DIMS[i])).astype(np.float32)
                          / np.sqrt(DIMS[i]), np.zeros(DIMS[i + 1], np.float32))
                    for i in range(3)])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ftcli")
    net = network()
    F.write_model(d / "int8.s2lm", compile_network(net, dtype="int8", rank=4))
    F.write_model(d / "f32.s2lm", compile_network(net, dtype="f32", rank=4))
    x = np.random.default_rng(1).random((N, DIMS[0])).astype(np.float32)
    y = (np.argmax(net.forward(x), axis=1) + (np.arange(N) % 4 == 0)) % 3  # a quarter to learn
    np.savez(d / "data.npz", x=x, y=y)
    np.savez(d / "other.npz", x=x[::-1].copy(), y=y[::-1].copy())
    wide = np.zeros((4, DIMS[0] + 2), np.float32)  # 18 features: not this model's data
    F.write_dataset(d / "wide.s2ld", F.dataset_from_arrays(wide, np.arange(4) % 3, 3,
                                                           F.DTYPE_I8))
    return d


@pytest.fixture(scope="module")
def board(files):
    with VirtualBoard(files / "flash.img", heap="192K", flash="2M", run_dir=files / "run") as vb:
        code, out, err = _cli(None, "flash", files / "int8.s2lm", "--port", vb.port)
        assert code == 0, out + err
        yield vb


def _cli(capsys, *argv):
    if capsys is None:
        from skip2lora import cli
        return cli.main([str(a) for a in argv]), "", ""
    return run_cli(capsys, *argv)


def image(files, path):
    fs = open_image(files / "flash.img")
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def finetune(capsys, board, files, *extra, data="data.npz"):
    return run_cli(capsys, "finetune", "--port", board.port, "--data", files / data, *extra)


def ok(capsys, board, files, *extra, **kw):
    code, out, err = finetune(capsys, board, files, *extra, **kw)
    assert code == 0, out + err
    return out


# ------------------------------------------------------------------ the options, on their own

@pytest.mark.parametrize("argv,fragments", [
    (["--rank", "0"], ["--rank 0 is outside 1..64"]),
    (["--rank", "-2"], ["--rank -2 is outside 1..64"]),
    (["--rank", "65"], ["--rank 65 is outside 1..64"]),
    (["--lr", "0"], ["--lr 0 trains nothing", "positive"]),
    (["--epochs", "0"], ["--epochs 0: give 1 or more"]),
    (["--epochs", "-3"], ["--epochs -3: give 1 or more"]),
    (["--batch-size", "0"], ["--batch-size 0: give 1 or more"]),
    (["--targets", "first"], ["--targets 'first' is not all, hidden or 0-based layer indexes"]),
    (["--targets", "-1"], ["--targets '-1' is not all, hidden or 0-based layer indexes"]),
    (["--targets", "hidden", "--method", "lora-all"], ["--targets applies to skip2lora and "
                                                       "skip-lora; lora-all trains every layer"]),
    (["--rank", "2", "--method", "ft-last"], ["--rank does not apply to ft-last"]),
    (["--backend", "viper", "--method", "lora-all"], ["--backend viper: lora-all runs in "
                                                      "float on the board"]),
])
def test_options_are_checked_in_the_clis_names_before_the_board(capsys, files, argv,
                                                                  fragments):
    code, out, err = run_cli(capsys, "finetune", "--port", NO_PORT, "--data",
                             files / "data.npz", *argv)
    assert code == 2 and out == ""
    line = one_line_error(err, *fragments)
    assert NO_PORT not in line  # caught before the port was even opened
    for board_word in ("momentum", "resume=", "batch_size", "backend=", "targets="):
        assert board_word not in line


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_a_negative_or_non_finite_lr_names_lr(capsys, files, value):
    code, _, err = run_cli(capsys, "finetune", "--port", NO_PORT, "--data", files / "data.npz",
                           "--lr", value)
    assert code == 2 and "argument --lr" in err and NO_PORT not in err
    assert "momentum" not in err


@pytest.mark.parametrize("argv,fragments", [
    (["--targets", "3"], ["--targets 3: ", "f32.s2lm has layers 0..2"]),
    (["--targets", "0,7"], ["--targets 0,7: ", "f32.s2lm has layers 0..2"]),
    (["--backend", "python"], ["--backend python is the fixed-point path, which needs an int8",
                               "--dtype int8"]),
])
def test_options_checked_against_the_model_name_the_option(capsys, files, argv, fragments):
    code, out, err = run_cli(capsys, "finetune", "--port", NO_PORT, "--data",
                             files / "data.npz", "--model", files / "f32.s2lm", *argv)
    assert code == 2
    one_line_error(err, *fragments)


# ------------------------------------------------------------------ on a virtual board

def test_model_dependent_options_are_refused_before_any_upload(capsys, board, files):
    before = image(files, BOARD_DATASET)
    code, out, err = finetune(capsys, board, files, "--targets", "5", data="other.npz")
    assert code == 2
    one_line_error(err, f"--targets 5: /skip2lora/model.s2lm on the board has layers 0..2")
    assert "uploading" not in out and image(files, BOARD_DATASET) == before


def test_a_missing_board_dataset_is_one_line_and_never_already_there(capsys, board, files):
    code, out, err = run_cli(capsys, "finetune", "--port", board.port, "--data", ":/nope.s2ld",
                             "--lr", "0.01")
    assert code == 2 and "already on the board" not in out and "training" not in out
    one_line_error(err, "--data :/nope.s2ld: no such file on the board")


def test_the_start_says_what_the_board_trains_with_and_epoch_1_built_the_cache(
        capsys, board, files):
    out = ok(capsys, board, files, "--epochs", 2, "--lr", "0.01")
    # the model's rank 4 and its three adapter inputs (compile's defaults), the unix port's
    # viper, the lr given, the 48 samples of data.npz
    assert ("on the board: skip2lora, viper backend, rank 4 adapters on layers 0,1,2, "
            "lr 0.01, 48 samples") in out
    epoch1 = next(l for l in out.splitlines() if "epoch 1/2" in l)
    epoch2 = next(l for l in out.splitlines() if "epoch 2/2" in l)
    assert epoch1.endswith("built the Skip-Cache") and "from the" not in epoch1
    assert epoch2.endswith(f"{N} samples from the Skip-Cache")
    out = ok(capsys, board, files, "--epochs", 1, "--lr", "0.01", "--method", "lora-all",
             "--backend", "float", "--rank", "2")
    assert "on the board: lora-all, float backend, rank 2 adapters on layers 0,1,2" in out
    assert "Skip-Cache" not in out  # no cache, no word about one
    out = ok(capsys, board, files, "--epochs", 1, "--lr", "0.01", "--method", "ft-last")
    assert "on the board: ft-last, float backend, the last layer's weights (layer 2)" in out


def test_a_batch_larger_than_the_data_is_said_in_one_line(capsys, board, files):
    out = ok(capsys, board, files, "--epochs", 1, "--lr", "0.01", "--batch-size", 1000)
    notes = [l for l in out.splitlines() if "--batch-size" in l]
    assert notes == ["note: --batch-size 1000 is more than the 48 samples: each epoch is one "
                     "batch of 48, so one SGD step per epoch"]
    # a dataset already on the board: the note comes from the board's sample count
    out = run_cli(capsys, "finetune", "--port", board.port, "--data", ":" + BOARD_DATASET,
                  "--epochs", 1, "--lr", "0.01", "--batch-size", 60)[1]
    assert "note: --batch-size 60 is more than the 48 samples" in out


def test_divergence_exits_non_zero_naming_the_epoch_and_keeps_the_last_good_adapters(
        capsys, board, files):
    ok(capsys, board, files, "--epochs", 2, "--lr", "0.01")
    kept = image(files, BOARD_ADAPTERS), image(files, STATE)
    code, out, err = finetune(capsys, board, files, "--epochs", 5, "--lr", 1000, "--resume")
    assert code == 2
    one_line_error(err, "training diverged in epoch 3 (loss ",
                          f"the adapters of epoch 2 are kept in {BOARD_ADAPTERS}",
                          "lower --lr (e.g. 100)")
    assert "epoch 3/5" not in out and "done:" not in out
    assert (image(files, BOARD_ADAPTERS), image(files, STATE)) == kept
    assert "2 epochs, CRC ok" in run_cli(capsys, "pull", "--port", board.port, "-o",
                                         files / "pulled")[1]
    # a fresh run that diverges at once keeps nothing, not even the older run's adapters
    code, out, err = finetune(capsys, board, files, "--epochs", 3, "--lr", 1000)
    assert code == 2
    one_line_error(err, "training diverged in epoch 1 (loss ",
                   "no adapters were kept; lower --lr (e.g. 100)")
    assert image(files, BOARD_ADAPTERS) is None and image(files, STATE) is None


def test_lora_all_at_a_large_lr_stops_instead_of_training_nan(capsys, board, files):
    """Item 1: LoRA-All in float diverged to `loss nan` for 20 epochs and exited 0."""
    code, out, err = finetune(capsys, board, files, "--epochs", 20, "--lr", 1000, "--method",
                              "lora-all")
    assert code == 2 and "nan" not in out
    one_line_error(err, "training diverged in epoch 1", "lower --lr (e.g. 100)")
    assert image(files, BOARD_ADAPTERS) is None


def test_a_fresh_run_that_fails_before_epoch_1_leaves_no_older_adapters(capsys, board, files):
    ok(capsys, board, files, "--epochs", 2, "--lr", "0.01")
    assert F.read_adapters(image(files, BOARD_ADAPTERS)).epochs_done == 2
    with BoardLink(board.port) as link:  # a dataset of another shape, put there by hand
        link.write_file(BOARD_DIR + "/wide.s2ld", (files / "wide.s2ld").read_bytes())
    code, out, err = run_cli(capsys, "finetune", "--port", board.port, "--data",
                             ":" + BOARD_DIR + "/wide.s2ld", "--lr", "0.01")
    assert code == 2 and "dataset has 18 features" in err
    assert image(files, BOARD_ADAPTERS) is None and image(files, STATE) is None
    code, _, err = run_cli(capsys, "pull", "--port", board.port, "-o", files / "none")
    assert code == 2 and "no trained adapters yet" in err
    out = ok(capsys, board, files, "--epochs", 1, "--lr", "0.01", "--resume")
    assert f"no adapters at {BOARD_ADAPTERS} yet: starting from epoch 0" in out


def test_a_refused_resume_speaks_the_clis_options(capsys, board, files):
    ok(capsys, board, files, "--epochs", 1, "--lr", "0.01")
    kept = image(files, BOARD_ADAPTERS)
    code, out, err = finetune(capsys, board, files, "--epochs", 2, "--lr", "0.01", "--resume",
                              "--rank", 2)
    assert code == 2
    line = one_line_error(err, "--resume: the adapters on the board are skip2lora rank 4 on "
                          "layers 0,1,2; this run asks for skip2lora rank 2 on layers 0,1,2",
                          "--rank", "without --resume")
    assert "resume=False" not in line and "S2LError" not in line
    assert image(files, BOARD_ADAPTERS) == kept


def test_out_of_memory_is_said_in_the_clis_options():
    progress = Progress(3)
    progress.line(b"S2L error=memory need=trainer free=5120")
    line = str(memory_error(progress.error))
    assert line.startswith("the model and dataset do not fit the board's heap (out of memory "
                           "at the trainer stage); 5,120 bytes were free")
    assert "--dtype int8" in line and "--targets hidden" in line and "--rank" in line
    assert "targets='hidden'" not in line

"""End to end: the real `skip2lora` and `mpremote` commands against a virtual board.

Each command runs in its own process, as a user runs it; what they print, what lands on the
flash image and what the board predicts are checked against the host's own readers.
"""

import numpy as np
import pytest

from cli_helpers import drift_model, mpremote, skip2lora
from skip2lora.board.virtual import VirtualBoard, open_image
from skip2lora.model.formats import DTYPE_F32, dataset_from_arrays, read_adapters, write_dataset

DIMS = (16, 12, 8, 3)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A small pre-trained model compiled to int8, its drift data, and a running board."""
    d = tmp_path_factory.mktemp("flow")
    sc = drift_model(d, DIMS, n_train=300, n_finetune=240, n_test=120, epochs=30)
    with VirtualBoard(d / "flash.img", heap="192K", flash="2M", run_dir=d / "run") as board:
        yield d, sc, board


@pytest.fixture(scope="module")
def flashed(work):
    """The board after a first `skip2lora flash`, and what that command printed."""
    d, sc, board = work
    return d, sc, board, skip2lora("flash", d / "model.s2lm", "--port", board.port).stdout


def test_flash_lands_on_the_image_and_skips_unchanged_files(flashed):
    d, _, board, first = flashed
    assert "all verified by sha256" in first
    assert ".mpy for x64" in first
    fs = open_image(d / "flash.img")
    with fs.open("/skip2lora/model.s2lm", "rb") as f:
        assert f.read() == (d / "model.s2lm").read_bytes()
    shipped = fs.listdir("/lib/s2l")
    assert "train.mpy" in shipped and "job.mpy" in shipped
    with fs.open("/lib/s2l/train.mpy", "rb") as f:
        assert f.read(2) == b"M\x06"  # .mpy magic and version 6
    again = skip2lora("flash", d / "model.s2lm", "--port", board.port)
    assert " 0 written" in again.stdout and "unchanged /skip2lora/model.s2lm" in again.stdout


def test_package_imports_after_a_soft_reset(flashed):
    _, _, board, _ = flashed
    mpremote(board.port, "soft-reset")
    out = mpremote(board.port, "exec", "import s2l, sys; print('ok', 's2l' in sys.modules)")
    assert "ok True" in out


def test_finetune_pull_export_and_board_predictions_match_onnxruntime(flashed):
    d, sc, board, _ = flashed
    tuned = skip2lora("finetune", "--port", board.port, "--data", d / "finetune.npz",
                      "--epochs", 3, "--lr", 0.01)
    assert "done: epoch 3" in tuned.stdout, tuned.stdout + tuned.stderr
    pulled = skip2lora("pull", "--port", board.port, "-o", d / "adapters")
    assert "3 epochs, CRC ok" in pulled.stdout
    af = read_adapters(d / "adapters" / "adapters.s2la")
    assert af.epochs_done == 3 and af.method == "skip2lora" and len(af.adapters) == 3
    assert any(np.abs(a.B).max() > 0 for a in af.adapters)  # the board really trained
    assert (d / "adapters" / "adapter_model.safetensors").exists()
    skip2lora("export", d / "model.s2lm", "--adapters", d / "adapters", "-o", d / "adapted.onnx")

    # the board's own predictions on the held-out set, with the pulled adapters loaded
    x_test, y_test = sc.test
    write_dataset(d / "test.s2ld", dataset_from_arrays(x_test, y_test, 3, DTYPE_F32))
    mpremote(board.port, "fs", "cp", str(d / "test.s2ld"), ":/skip2lora/test.s2ld")
    script = ("from s2l import Model, Dataset\nfrom array import array\n"
              "m = Model('/skip2lora/model.s2lm'); m.load_adapters('/skip2lora/adapters.s2la')\n"
              "ds = Dataset('/skip2lora/test.s2ld'); x = array('f', [0.0] * ds.n_features)\n"
              "out, fwd = [], []\nfor k in range(ds.n):\n ds.read(k)\n"
              " for i in range(ds.n_features):\n  x[i] = ds.x[i]\n out.append(m.predict(x))\n"
              " y = m.forward(x)\n fwd.append(max(range(len(y)), key=lambda c: y[c]))\n"
              "print('PRED', ''.join(str(p) for p in out))\n"
              "print('FWD', ''.join(str(p) for p in fwd))\n")
    out = mpremote(board.port, "exec", script)
    board_pred = np.array([int(c) for c in out.split("PRED ")[1].split()[0]])
    board_fwd = np.array([int(c) for c in out.split("FWD ")[1].split()[0]])

    import onnxruntime as ort

    session = ort.InferenceSession(str(d / "adapted.onnx"))
    logits = session.run(None, {session.get_inputs()[0].name: x_test.astype(np.float32)})[0]
    # the board's float forward is the exported model's maths: the same class everywhere;
    # predict() of this int8 model rounds its activations to int8 (int8forward.py): it may
    # pick another class on a near tie, and does on 2 of these 120
    np.testing.assert_array_equal(board_fwd, logits.argmax(1))
    assert np.mean(board_pred == logits.argmax(1)) >= 0.97


# Ctrl-C, a busy port, --resume and every other fault: tests/test_faults.py, which interrupts
# at chosen points (a SIGINT landing in the unix port's garbage collector locks its heap).

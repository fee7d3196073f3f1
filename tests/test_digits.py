"""The second dataset (scikit-learn's digits, shifted one pixel: data/digits.py) and the
defaults on it: with `--lr auto`, Skip2-LoRA comes within 2 points of the best fixed lr of
`make paper`'s sweep, and LoRA-All's loss stays finite.

The expected accuracy is the best row of the fixed-lr sweep committed in docs/RESULTS.json: each
lr there is given, not chosen, so it does not come from the code under test (step_size.py)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import skip2lora
from skip2lora.data import digits
from skip2lora.training.experiments import (DIGITS_DIMS, DIGITS_PRETRAIN, baseline_accuracy,
                                            prepare, run_method)

ROOT = Path(__file__).resolve().parent.parent
TARGET_PT = 2.0


def sweep_best(method):
    scen = json.loads((ROOT / "docs" / "RESULTS.json").read_text())["scenarios"][digits.SCENARIO]
    return max(acc for _, acc, _ in scen["lr_sweep"]["accuracy"][method])


def test_the_shift_moves_every_pixel_one_column_right():
    image = np.arange(64, dtype=np.float32).reshape(8, 8)
    shifted = digits.shift_right(image.reshape(1, 64)).reshape(8, 8)
    assert np.all(shifted[:, 0] == 0)
    assert np.array_equal(shifted[:, 1:], image[:, :7])


def test_the_scenario_splits():
    sc = digits.load_scenario()
    sizes = [len(s[1]) for s in (sc.pretrain, sc.source_test, sc.finetune, sc.test)]
    assert sizes == [898, 899, 449, 450] and sc.n_classes == 10 and sc.n_features == 64
    # finetune and test are the two halves of source_test, shifted: different images
    assert np.array_equal(sc.finetune[0], digits.shift_right(sc.source_test[0][:449]))
    assert np.array_equal(sc.test[0], digits.shift_right(sc.source_test[0][449:]))
    assert sc.pretrain[0].max() == 16 and sc.pretrain[0].min() == 0  # unscaled, as shipped


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare(digits.SCENARIO, tmp_path_factory.mktemp("digits"), log=lambda _: None)


def test_the_shift_costs_the_pretrained_model_accuracy(prepared):
    from skip2lora.training.experiments import accuracy

    source = accuracy(prepared.network.forward, *prepared.scenario.source_test)
    assert source > 0.93
    assert baseline_accuracy(prepared) < source - 0.3


def test_skip2lora_with_the_defaults_is_within_2_points_of_the_sweeps_best(prepared):
    got = run_method(prepared, "skip2lora")  # lr: auto, as `skip2lora finetune` does
    best = sweep_best("skip2lora")
    assert got["accuracy"] >= best - TARGET_PT / 100, (got["lr"], got["accuracy"], best)


def test_lora_all_with_the_defaults_keeps_a_finite_loss(prepared):
    got = run_method(prepared, "lora-all")
    losses = [h["loss"] for h in got["result"].history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], (got["lr"], losses)
    assert got["accuracy"] >= sweep_best("lora-all") - TARGET_PT / 100


def test_the_default_finetune_on_the_board_reaches_the_target(tmp_path):
    """The user's flow on a virtual board: compile the BatchNorm/Dropout torch model, flash,
    `finetune` with no options, pull, export, eval on the held-out shifted digits."""
    from skip2lora.board.virtual import VirtualBoard
    from skip2lora.training.pretrain import pretrain, save_torch

    d = tmp_path
    sc = digits.load_scenario()
    save_torch(pretrain(*sc.pretrain, dims=DIGITS_DIMS, seed=0, **DIGITS_PRETRAIN),
               d / "digits.pt")
    np.savez(d / "finetune.npz", x=sc.finetune[0], y=sc.finetune[1])
    np.savez(d / "test.npz", x=sc.test[0], y=sc.test[1])
    skip2lora("compile", d / "digits.pt", "-o", d / "digits.s2lm")
    with VirtualBoard(d / "flash.img", heap="192K", flash="2M", run_dir=d / "run") as board:
        skip2lora("flash", d / "digits.s2lm", "--port", board.port)
        tuned = skip2lora("finetune", "--port", board.port, "--data", d / "finetune.npz")
        assert "chosen on the host (--lr auto)" in tuned.stdout, tuned.stdout
        assert "done: epoch 20" in tuned.stdout, tuned.stdout + tuned.stderr
        skip2lora("pull", "--port", board.port, "-o", d / "adapters")
    skip2lora("export", d / "digits.s2lm", "--adapters", d / "adapters", "-o", d / "a.onnx")
    out = skip2lora("eval", d / "a.onnx", "--data", d / "test.npz").stdout
    acc = float(out.split("accuracy:")[1].split("%")[0]) / 100
    assert acc >= sweep_best("skip2lora") - TARGET_PT / 100, out

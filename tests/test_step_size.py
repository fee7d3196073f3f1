"""--lr auto (training/step_size.py): the choice never lands on an lr whose loss diverges, it
follows the inputs' scale, and the CLI takes auto or a number.

Which lrs diverge is found here by running the reference at each lr directly, not by asking
the code under test."""
import argparse
import math

import numpy as np
import pytest

from skip2lora.config import LR_AUTO, FinetuneConfig
from skip2lora.data.synthetic import make_drift
from skip2lora.model.network import Dense, Network
from skip2lora.commands.finetune import lr_for_board
from skip2lora.training import step_size
from skip2lora.training.reference import finetune


def _net(dims, seed=0):
    rng = np.random.default_rng(seed)
    return Network([Dense((rng.standard_normal((dims[i + 1], dims[i])) / np.sqrt(dims[i]))
                          .astype(np.float32), np.zeros(dims[i + 1], np.float32))
                    for i in range(len(dims) - 1)])


@pytest.fixture(scope="module")
def drift():
    sc = make_drift(n_features=16, n_train=300, n_finetune=160, n_test=60, seed=3)
    return _net((16, 12, 8, 3)), sc


def _losses(net, X, y, method, lr, epochs):
    with np.errstate(all="ignore"):
        return [h["loss"] for h in finetune(net, X, y, FinetuneConfig(
            method=method, lr=lr, epochs=epochs)).history]


@pytest.mark.parametrize("method", ["skip2lora", "lora-all"])
def test_the_choice_is_never_an_lr_whose_loss_diverges(drift, method):
    net, sc = drift
    X, y = sc.finetune[0] * 40.0, sc.finetune[1]  # inputs 40x larger: the big lrs blow up
    choice = step_size.choose_lr(net, X, y, FinetuneConfig(method=method))
    (Xt, yt), _ = step_size.validation_split(X, y)
    blown = []
    for lr in step_size.LR_GRID:
        losses = _losses(net, Xt, yt, method, lr, step_size.CHOICE_EPOCHS)
        if not all(math.isfinite(v) for v in losses) or losses[-1] > losses[0]:
            blown.append(lr)
    assert blown, "the test needs lrs that diverge on this data"
    assert choice.lr not in blown and choice.lr < min(blown)
    assert {t.lr for t in choice.trials if t.diverged} == set(blown)
    # and the whole default run with that lr keeps a finite, falling loss
    full = _losses(net, X, y, method, choice.lr, FinetuneConfig.epochs)
    assert all(math.isfinite(v) for v in full) and full[-1] < full[0]


def test_the_choice_follows_the_inputs_scale(drift):
    """Inputs 10x larger make the gradients 10x larger: the chosen step is smaller."""
    net, sc = drift
    small = step_size.choose_lr(net, *sc.finetune).lr
    large = step_size.choose_lr(net, sc.finetune[0] * 30.0, sc.finetune[1]).lr
    assert large < small


def test_every_lr_diverging_is_a_one_line_error(drift):
    from skip2lora.errors import UserError

    net, sc = drift
    with pytest.raises(UserError) as info:
        step_size.choose_lr(net, sc.finetune[0] * 1e6, sc.finetune[1],
                            grid=(10.0, 100.0))
    assert "diverged" in str(info.value) and "--lr" in str(info.value)
    assert "\n" not in str(info.value)


def test_the_held_out_part_is_the_end_of_each_class():
    y = np.repeat([0, 1, 2], [8, 4, 12])
    X = np.arange(len(y))[:, None].astype(float)
    (Xt, yt), (Xv, yv) = step_size.validation_split(X, y, share=0.25)
    assert list(Xv[:, 0]) == [6, 7, 11, 21, 22, 23]
    assert len(yt) + len(yv) == len(y) and not set(Xt[:, 0]) & set(Xv[:, 0])


def test_a_handful_of_samples_still_gets_an_lr(drift):
    net, sc = drift
    X, y = sc.finetune[0][:3], sc.finetune[1][:3]
    assert step_size.choose_lr(net, X, y).lr in step_size.LR_GRID


def test_cli_lr_is_auto_or_a_number():
    assert step_size.parse_lr("auto") == LR_AUTO
    assert step_size.parse_lr("0.003") == 0.003 and step_size.parse_lr("0") == 0.0
    for bad in ("-1", "nan", "inf", "fast"):
        with pytest.raises(argparse.ArgumentTypeError, match="auto or a number >= 0"):
            step_size.parse_lr(bad)


def test_an_explicit_lr_wins_and_a_board_dataset_gets_the_boards_default():
    said = []
    given = argparse.Namespace(lr=0.5, data="x.npz")
    assert lr_for_board(given, None, "m", log=said.append) == 0.5 and not said
    on_board = argparse.Namespace(lr=LR_AUTO, data=":/data/x.s2ld")
    assert lr_for_board(on_board, None, "m", log=said.append) == FinetuneConfig.lr
    assert len(said) == 1 and "/data/x.s2ld is on the board" in said[0]

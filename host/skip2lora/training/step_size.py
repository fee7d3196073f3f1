"""`--lr auto`: the step size chosen on the host for the data being uploaded.

SGD's best step scales with the inverse square of the inputs' size: an adapter on x_1 sees a
gradient proportional to x_1, so a step that suits the fan spectra (|x|^2 about 20) throws the
same network off on scikit-learn's digits (features 0..16, |x|^2 in the thousands), and
LoRA-All diverges to NaN there. Of the three ways out (fold a standardisation into the first
layer when compiling, scale the board's step by measured activation norms, or choose lr on the
host), this is the third: it leaves the board's integer arithmetic untouched, so the board
still trains byte for byte the same everywhere, and it measures what matters, the accuracy
the method reaches, instead of predicting it.

How: the fine-tuning data is split into a training part and a held-out part (per class, the
last quarter in file order: the samples recorded last, never seen in training). The numpy
reference (training/reference.py, the board's contract) trains the chosen method with each lr
of LR_GRID for CHOICE_EPOCHS epochs on the training part, and the lr with the best held-out
accuracy wins (ties: the lower held-out loss). An lr whose training loss goes non-finite, or
ends above where it started, has diverged and is never chosen. Skip methods reuse their
Skip-Cache across epochs, so the choice costs a few seconds on the host.
"""
import argparse
import math
from dataclasses import dataclass, replace

import numpy as np

from skip2lora.config import LR_AUTO, FinetuneConfig
from skip2lora.errors import UserError
from skip2lora.training.reference import finetune

# Half-decades from 1e-5 to 0.1: the fan spectra's best lr lies around 0.01-0.05, the digits'
# around 1e-3; the grid spans inputs 30x smaller and 100x larger than either.
LR_GRID = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
CHOICE_EPOCHS = 5
VALIDATION_SHARE = 0.25  # per class, the last quarter of the fine-tuning data
MAX_TRAIN = 400  # samples the choice trains on at most (evenly spaced through the data)


@dataclass
class Trial:
    lr: float
    accuracy: float  # on the held-out part
    loss: float      # mean cross-entropy on the held-out part
    diverged: bool


@dataclass
class Choice:
    lr: float
    trials: list
    n_train: int
    n_validation: int
    epochs: int

    def summary(self):
        """The one line `finetune` prints."""
        best = next(t for t in self.trials if t.lr == self.lr)
        n_div = sum(t.diverged for t in self.trials)
        return (f"lr {self.lr:g} chosen on the host (--lr auto): best held-out accuracy "
                f"{100 * best.accuracy:.1f} % of {len(self.trials)} lrs "
                f"{self.trials[0].lr:g}..{self.trials[-1].lr:g}, {self.epochs} epochs on "
                f"{self.n_train} samples, scored on {self.n_validation} held out"
                + (f"; {n_div} diverged" if n_div else ""))


def validation_split(X, y, share=VALIDATION_SHARE):
    """Per class, the last `share` of the samples (in file order) is held out for validation;
    a class with one sample stays in training."""
    train, val = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = int(round(len(idx) * (1 - share)))
        train.append(idx[:max(k, 1)])
        val.append(idx[max(k, 1):])
    t, v = np.concatenate(train), np.concatenate(val)
    return (X[t], y[t]), (X[v], y[v])


def _subsample(X, y, n_max):
    if len(y) <= n_max:
        return X, y
    keep = np.round(np.linspace(0, len(y) - 1, n_max)).astype(np.int64)
    return X[keep], y[keep]


def _xent(logits, y):
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-np.mean(log_p[np.arange(len(y)), y]))


def diverged(history):
    """A training loss that went non-finite, or ended above the first epoch's."""
    losses = [h["loss"] for h in history]
    return (not all(math.isfinite(v) for v in losses)) or (len(losses) > 1 and
                                                           losses[-1] > losses[0])


def trial(net, cfg, train, validation, lr, epochs=CHOICE_EPOCHS):
    """cfg's method trained with lr for `epochs` epochs on train, scored on validation."""
    with np.errstate(all="ignore"):  # a diverging lr is a result here, not an error
        result = finetune(net, *train, replace(cfg, lr=lr, epochs=epochs))
        logits = result.predict(validation[0])
    bad = diverged(result.history) or not np.all(np.isfinite(logits))
    acc = float(np.mean(np.argmax(logits, axis=1) == validation[1])) if not bad else 0.0
    loss = _xent(logits, validation[1]) if not bad else math.inf
    return Trial(lr, acc, loss if math.isfinite(loss) else math.inf, bad)


def choose_lr(net, X, y, cfg=None, grid=LR_GRID, epochs=CHOICE_EPOCHS, max_train=MAX_TRAIN,
              progress=None):
    """The Choice of lr for cfg (method, rank, targets, batch size, seed) on data (X, y).

    progress(done, total) is called after every trial."""
    cfg = cfg or FinetuneConfig()
    X, y = np.asarray(X, np.float64), np.asarray(y, np.int64)
    train, validation = validation_split(X, y)
    if not len(validation[1]):  # too few samples to hold any out: score the training data
        validation = train
    train = _subsample(*train, max_train)
    trials = []
    for lr in grid:
        trials.append(trial(net, cfg, train, validation, lr, epochs))
        if progress is not None:
            progress(len(trials), len(grid))
    good = [t for t in trials if not t.diverged]
    if not good:
        raise UserError(f"every lr from {grid[0]:g} to {grid[-1]:g} diverged on this data "
                        f"with {cfg.method}; check the data's scale, or give --lr")
    best = max(good, key=lambda t: (t.accuracy, -t.loss))
    return Choice(best.lr, trials, len(train[1]), len(validation[1]), epochs)


def parse_lr(text):
    """--lr's type: 'auto' or a finite number >= 0."""
    if text == LR_AUTO:
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be {LR_AUTO} or a number >= 0, got {text!r}")
    return value

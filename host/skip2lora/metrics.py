"""Scores of logits against labels: the one definition of accuracy every layer uses (compile,
experiments, pretrain, bench, eval), kept below them all so none imports another for it."""
from dataclasses import dataclass

import numpy as np

def confusion_matrix(y_true, y_pred, n_classes):
    """counts[t, p]: samples of true class t predicted as p."""
    counts = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(counts, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return counts


@dataclass
class EvalResult:
    n: int
    correct: int
    confusion: np.ndarray  # (C, C), rows true class, columns predicted class

    @property
    def accuracy(self):
        return self.correct / self.n

    @property
    def n_classes(self):
        return len(self.confusion)

    def to_dict(self):
        return {"n": self.n, "correct": self.correct, "accuracy": self.accuracy,
                "n_classes": self.n_classes, "confusion": self.confusion.tolist(),
                "confusion_axes": "rows: true class, columns: predicted class"}


def accuracy(logits, y):
    """Share of rows of logits (n, C) whose largest entry is at the label: the one definition
    every accuracy in the project (compile, experiments, pretrain, bench) goes through."""
    return float(np.mean(np.argmax(np.asarray(logits), axis=1) == np.asarray(y)))


def score(logits, y, n_classes=None):
    """EvalResult of logits (n, C) against integer labels y."""
    logits = np.asarray(logits)
    n_classes = n_classes or logits.shape[1]
    pred = np.argmax(logits, axis=1)
    y = np.asarray(y, np.int64)
    return EvalResult(len(y), int(np.sum(pred == y)), confusion_matrix(y, pred, n_classes))

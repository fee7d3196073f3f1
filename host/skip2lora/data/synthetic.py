"""A tiny synthetic drift problem, so tests of the whole pipeline run in milliseconds.

It mimics the cooling-fan drift in miniature: non-negative "spectra" whose class lives in a
few bins, and a target room that adds its own loud band (like the ventilation fan in `noisy`)
and moves the class bins a little. A model trained on the source room loses accuracy in the
target room, and an adapter that sees the input can win it back, which is the behaviour the
tests need to see; nothing else about the real data is imitated.
"""
import numpy as np

from . import Scenario


def _balanced_labels(rng, n, n_classes):
    y = np.arange(n, dtype=np.int64) % n_classes
    rng.shuffle(y)
    return y


def make_drift(n_features=16, n_classes=3, n_train=600, n_finetune=150, n_test=300, seed=0,
               noise=0.25, room_gain=1.5):
    """A source/target Scenario; the same arguments always give the same arrays."""
    if n_features < 2 * n_classes:
        raise ValueError(f"n_features must be at least 2 * n_classes = {2 * n_classes}")
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.1, 0.3, n_features)             # the shared background spectrum
    peaks = np.zeros((n_classes, n_features))
    bins = rng.permutation(n_features)
    for c in range(n_classes):                            # each class: two bins of its own
        peaks[c, bins[2 * c:2 * c + 2]] = rng.uniform(0.6, 1.0, 2)
    # The target room: a loud band over a quarter of the bins, some of them class bins, and
    # every class peak partly moved into a neighbouring bin (a different mounting resonance).
    band = rng.choice(n_features, size=max(2, n_features // 4), replace=False)
    room = np.zeros(n_features)
    room[band] = room_gain * rng.uniform(0.5, 1.0, band.size)
    moved = 0.5 * peaks + 0.5 * np.roll(peaks, 1, axis=1)

    def sample(n, target):
        y = _balanced_labels(rng, n, n_classes)
        mean = base + (moved[y] + room if target else peaks[y])
        x = mean * (1.0 + noise * rng.standard_normal((n, n_features)))
        x += (noise * (2.0 if target else 1.0)) * 0.2 * rng.standard_normal((n, n_features))
        return np.maximum(x, 0.0).astype(np.float32), y

    pretrain = sample(n_train, False)
    source_test = sample(n_test, False)
    finetune = sample(n_finetune, True)
    test = sample(n_test, True)
    return Scenario(
        name=f"synthetic-drift/seed{seed}",
        pretrain=pretrain,
        finetune=finetune,
        test=test,
        source_test=source_test,
        class_names=tuple(f"class{c}" for c in range(n_classes)),
        notes=[f"synthetic: {n_features} features, {n_classes} classes, seed {seed}",
               f"target room band on bins {sorted(int(b) for b in band)}"],
    )

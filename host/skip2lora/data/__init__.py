"""Datasets for examples, tests and benchmarks: the real cooling-fan recordings and a synthetic twin.

Both produce the same `Scenario`, so a test written against the fast synthetic problem runs
unchanged on the real drift scenarios.
"""
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Scenario:
    """One domain-drift problem: pre-train in a source room, fine-tune and test in a target room.

    `finetune` and `test` come from different recordings of the target room, so test accuracy
    measures what the board learned about the room, not what it memorised of one recording.
    Each split is a pair (X float32 (n, d), y int64 (n,)).
    """

    name: str
    pretrain: tuple
    finetune: tuple
    test: tuple
    source_test: tuple
    class_names: tuple = ()
    notes: list = field(default_factory=list)  # where every split came from, for reports

    @property
    def n_features(self):
        return self.pretrain[0].shape[1]

    @property
    def n_classes(self):
        return len(self.class_names) if self.class_names else int(np.max(self.pretrain[1])) + 1

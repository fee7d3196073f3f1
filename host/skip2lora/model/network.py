"""The one internal form of a model: a chain of dense layers, ReLU between them.

Both importers (ONNX, torch) produce a Network, and everything after import (compiler,
reference, export) reads only this, so there is one code path after import.
"""
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Dense:
    """One frozen linear layer y = W x + b; W is (out, in) as in torch.nn.Linear."""

    weight: np.ndarray
    bias: np.ndarray
    name: str = ""

    @property
    def d_in(self):
        return self.weight.shape[1]

    @property
    def d_out(self):
        return self.weight.shape[0]


@dataclass
class Network:
    """Dense layers in order; ReLU follows every layer but the last (which gives logits)."""

    layers: list
    notes: list = field(default_factory=list)  # what the importer dropped or folded, for the user

    @property
    def dims(self):
        """[d_1, ..., d_L, C]: the input width of every layer, then the class count."""
        return [l.d_in for l in self.layers] + [self.layers[-1].d_out]

    @property
    def n_classes(self):
        return self.layers[-1].d_out

    def forward(self, x, return_inputs=False):
        """Logits for x of shape (n, d_1) or (d_1,); with return_inputs, also [x_1..x_L]."""
        h = np.asarray(x, dtype=np.float64)
        inputs = []
        for i, layer in enumerate(self.layers):
            inputs.append(h)
            h = h @ np.asarray(layer.weight, np.float64).T + np.asarray(layer.bias, np.float64)
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        return (h, inputs) if return_inputs else h

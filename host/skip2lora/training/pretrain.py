"""Pre-train the frozen base network on the host, and write it where the importers read it.

Examples and benchmarks need a base model trained in the source room; users bring their own.
The network is the plain Linear/ReLU chain that the importers accept, optionally with
BatchNorm (folded into the Linear by the importer) and Dropout (an identity at inference), so
the same files exercise every path a user's model could take.
"""
import warnings

import numpy as np

from skip2lora.errors import UserError
from skip2lora.metrics import accuracy as logits_accuracy


def _torch():
    try:
        import torch
    except ImportError:  # torch is an optional dependency of the package
        raise UserError("pre-training needs PyTorch: pip install 'skip2lora[torch]'") from None
    return torch


def build_mlp(dims, batchnorm=False, dropout=0.0):
    """Linear, [BatchNorm1d], ReLU, [Dropout] for every hidden layer, then a Linear to the logits."""
    torch = _torch()
    nn = torch.nn
    dims = [int(d) for d in dims]
    if len(dims) < 2:
        raise ValueError(f"dims needs at least an input and an output width, got {dims}")
    layers = []
    for i in range(len(dims) - 2):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if batchnorm:
            layers.append(nn.BatchNorm1d(dims[i + 1]))
        layers.append(nn.ReLU())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(dims[-2], dims[-1]))
    return nn.Sequential(*layers)


def pretrain(X, y, dims=(512, 64, 64, 3), epochs=30, lr=1e-3, seed=0, batchnorm=False,
             dropout=0.0, batch_size=32, weight_decay=0.0):
    """Train an MLP with Adam and cross-entropy; returns it in eval mode, on the CPU.

    Seeded with torch.manual_seed and run on one thread, so the same call gives the same
    weights bit for bit on the same machine; the defaults take about 1-2 s on the 1410 spectra
    of one silentA recording set.
    """
    torch = _torch()
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise ValueError(f"X must be (n, d) and y (n,), got {X.shape} and {y.shape}")
    dims = tuple(int(d) for d in dims)
    if dims[0] != X.shape[1]:
        raise ValueError(f"dims[0] = {dims[0]} but X has {X.shape[1]} features")
    if int(y.max()) >= dims[-1]:
        raise ValueError(f"label {int(y.max())} does not fit {dims[-1]} outputs")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # multithreaded reductions may reorder float sums between runs
    try:
        torch.manual_seed(seed)
        model = build_mlp(dims, batchnorm=batchnorm, dropout=dropout)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        loss_fn = torch.nn.CrossEntropyLoss()
        xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        gen = torch.Generator().manual_seed(seed)
        n = len(xt)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                if batchnorm and len(idx) < 2:
                    continue  # BatchNorm cannot normalise a batch of one
                opt.zero_grad()
                loss = loss_fn(model(xt[idx]), yt[idx])
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return model


def predict(module, X):
    """Logits as float32 numpy, in eval mode, without building a graph."""
    torch = _torch()
    module.eval()
    with torch.no_grad():
        return module(torch.from_numpy(np.asarray(X, dtype=np.float32))).numpy()


def accuracy(module, X, y):
    return logits_accuracy(predict(module, X), y)


def export_onnx(module, path, n_features, opset=17):
    """Write the eval-mode module as ONNX with a dynamic batch axis.

    Uses the TorchScript exporter (dynamo=False) because it writes the graph as the module
    is: a Sequential of Linear/BatchNorm/ReLU/Dropout becomes Gemm (transB=1),
    BatchNormalization and Relu, Dropout vanishing in eval mode, so an exported BatchNorm model
    really tests the importer's folding. The dynamo exporter (the fallback, for a torch without
    the TorchScript one) folds BatchNorm into the Gemm itself and gives Gemm and Relu only.
    """
    torch = _torch()
    module.eval()
    dummy = torch.zeros(1, int(n_features), dtype=torch.float32)
    names = dict(input_names=["input"], output_names=["logits"], opset_version=opset)
    try:
        with warnings.catch_warnings():
            # torch 2.9+ warns on every TorchScript export that the exporter is deprecated.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(module, (dummy,), str(path), dynamo=False,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                              **names)
    except Exception as legacy_error:  # the TorchScript exporter gone in a later torch
        try:
            torch.onnx.export(module, (dummy,), str(path), dynamo=True, external_data=False,
                              dynamic_shapes=({0: torch.export.Dim("batch")},), **names)
        except Exception:
            raise legacy_error
    return path


def save_torch(module, path):
    """torch.save of the whole module; load it with torch.load(path, weights_only=False)."""
    import os

    torch = _torch()
    module.eval()
    tmp = f"{path}.tmp"  # written whole, then renamed: never half a model file
    try:
        torch.save(module, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path

"""Build the cooling-fan files the device tests and the benchmark use (host side, cached).

build(workdir) writes model-int8.s2lm (512-64-64-3, pretrained in silentA), finetune.s2ld
and test.s2ld (noisy room, int8) and returns the host-side objects. The pretrained network
is cached under ~/.cache/skip2lora/device-tests so only the first run pays ~10 s of torch.
"""
import os
import pickle
import shutil
from pathlib import Path

import numpy as np

from skip2lora import formats as F
from skip2lora.network import Dense, Network

CACHE = Path(os.environ.get("SKIP2LORA_CACHE_DIR") or Path.home() / ".cache" / "skip2lora") \
    / "device-tests"
SCENARIO = "silentA-to-noisy"


def _network(scenario=SCENARIO):
    path = CACHE / ("net-%s.pkl" % scenario)
    if path.is_file():
        with open(path, "rb") as f:
            return pickle.load(f)
    from skip2lora.data.cooling_fan import load_scenario
    from skip2lora.pretrain import pretrain
    sc = load_scenario(scenario)
    mlp = pretrain(*sc.pretrain, dims=(512, 64, 64, 3))
    import torch
    layers = [Dense(m.weight.detach().numpy().astype(np.float32),
                    m.bias.detach().numpy().astype(np.float32), "layer%d" % i)
              for i, m in enumerate(x for x in mlp if isinstance(x, torch.nn.Linear))]
    net = Network(layers)
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(net, f)
    return net


class Files:
    pass


def build(workdir, scenario=SCENARIO, n_finetune=None):
    from skip2lora.compiler import compile_network
    from skip2lora.data.cooling_fan import load_scenario
    workdir = Path(workdir)
    sc = load_scenario(scenario)
    net = _network(scenario)
    mf = compile_network(net, dtype="int8", rank=4)
    F.write_model(workdir / "model-int8.s2lm", mf)
    Xf, yf = sc.finetune
    if n_finetune:
        Xf, yf = Xf[:n_finetune], yf[:n_finetune]
    dsf = F.dataset_from_arrays(Xf, yf, 3, F.DTYPE_I8)
    F.write_dataset(workdir / "finetune.s2ld", dsf)
    Xt, yt = sc.test
    dst = F.dataset_from_arrays(Xt, yt, 3, F.DTYPE_I8)
    F.write_dataset(workdir / "test.s2ld", dst)
    out = Files()
    out.model = F.read_model(workdir / "model-int8.s2lm")
    out.net = out.model.to_network()            # exactly what the board holds, in float
    out.finetune = F.read_dataset(workdir / "finetune.s2ld")
    out.X = out.finetune.float_features().astype(np.float64)   # what the board reads
    out.y = out.finetune.labels.astype(np.int64)
    out.Xt, out.yt = np.asarray(Xt, np.float64), np.asarray(yt, np.int64)
    return out


def skip_logits(net, adapter_file, X):
    """Logits of net plus the skip adapters of an .s2la file (host evaluation)."""
    y, xs = net.forward(X, return_inputs=True)
    s = adapter_file.alpha / adapter_file.rank
    for a in adapter_file.adapters:
        assert a.kind == F.KIND_SKIP
        y = y + s * (xs[a.layer] @ a.A.astype(np.float64).T) @ a.B.astype(np.float64).T
    return y


def accuracy(logits, y):
    return float(np.mean(np.argmax(logits, axis=1) == y))

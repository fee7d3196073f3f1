"""Build the cooling-fan files the device tests and the benchmark use (host side, cached).

build(workdir) writes model-int8.s2lm (512-64-64-3, pretrained in silentA), finetune.s2ld
and test.s2ld (noisy room, int8) and returns the host-side objects. The pretrained network
is cached under ~/.cache/skip2lora/device-tests so only the first run pays ~10 s of torch;
the cache file is named by a hash of what made the network (pretrain.py, the pre-training
arrays, dims, seed, torch's version), so a change to any of them trains a new one.
"""
import hashlib
import os
import pickle
from pathlib import Path

import numpy as np

from skip2lora.model import formats as F
from skip2lora.model.network import Dense, Network

CACHE = Path(os.environ.get("SKIP2LORA_CACHE_DIR") or Path.home() / ".cache" / "skip2lora") \
    / "device-tests"
SCENARIO = "silentA-to-noisy"
DIMS = (512, 64, 64, 3)
SEED = 0


def network_key(sc, dims=DIMS, seed=SEED):
    """Hash of everything the pretrained network depends on."""
    import torch
    import skip2lora.training.pretrain
    h = hashlib.sha256()
    h.update(Path(skip2lora.training.pretrain.__file__).read_bytes())
    X, y = sc.pretrain
    for a in (np.ascontiguousarray(X, np.float32), np.ascontiguousarray(y, np.int64)):
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    h.update(repr((tuple(dims), seed, torch.__version__)).encode())
    return h.hexdigest()[:16]


def _network(scenario=SCENARIO):
    from skip2lora.data.cooling_fan import load_scenario
    sc = load_scenario(scenario)
    path = CACHE / ("net-%s-%s.pkl" % (scenario, network_key(sc)))
    if path.is_file():
        with open(path, "rb") as f:
            return pickle.load(f)
    from skip2lora.training.pretrain import pretrain
    mlp = pretrain(*sc.pretrain, dims=DIMS, seed=SEED)
    import torch
    layers = [Dense(m.weight.detach().numpy().astype(np.float32),
                    m.bias.detach().numpy().astype(np.float32), "layer%d" % i)
              for i, m in enumerate(x for x in mlp if isinstance(x, torch.nn.Linear))]
    net = Network(layers)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp%d" % os.getpid())
    with open(tmp, "wb") as f:
        pickle.dump(net, f)
    os.replace(tmp, path)  # never a half-written pickle under the final name
    return net


class Files:
    pass


def build(workdir, scenario=SCENARIO, n_finetune=None):
    from skip2lora.model.compiler import compile_network
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

"""The float64 numpy reference of Skip2-LoRA and its baselines.

Every method runs through the same forward, loss, backward and SGD code on the same data, so
accuracy and cost differences between methods come from the method and nothing else. The board
is checked against this module, which is why its random stream and its operation counts are
part of its contract (below), not implementation details.

Methods (``skip2lora.config.METHODS``)
    ``ft-all``    every W_i, b_i trained (stored as deltas ``W{i}``, ``b{i}``)
    ``ft-last``   the last layer's W, b
    ``ft-bias``   every b_i
    ``lora-all``  W_i + s B_i A_i on every layer, backprop through all layers
    ``lora-last`` the same on the last layer only
    ``skip-lora`` y = z + s * sum_i B_i A_i x_i over the adapter targets; the gradient comes
                  straight from g = dL/dy, never back through a frozen layer
    ``skip2lora`` skip-lora plus the Skip-Cache: a sample's frozen x_2..x_L and z are stored
                  the first time it is seen and read back in later epochs

``s = alpha / r`` (alpha defaults to r, so s = 1). ``targets`` (skip methods only) picks the
layer inputs that feed skip adapters: ``"all"`` (x_1..x_L), ``"hidden"`` (x_2..x_L), or a
list of 0-based layer indices. LoRA-All and LoRA-Last always adapt every / the last layer.

Deterministic order (the board copies this exactly)
    1. ``rng = XorShift32(seed)``.
    2. For each adapted layer in ascending layer order, ``A_i = adapter_init(rng, r, d_in_i)``
       reshaped row-major to (r, d_in_i); B_i starts at zero. FT deltas start at zero and
       draw nothing.
    3. At each epoch, ``order = rng.shuffle(list(range(n)))`` continuing the same rng (a fresh
       ``list(range(n))`` each epoch, not the previous order); with ``shuffle=False`` the
       order is ``range(n)`` and the rng is not touched.
    4. Minibatches are consecutive slices ``order[k*bs:(k+1)*bs]``; the last one may be
       shorter and is used as is. The loss is the mean softmax cross-entropy over the batch.
    5. SGD with classic momentum: ``v = m*v + grad; p -= lr*v`` (v starts at zero).

Skip-Cache exactness
    The frozen activations are computed one sample at a time, because numpy (BLAS) does not
    give a row the same bits in a (1, d) product as in an (n, d) one. With a per-sample frozen
    pass, what the cache returns is bit for bit what skip-lora recomputes, whatever the batch,
    so skip2lora and skip-lora train to identical adapters.

Counting convention for MACs
    Every matrix product goes through ``_mm``, which adds ``rows * inner * cols`` multiply-adds
    to a counter tagged ``frozen`` (a product with a network weight W, in the forward pass),
    ``forward`` (an adapter product in the forward pass) or ``backward``. Bias adds, ReLU,
    the scale s, softmax, the sum of the skip outputs and the SGD update are not counted:
    they are O(width), not O(width^2). Reported ``forward`` includes ``frozen``. Counts are per
    sample per epoch; every counted product is linear in the batch size, so they do not depend
    on it. Backprop stops at the lowest trained layer (nothing computes dL/dx_1), and a skip
    adapter's backward is ``r*d_i`` (dA) + ``2*C*r`` (dB and B^T g). ``count_macs`` runs this
    same code on a dummy sample, so the numbers are those of the code, not of a formula.
"""
from dataclasses import dataclass, field

import numpy as np

from skip2lora.config import KIND_DELTA, KIND_PARALLEL, KIND_SKIP, METHODS, FinetuneConfig
from skip2lora.errors import UserError
from skip2lora.training.rng import XorShift32, adapter_init

MAC_TAGS = ("frozen", "forward", "backward")


class MacCounter:
    """Multiply-adds of the matrix products, by tag (see the module docstring)."""

    def __init__(self):
        self.counts = dict.fromkeys(MAC_TAGS, 0)

    def add(self, tag, n):
        self.counts[tag] += n

    def report(self, n_samples=1):
        """Forward (frozen included), backward and frozen, divided by n_samples."""
        c = {k: v // n_samples for k, v in self.counts.items()}
        return {"forward": c["frozen"] + c["forward"], "backward": c["backward"],
                "frozen": c["frozen"]}


def _mm(a, b, counter, tag):
    """a @ b for 2-D arrays, counted: the single place where MACs are measured."""
    if counter is not None:
        counter.add(tag, a.shape[0] * a.shape[1] * b.shape[1])
    return a @ b


@dataclass(frozen=True)
class Plan:
    """Which parts of the network a method trains; every code path reads only this."""

    method: str
    scale: float
    skip: tuple = ()     # layers whose input feeds a skip adapter to the logits
    lora: tuple = ()     # layers with a parallel adapter W + s B A
    weights: tuple = ()  # layers whose W is trained (as a delta)
    biases: tuple = ()   # layers whose b is trained (as a delta)
    cache: bool = False

    @property
    def lowest(self):
        """The lowest layer backprop must reach, or None if no gradient crosses a layer."""
        layers = self.lora + self.weights + self.biases
        return min(layers) if layers else None


def _check_config(cfg):
    if not isinstance(cfg.rank, (int, np.integer)) or cfg.rank < 1:
        raise UserError(f"rank must be a positive integer, got {cfg.rank!r}")
    if not isinstance(cfg.epochs, (int, np.integer)) or cfg.epochs < 0:
        raise UserError(f"epochs must be an integer >= 0, got {cfg.epochs!r}")
    if not isinstance(cfg.batch_size, (int, np.integer)) or cfg.batch_size < 1:
        raise UserError(f"batch_size must be an integer >= 1, got {cfg.batch_size!r}")
    if not cfg.lr >= 0:
        raise UserError(f"lr must be >= 0, got {cfg.lr!r}")
    if not 0 <= cfg.momentum < 1:
        raise UserError(f"momentum must be in [0, 1), got {cfg.momentum!r}")
    if cfg.alpha is not None and not np.isfinite(cfg.alpha):
        raise UserError(f"alpha must be a finite number or None, got {cfg.alpha!r}")


def _resolve_targets(targets, n_layers):
    """The sorted layer indices whose inputs feed skip adapters."""
    if isinstance(targets, str):
        if targets == "all":
            return tuple(range(n_layers))
        if targets == "hidden":
            return tuple(range(1, n_layers))
        raise UserError(f"targets must be 'all', 'hidden' or a list of layer indices, "
                        f"got {targets!r}")
    try:
        layers = sorted({int(i) for i in targets})
    except (TypeError, ValueError):
        raise UserError(f"targets must be 'all', 'hidden' or a list of layer indices, "
                        f"got {targets!r}") from None
    if not layers or layers[0] < 0 or layers[-1] >= n_layers:
        raise UserError(f"targets {list(targets)!r} must be a non-empty list of layer "
                        f"indices in 0..{n_layers - 1}")
    return tuple(layers)


def _plan(net, cfg, method=None):
    _check_config(cfg)
    method = method or cfg.method
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    every = tuple(range(len(net.layers)))
    last = every[-1:]
    kinds = {
        "ft-all": dict(weights=every, biases=every),
        "ft-last": dict(weights=last, biases=last),
        "ft-bias": dict(biases=every),
        "lora-all": dict(lora=every),
        "lora-last": dict(lora=last),
        "skip-lora": dict(skip=_resolve_targets(cfg.targets, len(every))),
        "skip2lora": dict(skip=_resolve_targets(cfg.targets, len(every)), cache=True),
    }[method]
    return Plan(method=method, scale=cfg.scale, **kinds)


def _init_params(net, plan, rank, rng):
    """Fresh trainable state; draws from rng in the documented order."""
    params = {}
    for i, layer in enumerate(net.layers):
        if i in plan.skip or i in plan.lora:
            a = adapter_init(rng, rank, layer.d_in)
            params[f"A{i}"] = np.array(a, dtype=np.float64).reshape(rank, layer.d_in)
            b_rows = net.n_classes if i in plan.skip else layer.d_out
            params[f"B{i}"] = np.zeros((b_rows, rank))
        if i in plan.weights:
            params[f"W{i}"] = np.zeros(layer.weight.shape)
        if i in plan.biases:
            params[f"b{i}"] = np.zeros(layer.d_out)
    return params


def init_params(net, cfg):
    """The state a run of cfg starts from (A's from XorShift32(cfg.seed), all else zero)."""
    return _init_params(net, _plan(net, cfg), cfg.rank, XorShift32(cfg.seed))


# ---------------------------------------------------------------- forward and backward

def _layer_weights(net, params, i):
    """W_i and b_i as the method sees them: frozen values plus any trained delta."""
    layer = net.layers[i]
    w = np.asarray(layer.weight, np.float64)
    b = np.asarray(layer.bias, np.float64)
    if f"W{i}" in params:
        w = w + params[f"W{i}"]
    if f"b{i}" in params:
        b = b + params[f"b{i}"]
    return w, b


def _adapter_out(plan, params, i, x, us, counter):
    """s * B_i A_i x for a batch x, keeping u_i = A_i x for the backward pass."""
    us[i] = _mm(x, params[f"A{i}"].T, counter, "forward")
    return plan.scale * _mm(us[i], params[f"B{i}"].T, counter, "forward")


def _layer_forward(net, plan, params, x, counter):
    """Through the network's own layers (with deltas and parallel adapters): [x_1..x_L], u, z."""
    xs, us, h = [], {}, x
    last = len(net.layers) - 1
    for i in range(len(net.layers)):
        xs.append(h)
        w, b = _layer_weights(net, params, i)
        h = _mm(h, w.T, counter, "frozen") + b
        if i in plan.lora:
            h = h + _adapter_out(plan, params, i, xs[i], us, counter)
        if i < last:
            h = np.maximum(h, 0.0)
    return xs, us, h


def _frozen_records(net, plan, params, X, idx, counter, cache):
    """(x_2..x_L, z) of the samples idx, one sample at a time, from the cache when it has them.

    Returns the stacked columns and the number of cache hits.
    """
    records, hits = [], 0
    for k in idx:
        record = cache.get(k) if cache is not None else None
        if record is None:
            xs, _, z = _layer_forward(net, plan, params, X[k:k + 1], counter)
            record = tuple(xs[1:]) + (z,)
            if cache is not None:
                cache[k] = record
        else:
            hits += 1
        records.append(record)
    return [np.concatenate(column) for column in zip(*records)], hits


def forward(net, plan, params, x, counter=None, frozen=None):
    """Logits and the values the backward pass needs ([x_1..x_L], u_i).

    ``frozen`` gives (x_2..x_L, z) already computed (skip methods in training); otherwise the
    network is run on the whole batch.
    """
    if frozen is None:
        xs, us, y = _layer_forward(net, plan, params, x, counter)
    else:
        xs, us, y = [x] + list(frozen[:-1]), {}, frozen[-1]
    for i in plan.skip:
        y = y + _adapter_out(plan, params, i, xs[i], us, counter)
    return y, xs, us


def _softmax_xent(y, labels):
    """Mean cross-entropy, its gradient g = (p - onehot) / n and the number correct."""
    n = y.shape[0]
    shifted = y - y.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    loss = float(np.mean(np.log(total[:, 0]) - shifted[rows, labels]))
    g = exp / total
    g[rows, labels] -= 1.0
    correct = int(np.sum(np.argmax(y, axis=1) == labels))
    return loss, g / n, correct


def _adapter_grads(plan, params, i, g, x, u, grads, counter):
    """dB_i = s g u^T and dA_i = s (B_i^T g) x^T; returns v = g B_i, the B^T g of each row."""
    grads[f"B{i}"] = plan.scale * _mm(g.T, u, counter, "backward")
    v = _mm(g, params[f"B{i}"], counter, "backward")
    grads[f"A{i}"] = plan.scale * _mm(v.T, x, counter, "backward")
    return v


def _backward(net, plan, params, g, xs, us, counter=None):
    """Gradients of every trained array from g = dL/dy."""
    grads = {}
    for i in plan.skip:
        _adapter_grads(plan, params, i, g, xs[i], us[i], grads, counter)
    if plan.lowest is None:
        return grads
    delta = g  # dL/d(pre-activation output of layer i)
    for i in range(len(net.layers) - 1, plan.lowest - 1, -1):
        if i in plan.weights:
            grads[f"W{i}"] = _mm(delta.T, xs[i], counter, "backward")
        if i in plan.biases:
            grads[f"b{i}"] = delta.sum(axis=0)
        v = _adapter_grads(plan, params, i, delta, xs[i], us[i], grads, counter) \
            if i in plan.lora else None
        if i > plan.lowest:
            w, _ = _layer_weights(net, params, i)
            dx = _mm(delta, w, counter, "backward")
            if v is not None:
                dx = dx + plan.scale * _mm(v, params[f"A{i}"], counter, "backward")
            delta = dx * (xs[i] > 0)  # ReLU of layer i-1; its output is x_i
    return grads


def gradients(method, net, params, xb, yb, cfg):
    """Gradients of the mean loss of one minibatch (xb, yb) at params: name -> array.

    cfg supplies rank, alpha and targets; method overrides cfg.method.
    """
    plan = _plan(net, cfg, method)
    expected = {k: v.shape for k, v in
                _init_params(net, plan, cfg.rank, XorShift32(cfg.seed)).items()}
    got = {k: np.shape(v) for k, v in params.items()}
    if got != expected:
        raise UserError(f"{method} needs params {expected}, got {got}")
    xb, yb = _check_data(net, xb, yb)
    y, xs, us = forward(net, plan, params, xb)
    _, g, _ = _softmax_xent(y, yb)
    return _backward(net, plan, params, g, xs, us)


# ---------------------------------------------------------------- training

def _check_data(net, X, y, what="X"):
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    d_1 = net.layers[0].d_in
    if X.ndim != 2 or X.shape[1] != d_1:
        raise UserError(f"{what} has shape {X.shape}, the model needs (n, {d_1})")
    if len(X) == 0:
        raise UserError(f"{what} has no samples")
    if y.shape != (len(X),):
        raise UserError(f"{len(X)} samples but labels of shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise UserError("labels must be whole numbers")
        y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= net.n_classes:
        raise UserError(f"labels must lie in 0..{net.n_classes - 1}, "
                        f"found {y.min()}..{y.max()}")
    return X, y.astype(np.int64)


def _accuracy(net, plan, params, X, y):
    return float(np.mean(np.argmax(forward(net, plan, params, X)[0], axis=1) == y))


def _train(net, X, y, cfg, plan, X_eval=None, y_eval=None, progress=None):
    """The training loop of every method: returns (params, history)."""
    rng = XorShift32(cfg.seed)
    params = _init_params(net, plan, cfg.rank, rng)
    velocity = {k: np.zeros_like(v) for k, v in params.items()}
    cache = {} if plan.cache else None
    n, history = len(X), []
    for epoch in range(1, cfg.epochs + 1):
        order = rng.shuffle(list(range(n))) if cfg.shuffle else list(range(n))
        counter, hits, loss_sum, correct = MacCounter(), 0, 0.0, 0
        for start in range(0, n, cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            frozen = None
            if plan.skip:
                frozen, batch_hits = _frozen_records(net, plan, params, X, idx, counter, cache)
                hits += batch_hits
            y_out, xs, us = forward(net, plan, params, X[idx], counter, frozen)
            loss, g, batch_correct = _softmax_xent(y_out, y[idx])
            loss_sum += loss * len(idx)
            correct += batch_correct
            grads = _backward(net, plan, params, g, xs, us, counter)
            for name, grad in grads.items():
                velocity[name] = cfg.momentum * velocity[name] + grad
                params[name] -= cfg.lr * velocity[name]
        record = {
            "epoch": epoch,
            "loss": loss_sum / n,  # running mean over the epoch, at pre-update params
            "train_acc": correct / n,
            "eval_acc": None if X_eval is None else _accuracy(net, plan, params, X_eval, y_eval),
            "macs": counter.report(),  # whole epoch, not per sample
            "cache_hits": hits,
        }
        history.append(record)
        if progress is not None:
            progress(record)
    return params, history


@dataclass
class FinetuneResult:
    """A trained method: its state, its per-epoch history and its cost."""

    method: str
    params: dict
    history: list
    macs: dict
    n_trainable: int
    config: FinetuneConfig = None
    net: object = field(default=None, repr=False)
    _plan: Plan = field(default=None, repr=False)

    def predict(self, X):
        """Logits of the frozen network with the trained adapters or deltas applied."""
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        X, _ = _check_data(self.net, X, np.zeros(len(X), np.int64))
        return forward(self.net, self._plan, self.params, X)[0]

    def adapters(self):
        """(layer, kind, A, B) per adapter, in the order and kinds of the .s2la format."""
        out = []
        for i, layer in enumerate(self.net.layers):
            if i in self._plan.skip or i in self._plan.lora:
                kind = KIND_SKIP if i in self._plan.skip else KIND_PARALLEL
                out.append((i, kind, self.params[f"A{i}"], self.params[f"B{i}"]))
            elif i in self._plan.weights or i in self._plan.biases:
                dw = self.params.get(f"W{i}", np.zeros(layer.weight.shape))
                db = self.params.get(f"b{i}", np.zeros(layer.d_out))
                out.append((i, KIND_DELTA, dw, db.reshape(-1, 1)))
        return out


def finetune(net, X, y, cfg=None, X_eval=None, y_eval=None, progress=None):
    """Train cfg.method on (X, y); progress(record) is called after every epoch.

    A history record holds: epoch (1-based); loss and train_acc, the running mean over the
    epoch's minibatches at their pre-update params (no extra pass, so no extra MACs); eval_acc
    on (X_eval, y_eval) after the epoch, or None; macs, the epoch's whole counts
    {forward, backward, frozen}; cache_hits, the samples served by the Skip-Cache.
    """
    cfg = cfg or FinetuneConfig()
    plan = _plan(net, cfg)
    X, y = _check_data(net, X, y)
    if X_eval is not None:
        X_eval, y_eval = _check_data(net, X_eval, y_eval, "X_eval")
    params, history = _train(net, X, y, cfg, plan, X_eval, y_eval, progress)
    return FinetuneResult(
        method=cfg.method, params=params, history=history,
        macs=count_macs(net, cfg.method, cfg.rank, cfg.targets, cfg.epochs),
        n_trainable=int(sum(p.size for p in params.values())),
        config=cfg, net=net, _plan=plan)


def count_macs(net, method, rank=FinetuneConfig.rank, targets=FinetuneConfig.targets,
               epochs=FinetuneConfig.epochs):
    """Per-sample multiply-adds of one epoch (first and later) and of ``epochs`` epochs.

    Runs the training code for two epochs on one dummy sample and reads its counters.
    Returns {"first_epoch": {forward, backward, frozen}, "later_epoch": {...},
    "epochs": epochs, "total": forward + backward summed over the epochs}.
    """
    cfg = FinetuneConfig(method=method, rank=rank, targets=targets, epochs=2, lr=0.0,
                         shuffle=False)
    plan = _plan(net, cfg)
    dummy = np.zeros((1, net.layers[0].d_in))
    _, history = _train(net, dummy, np.zeros(1, np.int64), cfg, plan)
    first, later = history[0]["macs"], history[1]["macs"]
    per_epoch = [first] + [later] * max(epochs - 1, 0)
    total = sum(e["forward"] + e["backward"] for e in per_epoch[:epochs])
    return {"first_epoch": first, "later_epoch": later, "epochs": epochs, "total": total}

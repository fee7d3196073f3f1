# The float path of the Trainer: every method (skip2lora, skip-lora, lora-all, ft-last) in
# float32 arrays and plain Python. Slow on a board (each float op allocates) but the same
# maths as host/skip2lora/reference.py, to ~1e-7: the path adapters are compared against.
# Imported only when a Trainer runs in float, so fixed-point training does not hold this
# code in RAM.
import math

from .formats import F32, KIND_SKIP, KIND_PARALLEL, KIND_DELTA, zeros
from .cache import Cache
from .model import _matvec, add_lowrank

SKIP_METHODS = ("skip2lora", "skip-lora")


class _Adapter:
    pass


def alloc(t):
    m, r, C = t.model, t.rank, t.C
    dims = m.dims
    t.xs = [zeros("f", d) for d in dims]  # x_1..x_L, then z / logits (frozen)
    t.y = zeros("f", C)
    t.g = zeros("f", C)
    t.tmp = zeros("f", max(dims))
    t.delta = zeros("f", max(dims))
    t.delta2 = zeros("f", max(dims))
    t.ads = []
    mom = t.momentum > 0
    for i in t.targets:
        a = _Adapter()
        a.layer = i
        d_in, d_out = dims[i], dims[i + 1]
        if t.method == "ft-last":
            a.kind, a.ar, a.ac, a.br, a.bc = KIND_DELTA, d_out, d_in, d_out, 1
        else:
            a.kind = KIND_SKIP if t.method in SKIP_METHODS else KIND_PARALLEL
            a.ar, a.ac = r, d_in
            a.br, a.bc = (C if a.kind == KIND_SKIP else d_out), r
        # A (and its gradient / velocity) as one array per row: no allocation above 2 KB
        # for d <= 512, which a fragmented heap can always satisfy
        a.A = [zeros("f", a.ac) for _ in range(a.ar)]
        a.gA = [zeros("f", a.ac) for _ in range(a.ar)]
        a.vA = [zeros("f", a.ac) for _ in range(a.ar)] if mom else None
        a.B, a.gB = zeros("f", a.br * a.bc), zeros("f", a.br * a.bc)
        a.vB = zeros("f", a.br * a.bc) if mom else None
        a.u = zeros("f", r)
        a.v = zeros("f", max(r, a.br))
        if a.kind != KIND_DELTA:  # same draws, same order as rng.adapter_init (row-major)
            bound = 1.0 / (d_in ** 0.5)
            for row in a.A:
                for k in range(d_in):
                    row[k] = t.rng.uniform(bound)
        t.ads.append(a)
    if t.method == "skip2lora":
        segs = [(d, F32) for d in dims[1:t.L]] + [(t.C, F32)]
        t.cache = Cache(t.cache_path, m.file_crc, t.data.file_crc, t.n, segs, t.xs[1:])


def load_x1(t, k):
    ds = t.data
    x1 = t.xs[0]
    if ds.dtype == F32:
        return ds.read(k, x1)
    lab = ds.read(k)
    xq, sc = ds.x, ds.scale
    for i in range(len(x1)):
        x1[i] = xq[i] * sc
    return lab


def frozen(t):
    """x_2..x_L and z of the sample in xs[0], frozen network only."""
    m, xs = t.model, t.xs
    for i in range(t.L):
        out = xs[i + 1]
        m.dense(i, xs[i], out)
        if i < t.L - 1:
            for j in range(len(out)):
                if out[j] < 0.0:
                    out[j] = 0.0


def step(t, k, nb):
    """One sample: forward, loss, gradients accumulated (already divided by nb)."""
    lab = load_x1(t, k)
    xs, C, s, y, g = t.xs, t.C, t.s, t.y, t.g
    method = t.method
    if method in SKIP_METHODS:
        if not (t.cache is not None and t.cache.read(k)):
            frozen(t)
        z = xs[-1]
        for c in range(C):
            y[c] = z[c]
        for a in t.ads:
            add_lowrank(a.A, a.B, a.ar, xs[a.layer], a.u, y, C, s)
    elif method == "lora-all":
        m = t.model
        for i in range(t.L):
            a = t.ads[i]
            out = xs[i + 1] if i < t.L - 1 else y
            m.dense(i, xs[i], out)
            add_lowrank(a.A, a.B, a.bc, xs[i], a.u, out, a.br, s)
            if i < t.L - 1:
                for j in range(len(out)):
                    if out[j] < 0.0:
                        out[j] = 0.0
    else:  # ft-last
        frozen(t)
        a = t.ads[0]
        xl = xs[t.L - 1]
        _matvec(a.A, xl, t.tmp)
        z = xs[-1]
        for c in range(C):
            y[c] = z[c] + t.tmp[c] + a.B[c]
    loss, correct = _softmax_grad(y, lab, g, 1.0 / nb)
    # backward
    if method in SKIP_METHODS:
        for a in t.ads:
            _skip_grads(a, g, xs[a.layer], C, s)
    elif method == "lora-all":
        lora_backward(t)
    else:
        a = t.ads[0]
        xl = xs[t.L - 1]
        for c in range(C):
            gc = g[c]
            gA = a.gA[c]
            for k2 in range(a.ac):
                gA[k2] += gc * xl[k2]
            a.gB[c] += gc
    return loss, correct


def lora_backward(t):
    m, xs, s = t.model, t.xs, t.s
    delta, nxt = t.delta, t.delta2
    g = t.g
    for j in range(t.C):
        delta[j] = g[j]
    for i in range(t.L - 1, -1, -1):
        a = t.ads[i]
        d_in, d_out = m.dims[i], m.dims[i + 1]
        r = a.ar
        # v = B^T delta (r), dB += s delta u^T, dA += s v x^T
        v = a.v
        for q in range(r):
            acc = 0.0
            for j in range(d_out):
                acc += a.B[j * r + q] * delta[j]
            v[q] = acc
        for j in range(d_out):
            dj = s * delta[j]
            base = j * r
            for q in range(r):
                a.gB[base + q] += dj * a.u[q]
        x = xs[i]
        for q in range(r):
            vq = s * v[q]
            gA = a.gA[q]
            for k in range(d_in):
                gA[k] += vq * x[k]
        if i == 0:
            break
        # dx = W^T delta + s A^T v, then ReLU of layer i-1 (its output is x_i)
        lay = m.layers[i]
        sc = lay.scale
        for k in range(d_in):
            nxt[k] = 0.0
        for W, j0, nr in lay.W:
            row = 0
            for j in range(j0, j0 + nr):
                tj = delta[j] * sc[j] if sc is not None else delta[j]
                for k in range(d_in):
                    nxt[k] += W[row + k] * tj
                row += d_in
        for q in range(r):
            vq = s * v[q]
            Aq = a.A[q]
            for k in range(d_in):
                nxt[k] += Aq[k] * vq
        for k in range(d_in):
            if not x[k] > 0.0:
                nxt[k] = 0.0
        delta, nxt = nxt, delta


def apply(t):
    lr, mom = t.lr, t.momentum
    for a in t.ads:
        for q in range(a.ar):
            _sgd(a.A[q], a.gA[q], a.vA[q] if a.vA else None, lr, mom)
        _sgd(a.B, a.gB, a.vB, lr, mom)


def _sgd(P, G, V, lr, mom):
    if V is None:
        for i in range(len(P)):
            P[i] -= lr * G[i]
            G[i] = 0.0
    else:
        for i in range(len(P)):
            V[i] = mom * V[i] + G[i]
            P[i] -= lr * V[i]
            G[i] = 0.0


def _softmax_grad(y, lab, g, inv_nb):
    """g = (softmax(y) - onehot(lab)) * inv_nb; returns (loss, correct)."""
    C = len(y)
    ymax = y[0]
    best = 0
    for c in range(1, C):
        if y[c] > ymax:
            ymax = y[c]
            best = c
    tot = 0.0
    for c in range(C):
        e = math.exp(y[c] - ymax)
        g[c] = e
        tot += e
    loss = math.log(tot) - (y[lab] - ymax)
    for c in range(C):
        g[c] = (g[c] / tot - (1.0 if c == lab else 0.0)) * inv_nb
    return loss, best == lab


def _skip_grads(a, g, x, C, s):
    """gB += s g u^T; v = B^T g; gA += s v x^T."""
    r, d = a.ar, a.ac
    for c in range(C):
        gc = s * g[c]
        base = c * r
        for q in range(r):
            a.gB[base + q] += gc * a.u[q]
    v = a.v
    for q in range(r):
        acc = 0.0
        for c in range(C):
            acc += a.B[c * r + q] * g[c]
        v[q] = s * acc
    for q in range(r):
        vq = v[q]
        gA = a.gA[q]
        for k in range(d):
            gA[k] += vq * x[k]

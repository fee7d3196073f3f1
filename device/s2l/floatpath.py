# The float path of the Trainer: every method (skip2lora, skip-lora, lora-all, ft-last) in
# float32 arrays and plain Python. Slow on a board (each float op allocates) but the same
# maths as host/skip2lora/training/reference.py, to ~1e-7: the path adapters are compared against.
# Same methods as FixedPath (fixedpath.py); imported only when a Trainer runs in float, so
# fixed-point training does not hold this code in RAM.
import math

from .formats import F32, KIND_SKIP, KIND_PARALLEL, KIND_DELTA, zeros
from .cache import Cache
from .model import matvec, add_lowrank
from .qmath import ONE_BITS
from .config import SKIP_METHODS


class _Adapter:
    pass


class FloatPath:
    """One arithmetic of the Trainer (the other is fixedpath.FixedPath, with the same methods):
    owns its buffers (all allocated here), the adapters (ads) and the Skip-Cache (cache)."""

    def __init__(self, model, data, method, targets, rank, alpha, lr, momentum, rng,
                 cache_path, K):
        m, r = model, rank
        dims = m.dims
        L, C = m.n_layers, dims[-1]
        self.model, self.data, self.method = m, data, method
        self.L, self.C, self.lr, self.momentum = L, C, lr, momentum
        self.s = alpha / rank
        self.xs = [zeros("f", d) for d in dims]  # x_1..x_L, then z / logits (frozen)
        self.y = zeros("f", C)
        self.g = zeros("f", C)
        self.tmp = zeros("f", max(dims))
        self.delta = zeros("f", max(dims))
        self.delta2 = zeros("f", max(dims))
        self.prepared = self.cache_built = False
        self.ads = []
        mom = momentum > 0
        for i in targets:
            a = _Adapter()
            a.layer = i
            d_in, d_out = dims[i], dims[i + 1]
            if method == "ft-last":
                a.kind, a.ar, a.ac, a.br, a.bc = KIND_DELTA, d_out, d_in, d_out, 1
            else:
                a.kind = KIND_SKIP if method in SKIP_METHODS else KIND_PARALLEL
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
                        row[k] = rng.uniform(bound)
            self.ads.append(a)
        self.cache = None
        if method == "skip2lora":
            segs = [(d, F32) for d in dims[1:L]] + [(C, F32)]
            self.cache = Cache(cache_path, m.file_crc, data.file_crc, data.n, segs, self.xs[1:])

    # ------------------------------------------------------------------ the shared methods

    def prepare(self):
        """First use (again: nothing): the Skip-Cache reused, or built if it is not valid."""
        if self.prepared:
            return
        self.cache_built = False
        if self.cache is not None and self.cache.open() is None:
            self.cache.build([ONE_BITS] * len(self.cache.segs), self.frozen)
            self.cache_built = True
        self.prepared = True

    def frozen(self, k):
        """Sample k's x_1, then x_2..x_L and z, frozen network only (what the Skip-Cache
        holds); returns its label."""
        lab = self._load_x1(k)
        m, xs, L = self.model, self.xs, self.L
        for i in range(L):
            out = xs[i + 1]
            m.dense(i, xs[i], out)
            if i < L - 1:
                for j in range(len(out)):
                    if out[j] < 0.0:
                        out[j] = 0.0
        return lab

    def step(self, k, nb, last):
        """One sample of a batch of nb: forward, loss, gradients accumulated (already divided
        by nb); at the batch's last sample, the SGD step. Returns (loss, correct)."""
        xs, C, s, y, g = self.xs, self.C, self.s, self.y, self.g
        method = self.method
        if method in SKIP_METHODS:
            if self.cache is not None and self.cache.read(k):
                lab = self._load_x1(k)
            else:
                lab = self.frozen(k)
            z = xs[-1]
            for c in range(C):
                y[c] = z[c]
            for a in self.ads:
                add_lowrank(a.A, a.B, a.ar, xs[a.layer], a.u, y, C, s)
        elif method == "lora-all":
            lab = self._load_x1(k)
            m = self.model
            for i in range(self.L):
                a = self.ads[i]
                out = xs[i + 1] if i < self.L - 1 else y
                m.dense(i, xs[i], out)
                add_lowrank(a.A, a.B, a.bc, xs[i], a.u, out, a.br, s)
                if i < self.L - 1:
                    for j in range(len(out)):
                        if out[j] < 0.0:
                            out[j] = 0.0
        else:  # ft-last
            lab = self.frozen(k)
            a = self.ads[0]
            xl = xs[self.L - 1]
            matvec(a.A, xl, self.tmp)
            z = xs[-1]
            for c in range(C):
                y[c] = z[c] + self.tmp[c] + a.B[c]
        loss, correct = _softmax_grad(y, lab, g, 1.0 / nb)
        # backward
        if method in SKIP_METHODS:
            for a in self.ads:
                _skip_grads(a, g, xs[a.layer], C, s)
        elif method == "lora-all":
            self._lora_backward()
        else:
            a = self.ads[0]
            xl = xs[self.L - 1]
            for c in range(C):
                gc = g[c]
                gA = a.gA[c]
                for k2 in range(a.ac):
                    gA[k2] += gc * xl[k2]
                a.gB[c] += gc
        if last:  # the SGD step (with momentum) of the batch's gradients
            lr, mom = self.lr, self.momentum
            for a in self.ads:
                for q in range(a.ar):
                    _sgd(a.A[q], a.gA[q], a.vA[q] if a.vA else None, lr, mom)
                _sgd(a.B, a.gB, a.vB, lr, mom)
        return loss, correct

    def payload(self):
        """The adapters as f32 buffers in file order (A rows then B): the arrays themselves."""
        for a in self.ads:
            for row in a.A:
                yield row
            yield a.B

    def adapters(self):
        """[(layer, kind, A rows [array('f')], a_rows, a_cols, B array('f'), b_rows, b_cols)]:
        the arrays themselves."""
        return [(a.layer, a.kind, a.A, a.ar, a.ac, a.B, a.br, a.bc) for a in self.ads]

    def save(self, path, adapters_crc):
        """Nothing beside the adapters file: its float32 values are this path's arrays."""

    def load(self, adapters, path, adapters_crc):
        """Take the arrays of a read_adapters() list: float32 as in the file, so exact."""
        for a, e in zip(self.ads, adapters):
            a.A, a.B = e[2], e[5]
        return True

    def apply(self, model, s):
        """Hand the adapters to the model for predict()."""
        model.set_adapters(self.adapters(), s)

    def logits(self, k):
        """Sample k's logits from the frozen network alone (the Skip-Cache's record when it
        holds one), its label, and their unit: (z, label, 0)."""
        if self.cache is None or not self.cache.read(k):
            self.frozen(k)
        return self.xs[-1], self.data.labels[k], 0

    def finite(self):
        """Whether every adapter value is finite (a step can overflow float32 to inf)."""
        for buf in self.payload():
            for v in buf:
                if v - v != 0.0:  # inf - inf and NaN - NaN are NaN
                    return False
        return True

    # ------------------------------------------------------------------ float internals

    def _load_x1(self, k):
        ds = self.data
        x1 = self.xs[0]
        if ds.dtype == F32:
            return ds.read(k, x1)
        lab = ds.read(k)
        xq, sc = ds.x, ds.scale
        for i in range(len(x1)):
            x1[i] = xq[i] * sc
        return lab

    def _lora_backward(self):
        m, xs, s = self.model, self.xs, self.s
        delta, nxt = self.delta, self.delta2
        g = self.g
        for j in range(self.C):
            delta[j] = g[j]
        for i in range(self.L - 1, -1, -1):
            a = self.ads[i]
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

# predict() of an int8 model through the fixed-point kernels.
#
# Why: the float forward boxes a float for every product, 0.5-0.66 s per sample of the
# 512-64-64-3 fan model on a Cortex-M0+; the kernels run the same layers allocating nothing.
# Each layer's input takes a power-of-two scale 2**-p chosen per sample from its maximum, so
# no calibration data is needed, and a new scale is only a new shift: the per-channel
# multipliers stay those of the weight scales (computed once), only the shifts move by p.
# Skip adapters run on int16 rows: the Trainer's own forward copies after apply(), or rows
# quantized once from the float adapters of load_adapters().
from .formats import KIND_SKIP, pad4, zeros
from math import ldexp

from .qmath import bitlen, bits_at, q15, q16, split
from . import kernels

# dense_q16's shift range (docs/device.md, "Bounds"); the kernel gives the same integers for
# any shift beyond: from 43 on the channel reads its bias alone, and from -15 down any
# non-zero product saturates
N_MIN, N_MAX = -15, 46


class Int8Forward:
    def __init__(self, model, backend=None):
        self.model = model
        self.K = kernels.get(backend)
        dims, L = model.dims, model.n_layers
        self.xq = [zeros("b", pad4(d)) for d in dims[:L]]
        self.p = [0] * L  # x_i = xq[i] * 2**-p[i]
        self.v32 = zeros("i", max(dims[1:]))
        self.z32 = zeros("i", dims[-1])
        self.y = zeros("f", dims[-1])
        self.M0, self.N0, self.M, self.N, self.B = [], [], [], [], []
        for lay in model.layers:
            M0, N0 = zeros("i", lay.d_out), zeros("h", lay.d_out)
            Bq = zeros("i", lay.d_out)
            for j in range(lay.d_out):
                mw, ew = split(bits_at(lay.scale, j))
                M0[j], N0[j] = q15(mw, 1, ew + 16)  # weight scale * 2**16
                Bq[j] = q16(bits_at(lay.bias, j))
            self.M0.append(M0)
            self.N0.append(N0)
            self.M.append(zeros("i", lay.d_out))
            self.N.append(zeros("b", lay.d_out))
            self.B.append(Bq)
        self._ads_src = None
        self._ads = []

    def _shifts(self, i, p):
        """Layer i's multipliers for an input scale of 2**-p."""
        M0, N0, M, N = self.M0[i], self.N0[i], self.M[i], self.N[i]
        for j in range(len(N)):
            n = N0[j] + p
            if n > N_MAX:
                M[j], N[j] = 0, 15
            else:
                M[j], N[j] = M0[j], (n if n > N_MIN else N_MIN)
        self.p[i] = p

    def _adapters(self):
        """The model's skip adapters as (layer, int16 rows, a_unit, B, b_unit, r, chunk
        shift): rows16 given with the adapters (the Trainer's forward copies) as they are,
        float rows quantized once per set of adapters."""
        m = self.model
        if self._ads_src is m.adapters:
            return self._ads
        out = []
        for i, (layer, kind, A, ar, ac, B, br, bc) in enumerate(m.adapters):
            ub = m.adapter_units[i][1]
            if m.adapter_rows16 is not None:
                A, ua = m.adapter_rows16[i]
            else:
                A, ua = _rows16(A, ac, m.adapter_units[i][0])
            out.append((layer, A, ua, B, ub, ar, kernels.chunk_shift(ac)))
        self._ads_src, self._ads = m.adapters, out
        return out

    def logits(self, x, adapters=True):
        """The logits of sample x (array('f') is read in place; any other sequence of floats
        is copied first), in self.y."""
        m, K, sx, L = self.model, self.K, kernels.SX, self.model.n_layers
        d0 = m.dims[0]
        if len(x) != d0:
            from .compat import S2LError
            raise S2LError("sample has %d features, the model needs %d" % (len(x), d0), m.path)
        xf = x
        if not (type(x) is type(self.y) and isinstance(x[0], float)):
            xf = m.xs[0]  # the float forward's input buffer
            for k in range(d0):
                xf[k] = x[k]
        b = K.absmax_f32(xf, d0)
        p = 0
        if b:
            mx, ex = split(b)
            p = 7 - bitlen(mx) - ex  # max |x| * 2**p < 128
        K.quant_f32(xf, d0, 16384, 14 - p, self.xq[0])
        for i in range(L):
            lay = m.layers[i]
            self._shifts(i, p)
            out = self.z32 if i == L - 1 else self.v32
            for W, j0, nr in lay.W:
                K.dense_q16(W, self.xq[i], lay.d_in, j0, nr, self.M[i], self.N[i], self.B[i],
                            out, sx)
            if i < L - 1:
                best = K.requant8(out, lay.d_out, 16384, 30, 1, self.xq[i + 1], sx)
                p = (23 - bitlen(best)) if best > 0 else 14  # max * 2**(p-16) < 128
                if p > 14:
                    p = 14
                K.requant8(out, lay.d_out, 16384, 30 - p, 1, self.xq[i + 1], sx)
        y, z = self.y, self.z32
        for c in range(len(y)):
            y[c] = z[c] / 65536
        if adapters and m.adapters:
            s = m.adapter_scale
            for layer, A, ua, B, ub, r, ps in self._adapters():
                f = ldexp(s * ub * ua, ps - self.p[layer])  # the sums' unit: 2**ps, x 2**-p
                xq, d = self.xq[layer], len(A[0])
                u = [K.dot_a16x8(row, xq, d, ps) for row in A]
                for c in range(len(y)):
                    acc = 0
                    for q in range(r):
                        acc += B[c * r + q] * u[q]
                    y[c] += f * acc
        return y

    def usable(self):
        """Can the adapters loaded on the model run here (skip adapters only)?"""
        for e in self.model.adapters:
            if e[1] != KIND_SKIP:
                return False
        return True


def _rows16(A, d, unit):
    """Float rows as int16 rows (one scale for the adapter) and the unit of one step."""
    peak = 0.0
    for row in A:
        for v in row:
            if v > peak:
                peak = v
            elif -v > peak:
                peak = -v
    step = (peak / 32767) if peak > 0 else 1.0
    rows = []
    for row in A:
        q = zeros("h", d)
        for k in range(d):
            v = row[k] / step
            q[k] = int(v + 0.5) if v >= 0 else -int(0.5 - v)
        rows.append(q)
    return rows, unit * step

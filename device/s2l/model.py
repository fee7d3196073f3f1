# A compiled model file (.s2lm) on the board: checked (magic, version, header CRC, file CRC,
# dims, block headers, NaN), loaded once into typed arrays, a float forward() that applies
# loaded adapters of every kind, and predict(): an int8 model's runs through the fixed-point
# kernels (int8forward.py), a float model's through forward().
import gc
import struct

from .compat import S2LError
from .formats import (MODEL_MAGIC, F32, I8, MAX_CLASSES, MAX_LAYERS, KIND_SKIP, KIND_PARALLEL,
                      KIND_DELTA, check_dim, check_finite, fail, is_finite, open_checked, pad4,
                      read_exact, read_adapters, zeros, empty)

_WHAT = "model"


# Weights are held in row blocks of at most BLOCK bytes: a long-running board's heap is
# fragmented (compiling the package from .py leaves no free run above ~14 KB of a 192 KB
# RP2040 heap), so one 32 KB array for a 512x64 layer could not be allocated.
BLOCK = 2048


class Layer:
    """One frozen dense layer: W as [(block array, first row, rows)] ('f', or 'b' codes with a
    per-row scale), bias 'f'."""

    def __init__(self, d_in, d_out, W, scale, bias, relu):
        self.d_in, self.d_out, self.W, self.scale, self.bias, self.relu = (
            d_in, d_out, W, scale, bias, relu)


class Model:
    def __init__(self, path):
        self.path = path
        f, head, size, crc = open_checked(path, MODEL_MAGIC)
        try:
            self._parse(f, head, size)
        finally:
            f.close()
        self.file_crc = crc
        self.adapters = []  # adapters applied by predict: see load_adapters()
        self.adapter_units = []  # per adapter (a_unit, b_unit): real A = A * a_unit, B alike
        self.adapter_rows16 = None  # per adapter (int16 A rows, unit), for the int8 predict
        self.adapter_scale = 1.0
        self._int8 = None  # the int8 predict's buffers (small pieces), made when first used
        self.xs = [zeros("f", d) for d in self.dims]  # x_1..x_L, then the logits
        self._tmp = zeros("f", max(self.dims))

    def _parse(self, f, head, size):
        path = self.path
        L, dtype, rank, alpha, mask, _ = struct.unpack_from("<BBHfII", head, 8)
        check_dim(path, _WHAT, "layer count", L, 2, MAX_LAYERS)
        if dtype not in (F32, I8):
            fail(path, _WHAT, "weight dtype code %d unknown" % dtype)
        if 24 + 2 * (L + 1) + 4 > len(head):
            fail(path, _WHAT, "header too short for %d layers" % L)
        dims = list(struct.unpack_from("<%dH" % (L + 1), head, 24))
        for d in dims:
            check_dim(path, _WHAT, "dim", d)
        check_dim(path, _WHAT, "class count", dims[-1], 2, MAX_CLASSES)
        if not is_finite(alpha):
            fail(path, _WHAT, "alpha is NaN or Inf")
        total = len(head) + 4
        for i in range(L):
            di, do = dims[i], dims[i + 1]
            total += 8 + (4 * do * di + 4 * do if dtype == F32 else 4 * do + pad4(do * di) + 4 * do)
        if total != size:
            fail(path, _WHAT, "size %d does not match the dims (%d expected)" % (size, total))
        self.n_layers, self.dtype, self.rank, self.alpha = L, dtype, rank, alpha
        self.adapter_mask = mask or ((1 << L) - 1)
        self.dims = dims
        self.n_classes = dims[-1]
        self.layers = []
        blk = bytearray(8)
        for i in range(L):
            read_exact(f, blk, 8, path, _WHAT)
            d_in, d_out, ldt, relu, _ = struct.unpack("<HHBBH", blk)
            if d_in != dims[i] or d_out != dims[i + 1] or ldt != dtype or relu != (i < L - 1):
                fail(path, _WHAT, "layer %d block (%dx%d, dtype %d, relu %d) disagrees with "
                     "the header" % (i, d_in, d_out, ldt, relu))
            scale = None
            if dtype == I8:
                scale = read_exact(f, zeros("f", d_out), 4 * d_out, path, _WHAT)
                check_finite(path, _WHAT, "layer %d scale" % i, scale)
            W = []
            per = max(1, BLOCK // (d_in * (1 if dtype == I8 else 4)))
            j0 = 0
            while j0 < d_out:
                nr = min(per, d_out - j0)
                if dtype == I8:
                    blk_w = read_exact(f, empty("b", nr * d_in), nr * d_in, path, _WHAT)
                else:
                    blk_w = read_exact(f, empty("f", nr * d_in), 4 * nr * d_in, path, _WHAT)
                W.append((blk_w, j0, nr))
                j0 += nr
            if dtype == F32:
                # checked once the layer's blocks are all placed, then collected: the check
                # makes a float object per weight (boxed where floats are: 32 bytes each on
                # the unix port, 8x the block), and checked block by block those objects
                # scattered the blocks with holes the Trainer's 2 KB rows did not fit (a
                # 64-512-4 model needed 335 KB of the unix port's heap)
                for blk_w, _, _ in W:
                    check_finite(path, _WHAT, "layer %d weight" % i, blk_w)
                gc.collect()
            if dtype == I8:
                p = pad4(d_out * d_in) - d_out * d_in
                if p:
                    f.read(p)
            bias = read_exact(f, zeros("f", d_out), 4 * d_out, path, _WHAT)
            check_finite(path, _WHAT, "layer %d bias" % i, bias)
            self.layers.append(Layer(d_in, d_out, W, scale, bias, i < L - 1))

    # ------------------------------------------------------------------ float inference

    def dense(self, i, xin, xout):
        """xout = W_i xin + b_i (float, no activation)."""
        lay = self.layers[i]
        sc, b, d_in = lay.scale, lay.bias, lay.d_in
        for W, j0, nr in lay.W:
            row = 0
            for j in range(j0, j0 + nr):
                acc = 0.0
                for k in range(d_in):
                    acc += W[row + k] * xin[k]
                if sc is not None:
                    acc *= sc[j]
                xout[j] = acc + b[j]
                row += d_in

    def forward(self, x, adapters=True):
        """Logits (array self.xs[-1]) of x; the layer inputs stay in self.xs[0..L-1]."""
        xs = self.xs
        x1 = xs[0]
        if len(x) != len(x1):
            raise S2LError("sample has %d features, the model needs %d" % (len(x), len(x1)),
                           self.path)
        for k in range(len(x1)):
            x1[k] = x[k]
        ads = self.adapters if adapters else ()
        units = self.adapter_units
        s = self.adapter_scale
        tmp = self._tmp
        for i in range(self.n_layers):
            out = xs[i + 1]
            self.dense(i, xs[i], out)
            for n, (layer, kind, A, ar, ac, B, br, bc) in enumerate(ads):
                if layer != i or kind == KIND_SKIP:
                    continue
                if kind == KIND_DELTA:
                    matvec(A, xs[i], tmp)
                    for j in range(ar):
                        out[j] += tmp[j] + B[j]
                else:
                    add_lowrank(A, B, ar, xs[i], tmp, out, br, s * units[n][0] * units[n][1])
            if i < self.n_layers - 1:
                for j in range(len(out)):
                    if out[j] < 0.0:
                        out[j] = 0.0
        y = xs[-1]
        for n, (layer, kind, A, ar, ac, B, br, bc) in enumerate(ads):
            if kind != KIND_SKIP:
                continue
            add_lowrank(A, B, ar, xs[layer], tmp, y, br, s * units[n][0] * units[n][1])
        return y

    def predict(self, x, adapters=True):
        """The class index of sample x (a sequence of floats; array('f') is fastest). An
        int8 model runs through the fixed-point kernels (about 20x faster than forward());
        its activations are rounded to int8, so a near tie can pick another class than the
        float forward() would."""
        if self.dtype == I8:
            if self._int8 is None:
                from .int8forward import Int8Forward
                self._int8 = Int8Forward(self)
            if not (adapters and self.adapters) or self._int8.usable():
                return argmax(self._int8.logits(x, adapters))
        return argmax(self.forward(x, adapters))

    def set_adapters(self, adapters, scale, units=None, rows16=None):
        """Adapters for predict()/forward(): [(layer, kind, A rows, a_rows, a_cols, B, b_rows,
        b_cols)]; units[i] = (a_unit, b_unit) when A and B hold integers in those units;
        rows16[i] = (int16 A rows, their unit) for the int8 predict, when the caller has them
        (else predict quantizes float rows once)."""
        self.adapters = adapters
        self.adapter_units = units or [(1.0, 1.0)] * len(adapters)
        self.adapter_rows16 = rows16
        self.adapter_scale = scale

    def load_adapters(self, path):
        """Load a .s2la file (checked, and it must be for this model) for predict()."""
        af = read_adapters(path)
        if af["model_crc"] != self.file_crc:
            raise S2LError("adapters were trained for another model (model CRC %08x, this "
                           "model %08x)" % (af["model_crc"], self.file_crc), path)
        for (layer, kind, A, ar, ac, B, br, bc) in af["adapters"]:
            if layer >= self.n_layers:
                raise S2LError("adapter on layer %d, the model has %d" % (layer, self.n_layers),
                               path)
            d_in, d_out = self.dims[layer], self.dims[layer + 1]
            ok = {KIND_SKIP: ac == d_in and br == self.n_classes and bc == ar,
                  KIND_PARALLEL: ac == d_in and br == d_out and bc == ar,
                  KIND_DELTA: ar == d_out and ac == d_in and br == d_out and bc == 1}[kind]
            if not ok:
                raise S2LError("adapter on layer %d has shapes that do not fit the model"
                               % layer, path)
        self.set_adapters(af["adapters"], af["alpha"] / af["rank"])
        return af

    def clear_adapters(self):
        self.set_adapters([], 1.0)


def matvec(A, x, out):
    """out[r] = A[r] . x for A given as a list of row arrays."""
    for r in range(len(A)):
        row = A[r]
        acc = 0.0
        for k in range(len(row)):
            acc += row[k] * x[k]
        out[r] = acc


def add_lowrank(A, B, r, x, u, out, n_out, s):
    """out[j] += s * (B u)[j] with u = A x (left in u, which backward passes reuse): one
    rank-r adapter's output, B being n_out x r row-major."""
    matvec(A, x, u)
    for j in range(n_out):
        acc = 0.0
        for q in range(r):
            acc += B[j * r + q] * u[q]
        out[j] += s * acc


def argmax(v):
    best = 0
    for i in range(1, len(v)):
        if v[i] > v[best]:
            best = i
    return best

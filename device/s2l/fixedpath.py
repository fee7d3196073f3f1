# The fixed-point path of the Trainer: skip2lora / skip-lora on an int8 model. int8 activations
# (Skip-Cache int8), int32 adapter masters, int16 forward copies, run by the kernels of
# kernels.get(backend) (viper, or their pure-Python twins); the formats, shifts and bounds are
# in docs/device.md. Integers only: every constant comes from float32 bit patterns through
# qmath, and the softmax is an integer one, so every board writes the same adapter, state and
# cache bytes (the loss printed in progress lines is the one float, and nothing reads it back;
# tests/device/test_device_integer_only.py checks this file for float literals and `/`).
# Same methods as FloatPath (floatpath.py).
import math

from .formats import I8, I32, KIND_SKIP, pad4, read_state, write_state, zeros
from .cache import Cache
from . import kernels
from .qmath import (ONE_BITS, bits, bits_at, f32_ratio, isqrt, q15, q16, qbits,
                    rshift_round, sat as _sat, split, value)

T_BG = 6  # pre-shift of B^T g, keeps e * x inside int32 (docs/device.md)
Z_BITS = 0x37800000  # 2**-16: the unit of the cached logits z (Q16)
LN_16384 = 9.704060527839234  # ln(2**14), for the printed loss only
# The kernels' parameter ranges (docs/device.md, "Bounds"), clamped where the parameters are
# set. Beyond each end the result is provably the same integers as at the end itself, except
# the two left-shift caps of the master updates (a step past them is capped, see the docs).
N_LO, N_HI = -15, 46      # dense_q16 shift: t * 2**30 saturates; from 43 on the row reads 0
RQ_HI = 46                # requant8 shift: from 46 on every code rounds to 0
SHU_LO, SHU_HI = -15, 32  # adapter_u: u saturates for any acc != 0 / rounds to 0
SHB_LO, SHB_HI = -29, 30  # upd_b: LIM >> 30 is 0 (capped at -29) / |g u| < 2**29 rounds to 0
SHA_LO, SHA_HI = -29, 32  # upd_a: as upd_b (capped at -29) / |e x| < 2**31 rounds to 0
SHS_LO, SHS_HI = -30, 32  # softmax: LIM >> 30 is 0 / |t| < 2**31 rounds to 0
# the smallest activation scale the calibration gives (a maximum of 256 in Q16): a smaller one
# (a cache header written elsewhere) would need a requant8 shift below 16
SCALE_FLOOR = f32_ratio(256, 127 * 65536)


class _Adapter:
    pass


def _rows(blocks, d):
    """The rows of an adapter's blocks of whole rows, in order: a one-row block itself, the
    rows of a longer one as views into it."""
    out = []
    for b in blocks:
        if len(b) == d:
            out.append(b)
        else:
            mv = memoryview(b)
            for i in range(0, len(b), d):
                out.append(mv[i:i + d])
    return out


class FixedPath:
    """One arithmetic of the Trainer (the other is floatpath.FloatPath, with the same methods):
    owns its buffers (all allocated here), the adapters (ads) and the Skip-Cache (cache)."""

    def __init__(self, model, data, method, targets, rank, alpha, lr, momentum, rng,
                 cache_path, K):
        m, ds = model, data
        dims = m.dims
        L, C, r = m.n_layers, dims[-1], rank
        self.model, self.data, self.K, self.rng = m, ds, K, rng
        # viper has no row-block kernels (their native code would take 3 KB of a board's heap,
        # loaded even where thumb runs, for no gain): it is called per row
        self._rows = hasattr(K, "row_table")
        self.L, self.C, self.rank = L, C, r
        # the step sizes from the float32 bits of lr and alpha (qmath); momentum is 0 here
        self._lr_parts = split(bits(lr))
        self._alpha_parts = split(bits(alpha))
        # s = alpha / r = Ms / 2**ns (Q15); y32 (Q20) * s in Q16 is y32 * Ms / 2**(15 + shs),
        # shs = ns - 11, clamped to -30..32 (beyond, the same integers): _s15 = (Ms, shs)
        Ms, ns = q15(self._alpha_parts[0], r, self._alpha_parts[1])
        self._s15 = (Ms, max(SHS_LO, min(SHS_HI, ns - 11)))
        self.x1_in_cache = ds.dtype != I8
        # x_1..x_L as int8 codes: those a Skip-Cache record holds (x_2.., and x_1 for a float
        # dataset) are views into one array, read from the record with one readinto
        first = 0 if self.x1_in_cache else 1
        xrec = zeros("b", sum(pad4(d) for d in dims[first:L]))
        self.xq, o = [], 0
        for i in range(L):
            if i < first:
                self.xq.append(zeros("b", pad4(dims[i])))
            else:
                self.xq.append(memoryview(xrec)[o:o + pad4(dims[i])])
                o += pad4(dims[i])
        self.x1view = memoryview(self.xq[0])[:dims[0]]
        self.z32 = zeros("i", C)
        self.y32 = zeros("i", C)
        self.v32 = zeros("i", max(dims[1:]))
        self.g16 = zeros("h", C)
        self.ge16 = zeros("h", C)
        self.yq = zeros("i", C)    # logits, Q16
        self.e14 = zeros("i", C + 2)  # exp(y - max y), Q14; then what the loss needs
        self._chunk = zeros("f", 64)  # payload(): real-valued adapters written 64 at a time
        self.dM = [zeros("i", dims[i + 1]) for i in range(L)]   # per-channel multipliers
        self.dN = [zeros("b", dims[i + 1]) for i in range(L)]   # per-channel shifts
        self.dB = [zeros("i", dims[i + 1]) for i in range(L)]   # biases, Q16
        self.rq = [(0, 16)] * L                                 # requant (M, n) per layer
        self._need_x1 = 0 in targets  # an adapter reads x_1
        self.prepared = self.cache_built = False
        self._nb = 0  # the batch size the step constants are set for (0: none yet)
        # set by _set_scales and _batch_consts: made here, so the dict grows early
        self._qx, self._eta, self._shb = (0, 0), None, 0
        self.ads = []
        for i in targets:
            a = _Adapter()
            a.layer, a.kind, a.d = i, KIND_SKIP, dims[i]
            a.ar, a.ac, a.br, a.bc = r, dims[i], C, r
            # the masters in blocks of whole rows, none above 2 KB (a fragmented heap has no
            # longer free run): one row per block for d > 128 (d <= 512 stays <= 2 KB), or up
            # to 512 // d rows in one block, so a row-block kernel (upd_a_rows) works on all
            # the rows of a short row at once.
            k = max(1, min(r, 512 // a.d))
            a.A32b = [zeros("i", a.d * min(k, r - q)) for q in range(0, r, k)]
            a.A16b = [zeros("h", a.d * min(k, r - q)) for q in range(0, r, k)]
            # what the kernels take, made here, outside the training loop: the row kernels'
            # form of the blocks (K.row_table), or for a backend called per row the rows
            if self._rows:
                a.rows = (K.row_table(a.A32b, a.d, 4), K.row_table(a.A16b, a.d, 2))
            else:
                a.rows = (_rows(a.A32b, a.d), _rows(a.A16b, a.d))
            a.B32, a.B16 = zeros("i", C * r), zeros("h", C * r)
            a.U, a.E = zeros("h", r), zeros("i", r)
            a.drawn = False  # A's initial values are drawn once the activation scales exist
            a.ps = kernels.chunk_shift(a.d)
            # the attributes _set_scales and _batch_consts set, made here: the object's dict
            # grows now, on a heap not yet fragmented by calibration and the cache build
            a.m24 = a.Eexp = a.shu = a.R = a.Rsh = a.Mp = a.sha = 0
            self.ads.append(a)
        self.cache = None
        if method == "skip2lora":
            segs = [(dims[i], I8) for i in range(first, L)] + [(C, I32)]
            bufs = ([xrec] if len(xrec) else []) + [self.z32]
            self.cache = Cache(cache_path, m.file_crc, ds.file_crc, ds.n, segs, bufs)

    # ------------------------------------------------------------------ the shared methods

    def prepare(self):
        """First use (again: nothing): the activation scales, from a valid Skip-Cache's header
        or from calibration passes, then the cache built if it was not valid."""
        if self.prepared:
            return
        self.cache_built = False
        scales = self.cache.open() if self.cache is not None else None
        if scales is not None:
            if self.x1_in_cache:
                full = scales[:-1]
            else:
                full = [bits(self.data.scale)] + scales[:-1]
            self._set_scales(full)
        else:
            full = self._calibrate()
            self._set_scales(full)
        if self.cache is not None and scales is None:
            segscales = ([full[0]] if self.x1_in_cache else []) + full[1:] + [Z_BITS]
            self.cache.build(segscales, self.frozen)
            self.cache_built = True
        self.prepared = True

    def frozen(self, k, upto=None):
        """Sample k's x_1 codes, then x_2..x_L codes and z (Q16) from them: what the Skip-Cache
        holds. With upto=i stop after layer i and return the max of its Q16 output
        (calibration)."""
        self._load_x1(k)
        K, m, L, sx = self.K, self.model, self.L, kernels.SX
        last = L - 1 if upto is None else upto
        for i in range(last + 1):
            lay = m.layers[i]
            out = self.z32 if i == L - 1 else self.v32
            for W, j0, nr in lay.W:
                K.dense_q16(W, self.xq[i], lay.d_in, j0, nr, self.dM[i], self.dN[i],
                            self.dB[i], out, sx)
            if i < L - 1:
                M, n = self.rq[i]
                best = K.requant8(out, lay.d_out, M, n, 1, self.xq[i + 1], sx)
                if i == upto:
                    return best
        return 0

    def step(self, k, nb, last):
        """One sample of a batch of nb: forward, integer softmax, and the master updates (the
        step of lr * s / nb, so no gradient is accumulated); the int16 forward copies are
        refreshed at the batch's last sample. Returns (loss, correct). One name per assignment:
        `a, b, c, d = ...` builds a tuple on the heap, and garbage here is a collection every
        few dozen samples on a board."""
        if nb != self._nb:
            self._batch_consts(nb)
        K = self.K
        sx = kernels.SX
        C = self.C
        lab = self.data.labels[k]
        cache = self.cache
        if cache is None or not cache.read(k):
            self.frozen(k)
        elif self._need_x1 and not self.x1_in_cache:
            self._load_x1(k)
        y32 = self.y32
        xq = self.xq
        for c in range(C):
            y32[c] = 0
        rows = self._rows
        for a in self.ads:
            U = a.U
            if rows:  # all rank rows in one call (kernels that work on a block of rows)
                K.adapter_u_rows(a.rows[1], xq[a.layer], a.d, a.ps, a.shu, U, a.ar)
            else:
                x = xq[a.layer]
                for q in range(a.ar):
                    U[q] = K.adapter_u(a.rows[1][q], x, a.d, a.ps, a.shu)
            K.logits_bu(a.B16, U, C, a.ar, y32, sx)
        loss, best = self._softmax(lab)
        if self._eta is None:
            return loss, best == lab
        g16 = self.g16
        ge16 = self.ge16
        for a in self.ads:
            E = a.E
            K.bg(a.B16, g16, C, a.ar, a.Mp, T_BG, E)
            K.upd_b(a.B32, a.B16, ge16, a.U, C, a.ar, self._shb, last, sx)
            if rows:
                K.upd_a_rows(a.rows[0], a.rows[1], xq[a.layer], E, a.d, a.sha, last, a.ar, sx)
            else:
                x = xq[a.layer]
                for q in range(a.ar):
                    K.upd_a(a.rows[0][q], a.rows[1][q], x, E[q], a.d, a.sha, last, sx)
        return loss, best == lab

    def payload(self):
        """The adapters in real units, as f32 buffers in file order (A rows then B). The int32
        masters are converted 64 values at a time into one preallocated buffer (to_f32, an
        integer kernel: the same float32 bits on every board), so saving allocates nothing
        large even on a fragmented heap."""
        self.prepare()
        K, sx, buf = self.K, kernels.SX, self._chunk
        mv, n = memoryview(buf), len(buf)
        for a in self.ads:
            rows = _rows(a.A32b, a.d)
            for q in range(a.ar + 1):  # A = A32 * R / 2**sh, then B = B32 / 2**29
                if q < a.ar:
                    src, R, sh = memoryview(rows[q]), a.R, a.Rsh
                else:
                    src, R, sh = memoryview(a.B32), 1 << 29, 58
                k0, d = 0, len(src)
                while k0 < d:
                    k1 = min(k0 + n, d)
                    K.to_f32(src[k0:k1], k1 - k0, R, sh, buf, sx)
                    yield mv[:k1 - k0]
                    k0 = k1

    def adapters(self):
        """[(layer, kind, A rows [array('f')], a_rows, a_cols, B array('f'), b_rows, b_cols)]
        in real units, allocated here: call outside the training loop."""
        chunks = self.payload()
        out = []
        for a in self.ads:
            rows = [zeros("f", a.d) for _ in range(a.ar)]
            B = zeros("f", a.br * a.bc)
            for dst in rows + [B]:
                k0 = 0
                while k0 < len(dst):
                    part = next(chunks)
                    for i in range(len(part)):
                        dst[k0 + i] = part[i]
                    k0 += len(part)
            out.append((a.layer, a.kind, rows, a.ar, a.ac, B, a.br, a.bc))
        return out

    def save(self, path, adapters_crc):
        """Beside the adapters file: path (<adapters>.state) holds the int32 masters, which
        f32 cannot hold exactly, tied to that file by its CRC (formats.write_state)."""
        write_state(path, adapters_crc, *self._state())

    def load(self, adapters, path, adapters_crc):
        """Set the masters from a read_adapters() list: from the .state at path when it
        belongs to that very file (returns True: bit-exact), else by rounding the f32 values
        (False). The int16 forward copies are then recomputed as at a batch end."""
        self.prepare()  # the masters' unit depends on the activation scales
        exact = read_state(path, adapters_crc, *self._state())
        for a, e in zip(self.ads, adapters):
            rows32 = _rows(a.A32b, a.d)
            if not exact:  # round the f32 values (not bit-exact)
                for q in range(a.ar):
                    A32, row = rows32[q], e[2][q]
                    for i in range(a.d):  # A32 = A * m * 2**30
                        mr, er = split(bits_at(row, i))
                        A32[i] = _sat(rshift_round(mr * a.m24, -6 - er))
                for i in range(len(a.B32)):  # B32 = B * 2**29
                    mr, er = split(bits_at(e[5], i))
                    a.B32[i] = _sat(rshift_round(mr, -29 - er))
            for src, dst in zip(a.A32b + [a.B32], a.A16b + [a.B16]):
                for i in range(len(src)):  # forward copies, as refreshed at a batch end
                    dst[i] = (src[i] + 32768) >> 16
        return exact

    def apply(self, model, s):
        """Hand the int32 masters to the model (A = A32 / (m * 2**30), B = B32 / 2**29) and,
        for the int8 predict, the int16 forward copies (A16 / (m * 2**14)), as they are: no
        allocation, since a trained board's heap is too fragmented for a 2 KB row."""
        self.prepare()
        b_unit = value(f32_ratio(1, 1, -29))
        ads, units, rows16 = [], [], []
        for a in self.ads:
            ads.append((a.layer, a.kind, _rows(a.A32b, a.d), a.ar, a.ac, a.B32, a.br, a.bc))
            units.append((value(f32_ratio(1, a.m24, -6)), b_unit))
            rows16.append((_rows(a.A16b, a.d), value(f32_ratio(1, a.m24, 10))))
        model.set_adapters(ads, s, units, rows16)

    def logits(self, k):
        """Sample k's logits from the frozen network alone (the Skip-Cache's record when it
        holds one), its label, and their unit: (z32, label, 16), z = z32 / 2**16."""
        if self.cache is None or not self.cache.read(k):
            self.frozen(k)
        return self.z32, self.data.labels[k], 16

    def finite(self):
        """Whether every adapter value is finite: the masters are integers, always."""
        return True

    # ------------------------------------------------------------------ fixed-point internals

    def _state(self):
        """What the .state file holds: each adapter's activation-scale mantissa m = m24 / 2**24
        as float32 bits (exponent field 126), the masters' unit; and the int32 masters, every
        adapter's A32 rows then its B32."""
        mantissas, masters = [], []
        for a in self.ads:
            mantissas.append((126 << 23) | (a.m24 & 0x7FFFFF))
            masters += a.A32b  # the rows in order
            masters.append(a.B32)
        return mantissas, masters

    def _set_scales(self, scales, adapters=True):
        """scales[i] = float32 bit pattern of the real value of one int8 code of x_{i+1};
        derive every integer constant from it (and, the first time, draw the adapters'
        int32 masters). Integers only (qmath), so every board gets the same constants."""
        m, L = self.model, self.L
        # positive float32 patterns order as their values
        scales = [scales[0]] + [s if s >= SCALE_FLOOR else SCALE_FLOOR for s in scales[1:]]
        for i in range(L):
            lay = m.layers[i]
            Ms, Ns, Bs = self.dM[i], self.dN[i], self.dB[i]
            mx, ex = split(scales[i])
            for j in range(lay.d_out):
                mw, ew = split(bits_at(lay.scale, j))
                M, n = q15(mw * mx, 1, ew + ex + 16)
                if n > N_HI:
                    M, n = 0, 15
                elif n < N_LO:
                    n = N_LO
                Ms[j], Ns[j] = M, n
                Bs[j] = q16(bits_at(lay.bias, j))
            if i + 1 < L:
                mn, en = split(scales[i + 1])
                M, n = q15(1, mn, -16 - en)  # n >= 16 from SCALE_FLOOR
                self.rq[i] = (0, 16) if n > RQ_HI else (M, n)
        m0, e0 = split(scales[0])
        self._qx = q15(1, m0, -e0)  # 1 / scale of x_1: float samples to int8 codes
        if not adapters:
            return
        self._nb = 0  # the step constants depend on the scales: set them again
        for a in self.ads:
            mi, ei = split(scales[a.layer])
            while mi < 0x800000:  # the mantissa as 24 bits, m = mi / 2**24 in [0.5, 1)
                mi <<= 1
                ei -= 1
            a.m24, a.Eexp = mi, -ei - 24   # x = q * m * 2**-Eexp
            a.shu = max(SHU_LO, min(SHU_HI, 4 + a.Eexp - a.ps))
            a.R, a.Rsh = qbits(1, mi, -6, 30)  # real A = A32 / (m * 2**30) = A32 * R / 2**Rsh
            if not a.drawn:
                self._draw_a(a)

    def _draw_a(self, a):
        """A's initial int32 masters: the float path's uniform(-1/sqrt(d), 1/sqrt(d)) draws
        (same generator, same order), scaled by m * 2**30 in integers."""
        K = isqrt(((a.m24 * a.m24) << 44) // a.d)  # m24 * 2**22 / sqrt(d)
        rng = self.rng
        rows32, rows16 = _rows(a.A32b, a.d), _rows(a.A16b, a.d)
        for q in range(a.ar):
            A32, A16 = rows32[q], rows16[q]
            for i in range(a.d):
                v = _sat(rshift_round(((rng.next_u32() >> 8) * 2 - 16777216) * K, 40))
                A32[i] = v
                A16[i] = (v + 32768) >> 16
        a.drawn = True

    def _batch_consts(self, nb):
        """Shifts and multipliers for a batch of nb samples: eta = lr * s / nb = F * 2**-n."""
        self._nb = nb
        ml, el = self._lr_parts
        ma, ea = self._alpha_parts
        F, n = q15(ml * ma, self.rank * nb, el + ea)
        if F == 0:
            self._eta = None
            return
        h = n - 15  # eta = (F / 2**15) * 2**-h
        self._eta = F
        self._shb = max(SHB_LO, min(SHB_HI, h - 5))
        for a in self.ads:
            a.Mp = rshift_round(F * a.m24 * a.m24, 48)
            a.sha = max(SHA_LO, min(SHA_HI, h + a.Eexp - 3 - T_BG))

    def _load_x1(self, k):
        ds = self.data
        if ds.dtype == I8:
            return ds.read(k, self.x1view)
        lab = ds.read(k)
        M, n = self._qx
        self.K.quant_f32(ds.x, ds.n_features, M, n, self.xq[0])
        return lab

    def _calibrate(self):
        """Per-layer int8 scales (float32 bit patterns) from the dataset's maxima: L-1
        streaming passes."""
        ds, L = self.data, self.L
        scales = [None] * L
        if ds.dtype == I8:
            scales[0] = bits(ds.scale)
        else:
            peak = 0
            for k in range(ds.n):
                ds.read(k)
                b = self.K.absmax_f32(ds.x, ds.n_features)
                if b > peak:
                    peak = b
            mp, ep = split(peak) if peak else (1, -100)
            # at least the smallest normal float32: a scale flushed to 0 has no reciprocal
            scales[0] = max(f32_ratio(mp, 127, ep), 0x00800000)
        for i in range(L - 1):
            tmp = scales[:i + 1] + [ONE_BITS] * (L - i - 1)
            self._set_scales(tmp, adapters=False)
            best = 256
            for k in range(ds.n):
                b = self.frozen(k, i)
                if b > best:
                    best = b
            scales[i + 1] = f32_ratio(best, 127 * 65536)
        return scales

    def _softmax(self, lab):
        """The integer softmax (kernels_py.softmax): logits y = z + s * sum B u in Q16, p, and
        with a step g = p - onehot as g16 and g * eta's mantissa as ge16. Returns (loss for
        the progress line, predicted class)."""
        e, C = self.e14, self.C
        best = self.K.softmax(self.z32, self.y32, self.yq, e, C, self._s15[0], self._s15[1],
                              lab, self._eta or 0, self.g16, self.ge16, kernels.SX)
        loss = math.log(e[C]) - LN_16384 + e[C + 1] / 65536
        return loss, best

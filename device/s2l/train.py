# Fine-tuning on the board: Skip2-LoRA (default), Skip-LoRA, LoRA-All and FT-Last.
#
# The Trainer checks its arguments, runs the loop (epochs, batches, shuffles, progress lines)
# and saves / restores; the arithmetic is one of two path objects with the same methods,
# chosen here at construction:
#   FixedPath (fixedpath.py) - skip2lora / skip-lora on an int8 model: int8 activations, int32
#            adapter masters, int16 forward copies, the kernels of kernels.get(backend) (viper,
#            or their pure-Python twins); integers only, so every board writes the same bytes.
#   FloatPath (floatpath.py) - every method, float32 arrays, plain Python: the path compared
#            with the numpy reference (host/skip2lora/training/reference.py) to a stated tolerance.
# Each path allocates every buffer it uses when it is made (sized from the model and dataset
# headers); the training loop only fills them. fixedpath is imported with the package (its
# code is loaded before a model fragments the heap: the board's path), floatpath only when a
# Trainer runs in float.
import math

from .compat import S2LError, ticks_ms, ticks_diff
from .formats import I8, read_adapters, write_adapters, zeros
from .model import Model
from .dataset import Dataset
from .rng import XorShift32
from . import config, kernels
from .fixedpath import FixedPath
from .qmath import bits, value

# The divergence guard (guard.py says what and why): the cheap checks are here, in the loop; a
# suspicious epoch loads guard.py, which decides and raises guard.Diverged. A sample loss above
# LOSS_LIMIT nats (or not finite) always stops training at once.
LOSS_LIMIT = 1e4


class Trainer:
    # the divergence guard's reference, set by guard.py when first needed (a class attribute
    # until then: one more instance attribute here grows the instance's dict by 592 bytes, too
    # much for an ESP32's heap, tests/device/test_device_train.py::test_esp32_sized_heap)
    _base_loss = None

    def __init__(self, model, data, method=config.METHOD, rank=None, alpha=None, lr=config.LR,
                 batch_size=config.BATCH_SIZE, momentum=config.MOMENTUM, seed=config.SEED,
                 backend=None, cache=None, cache_dtype=None, targets=None,
                 shuffle=config.SHUFFLE, log=print):
        self.model = model if isinstance(model, Model) else Model(model)
        self.data = data if isinstance(data, Dataset) else Dataset(data)
        m, ds = self.model, self.data
        if ds.n_features != m.dims[0] or ds.n_classes != m.n_classes:
            raise S2LError("dataset has %d features and %d classes, the model %d and %d"
                           % (ds.n_features, ds.n_classes, m.dims[0], m.n_classes), ds.path)
        if ds.n == 0:
            raise S2LError("dataset has no samples", ds.path)
        if method not in config.BOARD_METHODS:
            raise S2LError("method %r is not available on the board; choose one of %s"
                           % (method, ", ".join(config.BOARD_METHODS)))
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise S2LError("batch_size must be an integer >= 1")
        if not lr >= 0 or not 0 <= momentum < 1:
            raise S2LError("lr must be >= 0 and momentum in [0, 1)")
        self.method, self.lr, self.batch_size, self.momentum = method, lr, batch_size, momentum
        self.seed, self.shuffle, self.log = seed, shuffle, log
        self.rank = rank or m.rank or config.RANK
        if not 1 <= self.rank <= 64:
            raise S2LError("rank must be 1..64")
        self.alpha = float(self.rank if alpha is None else alpha)
        self.s = self.alpha / self.rank
        L = m.n_layers
        self.L, self.C = L, m.n_classes
        if method in config.SKIP_METHODS:
            if targets is None:
                t = [i for i in range(L) if m.adapter_mask >> i & 1]
            elif targets == "all":
                t = list(range(L))
            elif targets == "hidden":
                t = list(range(1, L))
            else:
                t = sorted(set(int(i) for i in targets))
            if not t or t[0] < 0 or t[-1] >= L:
                raise S2LError("targets must be 'all', 'hidden' or layer indices in 0..%d"
                               % (L - 1))
            self.targets = t
        elif method == "lora-all":
            self.targets = list(range(L))
        else:
            self.targets = [L - 1]
        # arithmetic
        if method in config.SKIP_METHODS and backend != "float":
            if m.dtype != I8:
                if backend is not None:
                    raise S2LError("the fixed-point path needs an int8 model (compile with "
                                   "int8 weights) or backend='float'", m.path)
                backend = "float"
        else:
            if backend not in (None, "float"):
                raise S2LError("%s runs in float on the board; use backend=None or 'float'"
                               % method)
            backend = "float"
        fixed = backend != "float"
        K = None
        if fixed:
            try:
                K = kernels.get(backend)
            except ImportError as e:
                raise S2LError(str(e))
            self.backend = K.NAME
            if momentum:
                raise S2LError("momentum is only supported with backend='float'")
        else:
            self.backend = "float"
        # cache
        want = "int8" if fixed else "f32"
        if method == "skip2lora":
            if cache is None:
                p = ds.path
                cache = (p[:-1] + "c") if p.endswith(".s2ld") else p + ".s2lc"
            if cache_dtype is None:
                cache_dtype = want
            if cache_dtype != want:
                raise S2LError("cache_dtype %r does not go with backend %r (use %r)"
                               % (cache_dtype, self.backend, want), cache)
        self.cache_path, self.cache_dtype = cache, cache_dtype
        self.rng = XorShift32(seed)
        self.epochs_done = 0
        self.saved_epochs = 0  # epochs_done of the last complete save() (or restore())
        self.history = []
        self.n = ds.n
        self.order = zeros("H", self.n) if self.n < 65536 else [0] * self.n
        if fixed:
            Path = FixedPath
        else:
            from .floatpath import FloatPath as Path
        # the arithmetic: buffers, adapters (ads) and Skip-Cache (cache, None without one)
        self.arith = Path(m, ds, method, self.targets, self.rank, self.alpha, lr, momentum,
                          self.rng, cache, K)
        self.cache = self.arith.cache
        self._prepared = self.cache_built = False

    # ================================================================== driver

    def fit(self, epochs=1, save=None):
        """Train for epochs more epochs; prints one progress line per epoch:
        S2L epoch=<n> loss=<f> acc=<f> ms=<n> cache_reads=<n>[ saved_ms=<n>]
        With save=path the adapters are saved after every epoch, before its line is printed
        (a line seen means the epoch is on flash). A KeyboardInterrupt during that save
        completes the save first, so flash never holds half of a save."""
        for _ in range(epochs):
            t0 = ticks_ms()
            rec = self.epoch()  # epoch 1 includes the first use (calibration, cache build)
            rec["ms"] = ticks_diff(ticks_ms(), t0)
            self.history.append(rec)
            if save is not None:
                t0 = ticks_ms()
                try:
                    self.save(save)
                except KeyboardInterrupt as e:
                    self.save(save)
                    raise e
                rec["saved_ms"] = ticks_diff(ticks_ms(), t0)
            if self.log is not None:
                self.log(self.progress_line(rec))
        return self.history

    @staticmethod
    def progress_line(rec):
        line = ("S2L epoch=%d loss=%.6f acc=%.4f ms=%d cache_reads=%d"
                % (rec["epoch"], rec["loss"], rec["acc"], rec.get("ms", 0), rec["cache_reads"]))
        if "saved_ms" in rec:
            line += " saved_ms=%d" % rec["saved_ms"]
        return line

    def epoch(self):
        """One pass over the dataset in this epoch's shuffled order; returns its record
        (epoch, loss, acc, cache_reads, recomputed) without printing or keeping it."""
        arith = self.arith
        if not self._prepared:  # first use: activation scales (fixed), Skip-Cache built or reused
            arith.prepare()
            self._prepared, self.cache_built = True, arith.cache_built
        n, order, bs = self.n, self.order, self.batch_size
        for i in range(n):
            order[i] = i
        if self.shuffle:
            self.rng.shuffle(order)
        cache = self.cache
        r0 = cache.reads if cache is not None else 0
        b0 = cache.bad if cache is not None else 0
        loss_sum = 0.0
        correct = 0
        start = 0
        while start < n:
            nb = bs if start + bs <= n else n - start
            for j in range(nb):
                l, ok = arith.step(order[start + j], nb, j == nb - 1)
                if not l <= LOSS_LIMIT:  # also NaN, which compares false
                    self._guard(l, True)
                loss_sum += l
                correct += ok
            start += nb
        rec = {"epoch": self.epochs_done + 1, "loss": loss_sum / n, "acc": correct / n,
               "cache_reads": (cache.reads - r0) if cache is not None else 0,
               "recomputed": (cache.bad - b0) if cache is not None else 0}
        if rec["loss"] > math.log(self.C) or not arith.finite():  # worse than a uniform guess
            self._guard(rec["loss"], False)
        self.epochs_done += 1
        return rec

    def _guard(self, loss, sample):
        """A sample's loss, or an epoch's mean, that the divergence guard must judge:
        guard.check raises guard.Diverged, or returns when the epoch is fine after all."""
        try:
            from .guard import check
        except MemoryError:  # no room for its code: a sample's loss is enough to stop, an
            if sample:       # epoch's mean is let through rather than fail a run that fits
                raise S2LError("training diverged in epoch %d (loss %s); lower lr"
                               % (self.epochs_done + 1, loss))
            return
        check(self, loss, sample)

    # ================================================================== results

    def _entries(self):
        out = []
        for a in self.arith.ads:
            out.append((a.layer, a.kind, a.ar, a.ac, a.br, a.bc))
        return out

    def adapters(self):
        """[(layer, kind, A rows [array('f')], a_rows, a_cols, B array('f'), b_rows, b_cols)]
        in real units (the fixed path allocates them: call outside the training loop)."""
        return self.arith.adapters()

    def save(self, path):
        """Write the adapters (f32) to path atomically (new file, then rename). The fixed path
        also writes <path>.state, its int32 masters (f32 cannot hold them exactly), so that
        restore() continues bit for bit."""
        crc = write_adapters(path, self.model.file_crc, self.rank, self.C, self.alpha,
                             self.epochs_done, self.method, self._entries(),
                             self.arith.payload())
        self.arith.save(path + ".state", crc)
        self.saved_epochs = self.epochs_done
        return crc

    def restore(self, path):
        """Continue from a .s2la that save() wrote for the same model, method, rank and
        targets: the adapters, epochs_done, and the random stream as after that many epochs
        (A-init draws, then one shuffle per epoch). Momentum restarts at zero. The fixed path
        takes its int32 masters from <path>.state when that belongs to this very file, else
        it rounds the f32 values (then not bit-exact). Call it before any training."""
        if self.epochs_done or self.history:
            raise S2LError("restore() must come before any training", path)
        info = read_adapters(path)
        ads = info["adapters"]
        mine = (self.model.file_crc, self.method, self.rank, value(bits(self.alpha)),
                self._entries())
        theirs = (info["model_crc"], info["method"], info["rank"], info["alpha"],
                  [(e[0], e[1], e[3], e[4], e[6], e[7]) for e in ads])
        if mine != theirs:
            raise S2LError("was saved for another model, method, rank or targets (%s rank %d "
                           "on layers %s; this run: %s rank %d on layers %s); start without "
                           "--resume (resume=False) to train afresh"
                           % (info["method"], info["rank"], [e[0] for e in ads],
                              self.method, self.rank, self.targets), path)
        self.restored_exact = self.arith.load(ads, path + ".state", info["file_crc"])
        n = info["epochs_done"]
        if self.shuffle:  # the rng has made the A-init draws: now one shuffle per epoch
            for _ in range(n):
                self.rng.shuffle(self.order)
        self.epochs_done = self.saved_epochs = n
        return n

    def apply(self):
        """Hand the trained adapters to the model, so model.predict() uses them. The fixed
        path hands over its own integer arrays with their units: nothing allocated."""
        self.arith.apply(self.model, self.s)
        return self.model

    def evaluate(self, data):
        """Accuracy of the model with the trained adapters on a dataset (float predict)."""
        ds = data if isinstance(data, Dataset) else Dataset(data)
        m = self.apply()
        x = zeros("f", ds.n_features)
        ok = 0
        for k in range(ds.n):
            lab = ds.read(k)
            for i in range(ds.n_features):
                x[i] = ds.x[i] * ds.scale if ds.dtype == I8 else ds.x[i]
            ok += m.predict(x) == lab
        return ok / ds.n if ds.n else 0.0

    def close(self):
        if self.cache is not None:
            self.cache.close()

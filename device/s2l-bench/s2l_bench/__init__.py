# Board-side timing for `skip2lora bench` (host/skip2lora/bench/run.py drives it over the REPL).
#   train(...)   fine-tune one method, time every epoch with the board's own microsecond
#                clock, sample the live heap after each epoch, save adapters at checkpoints
#   kernels(...) microseconds per multiply-add of each kernel backend on given matrix shapes
# Output: one `S2L epoch=...` line per epoch (host progress) and `BENCH <json>` result lines.
# An extension of s2l, not part of it: `skip2lora bench` uploads it beside s2l, `skip2lora
# flash` does not, and nothing in s2l imports it, so boards that only fine-tune never carry it.
import gc
import json
import os

from s2l import config
from s2l.compat import remove, ticks_diff, ticks_ms, ticks_us, ticks_us_diff


def _emit(**kw):
    print("BENCH " + json.dumps(kw))


def _live():
    gc.collect()
    return gc.mem_alloc()


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return 0


def train(model, data, method=config.METHOD, backend=None, targets=None, epochs=1, lr=config.LR,
          rank=config.RANK, seed=config.SEED, cache=None, adapters="/skip2lora/bench_e%d.s2la", save_at=()):
    """Fine-tune for `epochs` epochs; the cache (if any) is rebuilt from scratch, so epoch 1
    pays calibration and the cache build. Heap: gc.mem_alloc() after gc.collect(), before
    and after every epoch; every buffer of this function is allocated up front, so what
    changes across an epoch is the Trainer's own doing."""
    from array import array
    from s2l.train import Trainer

    if cache:
        remove(cache)
    n_saves = len([e for e in save_at if e < epochs]) + 1
    eus = array("i", range(epochs))
    before = array("i", range(epochs))
    after = array("i", range(epochs))
    sv = array("i", range(3 * n_saves))
    base = _live()
    t0 = ticks_us()
    t = Trainer(model, data, method=method, rank=rank, lr=lr, seed=seed, backend=backend,
                cache=cache, targets=targets, log=None)
    setup_us = ticks_us_diff(ticks_us(), t0)
    built = _live()
    k = 0
    for e in range(1, epochs + 1):
        before[e - 1] = _live()
        m0 = ticks_ms()
        t0 = ticks_us()
        rec = t.epoch()
        us = ticks_us_diff(ticks_us(), t0)
        ms = ticks_diff(ticks_ms(), m0)
        if ms > 400000:  # ticks_us wraps after 2**29 us (~9 min) on a board
            us = ms * 1000
        eus[e - 1] = us
        after[e - 1] = _live()
        print("S2L epoch=%d us=%d loss=%.6f acc=%.4f cache_reads=%d heap=%d"
              % (e, us, rec["loss"], rec["acc"], rec["cache_reads"], after[e - 1]))
        if e in save_at or e == epochs:
            path = adapters % e
            t0 = ticks_us()
            t.save(path)
            sv[3 * k] = e
            sv[3 * k + 1] = ticks_us_diff(ticks_us(), t0)
            sv[3 * k + 2] = _size(path)
            k += 1
    cpath = t.cache_path if method == "skip2lora" else None
    cbytes = _size(cpath) if cpath else 0
    cb = bool(getattr(t, "cache_built", False))
    t.close()
    saves = [(sv[3 * i], adapters % sv[3 * i], sv[3 * i + 1], sv[3 * i + 2])
             for i in range(k)]
    _emit(kind="train", backend=t.backend, setup_us=setup_us, epoch_us=list(eus),
          heap_base=base, heap_built=built, heap_before=list(before), heap_after=list(after),
          heap_total=gc.mem_alloc() + gc.mem_free(), cache_bytes=cbytes, cache_built=cb,
          saves=saves, n=t.n)


# ------------------------------------------------------------------ kernel microbench

def _reps(fn, min_us):
    """Calls per timed round so that a round lasts about min_us."""
    t0 = ticks_us()
    fn()
    return max(1, min_us // max(ticks_us_diff(ticks_us(), t0), 1))


def _best(runs, min_us, rounds=5):
    """{name: best us per call}; the backends take turns round by round, so a slow spell of
    the machine does not land on one backend only."""
    reps = [_reps(f, min_us) for _, f in runs]
    best = [None] * len(runs)
    for _ in range(rounds):
        for i in range(len(runs)):
            f, n = runs[i][1], reps[i]
            gc.collect()
            t0 = ticks_us()
            for _ in range(n):
                f()
            us = ticks_us_diff(ticks_us(), t0) / n
            if best[i] is None or us < best[i]:
                best[i] = us
    return best


def _float_matvec(W, x, out, d_in, nr, j0):
    # the float path's loop (Model.dense): int8 weights times float inputs
    row = 0
    for j in range(j0, j0 + nr):
        acc = 0.0
        for k in range(d_in):
            acc += W[row + k] * x[k]
        out[j] = acc
        row += d_in


def _native():
    try:
        g = {}
        exec("import micropython\n@micropython.native\ndef f(W, x, out, d_in, nr, j0):\n"
             " row = 0\n for j in range(j0, j0 + nr):\n  acc = 0.0\n"
             "  for k in range(d_in):\n   acc += W[row + k] * x[k]\n"
             "  out[j] = acc\n  row += d_in\n", g)
        return g["f"]
    except Exception:
        return None


def kernels(shapes, min_us=20000):
    """One BENCH line per (backend, shape): us per call and per multiply-add of one r x c
    matrix-vector product held as the model holds it (row blocks of <= 2 KB)."""
    from array import array
    from s2l import kernels as K

    fixed = []
    for name in ("thumb", "viper", "py"):
        try:
            fixed.append((name, K.get(name)))
        except ImportError:
            _emit(kind="kernel", backend=name, missing=True)
    native = _native()
    if native is None:
        _emit(kind="kernel", backend="native-float", missing=True)
    try:
        from ulab import numpy as unp
    except ImportError:
        unp = None
        _emit(kind="kernel", backend="ulab", missing=True)
    for r, c in shapes:
        gc.collect()
        nb = max(1, 2048 // c)
        blocks = []
        j0 = 0
        while j0 < r:
            nr = min(nb, r - j0)
            w = bytearray(nr * c)
            for i in range(len(w)):
                w[i] = (i * 37 + j0) & 0xFF
            blocks.append((w, j0, nr))
            j0 += nr
        xq = bytearray(c)
        xf = array("f", range(c))
        for i in range(c):
            xq[i] = (i * 11) & 0xFF
            xf[i] = 0.01 * (i % 7)
        M = array("i", [16384] * r)
        N = bytearray([20] * r)
        beta = array("i", [0] * r)
        oi = array("i", [0] * r)
        of = array("f", [0.0] * r)
        wf = [array("b", w) for w, _, _ in blocks]
        macs = r * c
        runs = []
        for name, mod in fixed:
            def f(mod=mod):
                for w, j, nr in blocks:
                    mod.dense_q16(w, xq, c, j, nr, M, N, beta, oi, K.SX)
            runs.append((name, f))
        def f():
            for i in range(len(wf)):
                _, j, nr = blocks[i]
                _float_matvec(wf[i], xf, of, c, nr, j)
        runs.append(("py-float", f))
        if native is not None:
            def f():
                for i in range(len(wf)):
                    _, j, nr = blocks[i]
                    native(wf[i], xf, of, c, nr, j)
            runs.append(("native-float", f))
        for (name, _), us in zip(runs, _best(runs, min_us)):
            _emit(kind="kernel", backend=name, shape=[r, c], us=us, us_per_mac=us / macs)
        if unp is not None:
            try:
                Wu = unp.zeros((r, c), dtype=unp.float)
                xu = unp.zeros(c, dtype=unp.float)
                us = _best([(0, lambda: unp.dot(Wu, xu))], min_us)[0]
                _emit(kind="kernel", backend="ulab", shape=[r, c], us=us, us_per_mac=us / macs)
                Wu = xu = None
            except MemoryError:
                _emit(kind="kernel", backend="ulab", shape=[r, c], memory_error=True)
        blocks = wf = None
        gc.collect()

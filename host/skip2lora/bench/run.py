"""`skip2lora bench`: Skip2-LoRA against its baselines, timed on the board itself.

Every method fine-tunes on the board (the virtual board by default, a real one with a port),
timed by the board's own `time.ticks_us` in the s2l_bench extension (device/s2l-bench/), which
only this command uploads, beside s2l. The host only uploads, starts each run through the raw
REPL, pulls the adapters back and scores them on the target room's held-out recording with the
numpy forward pass of the reference (export.adapted_logits).

What is measured and what is computed (docs/BENCHMARKS.md says it again beside the figures):
  * epoch times: measured for every epoch a run trains. A total for E epochs is measured when
    the run trained at least E epochs, else setup + the measured epochs + the mean of the
    measured later epochs for each epoch missing (flagged "extrapolated");
  * peak live heap: max of gc.mem_alloc() after gc.collect(), sampled after the Trainer is
    built and after every epoch (this build's mem_peak counts all allocation, not live data);
  * flash written: cache file bytes (written once, when epoch 1 builds it) + one adapter save;
    on the virtual board also the 4 KiB blocks of the image that changed during the run;
  * kernels: us per multiply-add of one matrix-vector product per backend, on the board, and
    the same products in numpy on this machine's CPython (the "C speed" reference).
"""
import contextlib
import json
import os
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from skip2lora.bench import ulab
from skip2lora.bench.projection import board_budgets, project_rp2040
from skip2lora.board import deploy
from skip2lora.board.link import (BOARD_CACHE, BOARD_DATASET, BOARD_DIR, BOARD_MODEL, BoardLink,
                                  parse_progress, sha256)
from skip2lora.board.virtual import VirtualBoard
from skip2lora.errors import UserError
from skip2lora.metrics import accuracy
from skip2lora.model.export import adapted_logits
from skip2lora.model.formats import (DTYPE_I8, dataset_from_arrays, decode_adapters,
                                     encode_dataset, read_model)
from skip2lora.training.experiments import prepare, source_revision
from skip2lora.config import FinetuneConfig
from skip2lora.training.reference import count_macs, finetune

EPOCH_POINTS = (1, 5, 20, 50)
TARGET_EPOCHS = 20  # the targets are stated at 20 epochs
PRIMARY = "silentA-to-noisy"
SCENARIOS = ("silentA-to-noisy", "silentA-to-silentB")
KERNEL_SHAPES = ((64, 512), (64, 64), (3, 64))
BLOCK = 4096  # the virtual board's flash erase block


@dataclass(frozen=True)
class RunSpec:
    key: str
    method: str
    backend: object  # None: the board's best for the method
    targets: object  # skip methods: "all" / "hidden"
    label: str


RUNS = {r.key: r for r in (
    RunSpec("skip2lora", "skip2lora", None, "all",
            "Skip2-LoRA, fixed point (viper), adapters on x1..xL"),
    RunSpec("skip2lora-hidden", "skip2lora", None, "hidden",
            "Skip2-LoRA, fixed point (viper), adapters on hidden outputs x2..xL"),
    RunSpec("skip-lora", "skip-lora", None, "all",
            "Skip-LoRA (no cache), fixed point (viper), x1..xL"),
    RunSpec("skip2lora-py", "skip2lora", "py", "all",
            "Skip2-LoRA, fixed point in pure Python, x1..xL"),
    RunSpec("skip2lora-float", "skip2lora", "float", "all",
            "Skip2-LoRA, float (LoRA-All's arithmetic), x1..xL"),
    RunSpec("lora-all", "lora-all", None, None, "LoRA-All, float (the paper's baseline)"),
    RunSpec("ft-last", "ft-last", None, None, "FT-Last, float"),
)}

# ratio name -> (numerator run, what it compares)
COMPARISONS = {
    "product": ("skip2lora", "Skip2-LoRA on its best board backend (viper) / LoRA-All (float)"),
    "same_arithmetic": ("skip2lora-float", "Skip2-LoRA in float / LoRA-All in float"),
    "hidden_only": ("skip2lora-hidden", "Skip2-LoRA hidden outputs only (viper) / LoRA-All"),
    "skip_lora": ("skip-lora", "Skip-LoRA, no cache (viper) / LoRA-All"),
    "ft_last": ("ft-last", "FT-Last (float) / LoRA-All"),
}


@dataclass
class BenchConfig:
    scenarios: tuple = SCENARIOS
    epochs: dict = None        # run key -> epochs trained, in the first (primary) scenario
    epochs_other: dict = None  # the same for the other scenarios (None: as the primary)
    n_samples: int = None      # cap on fine-tuning samples (evenly spaced); None: all
    epoch_points: tuple = EPOCH_POINTS
    lr: float = FinetuneConfig.lr
    rank: int = FinetuneConfig.rank
    seed: int = FinetuneConfig.seed
    kernel_shapes: tuple = KERNEL_SHAPES
    kernel_min_us: int = 20000
    target_epochs: int = TARGET_EPOCHS  # where the targets are judged (one of epoch_points)
    reference: bool = True     # host numpy accuracy at target_epochs beside the board's
    quick: bool = False
    heap: str = "192K"
    flash: str = "2M"
    ulab: bool = False  # also time py against ulab kernels on the ulab interpreters (ulab.py)

    def runs(self, scenario_index):
        table = self.epochs if scenario_index == 0 or self.epochs_other is None \
            else self.epochs_other
        return [(RUNS[k], n) for k, n in table.items() if n]


FULL = BenchConfig(
    epochs={"skip2lora": 50, "skip2lora-hidden": 50, "skip-lora": 50, "skip2lora-float": 20,
            "skip2lora-py": 5, "lora-all": 20, "ft-last": 5},
    epochs_other={"skip2lora": 50, "skip2lora-hidden": 50, "skip-lora": 50,
                  "skip2lora-float": 5, "lora-all": 5, "ft-last": 5}, ulab=True)
QUICK = BenchConfig(
    scenarios=(PRIMARY,), n_samples=120, kernel_min_us=4000, reference=False, quick=True,
    epochs={"skip2lora": 20, "skip2lora-hidden": 20, "skip-lora": 5, "skip2lora-float": 2,
            "skip2lora-py": 2, "lora-all": 2, "ft-last": 2})


@dataclass
class BenchScenario:
    """What one scenario needs: a compiled int8 model and the target room's two recordings."""

    name: str
    model_path: Path
    finetune: tuple  # (X float, y)
    test: tuple
    notes: list = field(default_factory=list)

    def subsample(self, n):
        X, y = self.finetune
        if not n or n >= len(y):
            return self
        idx = np.unique(np.linspace(0, len(y) - 1, n).round().astype(int))
        return replace(self, finetune=(X[idx], y[idx]),
                       notes=self.notes + [f"{len(idx)} of {len(y)} fine-tuning samples, "
                                           f"evenly spaced"])


def cooling_fan_scenarios(names, workdir, log=print):
    """Pre-train in silentA and compile to int8 (experiments.prepare), per scenario."""
    out = []
    for name in names:
        p = prepare(name, Path(workdir) / "models", dtype="int8", log=log)
        out.append(BenchScenario(name, p.model_path, p.scenario.finetune, p.scenario.test))
    return out


# --------------------------------------------------------------------------- host facts

def machine_info():
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "os": f"{platform.system()} {platform.release()}",
            "machine": platform.machine(), "python": platform.python_version(),
            "numpy": np.__version__}


def _best_us(fn, min_s=0.02, rounds=5):
    fn()
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= min_s / 4 or n >= 1 << 20:
            break
        n *= 4
    best = dt / n
    for _ in range(rounds - 1):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def host_kernels(shapes, batch=533, min_s=0.02):
    """numpy on this CPython: float32 and int32 matrix-vector products of the board's shapes,
    and float32 over a batch of `batch` vectors (what BLAS speed gives)."""
    rng = np.random.default_rng(0)
    out = {"numpy-f32": {}, "numpy-int32": {}, "numpy-f32-batched": {}}
    for r, c in shapes:
        key = f"{r}x{c}"
        W = rng.standard_normal((r, c)).astype(np.float32)
        x = rng.standard_normal(c).astype(np.float32)
        Wi = rng.integers(-127, 128, (r, c)).astype(np.int32)
        xi = rng.integers(-127, 128, c).astype(np.int32)
        X = rng.standard_normal((c, batch)).astype(np.float32)
        macs = r * c
        out["numpy-f32"][key] = _best_us(lambda: W @ x, min_s) / macs
        out["numpy-int32"][key] = _best_us(lambda: Wi @ xi, min_s) / macs
        out["numpy-f32-batched"][key] = _best_us(lambda: W @ X, min_s) / (macs * batch)
    return out


# --------------------------------------------------------------------------- the board side

class _Lines:
    """Splits board output into lines; S2L lines go to on_epoch, BENCH lines are kept."""

    def __init__(self, on_epoch=None):
        self.pending = b""
        self.results = []
        self.epochs = []
        self.other = []
        self.on_epoch = on_epoch

    def feed(self, chunk):
        self.pending += chunk
        while b"\n" in self.pending:
            line, self.pending = self.pending.split(b"\n", 1)
            line = line.strip()
            if line.startswith(b"BENCH "):
                self.results.append(json.loads(line[6:].decode()))
            elif line.startswith(b"S2L "):
                rec = parse_progress(line)
                if rec is not None:
                    self.epochs.append(rec)
                    if self.on_epoch:
                        self.on_epoch(rec)
            elif line:
                self.other.append(line.decode(errors="replace"))


def soft_reset(link):
    """A fresh interpreter (clean heap, nothing imported) before each timed run."""
    link.transport.enter_raw_repl(soft_reset=True)


class _ImageWatch:
    """Blocks of the virtual board's flash image that a run changed (None for a real board)."""

    def __init__(self, image):
        self.image = Path(image) if image else None
        self.before = None

    def start(self):
        if self.image:
            self.before = self.image.read_bytes()

    def changed_blocks(self):
        if not self.image or self.before is None:
            return None
        after = self.image.read_bytes()
        a, b = np.frombuffer(self.before, np.uint8), np.frombuffer(after, np.uint8)
        n = min(len(a), len(b)) // BLOCK
        diff = (a[:n * BLOCK].reshape(n, BLOCK) != b[:n * BLOCK].reshape(n, BLOCK)).any(axis=1)
        return int(diff.sum())


def board_kernels(link, shapes, min_us, log=print):
    soft_reset(link)
    lines = _Lines()
    link.call("s2l_bench.kernels", on_output=lines.feed, timeout=600,
              shapes=[list(s) for s in shapes], min_us=min_us)
    out, missing = {}, []
    for r in lines.results:
        if r.get("missing"):
            missing.append(r["backend"])
        elif "us_per_mac" in r:
            out.setdefault(r["backend"], {})[f"{r['shape'][0]}x{r['shape'][1]}"] = r["us_per_mac"]
    for b, per in out.items():
        log("  kernel %-13s %s" % (b, "  ".join(f"{k} {v * 1000:.2f} ns/MAC" for k, v in
                                                per.items())))
    return out, missing


def _checkpoints(epochs, points):
    return tuple(sorted({e for e in points if e <= epochs} | {epochs}))


def board_run(link, spec, epochs, config, scenario_name, image_watch, log=print):
    """One method on the board: setup, per-epoch us, heap samples, checkpoint adapters."""
    save_at = _checkpoints(epochs, config.epoch_points)
    adapters = BOARD_DIR + "/bench_e%d.s2la"
    job = dict(model=BOARD_MODEL, data=BOARD_DATASET, method=spec.method, backend=spec.backend,
               targets=spec.targets, epochs=epochs, lr=config.lr, rank=config.rank,
               seed=config.seed, cache=BOARD_CACHE if spec.method == "skip2lora" else None,
               adapters=adapters, save_at=save_at)
    short = scenario_name.split("-to-")[-1]

    def progress(rec):
        log(f"  [{short}] {spec.key:<16} epoch {rec['epoch']:>2}/{epochs}  "
            f"{rec['us'] / 1000:9.1f} ms  loss {rec['loss']:.4f}  "
            f"heap {rec['heap'] / 1024:.1f} KiB")

    soft_reset(link)
    image_watch.start()
    lines = _Lines(progress)
    started = time.time()
    link.call("s2l_bench.train", on_output=lines.feed, timeout=3600, **job)
    wall = time.time() - started
    results = [r for r in lines.results if r.get("kind") == "train"]
    if not results:
        raise UserError(f"the board's bench run of {spec.key} printed no result: "
                        f"{' | '.join(lines.other[-3:]) or 'no output'}", link.port)
    res = results[-1]
    res["flash_blocks_changed"] = image_watch.changed_blocks()
    res["losses"] = [e["loss"] for e in lines.epochs]
    res["train_acc"] = [e["acc"] for e in lines.epochs]
    res["cache_reads"] = [e["cache_reads"] for e in lines.epochs]
    res["wall_s"] = wall
    res["host_load"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    res["adapters"] = {}
    for e, path, save_us, size in res["saves"]:
        res["adapters"][e] = link.read_file(path)
        link.script("remove", path=path)
    link.script("remove", path=BOARD_CACHE, missing_ok=True)
    return res


def _open_board(port, workdir, config):
    """(context manager yielding (link, image path or None))."""
    @contextlib.contextmanager
    def opened():
        if port:
            with BoardLink(port) as link:
                yield link, None
            return
        vdir = Path(workdir) / "vboard"
        vdir.mkdir(parents=True, exist_ok=True)
        image = vdir / "flash.img"
        if image.exists():
            image.unlink()  # a fresh, empty flash for every benchmark
        with VirtualBoard(image=image, heap=config.heap, flash=config.flash,
                          run_dir=vdir / "run") as board:
            with BoardLink(board.port) as link:
                yield link, image
    return opened()


# --------------------------------------------------------------------------- figures

def _mean(xs):
    return float(sum(xs) / len(xs)) if xs else None


def totals(setup_ms, epoch_ms, points):
    """{E: {"ms", "measured"}}: measured where trained, else first + later epochs' mean."""
    out = {}
    later = _mean(epoch_ms[1:])
    for E in points:
        if E <= len(epoch_ms):
            out[str(E)] = {"ms": setup_ms + sum(epoch_ms[:E]), "measured": True}
        elif later is not None:
            out[str(E)] = {"ms": setup_ms + sum(epoch_ms) + (E - len(epoch_ms)) * later,
                           "measured": False}
    return out


def calibration_macs(dims):
    """Multiply-adds per sample of the fixed path's L-1 calibration passes (epoch 1)."""
    L = len(dims) - 1
    return sum(sum(dims[j] * dims[j + 1] for j in range(i + 1)) for i in range(L - 1))


def method_macs(net, spec, rank, points, dims, n):
    c = count_macs(net, spec.method, rank, spec.targets or "all", 2)
    first = c["first_epoch"]["forward"] + c["first_epoch"]["backward"]
    later = c["later_epoch"]["forward"] + c["later_epoch"]["backward"]
    fixed = spec.method in ("skip2lora", "skip-lora") and spec.backend != "float"
    calib = calibration_macs(dims) if fixed else 0
    return {"first_per_sample": first, "later_per_sample": later,
            "calibration_per_sample": calib,
            "total": {str(E): n * (first + calib + (E - 1) * later) for E in points}}


def kernel_for(spec, backend):
    """The kernel backend that sets a run's arithmetic lower bound."""
    if backend in ("thumb", "viper", "py"):
        return backend
    return "py-float"


def accuracy_of(model, adapter_bytes, X, y):
    af = decode_adapters(adapter_bytes)
    return accuracy(adapted_logits(model, af, X), y)


def reference_accuracy(net, X, y, Xt, yt, spec, config, epochs):
    """Host numpy float64, same lr / seed / order / data as the board (reference.finetune)."""
    cfg = FinetuneConfig(method=spec.method, rank=config.rank, lr=config.lr, epochs=epochs,
                         seed=config.seed, targets=spec.targets or "all")
    res = finetune(net, X, y, cfg)
    return accuracy(res.predict(Xt), yt)


def trainable(net, spec, rank):
    dims = [net.layers[0].d_in] + [l.d_out for l in net.layers]
    L, C = len(net.layers), dims[-1]
    if spec.method == "lora-all":
        return sum(rank * (dims[i] + dims[i + 1]) for i in range(L))
    if spec.method == "ft-last":
        return dims[L] * dims[L - 1] + dims[L]
    layers = range(L) if spec.targets == "all" else range(1, L)
    return sum(rank * (dims[i] + C) for i in layers)


PER_RUN = ("runs", "accuracy", "accuracy_by_epoch", "epoch_ms", "total_ms", "heap_peak_bytes",
           "heap_trainer_bytes", "heap_growth_bytes", "heap_epoch1_bytes",
           "heap_net_growth_bytes", "flash_written_bytes", "cache_bytes", "adapter_bytes",
           "flash_blocks_changed", "macs", "lower_bound_ms", "c_speed_ms", "trainable_params",
           "epochs_trained", "backend")
RAW_KEPT = ("setup_us", "epoch_us", "heap_base", "heap_built", "heap_before", "heap_after",
            "heap_total", "cache_bytes", "cache_built", "losses", "train_acc", "cache_reads",
            "wall_s", "host_load")


def scenario_figures(sc, runs, config, kernels_us):
    """Every per-scenario figure from the raw board results."""
    model = read_model(sc.model_path)
    net = model.to_network()
    Xt, yt = sc.test
    f = {"name": sc.name, "n_finetune": len(sc.finetune[1]), "n_test": len(yt),
         "notes": sc.notes, "dims": list(model.dims),
         "baseline_accuracy": accuracy(net.forward(np.asarray(Xt, np.float64)), yt)}
    f.update({name: {} for name in PER_RUN})
    for key, res in runs.items():
        for name, value in run_figures(RUNS[key], res, model, net, sc, config,
                                       kernels_us).items():
            f[name][key] = value
    f["ratios"] = ratios(f["total_ms"])
    return f, net, model


def run_figures(spec, res, model, net, sc, config, kernels_us):
    """The figures of one board run: times, accuracy per checkpoint, heap, flash, MACs."""
    Xt, yt = sc.test
    ems = [u / 1000 for u in res["epoch_us"]]
    setup = res["setup_us"] / 1000
    accs = {str(e): accuracy_of(model, b, Xt, yt) for e, b in res["adapters"].items()}
    macs = method_macs(net, spec, config.rank, config.epoch_points, list(model.dims),
                       len(sc.finetune[1]))
    last_save = res["saves"][-1][3]
    out = {"epochs_trained": len(ems), "backend": res["backend"],
           "trainable_params": trainable(net, spec, config.rank),
           "epoch_ms": {"first": ems[0], "later": _mean(ems[1:]), "setup": setup, "all": ems},
           "total_ms": totals(setup, ems, config.epoch_points),
           "accuracy_by_epoch": accs, "accuracy": accs[str(len(ems))],
           "adapter_bytes": last_save, "cache_bytes": res["cache_bytes"],
           "flash_written_bytes": res["cache_bytes"] + last_save,
           "flash_blocks_changed": res["flash_blocks_changed"], "macs": macs,
           "runs": {**{k: res[k] for k in RAW_KEPT},
                    "saves": [s[:1] + s[2:] for s in res["saves"]]}}
    out.update(heap_figures(res))
    out.update(bound_figures(macs, kernel_for(spec, res["backend"]), config, kernels_us))
    return out


def heap_figures(res):
    """Peak live heap, the Trainer's share, and its growth across an epoch."""
    live = [res["heap_built"]] + res["heap_before"] + res["heap_after"]
    # growth across an epoch: live heap after epoch e minus before it, for e >= 2 (epoch
    # 1 builds or opens the cache); the largest over the run
    grow = [a - b for a, b in zip(res["heap_after"][1:], res["heap_before"][1:])]
    after = res["heap_after"]
    return {"heap_peak_bytes": max(live), "heap_trainer_bytes": max(live) - res["heap_base"],
            "heap_growth_bytes": max(grow) if grow else None,
            "heap_net_growth_bytes": after[-1] - after[1] if len(after) >= 3 else None,
            "heap_epoch1_bytes": res["heap_after"][0] - res["heap_before"][0]}


def bound_figures(macs, kernel, config, kernels_us):
    """The run's multiply-adds timed at the board kernel's and at numpy's speed."""
    shape = "%dx%d" % tuple(config.kernel_shapes[0])
    us_mac = kernels_us.get("board", {}).get(kernel, {}).get(shape)
    c_mac = kernels_us.get("host", {}).get("numpy-f32", {}).get(shape)
    return {"lower_bound_ms": ({E: m * us_mac / 1000 for E, m in macs["total"].items()}
                               if us_mac else None),
            "c_speed_ms": ({E: m * c_mac / 1000 for E, m in macs["total"].items()}
                           if c_mac else None)}


def ratios(total_ms):
    """Each comparison's total time over LoRA-All's, at every epoch count both have."""
    out = {}
    if "lora-all" in total_ms:
        base = total_ms["lora-all"]
        for name, (key, _) in COMPARISONS.items():
            if key in total_ms:
                out[name] = {E: total_ms[key][E]["ms"] / base[E]["ms"]
                             for E in base if E in total_ms[key]}
    return out


def largest_common_e(fig, a, b):
    es = [int(E) for E in fig["total_ms"].get(a, {}) if E in fig["total_ms"].get(b, {})]
    return str(max(es)) if es else None


def assess(fig, kern, config):
    """The issue's targets: met or missed, by how much."""
    T = str(config.target_epochs)
    out = {}
    for name in ("product", "same_arithmetic"):
        r = fig["ratios"].get(name, {}).get(T)
        if r is not None:
            cut = 100 * (1 - r)
            out[f"time_cut_{name}"] = {"value_pct": cut, "target_pct": 90.0, "aim_pct": 92.0,
                                       "met": cut >= 90.0, "aim_met": cut >= 92.0,
                                       "short_by_pt": max(0.0, 90.0 - cut)}
    a = fig["accuracy_by_epoch"]
    ref = fig.get("reference_accuracy", {})

    def acc_at(key):
        if T in a.get(key, {}):
            return a[key][T], f"board, {T} epochs"
        if key in ref:
            return ref[key], f"host numpy reference, {T} epochs"
        if key in fig["accuracy"]:
            return fig["accuracy"][key], f"board, {fig['epochs_trained'][key]} epochs"
        return None, None

    s, s_src = acc_at("skip2lora")
    l, l_src = acc_at("lora-all")
    if s is not None and l is not None:
        gap = 100 * (s - l)
        out["accuracy_vs_lora_all"] = {"skip2lora": s, "lora_all": l, "gap_pt": gap,
                                       "skip2lora_source": s_src, "lora_all_source": l_src,
                                       "met": gap >= -1.0, "short_by_pt": max(0.0, -1.0 - gap)}
    shape = "%dx%d" % tuple(config.kernel_shapes[0])
    b = kern.get("board", {})
    if shape in b.get("viper", {}) and shape in b.get("py-float", {}):
        sp = b["py-float"][shape] / b["viper"][shape]
        out["kernel_speedup"] = {"value_x": sp, "target_x": 50.0, "met": sp >= 50.0,
                                 "shape": shape}
    growth = {k: v for k, v in fig["heap_growth_bytes"].items() if v is not None}
    net = {k: v for k, v in fig["heap_net_growth_bytes"].items() if v is not None}
    if growth:
        worst = max(growth.values())
        worst_net = max(net.values()) if net else None
        out["heap_growth"] = {"worst_bytes": worst, "per_run": growth, "tolerance_bytes": 64,
                              "worst_net_bytes": worst_net, "net_per_run": net,
                              "met": worst <= 64 and (worst_net is None or worst_net <= 64)}
    return out


# --------------------------------------------------------------------------- the whole run

def run(config, scenarios, port=None, workdir="out/bench", log=print):
    """Run the benchmark; returns every figure as one JSON-ready dict."""
    started = time.time()
    source = source_revision()  # before the device package is read and uploaded
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    scenarios = [sc.subsample(config.n_samples) for sc in scenarios]
    log(f"numpy reference kernels on this machine ({platform.python_implementation()} "
        f"{platform.python_version()})")
    kern = {"host": host_kernels(config.kernel_shapes, batch=len(scenarios[0].finetune[1]),
                                 min_s=0.005 if config.quick else 0.02)}
    board, kern["board"], kern["missing"], raw = measure_on_board(config, scenarios, port,
                                                                  workdir, log)
    figures = {"scenarios": {}}
    for sc in scenarios:
        f, net, model = scenario_figures(sc, raw[sc.name], config, kern)
        if config.reference:
            f["reference_accuracy"] = scenario_reference(sc, raw[sc.name], net, model, config)
            log(f"host reference accuracy at {config.target_epochs} epochs ({sc.name}): "
                + ", ".join(f"{k} {100 * v:.1f} %" for k, v in f["reference_accuracy"].items()))
        f["targets"] = assess(f, kern, config)
        figures["scenarios"][sc.name] = f
    figures.update(summary(figures["scenarios"], scenarios[0].name, config, kern, board))
    primary = figures["scenarios"][scenarios[0].name]
    figures["ratios_mean"] = ratios_mean(figures["scenarios"])
    figures["budgets"] = board_budgets(primary["dims"], config.rank, primary["n_finetune"])
    figures["source"] = source
    figures["projection_rp2040"] = project_rp2040(figures)
    if config.ulab:
        sc = scenarios[0]
        figures["ulab"] = ulab.measure(ulab.models(sc.model_path, sc.finetune), log=log)
    figures["elapsed_s"] = time.time() - started
    return figures


def measure_on_board(config, scenarios, port, workdir, log=print):
    """Everything the board measures: (board facts, kernel us/MAC, kernels missing, raw run
    records by scenario and run key)."""
    raw = {}
    with _open_board(port, workdir, config) as (link, image):
        info = link.info()
        log(f"board: {info.describe()}")
        deploy_bench(link, info, log)
        log("kernel microbenchmark on the board")
        kernels, missing = board_kernels(link, config.kernel_shapes, config.kernel_min_us, log)
        watch = _ImageWatch(image)
        for i, sc in enumerate(scenarios):
            upload_scenario(link, sc, log)
            raw[sc.name] = {}
            for spec, epochs in config.runs(i):
                raw[sc.name][spec.key] = board_run(link, spec, epochs, config, sc.name, watch,
                                                   log)
        board = {"port": "virtual board" if image else link.port, "virtual": bool(image),
                 "describe": info.describe(), "name": info.name,
                 "version": ".".join(map(str, info.version)), "platform": info.platform,
                 "arch": info.arch, "heap_total": info.heap_total, "fs_total": info.fs_total}
    return board, kernels, missing, raw


def deploy_bench(link, info, log=print):
    """The device package and the bench extension beside it, built for this board."""
    uploads = deploy.package_uploads(info)
    extension = deploy.bench_uploads(info)
    log(f"device package: {len(uploads)} files + bench extension: {len(extension)} "
        f"({'.mpy for ' + info.arch if deploy.can_use_mpy(info) else '.py'})")
    deploy.sync(link, uploads, log=lambda *_: None)
    deploy.sync(link, extension, log=lambda *_: None, stale_dir=deploy.BENCH_LIB)


def upload_scenario(link, sc, log=print):
    """The scenario's model and int8 fine-tuning set, written only where they differ."""
    X, y = sc.finetune
    n_classes = read_model(sc.model_path).dims[-1]
    data = encode_dataset(dataset_from_arrays(X, y, n_classes, DTYPE_I8))
    log(f"scenario {sc.name}: {len(y)} fine-tuning samples, {len(sc.test[1])} test")
    model_bytes = Path(sc.model_path).read_bytes()
    if link.file_sha256(BOARD_MODEL) != sha256(model_bytes):
        link.write_file(BOARD_MODEL, model_bytes)
    if link.file_sha256(BOARD_DATASET) != sha256(data):
        link.write_file(BOARD_DATASET, data)


def scenario_reference(sc, runs, net, model, config):
    """Host numpy accuracy at target_epochs for each run, one training per (method, targets)."""
    ds = dataset_from_arrays(*sc.finetune, model.dims[-1], DTYPE_I8)
    Xq = ds.float_features().astype(np.float64)
    out, done = {}, {}
    for key in runs:
        spec = RUNS[key]
        what = (spec.method, spec.targets)
        if what not in done:
            done[what] = reference_accuracy(net, Xq, sc.finetune[1], *sc.test, spec, config,
                                            config.target_epochs)
        out[key] = done[what]
    return out


def summary(scenarios, primary_name, config, kern, board):
    """The top-level figures: settings, the primary scenario's, the kernels'."""
    primary = scenarios[primary_name]
    shape = "%dx%d" % tuple(config.kernel_shapes[0])
    emax = str(max(config.epoch_points))
    kus = {b: v[shape] for b, v in kern["board"].items() if shape in v}
    kus.update({b: v[shape] for b, v in kern["host"].items()})
    return {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "quick": config.quick,
        "machine": machine_info(),
        "board": board,
        "settings": {"lr": config.lr, "rank": config.rank, "alpha": config.rank,
                     "seed": config.seed, "batch_size": 1, "epoch_points": list(
                         config.epoch_points), "target_epochs": config.target_epochs,
                     "epochs": config.epochs, "epochs_other": config.epochs_other,
                     "n_samples_cap": config.n_samples, "dataset_dtype": "int8",
                     "kernel_shape": shape},
        "primary_scenario": primary_name,
        "ratio_skip2lora_vs_lora_all": primary["ratios"].get("product", {}).get(emax),
        "ratio_skip2lora_vs_lora_all_same_arithmetic":
            primary["ratios"].get("same_arithmetic", {}).get(emax),
        "ratio_epochs": int(emax),
        "ratios": primary["ratios"],
        "accuracy": primary["accuracy"],
        "epoch_ms": {k: {"first": v["first"], "later": v["later"]}
                     for k, v in primary["epoch_ms"].items()},
        "total_ms": primary["total_ms"],
        "heap_peak_bytes": primary["heap_peak_bytes"],
        "heap_growth_bytes": primary["heap_growth_bytes"],
        "flash_written_bytes": primary["flash_written_bytes"],
        "cache_bytes": primary["cache_bytes"],
        "kernel_us_per_mac": kus,
        "kernel_us_per_mac_by_shape": {**kern["board"], **kern["host"]},
        "kernels_missing": kern["missing"],
        "kernel_speedup_vs_py_float": ({b: kus["py-float"] / v for b, v in kus.items()}
                                       if "py-float" in kus else {}),
        "macs": primary["macs"],
        "targets": primary["targets"],
    }


def ratios_mean(scenarios):
    """Each comparison's ratio averaged over the scenarios, at the epoch counts all have."""
    means = {}
    for name in COMPARISONS:
        per = [f["ratios"].get(name, {}) for f in scenarios.values()]
        es = set.intersection(*(set(r) for r in per)) if per else set()
        if es:
            means[name] = {E: sum(r[E] for r in per) / len(per) for E in sorted(es, key=int)}
    return means

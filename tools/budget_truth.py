"""The RAM fine-tuning really needs on each virtual board kind, against what the budget predicts.

    .venv/bin/python tools/budget_truth.py                  # every kind, the whole grid (slow)
    .venv/bin/python tools/budget_truth.py --kinds unix --only 0,3
    .venv/bin/python tools/budget_truth.py --render         # docs/BUDGET.md again from the JSON

`skip2lora compile` and `flash` refuse a model whose budget (host/skip2lora/board/budget.py)
exceeds the board's heap, so the budget must never be below what the board needs, and not far
above it either. This script measures the need: for each model of GRID it runs the job
`skip2lora finetune` starts (s2l.job.finetune with the defaults: skip2lora, rank and targets as
compiled, backend auto, int8 dataset, the Skip-Cache) on a fresh interpreter of each kind, with
the package deployed as `flash` deploys it (.mpy for the kind's arch) and the files preloaded in
the kind's LittleFS, and finds the smallest heap on which it completes.

How the heap is made smaller: a ballast bytearray allocated first shrinks what is free (the
Cortex-M firmware has a fixed 192 KiB heap; the unix port gets a large one and the same
ballast, so every kind is measured the same way). The job then runs in what is left, first-fit
after the ballast, as it would on a heap that small. The requirement is

    needed = GC heap total - the ballast's bytes (gc.mem_alloc before/after it)

at the largest ballast on which the job still completes (bisected to BISECT_SHARE of the
need). That is what a board with that GC heap total needs: the interpreter's own start-up
objects, the package's code, the job's arrays and the fragmentation between them, all
included. A peak of gc.mem_alloc() would miss the last two: a MemoryError comes from the lack
of one free run of blocks, not of bytes in total.

The job runs EPOCHS epochs (the first builds the Skip-Cache and saves; the second reads the
cache, as every later one does: the heap does not grow across epochs, docs/BENCHMARKS.md) on
SAMPLES samples; the need grows by 3 bytes a sample beyond that (labels and the shuffle order),
which the budget counts. Writes docs/BUDGET.json and docs/BUDGET.md; tests/test_budget_truth.py
checks the committed figures against the current estimate and re-measures a few points live.
"""
import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "device"))

from mpyrun import build_mpy, micropython_binary, run as mpy_run  # noqa: E402
from skip2lora.board import budget  # noqa: E402
from skip2lora.board.profiles import BOARDS  # noqa: E402
from skip2lora.board.virtual.images import make_image  # noqa: E402
from skip2lora.board.virtual.unix_supervisor import boot_script  # noqa: E402
from skip2lora.model.compiler import parse_targets  # noqa: E402
from skip2lora.model.formats import (DTYPE_I8, ModelFile, ModelLayer, dataset_from_arrays,  # noqa: E402
                                     encode_dataset, encode_model)
from skip2lora.model.quantize import quantize_rows  # noqa: E402

KINDS = ("unix", "cortex-m0plus", "cortex-m4f")
BOARD_KINDS = KINDS[1:]  # the Cortex-M firmware, 192 KiB heap
# The board profile each kind is budgeted as: the same arch and word size (the heap figure
# is not used: the need is compared with the measurement).
KIND_BOARDS = {"unix": "unix", "cortex-m0plus": "rp2040", "cortex-m4f": "pyboard"}
SAMPLES = 32
EPOCHS = 2
BISECT_SHARE = 0.004  # stop when the bracket is this share of the need (or BISECT_FLOOR bytes)
BISECT_FLOOR = 256
UNIX_HEAP = 8 * 1024 * 1024  # the unix port's heap: every model of the grid fits, ballast does the rest
IMAGE_BLOCKS = 2048  # 8 MiB unix flash image
FIRMWARE_HEAP = 192064  # the Cortex-M firmware's GC total (an RP2040 build reports the same)
ROUNDING = 256  # room in the fit for budget.py's constants rounded up

# Every value of each axis at least once: widths 32-512, depth 2-4 layers, f32 and int8, rank
# 1-16, targets all and hidden, batch 1-8. (dims, dtype, rank, targets, batch)
GRID = [
    ((32, 32, 3), "int8", 1, "all", 1),
    ((32, 32, 3), "f32", 4, "hidden", 2),
    ((64, 32, 10), "int8", 4, "all", 8),
    ((64, 64, 32, 10), "f32", 2, "all", 1),
    ((64, 128, 64, 32, 5), "int8", 8, "hidden", 4),
    ((128, 64, 4), "f32", 16, "all", 1),
    ((128, 128, 128, 3), "int8", 16, "all", 2),
    ((128, 256, 10), "int8", 2, "hidden", 1),
    ((256, 32, 3), "f32", 1, "hidden", 8),
    ((256, 64, 64, 3), "int8", 4, "all", 1),
    ((256, 128, 64, 32, 6), "f32", 8, "all", 4),
    ((256, 256, 4), "int8", 8, "all", 1),
    ((512, 32, 32, 3), "f32", 4, "all", 1),
    ((512, 32, 32, 3), "int8", 4, "all", 1),
    ((512, 64, 64, 3), "int8", 4, "all", 1),
    ((512, 64, 64, 3), "int8", 16, "hidden", 2),
    ((512, 64, 3), "f32", 2, "all", 1),
    ((512, 128, 64, 10), "int8", 1, "all", 8),
    ((512, 256, 128, 64, 10), "int8", 4, "all", 1),
    ((512, 512, 10), "int8", 4, "hidden", 1),
    ((512, 512, 512, 10), "f32", 4, "all", 2),
    ((32, 512, 32, 5), "int8", 12, "all", 1),
    ((64, 512, 4), "f32", 8, "hidden", 1),
    ((32, 64, 128, 256, 8), "f32", 2, "hidden", 1),
    ((384, 96, 3), "int8", 6, "all", 3),
    ((96, 48, 24, 12, 4), "int8", 3, "all", 5),
]

MEASURE_SCRIPT = r"""
import gc
gc.collect()
_total = gc.mem_free() + gc.mem_alloc()
_a0 = gc.mem_alloc()
_status = "ok"
try:
    _ballast = bytearray(%(ballast)d) if %(ballast)d else None
except MemoryError:
    _status = "memory"
gc.collect()
_used = gc.mem_alloc() - _a0 if _status == "ok" else %(ballast)d
try:
    if _status != "ok":
        raise MemoryError
    import s2l.job
    s2l.job.finetune(model="model.s2lm", data="data.s2ld", adapters="adapters.s2la",
                     cache="data.s2lc", epochs=%(epochs)d, batch_size=%(batch)d)
except MemoryError:
    _status = "memory"
except Exception as _e:
    _status = "memory" if "out of memory" in str(_e) else "error " + str(_e)
import sys as _sys
_k = _sys.modules.get("s2l.kernels")
if _status == "ok" and _k is not None and _k._unavailable[0]:
    _status = "memory"  # viper's module did not load (out of memory): a slower fallback ran
print("BUDGET total=%%d ballast=%%d status=%%s" %% (_total, _used, _status))
"""


def config_dict(entry):
    dims, dtype, rank, targets, batch = entry
    return {"dims": list(dims), "dtype": dtype, "rank": rank, "targets": targets, "batch": batch}


def model_bytes(config, seed=0):
    """A model of these dims with random weights (the heap does not depend on their values)."""
    rng = np.random.default_rng(seed)
    dims = config["dims"]
    layers = []
    for i in range(len(dims) - 1):
        w = rng.standard_normal((dims[i + 1], dims[i])).astype(np.float32) / np.sqrt(dims[i])
        b = (0.1 * rng.standard_normal(dims[i + 1])).astype(np.float32)
        relu = i < len(dims) - 2
        if config["dtype"] == "int8":
            codes, scale = quantize_rows(w)
            layers.append(ModelLayer(codes, b, scale, relu))
        else:
            layers.append(ModelLayer(w, b, None, relu))
    n_layers = len(dims) - 1
    model = ModelFile(layers, config["rank"], float(config["rank"]),
                      parse_targets(config["targets"], n_layers))
    return encode_model(model)


def dataset_bytes(config, samples=SAMPLES, seed=1):
    """int8 samples, as `finetune` packs them by default."""
    rng = np.random.default_rng(seed)
    dims = config["dims"]
    x = rng.standard_normal((samples, dims[0])).astype(np.float32)
    y = rng.integers(0, dims[-1], samples)
    return encode_dataset(dataset_from_arrays(x, y, dims[-1], DTYPE_I8))


class Runner:
    """Runs the job on a fresh interpreter of one kind with a given ballast; the package is
    compiled to .mpy once per kind, the files written once per model."""

    def __init__(self, kind, config, work, samples=SAMPLES, epochs=EPOCHS, device=None):
        self.kind, self.config, self.epochs, self.device = kind, config, epochs, device
        self.work = Path(work)
        self.files = {"model.s2lm": model_bytes(config), "data.s2ld": dataset_bytes(config, samples)}
        self.lib = build_mpy(self.work / f"lib-{kind}", {"unix": "x64", "cortex-m0plus": "armv6m",
                                                          "cortex-m4f": "armv7emsp"}[kind],
                             src=device)
        self.runs = 0

    def script(self, ballast):
        return MEASURE_SCRIPT % {"ballast": ballast, "epochs": self.epochs,
                                 "batch": self.config["batch"]}

    def trial(self, ballast):
        """(status, GC heap total, the ballast's bytes) of one run with this ballast."""
        self.runs += 1
        if self.kind == "unix":
            out = self._unix(self.script(ballast))
        else:
            out = self._qemu(self.script(ballast))
        found = re.search(r"BUDGET total=(\d+) ballast=(\d+) status=(.*)", out)
        if found:
            return found.group(3).strip(), int(found.group(1)), int(found.group(2))
        raise RuntimeError(f"{self.kind}: no BUDGET line\n{out[-3000:]}")

    def _unix(self, script):
        """The unix kind as `skip2lora board start` runs it: its boot script mounts a LittleFS
        flash image holding /lib/s2l and the files; main.py is the measurement."""
        entries = dict(self.files)
        for p in sorted((self.lib / "s2l").glob("*.mpy")):
            entries["lib/s2l/" + p.name] = p.read_bytes()
        entries["main.py"] = script.encode()
        image = self.work / "flash.img"
        image.write_bytes(make_image(entries, "unix", blocks=IMAGE_BLOCKS))
        boot = boot_script(image, IMAGE_BLOCKS, run_main=True)
        proc = subprocess.run([micropython_binary(), "-X", f"heapsize={UNIX_HEAP}", "-c", boot],
                              capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        return proc.stdout + proc.stderr

    def _qemu(self, script):
        folder = self.work / "files"
        folder.mkdir(exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        for name, data in self.files.items():
            (folder / name).write_bytes(data)
        run = mpy_run(script, folder, kind=self.kind, deploy="mpy", files=list(self.files),
                      timeout=1200, check=False, device_dir=self.device)
        return run.stdout


def bisect_need(runner, guess=None):
    """The smallest GC heap the job completes on: {"needed", "bracket", "total", "runs"}, or
    {"fits": False, ...} when it fails on the whole heap."""
    status, total, _ = runner.trial(0)
    if status != "ok":
        if status != "memory":
            raise RuntimeError(f"{runner.kind} {runner.config}: {status}")
        return {"fits": False, "total": total, "runs": runner.runs}
    bounds = {"lo": 0, "hi": total, "pass": total, "fail": 0}  # ballast: lo passes, hi fails

    def probe(ballast):
        status, _, used = runner.trial(ballast)
        if status == "ok":
            bounds.update(lo=ballast, **{"pass": total - used})
        elif status == "memory":
            bounds.update(hi=ballast, fail=total - used)
        else:
            raise RuntimeError(f"{runner.kind} {runner.config}: {status}")
        return status

    if guess:  # start near the estimate: two probes bracket it
        for share in (1.0, 0.9):
            b = max(0, min(total - 1024, int(total - guess * share)))
            if bounds["lo"] < b < bounds["hi"] and probe(b) != "ok":
                break
    while bounds["hi"] - bounds["lo"] > max(BISECT_FLOOR, BISECT_SHARE * (total - bounds["lo"])):
        probe((bounds["lo"] + bounds["hi"]) // 2)
    need_pass, need_fail = bounds["pass"], bounds["fail"]
    return {"fits": True, "needed": need_pass, "failed_at": need_fail, "total": total,
            "runs": runner.runs}


def predicted(kind, config, samples=SAMPLES):
    board = BOARDS[KIND_BOARDS[kind]]
    dims = config["dims"]
    est = budget.estimate(dims, board, config["dtype"], config["rank"],
                          parse_targets(config["targets"], len(dims) - 1), samples,
                          batch_size=config["batch"])
    return est.ram_total


def measure(kind, config, samples=SAMPLES, epochs=EPOCHS, device=None):
    with tempfile.TemporaryDirectory(prefix="s2l-budget-") as work:
        runner = Runner(kind, config, work, samples, epochs, device)
        t0 = time.time()
        rec = bisect_need(runner, guess=predicted(kind, config, samples))
    rec.update(config, kind=kind, samples=samples, epochs=epochs,
               seconds=round(time.time() - t0, 1))
    return rec


def parts(kind, config, samples=SAMPLES):
    """(weight arrays, every other array, arch, path): the estimate without its measured
    constants."""
    board = BOARDS[KIND_BOARDS[kind]]
    dims = config["dims"]
    mask = parse_targets(config["targets"], len(dims) - 1)
    est = budget.estimate(dims, board, config["dtype"], config["rank"], mask, samples,
                          batch_size=config["batch"])
    other = est.activations + est.io_buffers + est.adapters + est.gradients
    return est.weights_ram, other, board.mpy_arch, est.path


def fit(data, low=1.0):
    """CODE_BYTES and FRAGMENTATION per (arch, path) for budget.py from the measured rows, by a
    linear programme: predicted = code + (1 + share) * weights + other arrays, with every
    predicted >= low x needed, every model that completed on the Cortex-M firmware's heap
    predicted inside it with the default samples budgeted (else compile would refuse, for an
    RP2040, a model the board runs; the runs had SAMPLES), every model that did not complete
    there predicted above it, and the largest ratio
    predicted / needed as small as it can be. The 32-bit arches share the share; each has its
    own code; code and share are >= 0. Returns {key: (code, share, worst ratio, rows)}."""
    from scipy.optimize import linprog

    pools, refused = {}, {}
    for r in data["rows"]:
        w, o, arch, path = parts(r["kind"], r, data["samples"])
        pool = ("x64" if arch == "x64" else "32-bit", path)
        if r["fits"]:
            w_all, o_all, _, _ = parts(r["kind"], r, budget.DEFAULT_SAMPLES)
            pools.setdefault(pool, []).append((arch, w, w + o, r["needed"], w_all + o_all))
        else:  # did not complete on the firmware's heap: must be predicted above it
            refused.setdefault(pool, []).append((arch, w, w + o))
    out = {}
    for pool_key, pts in sorted(pools.items()):
        path = pool_key[1]
        arches = sorted({p[0] for p in pts})
        n = len(arches) + 2  # codes, share, t
        A, b = [], []
        for arch, w, base, need, base_all in pts:
            row = [float(arch == x) for x in arches] + [float(w)]
            A.append([-v for v in row] + [0.0])  # predicted >= low * needed
            b.append(base - low * need)
            A.append(row + [-float(need)])  # predicted <= t * needed
            b.append(-base)
            if arch != "x64":  # ran on the 192 KiB heap: compile must not refuse it there
                A.append(row + [0.0])
                b.append(FIRMWARE_HEAP - ROUNDING - base_all)
        for arch, w, base in refused.get(pool_key, []):
            if arch in arches:
                row = [float(arch == x) for x in arches] + [float(w)]
                A.append([-v for v in row] + [0.0])  # predicted > the heap
                b.append(base - FIRMWARE_HEAP - 1)
        res = linprog([0.0] * (n - 1) + [1.0], A_ub=A, b_ub=b, bounds=[(0, None)] * n)
        x = res.x
        share = float(np.ceil(x[len(arches)] * 1e4) / 1e4)  # rounded up: never below
        for i, arch in enumerate(arches):
            mine = [p for p in pts if p[0] == arch]
            code = int(np.ceil(x[i])) + 16
            pred = np.array([code + p[2] + int(share * p[1] + 0.5) for p in mine])
            need = np.array([p[3] for p in mine], float)
            out[(arch, path)] = (code, share, float((pred / need).max()), len(mine))
    return out


def render(data):
    rows = ["# The RAM budget against the measured need", "",
            "Written by `tools/budget_truth.py` (it measures; `--render` rewrites this page from "
            "docs/BUDGET.json, `--fit` prints the constants of host/skip2lora/board/budget.py). "
            "*measured*: the smallest GC heap on which `s2l.job.finetune` with the defaults "
            f"completes ({data['epochs']} epochs, {data['samples']} int8 samples, .mpy package "
            f"of commit {data.get('device_commit', '?')}, bisected with a ballast bytearray: see "
            "the script's docstring and docs/compiler.md); *predicted*: "
            "`budget.estimate(...).ram_total` for the kind's board profile (the profile's heap "
            "figure plays no part). tests/test_budget_truth.py holds every row to measured <= "
            "predicted <= TOLERANCE x measured; a model that does not complete on the whole 192 "
            "KiB heap must be predicted above it.", ""]
    for kind in KINDS:
        recs = [r for r in data["rows"] if r["kind"] == kind]
        if not recs:
            continue
        board = BOARDS[KIND_BOARDS[kind]]
        ratios = [predicted(kind, r, data["samples"]) / r["needed"] for r in recs if r["fits"]]
        rows += [f"## {kind} (budgeted as board profile `{board.name}`)", "",
                 f"{len(ratios)} of {len(recs)} models complete on the kind's heap; predicted / "
                 f"measured {min(ratios):.3f} to {max(ratios):.3f}, within 1.10 for "
                 f"{sum(r <= 1.10 for r in ratios)} of them.", "",
                 "| dims | weights | rank | targets | batch | measured (bytes) | predicted | "
                 "ratio |", "|---|---|---|---|---|---|---|---|"]
        for r in recs:
            pred = predicted(kind, r, data["samples"])
            head = (f"| {'-'.join(map(str, r['dims']))} | {r['dtype']} | {r['rank']} | "
                    f"{r['targets']} | {r['batch']} | ")
            if r["fits"]:
                rows.append(head + f"{r['needed']:,} | {pred:,} | {pred / r['needed']:.3f} |")
            else:
                rows.append(head + f"does not complete on {r['total']:,} | {pred:,} | - |")
        rows.append("")
    return "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--only", default=None, help="grid indexes, e.g. 0,3")
    ap.add_argument("--out", default=str(ROOT / "docs" / "BUDGET.json"))
    ap.add_argument("--device", default=None,
                    help="the device/ folder to measure (default: this checkout's; a snapshot "
                         "such as `git archive HEAD device` keeps edits in progress out)")
    ap.add_argument("--render", action="store_true")
    ap.add_argument("--fit", action="store_true",
                    help="print CODE_BYTES and FRAGMENTATION for budget.py, fitted to the JSON")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.fit:
        data = json.loads(out.read_text())
        fitted = fit(data)
        for key, (code, share, worst, n) in fitted.items():
            print(f"# {key!r}: {n} rows, worst ratio predicted / needed {worst:.3f}")
        print("CODE_BYTES = {\n" + "".join(f"    {k!r}: {v[0]},\n" for k, v in fitted.items())
              + "}")
        print("FRAGMENTATION = {\n" + "".join(f"    {k!r}: {v[1]},\n" for k, v in fitted.items())
              + "}")
        return 0
    if args.render:
        data = json.loads(out.read_text())
    else:
        data = json.loads(out.read_text()) if out.exists() else {"rows": []}
        data.update(samples=SAMPLES, epochs=EPOCHS)
        only = None if args.only is None else {int(i) for i in args.only.split(",")}
        for kind in args.kinds.split(","):
            for index, entry in enumerate(GRID):
                if only is not None and index not in only:
                    continue
                config = config_dict(entry)
                rec = measure(kind, config, device=args.device)
                rec["grid_index"] = index
                data["rows"] = [r for r in data["rows"]
                                if not (r["kind"] == kind and r["grid_index"] == index)]
                data["rows"].append(rec)
                data["rows"].sort(key=lambda r: (KINDS.index(r["kind"]), r["grid_index"]))
                pred = predicted(kind, config)
                print(f"{kind:<14} {'-'.join(map(str, config['dims'])):<22} {config['dtype']:<5} "
                      f"r{config['rank']:<3}{config['targets']:<7} b{config['batch']} "
                      + (f"needed {rec['needed']:>9,} predicted {pred:>9,} "
                         f"({pred / rec['needed']:.3f})" if rec["fits"]
                         else f"does not fit {rec['total']:,}; predicted {pred:,}")
                      + f"  [{rec['runs']} runs, {rec['seconds']} s]", flush=True)
                out.write_text(json.dumps(data, indent=1) + "\n")
    out.with_suffix(".md").write_text(render(data) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

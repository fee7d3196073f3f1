"""The ulab rows of docs/BENCHMARKS.md: per-epoch time of the fixed-point path with ulab kernels
against pure Python, on the two interpreters that have ulab (../shared/platforms:
`circuitpython`, CircuitPython 10.3 with ulab 6.5.3 and no viper; `micropython-ulab`,
MicroPython with ulab 6.12), for the committed fixture model and for the benchmark's
512-64-64-3 cooling-fan model.

Why a runner of its own: the main bench times one board over a serial link, and these are two
unix interpreters run directly on this machine (their clock is this machine's, under whatever
else runs on it). `skip2lora bench` (its full configuration) calls measure() for its report;
on its own,

    python -m skip2lora.bench.ulab --json docs/BENCHMARKS.json --report docs/BENCHMARKS.md

measures only these rows, puts them into an existing figures file under "ulab" and renders
the report again from it (minutes, where the whole bench takes much longer).
"""
import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

from skip2lora.board.virtual.circuitpython import BOARD_PRELUDE, INTERPRETERS, find_interpreter
from skip2lora.errors import UserError
from skip2lora.model.formats import (DTYPE_I8, dataset_from_arrays, read_dataset, read_model,
                                     write_dataset)
from skip2lora.training.experiments import source_revision

ROOT = Path(__file__).resolve().parents[3]
DEVICE = ROOT / "device"
FIXTURES = ROOT / "tests" / "fixtures"
BACKENDS = ("py", "ulab")
EPOCHS = 5
REPEATS = 3  # runs per backend; each epoch's time is the least of them (a shared machine)
LR = 2 ** -5  # docs/BOARD_KINDS.md's lr
HEAP = "192K"
# Per model: the Trainer's arguments beside backend (targets and batch as the other reports)
SCRIPT = r"""
import sys, json
sys.path.insert(0, %(device)r)
from s2l import Trainer
from s2l.compat import ticks_us, ticks_us_diff
t = Trainer("model.s2lm", "data.s2ld", method="skip2lora", backend=%(backend)r, lr=%(lr)r,
            batch_size=1, targets="all", cache="c.s2lc", rank=4, log=None)
for _ in range(%(epochs)d):
    t0 = ticks_us()
    rec = t.epoch()
    print("ULAB " + json.dumps({"us": ticks_us_diff(ticks_us(), t0), "acc": rec["acc"],
                                "backend": t.backend}))
t.save("a.s2la")
"""


def _run(interp, folder, backend, epochs, timeout=1800):
    """One training run in `folder` (model.s2lm, data.s2ld); returns its epoch records and the
    bytes it wrote (adapters, .state, Skip-Cache)."""
    for name in ("c.s2lc", "a.s2la", "a.s2la.state"):
        (folder / name).unlink(missing_ok=True)
    body = SCRIPT % {"device": str(DEVICE), "backend": backend, "lr": LR, "epochs": epochs}
    prelude = BOARD_PRELUDE if interp == "circuitpython" else ""
    (folder / "run.py").write_text(prelude + body)
    proc = subprocess.run([str(find_interpreter(interp)), "-X", "heapsize=" + HEAP, "run.py"],
                          cwd=folder, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"{interp} {backend}: exit {proc.returncode}\n{proc.stdout[-2000:]}"
                           f"\n{proc.stderr[-2000:]}")
    recs = [json.loads(line[5:]) for line in proc.stdout.splitlines() if line.startswith("ULAB ")]
    assert len(recs) == epochs and {r["backend"] for r in recs} == {backend}, proc.stdout
    return recs, [(folder / n).read_bytes() for n in ("a.s2la", "a.s2la.state", "c.s2lc")]


def models(fan_model=None, fan_data=None):
    """[(label, model bytes, dataset bytes, dims, samples)]: the fixture, and the fan model with
    its int8 fine-tuning set when given (a path and (X, y))."""
    out = []
    fm, fd = FIXTURES / "model-int8.s2lm", FIXTURES / "dataset-int8.s2ld"
    if fm.is_file() and fd.is_file():
        out.append(("fixture", fm.read_bytes(), fd.read_bytes(), read_model(fm).dims,
                    len(read_dataset(fd).labels)))
    if fan_model is not None:
        X, y = fan_data
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "d.s2ld"
            write_dataset(p, dataset_from_arrays(X, y, int(max(y)) + 1, DTYPE_I8))
            data = p.read_bytes()
        out.append(("cooling fan", Path(fan_model).read_bytes(), data,
                    read_model(fan_model).dims, len(y)))
    return out


def measure(model_list, epochs=EPOCHS, repeats=REPEATS, log=print):
    """The figures of the ulab rows: one record per model, interpreter and backend, with the
    interpreter-clock time of every epoch (us, the least of `repeats` runs), and whether ulab
    wrote py's bytes."""
    source = source_revision()  # before anything runs
    rows, missing = [], []
    interps = []
    for interp in INTERPRETERS:
        try:
            find_interpreter(interp)
            interps.append(interp)
        except UserError as e:
            missing.append(str(e))
    for label, model, data, dims, n in model_list:
        for interp in interps:
            with tempfile.TemporaryDirectory(prefix="s2l-ulab-") as d:
                folder = Path(d)
                (folder / "model.s2lm").write_bytes(model)
                (folder / "data.s2ld").write_bytes(data)
                out = {}
                for rep in range(repeats):
                    for backend in BACKENDS:
                        log(f"ulab rows: {label} on {interp}, backend {backend}, {epochs} "
                            f"epochs (run {rep + 1} of {repeats})")
                        recs, files = _run(interp, folder, backend, epochs)
                        us = [r["us"] for r in recs]
                        if backend in out:
                            assert files == out[backend][1], "a rerun wrote other bytes"
                            us = [min(a, b) for a, b in zip(us, out[backend][2])]
                        out[backend] = (recs, files, us)
            for backend in BACKENDS:
                recs, files, us = out[backend]
                rows.append({"model": label, "dims": list(dims), "samples": n,
                             "interpreter": interp, "backend": backend, "epoch_us": us,
                             "train_acc": recs[-1]["acc"],
                             "identical_to_py": files == out["py"][1]})
    return {"epochs": epochs, "repeats": repeats, "lr": LR, "heap": HEAP, "rows": rows,
            "missing": missing,
            "source": source}


def later_ms(row):
    """The median of the epochs after the first (ms): the machine is shared, a mean is not."""
    return statistics.median(row["epoch_us"][1:]) / 1000


def pairs(U):
    """(py row, ulab row) per model and interpreter, in measuring order."""
    by = {(r["model"], r["interpreter"], r["backend"]): r for r in U["rows"]}
    keys = []
    for r in U["rows"]:
        k = (r["model"], r["interpreter"])
        if k not in keys:
            keys.append(k)
    return [(by[k + ("py",)], by[k + ("ulab",)]) for k in keys]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True, help="figures file to put the rows into (read, "
                                                  "then written back with key 'ulab')")
    ap.add_argument("--report", help="render this report from the updated figures")
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--workdir", default="out/bench")
    args = ap.parse_args(argv)
    # here, not at the top: report and run import this module
    from skip2lora.bench import report as bench_report
    from skip2lora.bench.run import PRIMARY, cooling_fan_scenarios
    figures = json.loads(Path(args.json).read_text())
    sc = cooling_fan_scenarios([figures.get("primary_scenario", PRIMARY)], args.workdir)[0]
    figures["ulab"] = measure(models(sc.model_path, sc.finetune), args.epochs)
    bench_report.write_json(figures, args.json)
    if args.report:
        bench_report.report(figures, args.report, plots=False)
    for line in bench_report.ulab_lines(figures):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

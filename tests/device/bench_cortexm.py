"""Per-stage cost of a Skip2-LoRA fine-tune on an emulated Cortex-M board, by kernel backend
(cooling fan, silentA-to-noisy, 512-64-64-3 int8, 533 fine-tuning samples, r = 4, all layers,
batch 1, lr 0.01), read from the board's instruction-count clock (time.ticks_us under QEMU
-icount shift=3: 125 instructions per us).

    .venv/bin/python tests/device/bench_cortexm.py [--kind cortex-m0plus] [--backends thumb,viper]
        [--epochs 20] [--n 533] [--json out.json]
        [--figures docs/BENCHMARKS.json --report docs/BENCHMARKS.md]

With --figures the result goes into that figures file (key "cortexm") and --report renders
the report from it again (host/skip2lora/bench/report.py, section "Cortex-M").

Stages: calibration (the L-1 passes of prepare()), the cache build's compute (one frozen
forward per sample) and its file write (the build with nothing to compute), one cached epoch,
save, and predict of one sample; the whole fit of `--epochs` epochs as Trainer.fit times it;
and instructions per multiply-add of dense_q16 (64 x 512, the fan model's first layer, blocks
of 2 KB, call included) per backend. docs/BENCHMARKS.md, "Cortex-M", holds its output.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cooling_fan_setup as S  # noqa: E402
from mpyrun import run  # noqa: E402

MIPS = 125  # -icount shift=3: 8 ns per instruction

SCRIPT = r"""
import os, time
from array import array
from s2l import Trainer, kernels
T = time.ticks_us
t = Trainer("model-int8.s2lm", "finetune.s2ld", method="skip2lora", backend=BACKEND, lr=0.01,
            targets="all", cache="c.s2lc", rank=4)
a = t.arith
n = a.data.n
t0 = T()
sc = a._calibrate()
t1 = T()
a._set_scales(sc)
for k in range(n):
    a.frozen(k)
t2 = T()
def nothing(k):
    pass
a.cache.build(sc[1:] + [0x37800000], nothing)
t3 = T()
a.cache.close()
os.remove("c.s2lc")  # records of zeros: fit must calibrate and build it for real
t.fit(EPOCHS)
t4 = T()
t.save("a.s2la")
t5 = T()
from s2l.int8forward import Int8Forward
x = array("f", [0.01 * (i % 7) for i in range(a.model.dims[0])])
fwd = Int8Forward(t.model, BACKEND)
fwd.logits(x)
t6 = T()
fwd.logits(x)
t7 = T()
RESULT(n=n, calib_us=t1 - t0, frozen_us=t2 - t1, write_us=t3 - t2, fit_us=t4 - t3,
       save_us=t5 - t4, predict_us=t7 - t6,
       epochs=[[h["epoch"], h["ms"], h["acc"], h["loss"]] for h in t.history])
"""

KERNEL = r"""
import time
from array import array
from s2l import kernels
out = {}
r, c = 64, 512
nb = 2048 // c
blocks = []
for j0 in range(0, r, nb):
    w = bytearray(nb * c)
    for i in range(len(w)):
        w[i] = (i * 37 + j0) & 0xFF
    blocks.append((w, j0, nb))
xq = bytearray((i * 11) & 0xFF for i in range(c))
M = array("i", [16384] * r)
N = bytearray([20] * r)
B = array("i", [0] * r)
O = array("i", [0] * r)
for name in kernels.available():
    K = kernels.get(name)
    reps = 1 if name == "py" else 10
    t0 = time.ticks_us()
    for _ in range(reps):
        for w, j0, nr in blocks:
            K.dense_q16(w, xq, c, j0, nr, M, N, B, O, kernels.SX)
    out[name] = (time.ticks_us() - t0) / (reps * r * c)
RESULT(us_per_mac=out)
"""


def stages(kind, backend, epochs, work):
    script = SCRIPT.replace("BACKEND", repr(backend)).replace("EPOCHS", str(epochs))
    for name in ("c.s2lc", "a.s2la", "a.s2la.state"):
        (work / name).unlink(missing_ok=True)
    res, _ = run(script, work, kind=kind, timeout=7200,
                 files=["model-int8.s2lm", "finetune.s2ld"])
    return res[0]


def table(rows):
    head = ("| stage | " + " | ".join(b for b in rows) + " |\n|---|"
            + "---:|" * len(rows) + "\n")
    lines = []
    n = next(iter(rows.values()))["n"]
    ms = lambda us: "%.2f" % (us / 1000)  # noqa: E731
    for label, f in (
            ("calibration, ms per sample (2 passes)", lambda r: ms(r["calib_us"] / n)),
            ("cache build compute, ms per sample", lambda r: ms(r["frozen_us"] / n)),
            ("cache file write, s (%d records)" % n, lambda r: "%.1f" % (r["write_us"] / 1e6)),
            ("epoch 1 (calibration + build + epoch), s", lambda r: "%.1f" % (r["epochs"][0][1] / 1e3)),
            ("cached epoch, ms per sample", lambda r: ms(1000 * r["epochs"][-1][1] / n)),
            ("fit of all epochs, s", lambda r: "%.1f" % (r["fit_us"] / 1e6)),
            ("save, ms", lambda r: ms(r["save_us"])),
            ("predict one sample (int8 forward), ms", lambda r: ms(r["predict_us"])),
            ("dense_q16 instructions per MAC", lambda r: "%.1f" % (r["us_per_mac"] * MIPS)),
            ("train accuracy after the last epoch", lambda r: "%.4f" % r["epochs"][-1][2])):
        lines.append("| %s | %s |" % (label, " | ".join(f(r) for r in rows.values())))
    return head + "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", default="cortex-m0plus")
    ap.add_argument("--backends", default="thumb,viper")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--n", type=int, default=533)
    ap.add_argument("--json")
    ap.add_argument("--figures", help="figures file to put the result into (key 'cortexm')")
    ap.add_argument("--report", help="render this report from the updated figures")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp())
    S.build(work, n_finetune=args.n)
    kres, _ = run(KERNEL, work, kind=args.kind, files=["model-int8.s2lm"])
    rows = {}
    for b in args.backends.split(","):
        rows[b] = stages(args.kind, b, args.epochs, work)
        rows[b]["us_per_mac"] = kres[0]["us_per_mac"][b]
        print(b, json.dumps(rows[b]), flush=True)
    print("kernels, instructions per MAC:", {k: round(v * MIPS, 1)
                                             for k, v in kres[0]["us_per_mac"].items()})
    print(table(rows))
    from skip2lora.training.experiments import source_revision
    result = {"kind": args.kind, "rows": rows, "mips": MIPS,
              "kernels_us_per_mac": kres[0]["us_per_mac"],
              "commit": (source_revision() or {}).get("commit") or "?"}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.figures:
        from skip2lora.bench import report as bench_report
        figures = json.loads(Path(args.figures).read_text())
        figures["cortexm"] = result
        bench_report.write_json(figures, args.figures)
        if args.report:
            bench_report.report(figures, args.report, plots=False)


if __name__ == "__main__":
    main()

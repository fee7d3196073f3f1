"""Per-stage cost of a Skip2-LoRA fine-tune on an emulated Cortex-M board, by kernel backend
(cooling fan, silentA-to-noisy, 512-64-64-3 int8, 533 fine-tuning samples, r = 4, all layers,
batch 1, lr 0.01), read from the board's instruction-count clock (time.ticks_us under QEMU
-icount shift=3: 125 instructions per us).

    .venv/bin/python tests/device/bench_cortexm.py [--kind cortex-m0plus] [--backends thumb,viper]
        [--epochs 20] [--n 533] [--repeat 2] [--json out.json]
        [--figures docs/BENCHMARKS.json --report docs/BENCHMARKS.md]
        [--m4f-bench out/bench-m4f.json] [--from-json out.json] [--previous old.json]

With --figures the result goes into that figures file (key "cortexm", the one it replaces, if
from another commit, as "cortexm_previous") and --report renders the report from it again
(host/skip2lora/bench/cortexm.py, section "Cortex-M"); --m4f-bench adds the float-against-float
ratio of a `skip2lora bench --quick` run on a cortex-m4f board (`make bench` makes one).

Stages: calibration (the L-1 passes of prepare()), the cache build's compute (one frozen
forward per sample) and its file write (the build with nothing to compute), one cached epoch,
save, and predict of one sample; the whole fit of `--epochs` epochs as Trainer.fit times it;
where a cached step's time goes (its kernel calls and file reads timed from inside); the cost
of a slice store into the RAM disk's memoryview; and instructions per multiply-add of dense_q16
(64 x 512, the fan model's first layer, blocks of 2 KB, call included) per backend.
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
fwd = None
# Where a cached step's instructions go: N steps as fit runs them, then NT steps with every
# kernel call (and the cache and dataset reads) timed from inside, the collector off so that
# no collection lands inside a timed call; the rest of the step is interpreter work around
# them and the collections its garbage causes.
import gc
N = min(n, 100)
NT = min(n, 30)  # the timed steps' garbage (argument tuples) must fit the free heap
gc.collect()
s0 = T()
for k in range(N):
    a.step(k, 1, True)
step_us = (T() - s0) / N
spent = [0, 0]
calls = [0, 0]
def timed(f, slot):
    def call(*args):
        s = T()
        r = f(*args)
        spent[slot] += T() - s
        calls[slot] += 1
        return r
    return call
nop = timed(lambda *args: None, 0)
gc.collect()
gc.disable()
for k in range(NT):
    nop(k)
gc.enable()
tick_us = spent[0] / NT  # what timing an empty call measures: taken off every timed call
spent[0] = calls[0] = 0
K = a.K
class Timed:
    pass
tk = Timed()
for name in ("adapter_u_rows", "adapter_u", "logits_bu", "softmax", "bg", "upd_b",
             "upd_a_rows", "upd_a", "dense_q16", "requant8"):
    if hasattr(K, name):
        setattr(tk, name, timed(getattr(K, name), 0))
a.K = tk
a.cache.read = timed(a.cache.read, 1)
a._load_x1 = timed(a._load_x1, 1)
gc.collect()
gc.disable()
for k in range(NT):
    a.step(k, 1, True)
gc.enable()
a.K = K
RESULT(n=n, calib_us=t1 - t0, frozen_us=t2 - t1, write_us=t3 - t2, fit_us=t4 - t3,
       save_us=t5 - t4, predict_us=t7 - t6,
       epochs=[[h["epoch"], h["ms"], h["acc"], h["loss"]] for h in t.history],
       step_us=step_us, kernels_us=(spent[0] - calls[0] * tick_us) / NT,
       reads_us=(spent[1] - calls[1] * tick_us) / NT, calls=[c / NT for c in calls])
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
# the RAM disk's block device stores a program into a memoryview of the whole disk: the cost
# of a 32-byte slice store into such a view, against one into a 4 KB view
store = {}
try:
    from uctypes import bytearray_at
    b32 = bytearray(32)
    for key, size in (("disk", 4 * 1024 * 1024), ("block", 4096)):
        mv = memoryview(bytearray_at(0x20000000 + 4 * 1024 * 1024 - size, size))
        t0 = time.ticks_us()
        for _ in range(20):
            mv[0:32] = mv[0:32]
        store[key] = (time.ticks_us() - t0) / 20
        mv = None
except ImportError:
    pass
RESULT(us_per_mac=out, slice_store_us=store)
"""


# the figures compared across repeat runs (--repeat): all but the file write come from the
# instruction count alone
REPEATED = ("calib_us", "frozen_us", "write_us", "fit_us", "save_us", "predict_us", "step_us")


# --direct-disk: the same LittleFS on the same RAM, remounted through a block device that
# copies only the bytes asked (as a board's C flash driver does, minus the flash's own erase
# and program time), so that the stages show the package's cost without the rig's slice store
DIRECT_DISK = r"""
import os, vfs
from uctypes import bytearray_at


class DirectRAMDisk:
    def readblocks(self, n, buf, off=0):
        buf[:] = bytearray_at(0x20000000 + n * 4096 + off, len(buf))

    def writeblocks(self, n, buf, off=0):
        bytearray_at(0x20000000 + n * 4096 + off, len(buf))[:] = buf

    def ioctl(self, op, arg):
        return 1024 if op == 4 else (4096 if op == 5 else 0)


vfs.umount("/")
vfs.mount(vfs.VfsLfs2(DirectRAMDisk()), "/")
os.chdir("/")
"""


def stages(kind, backend, epochs, work, direct_disk=False):
    script = SCRIPT.replace("BACKEND", repr(backend)).replace("EPOCHS", str(epochs))
    if direct_disk:
        script = DIRECT_DISK + script
    for name in ("c.s2lc", "a.s2la", "a.s2la.state"):
        (work / name).unlink(missing_ok=True)
    res, _ = run(script, work, kind=kind, timeout=7200,
                 files=["model-int8.s2lm", "finetune.s2ld"])
    return res[0]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", default="cortex-m0plus")
    ap.add_argument("--backends", default="thumb,viper")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--n", type=int, default=533)
    ap.add_argument("--direct-disk", action="store_true",
                    help="also run the first backend on the RAM disk remounted through a block "
                         "device that copies only the bytes asked (column '<backend>, direct disk')")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each backend this many times: the report gives the spread")
    ap.add_argument("--json")
    ap.add_argument("--figures", help="figures file to put the result into (key 'cortexm')")
    ap.add_argument("--report", help="render this report from the updated figures")
    ap.add_argument("--m4f-bench", help="the JSON of `skip2lora bench --quick --port` run on a "
                    "cortex-m4f board: its float-against-float ratio goes into the figures")
    ap.add_argument("--from-json", help="measure nothing: take the result of an earlier run "
                    "(its --json) and put it into --figures")
    ap.add_argument("--previous", help="a figures file whose 'cortexm' becomes the report's "
                    "previous-run column (default: the one --figures holds, if from another commit)")
    args = ap.parse_args(argv)
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
    else:
        result = measure(args)
    from skip2lora.bench import report as bench_report
    print("\n".join(bench_report.cortexm_lines({"cortexm": result})))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.figures:
        figures = json.loads(Path(args.figures).read_text())
        before = figures.get("cortexm")
        if args.previous:
            before = json.loads(Path(args.previous).read_text()).get("cortexm")
        if before and before.get("commit") != result["commit"] and before.get("kind") == args.kind:
            figures["cortexm_previous"] = before  # the report's "previous run" column
        figures["cortexm"] = result
        if args.m4f_bench:
            from skip2lora.bench.cortexm import m4f_summary
            figures["cortexm_m4f"] = m4f_summary(json.loads(Path(args.m4f_bench).read_text()))
        bench_report.write_json(figures, args.figures)
        if args.report:
            from skip2lora.bench.plots import cortexm_plot
            cortexm_plot(figures, Path(args.report).parent)
            bench_report.report(figures, args.report, plots=False)


def measure(args):
    """Every stage on the board, per backend (--repeat runs of each): the result's figures."""
    work = Path(tempfile.mkdtemp())
    S.build(work, n_finetune=args.n)
    kres, _ = run(KERNEL, work, kind=args.kind, files=["model-int8.s2lm"])
    rows = {}
    for b in args.backends.split(","):
        runs = [stages(args.kind, b, args.epochs, work) for _ in range(args.repeat)]
        rows[b] = dict(runs[0], us_per_mac=kres[0]["us_per_mac"][b])
        if len(runs) > 1:
            rows[b]["repeats"] = [{k: r[k] for k in REPEATED} for r in runs]
        print(b, json.dumps(rows[b]), flush=True)
    if args.direct_disk:
        b = args.backends.split(",")[0]
        name = b + ", direct disk"
        rows[name] = dict(stages(args.kind, b, args.epochs, work, direct_disk=True),
                          us_per_mac=kres[0]["us_per_mac"][b], direct_disk=True)
        print(name, json.dumps(rows[name]), flush=True)
    print("kernels, instructions per MAC:", {k: round(v * MIPS, 1)
                                             for k, v in kres[0]["us_per_mac"].items()})
    from skip2lora.training.experiments import source_revision
    return {"kind": args.kind, "rows": rows, "mips": MIPS,
            "kernels_us_per_mac": kres[0]["us_per_mac"],
            "slice_store_us": kres[0].get("slice_store_us"),
            "commit": (source_revision() or {}).get("commit") or "?"}


if __name__ == "__main__":
    main()

"""Per-epoch time of every method and backend on the MicroPython unix port (cooling fan,
silentA-to-noisy, 512-64-64-3 int8, 705 fine-tuning samples, r = 4, batch 1).

    .venv/bin/python tests/device/bench_device.py [--epochs 3] [--heap 192K] [--json out.json]

Prints a markdown table (the one in docs/device.md) and the test accuracy of each run,
evaluated on the host from the adapters the board saved.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cooling_fan_setup as S  # noqa: E402
from mpyrun import progress_lines, run  # noqa: E402
from skip2lora import formats as F  # noqa: E402

RUNS = [  # method, backend, targets, cache dtype
    ("skip2lora", "viper", "all"),
    ("skip2lora", "viper", "hidden"),
    ("skip-lora", "viper", "all"),
    ("skip2lora", "py", "all"),
    ("skip-lora", "py", "all"),
    ("skip2lora", "float", "all"),
    ("skip-lora", "float", "all"),
    ("ft-last", "float", "all"),
    ("lora-all", "float", "all"),
]

SCRIPT = r"""
from s2l import Trainer
t = Trainer("model-int8.s2lm", "finetune.s2ld", method=METHOD, backend=BACKEND, lr=LR,
            targets=TARGETS, cache="c.s2lc", rank=4)
t.fit(EPOCHS)
t.save("a.s2la")
gc.collect()
RESULT(mem_alloc=gc.mem_alloc(), mem_free=gc.mem_free())
"""


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--heap", default="192K")
    ap.add_argument("--lr", type=float, default=2 ** -4)
    ap.add_argument("--json")
    ap.add_argument("--only", help="comma-separated method:backend pairs")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp())
    files = S.build(work)
    rows = []
    for method, backend, targets in RUNS:
        if args.only and "%s:%s" % (method, backend) not in args.only.split(","):
            continue
        cache = work / "c.s2lc"
        if cache.exists():
            cache.unlink()
        head = "METHOD=%r\nBACKEND=%r\nLR=%r\nTARGETS=%r\nEPOCHS=%d\n" % (
            method, backend, args.lr, targets, args.epochs)
        t0 = time.time()
        res, out = run(head + SCRIPT, work, heap=args.heap, timeout=3600)
        wall = time.time() - t0
        prog = progress_lines(out)
        af = F.read_adapters(work / "a.s2la")
        if method in ("skip2lora", "skip-lora"):
            acc = S.accuracy(S.skip_logits(files.net, af, files.Xt), files.yt)
        else:
            acc = float("nan")
        row = {"method": method, "backend": backend, "targets": targets,
               "ms": [p["ms"] for p in prog], "cache_reads": [p["cache_reads"] for p in prog],
               "test_acc": acc, "wall_s": wall, "heap": res[-1]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print("| method | backend | adapters on | epoch 1 ms | later epochs ms | test acc (%d ep) |"
          % args.epochs)
    print("|---|---|---|---|---|---|")
    for r in rows:
        later = r["ms"][1:]
        print("| %s | %s | %s | %d | %s | %s |" % (
            r["method"], r["backend"], r["targets"], r["ms"][0],
            "%d" % (sum(later) / len(later)) if later else "-",
            "%.1f %%" % (100 * r["test_acc"]) if r["test_acc"] == r["test_acc"] else "-"))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

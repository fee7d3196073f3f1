#!/usr/bin/env python3
"""How much a model pre-trained in silentA loses in the other rooms: the gap fine-tuning closes.

Pre-trains the base MLP on silentA part a and reports accuracy on silentA part b (source
test) and on part b of each target room (the test split of both drift scenarios), for both
splits and several seeds. Every number is on a recording the model never saw.

    .venv/bin/python tools/drift_report.py                       # 512-64-64-3, 30 epochs
    .venv/bin/python tools/drift_report.py --dims 512,32,32,3 --epochs 10 --weight-decay 1e-3

The "running" columns score the same model on the spectra with the fan turning only (the
stopped-fan quarter of each quiet-room recording carries no class; see load_scenario).
"""
import argparse
import statistics
import sys
import time

import numpy as np

from skip2lora.data import cooling_fan as cf
from skip2lora.errors import UserError
from skip2lora.training.pretrain import accuracy, pretrain


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", default="512,64,64,3")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--splits", default="1-2,2-1")
    ap.add_argument("--fan-running-only", action="store_true",
                    help="pre-train on running-fan spectra only (tests are scored both ways)")
    args = ap.parse_args(argv)
    dims = tuple(int(d) for d in args.dims.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    splits = args.splits.split(",")

    t0 = time.perf_counter()
    scen = {(n, sp, run): cf.load_scenario(n, sp, fan_running_only=run)
            for n in cf.SCENARIOS for sp in splits for run in (False, True)}
    print(f"data loaded in {time.perf_counter() - t0:.2f} s")
    print(f"model {'-'.join(map(str, dims))}, {args.epochs} epochs, Adam lr {args.lr}, "
          f"weight decay {args.weight_decay}, batch {args.batch_size}, "
          f"pre-trained on silentA part a{' (fan running only)' if args.fan_running_only else ''}")

    cols = ["silentA", "silentB", "noisy", "B->B", "noisy->n"]
    w = max(len(c) for c in cols) + 4
    header = (f"{'split':5} {'seed':>4} {'train s':>7} | "
              + " ".join(f"{c:>{w}}" for c in cols) + " | "
              + " ".join(f"{c + '/run':>{w}}" for c in cols))
    print(header)
    print("-" * len(header))
    kw = dict(dims=dims, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
              batch_size=args.batch_size)
    rows = []
    for sp in splits:
        run_train = args.fan_running_only
        base = scen[("silentA-to-noisy", sp, run_train)]
        for seed in seeds:
            t = time.perf_counter()
            model = pretrain(*base.pretrain, seed=seed, **kw)
            dt = time.perf_counter() - t
            # Ceilings: the same network trained from scratch on the target room's other
            # recording, i.e. what the room allows at all, with every weight free.
            ceil_b = pretrain(*scen[("silentA-to-silentB", sp, run_train)].finetune, seed=seed, **kw)
            ceil_n = pretrain(*scen[("silentA-to-noisy", sp, run_train)].finetune, seed=seed, **kw)
            row = []
            for run in (False, True):
                b, n = scen[("silentA-to-silentB", sp, run)], scen[("silentA-to-noisy", sp, run)]
                row += [accuracy(model, *n.source_test), accuracy(model, *b.test),
                        accuracy(model, *n.test), accuracy(ceil_b, *b.test),
                        accuracy(ceil_n, *n.test)]
            rows.append(row)
            print(f"{sp:5} {seed:>4} {dt:>7.1f} | "
                  + " ".join(f"{100 * v:>{w}.1f}" for v in row[:5]) + " | "
                  + " ".join(f"{100 * v:>{w}.1f}" for v in row[5:]))
    arr = 100 * np.array(rows)
    m = arr.mean(0)
    print("-" * len(header))
    print(f"{'mean':18} | " + " ".join(f"{v:>{w}.1f}" for v in m[:5]) + " | "
          + " ".join(f"{v:>{w}.1f}" for v in m[5:]))
    if len(rows) > 1:
        sd = [statistics.stdev(arr[:, j]) for j in range(arr.shape[1])]
        print(f"{'sd':18} | " + " ".join(f"{v:>{w}.1f}" for v in sd[:5]) + " | "
              + " ".join(f"{v:>{w}.1f}" for v in sd[5:]))
    print("columns: silentA = source test; silentB, noisy = target test of the silentA model;")
    print("  B->B, noisy->n = a model trained from scratch on the target room's part a (ceiling);")
    print("  /run = scored on fan-running spectra only")
    for k, label in ((0, "all spectra"), (5, "fan running")):
        print(f"{label}: drop vs source silentB {m[k] - m[k + 1]:.1f} pt, noisy {m[k] - m[k + 2]:.1f} pt;"
              f" gap to ceiling silentB {m[k + 3] - m[k + 1]:.1f} pt, noisy {m[k + 4] - m[k + 2]:.1f} pt")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)

"""README.md's figures block, written from the reports' data.

    .venv/bin/python tools/readme_figures.py          # rewrite the block in README.md
    .venv/bin/python tools/readme_figures.py --check  # exit 1 if the block is out of date

The block sits between BEGIN and END below; everything in it comes from docs/RESULTS.json
(`make paper`), docs/BENCHMARKS.json (`make bench`) and docs/BOARD_KINDS.json (`make kinds`),
and each comparison's words are chosen by its numbers. It leads with the like-for-like figure
(Skip2-LoRA against LoRA-All in the same float arithmetic on the board), then the product
figure (Skip2-LoRA's fixed-point viper path against float LoRA-All).
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
BEGIN = ("<!-- figures:begin: written by tools/readme_figures.py from docs/RESULTS.json, "
         "docs/BENCHMARKS.json and docs/BOARD_KINDS.json; do not edit by hand -->")
END = "<!-- figures:end -->"
COMPARABLE_PT = 1.0


def load(docs=DOCS):
    return tuple(json.loads((Path(docs) / f"{n}.json").read_text())
                 for n in ("RESULTS", "BENCHMARKS", "BOARD_KINDS"))


def _pct(x):
    return f"{100 * x:.1f} %"


def accuracy_words(a, b, a_name, b_name, tolerance_pt=COMPARABLE_PT):
    """'at comparable accuracy (...)' or the gap, by the numbers."""
    gap = 100 * (a - b)
    figures = f"{a_name} {_pct(a)}, {b_name} {_pct(b)}"
    if abs(gap) <= tolerance_pt:
        return f"at comparable accuracy ({figures}, within {tolerance_pt:g} pt)"
    return f"with {abs(gap):.1f} pt {'more' if gap > 0 else 'less'} accuracy ({figures})"


def _row(scen, method, targets="all"):
    return next(r for r in scen["rows"] if r["method"] == method and r["targets"] == targets)


def bench_lines(bench):
    P = bench["scenarios"][bench["primary_scenario"]]
    T = str(bench["settings"]["target_epochs"])
    same = P["ratios"]["same_arithmetic"][T]
    product = P["ratios"]["product"][T]
    tm = P["total_ms"]
    measured = all(tm[k][T]["measured"] for k in ("skip2lora", "skip2lora-float", "lora-all"))
    m = P["macs"]
    ceiling = m["skip2lora-float"]["later_per_sample"] / m["lora-all"]["later_per_sample"]
    acc = P["accuracy_by_epoch"]
    board = bench["board"]
    where = "the virtual board (MicroPython unix port)" if board["virtual"] else board["port"]
    kern = bench["targets"].get("kernel_speedup")
    method_x = tm["lora-all"][T]["ms"] / tm["skip2lora-float"][T]["ms"]
    kernels_x = tm["skip2lora-float"][T]["ms"] / tm["skip2lora"][T]["ms"]
    lines = [
        f"- **Like for like, on the board** (docs/BENCHMARKS.md, `make bench`, timed with the "
        f"board's own `ticks_us` on {where}, {bench['primary_scenario']}, "
        f"{P['n_finetune']} spectra): with both methods in the same float arithmetic, "
        f"Skip2-LoRA needs {_pct(same)} of LoRA-All's fine-tuning time over {T} epochs, a cut "
        f"of {100 * (1 - same):.1f} %"
        + ("" if measured else " (partly extrapolated)") + ", "
        + accuracy_words(acc["skip2lora-float"][T], acc["lora-all"][T], "Skip2-LoRA",
                         "LoRA-All")
        + f". More epochs cannot take the cut past {100 * (1 - ceiling):.1f} % in that arithmetic: "
          f"the adapter on the raw input costs every epoch.",
        f"- **Skip2-LoRA's fast path against float LoRA-All**: fixed point in viper with an "
        f"int8 Skip-Cache on flash, Skip2-LoRA needs {100 * product:.2f} % of float LoRA-All's "
        f"time, a cut of {100 * (1 - product):.1f} %, "
        + accuracy_words(acc["skip2lora"][T], acc["lora-all"][T], "Skip2-LoRA", "LoRA-All")
        + f". Of that, the method gives {method_x:.1f}x and the kernels {kernels_x:.0f}x"
        + (f"; the viper kernel is {kern['value_x']:.0f}x faster per multiply-add than "
           f"pure-Python float code" if kern else "")
        + (". These are unix-port times: the report projects them to an RP2040 and an ESP32."
           if board["virtual"] else "."),
    ]
    heap = bench["targets"].get("heap_growth")
    if heap:
        lines[-1] += (" The training loop's heap does not grow across an epoch."
                      if heap["met"] else
                      f" The training loop's heap grows by up to {heap['worst_bytes']} B per "
                      f"epoch.")
    return lines


def results_lines(results):
    name = next(iter(results["scenarios"]))
    S = results["scenarios"][name]
    e = results["finetune"]["epochs"]
    skip2, lora = _row(S, "skip2lora"), _row(S, "lora-all")
    hidden = _row(S, "skip2lora", "hidden")
    a_s2, a_l = float(np.mean(skip2["accuracy"])), float(np.mean(lora["accuracy"]))
    a_h = float(np.mean(hidden["accuracy"]))
    ft_all = _row(S, "ft-all")
    ratio = skip2["macs"]["total"] / lora["macs"]["total"]
    ratio_h = hidden["macs"]["total"] / lora["macs"]["total"]
    return [
        f"- **Accuracy won back** (docs/RESULTS.md, `make paper`, numpy reference, mean of "
        f"{len(results['seeds'])} seeds): a model trained in a quiet room scores "
        f"{_pct(S['source_accuracy'])} there and {_pct(S['before'])} next to a ventilation fan "
        f"({name}); Skip2-LoRA fine-tuning on {S['n_finetune']} spectra of that room brings it "
        f"to {_pct(a_s2)}, " + accuracy_words(a_s2, a_l, "Skip2-LoRA", "LoRA-All")
        + f"; full fine-tuning reaches {_pct(np.mean(ft_all['accuracy']))}, FT-Last "
          f"{_pct(np.mean(_row(S, 'ft-last')['accuracy']))}. Counted in multiply-adds, "
          f"Skip2-LoRA needs {_pct(ratio)} of LoRA-All's over {e} epochs; with adapters on the "
          f"hidden layers only {_pct(ratio_h)}, at {_pct(a_h)} accuracy.",
    ]


def defaults_lines(results, name="digits-shifted", tolerance_pt=2.0):
    """The second dataset, fine-tuned with the defaults (--lr auto)."""
    S = results["scenarios"].get(name)
    if S is None:
        return []
    skip2, lora = _row(S, "skip2lora"), _row(S, "lora-all")
    a_s2, a_l = float(np.mean(skip2["accuracy"])), float(np.mean(lora["accuracy"]))
    pairs = S["lr_sweep"]["accuracy"]["skip2lora"]
    best_lr, best = max(((p[0], p[1]) for p in pairs), key=lambda p: p[1])
    old = dict((p[0], p[1]) for p in pairs).get(0.01)
    gap = 100 * (a_s2 - best)
    within = (f"within {tolerance_pt:g} pt of the best fixed lr of a sweep ({_pct(best)} at "
              f"lr {best_lr:g})" if gap >= -tolerance_pt else
              f"{-gap:.1f} pt below the best fixed lr of a sweep ({_pct(best)} at lr {best_lr:g})")
    lora_finite = lora.get("final_loss_finite", True)
    return [
        f"- **Defaults on data they were not tuned for** (docs/RESULTS.md): on scikit-learn's "
        f"digits shifted one pixel to the right, a {'-'.join(map(str, S['dims']))} network "
        f"with BatchNorm and Dropout (features 0..16, unscaled) scores {_pct(S['before'])} "
        f"before fine-tuning; with the defaults (`finetune --lr auto` chooses lr on the host) "
        f"Skip2-LoRA reaches {_pct(a_s2)}, {within}, "
        + accuracy_words(a_s2, a_l, "Skip2-LoRA", "LoRA-All")
        + (f"; the old fixed lr 0.01 gave {_pct(old)}" if old is not None else "")
        + ("." if lora_finite else "; LoRA-All's loss went non-finite."),
    ]


def kinds_lines(kinds):
    rows = {(r["kind"], r["backend"]): r for r in kinds["rows"]}
    backend = "thumb" if ("cortex-m0plus", "thumb") in rows else "viper"
    m0, m4 = rows.get(("cortex-m0plus", backend)), rows.get(("cortex-m4f", backend))
    if not (m0 and m4):
        return []
    same = all(r.get("identical") for r in kinds["rows"])
    return [
        f"- **On emulated Cortex-M boards** (docs/BOARD_KINDS.md, `make kinds`; instruction "
        f"counts at 125 MIPS): fine-tuning on {kinds['samples']} fan spectra takes "
        f"{m0['epoch1_ms'] / 1000:.1f} s for the first epoch (calibration and the Skip-Cache "
        f"build) and {m0['later_ms'] / 1000:.1f} s per later epoch on a Cortex-M0+ with the "
        f"{'Thumb (asm_thumb)' if backend == 'thumb' else 'viper'} kernels "
        f"({m4['epoch1_ms'] / 1000:.1f} s and {m4['later_ms'] / 1000:.1f} s on "
        f"a Cortex-M4F); an int8 `predict()` takes {m0['predict_ms']:.1f} ms. "
        + (f"The adapters, their state and the Skip-Cache come out byte for byte the same on "
           f"all {len(rows)} kind/backend runs." if same else
           "Not every kind/backend run wrote the same bytes (see the report)."),
    ]


def block(results, bench, kinds):
    return "\n".join([BEGIN] + bench_lines(bench) + results_lines(results)
                     + defaults_lines(results) + kinds_lines(kinds) + [END])


def update(text, new_block):
    start, end = text.find("<!-- figures:begin"), text.find(END)
    if start < 0 or end < 0:
        raise SystemExit("README.md has no figures block (<!-- figures:begin ... "
                         "<!-- figures:end -->)")
    return text[:start] + new_block + text[end + len(END):]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md is out of date")
    args = ap.parse_args(argv)
    text = README.read_text()
    new = update(text, block(*load()))
    if args.check:
        if new != text:
            print("README.md's figures block is out of date: run tools/readme_figures.py")
            return 1
        return 0
    if new != text:
        README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())

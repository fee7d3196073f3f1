"""`make paper`: write docs/RESULTS.md from a fresh run of every method on both drift scenarios.

The report is generated, never edited by hand, so each figure in it is one this code measured.
"""
import platform
import sys
import time
from pathlib import Path

import numpy as np

from skip2lora.experiments import (DIMS, FAN_RUNNING_ONLY, FINETUNE_DEFAULTS, accuracy,
                                   baseline_accuracy, prepare, run_method, temporary_workdir)
from skip2lora.formats import write_atomic
from skip2lora.reference import count_macs

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "docs" / "RESULTS.md"
SCENARIOS = ("silentA-to-noisy", "silentA-to-silentB")
SEEDS = (0, 1, 2)
ROWS = [("ft-all", "all"), ("ft-last", "all"), ("ft-bias", "all"), ("lora-all", "all"),
        ("lora-last", "all"), ("skip-lora", "all"), ("skip2lora", "all"),
        ("skip2lora", "hidden")]
EPOCH_POINTS = (1, 5, 20, 50)


def label(method, targets):
    return method if targets == "all" or not method.startswith("skip") else f"{method} ({targets} only)"


def pct(values):
    values = 100 * np.asarray(values)
    return f"{values.mean():.1f} ± {values.std():.1f}"


def scenario_section(name, workdir, log):
    prepared = prepare(name, workdir, log=log)
    before = baseline_accuracy(prepared)
    source = accuracy(prepared.network.forward, *prepared.scenario.source_test)
    rows, by_method = [], {}
    for method, targets in ROWS:
        runs = [run_method(prepared, method, seed=s, targets=targets) for s in SEEDS]
        log(f"  {name} {label(method, targets)}: {pct([r['accuracy'] for r in runs])} %")
        by_method[(method, targets)] = runs
    lora_total = by_method[("lora-all", "all")][0]["macs"]["total"]
    lines = [f"### {name}", "",
             f"Fine-tuning set: {len(prepared.scenario.finetune[1])} spectra of the target room's "
             f"first recording; test set: {len(prepared.scenario.test[1])} spectra of its second. "
             f"Pre-trained model: {100 * source:.1f} % on a held-out silentA recording, "
             f"**{100 * before:.1f} %** in the target room before fine-tuning.", "",
             "| method | trainable params | accuracy after (%) | gain (pt) | MACs/sample, 1st epoch "
             "| MACs/sample, later epochs | MACs/sample, "
             f"{FINETUNE_DEFAULTS['epochs']} epochs | vs LoRA-All |",
             "|---|---|---|---|---|---|---|---|"]
    for (method, targets), runs in by_method.items():
        m = runs[0]["macs"]
        acc = [r["accuracy"] for r in runs]
        first = m["first_epoch"]["forward"] + m["first_epoch"]["backward"]
        later = m["later_epoch"]["forward"] + m["later_epoch"]["backward"]
        lines.append(f"| {label(method, targets)} | {runs[0]['n_trainable']:,} | {pct(acc)} | "
                     f"{100 * (np.mean(acc) - before):+.1f} | {first:,} | {later:,} | "
                     f"{m['total']:,} | {m['total'] / lora_total:.3f} |")
    rows.append("\n".join(lines))
    return "\n".join(rows), before, by_method, prepared


def cost_table(network):
    lines = ["| epochs E | " + " | ".join(f"E = {e}" for e in EPOCH_POINTS) + " |",
             "|---|" + "---|" * len(EPOCH_POINTS)]
    for targets in ("all", "hidden"):
        ratios = []
        for e in EPOCH_POINTS:
            skip2 = count_macs(network, "skip2lora", FINETUNE_DEFAULTS["rank"], targets, e)
            lora = count_macs(network, "lora-all", FINETUNE_DEFAULTS["rank"], "all", e)
            ratios.append(skip2["total"] / lora["total"])
        lines.append(f"| Skip2-LoRA ({targets} layer inputs) / LoRA-All | "
                     + " | ".join(f"{r:.3f} ({100 * (1 - r):.1f} % cut)" for r in ratios) + " |")
    return "\n".join(lines)


def int8_section(name, workdir, log):
    """Accuracy of the same pre-trained model compiled f32 and int8, before and after Skip2-LoRA."""
    lines = ["| model file | source room (%) | target room before (%) | target room after "
             "Skip2-LoRA (%) |", "|---|---|---|---|"]
    figures = {}
    for dtype in ("f32", "int8"):
        prepared = prepare(name, workdir, dtype=dtype, log=log)
        after = run_method(prepared, "skip2lora")["accuracy"]
        source = accuracy(prepared.network.forward, *prepared.scenario.source_test)
        figures[dtype] = (source, baseline_accuracy(prepared), after)
        lines.append(f"| {dtype} ({prepared.model_path.stat().st_size:,} bytes) | "
                     + " | ".join(f"{100 * v:.1f}" for v in figures[dtype]) + " |")
    delta = [100 * (b - a) for a, b in zip(figures["f32"], figures["int8"])]
    lines.append("")
    lines.append(f"int8 minus f32: source {delta[0]:+.1f} pt, target before {delta[1]:+.1f} pt, "
                 f"target after fine-tuning {delta[2]:+.1f} pt.")
    return "\n".join(lines)


def main():
    started = time.time()
    log = lambda text: print(text, flush=True)  # noqa: E731
    sections, summary = [], {}
    with temporary_workdir() as tmp:
        for name in SCENARIOS:
            log(f"scenario {name}")
            text, before, by_method, prepared = scenario_section(name, Path(tmp) / name, log)
            sections.append(text)
            summary[name] = (before, by_method)
        costs = cost_table(prepared.network)
        int8 = int8_section(SCENARIOS[0], Path(tmp) / "int8", log)

    noisy_before, noisy = summary[SCENARIOS[0]]
    skip2 = np.mean([r["accuracy"] for r in noisy[("skip2lora", "all")]])
    lora = np.mean([r["accuracy"] for r in noisy[("lora-all", "all")]])
    hidden = np.mean([r["accuracy"] for r in noisy[("skip2lora", "hidden")]])
    ratio = noisy[("skip2lora", "all")][0]["macs"]["total"] / noisy[("lora-all", "all")][0]["macs"]["total"]
    ratio_hidden = (noisy[("skip2lora", "hidden")][0]["macs"]["total"]
                    / noisy[("lora-all", "all")][0]["macs"]["total"])
    e = FINETUNE_DEFAULTS["epochs"]
    report = f"""# Results: Skip2-LoRA and its baselines on the cooling-fan drift

Generated by `make paper` (tools/make_results.py) in {time.time() - started:.0f} s on
{platform.machine()} / Python {platform.python_version()}; do not edit by hand.

Setup: a {'-'.join(map(str, DIMS))} MLP pre-trained (Adam, 30 epochs) on the silentA recording
`_1` of the 12 cm fan (classes normal / damage1 / damage2), compiled to `.s2lm` and read back;
then fine-tuned on the target room's recording `_1` and tested on its recording `_2`. Every
method uses the numpy reference with the same data, order and optimizer: SGD, lr
{FINETUNE_DEFAULTS['lr']}, batch {FINETUNE_DEFAULTS['batch_size']}, {e} epochs, rank
{FINETUNE_DEFAULTS['rank']} (alpha = r), mean ± std over fine-tuning seeds {list(SEEDS)}.
{'Spectra of the stopped fan (the last quarter of every recording) are left out: in the quiet rooms they carry no class.' if FAN_RUNNING_ONLY else ''}
MACs are multiply-adds per sample counted by the reference's own code (forward + backward,
frozen forward included; bias adds, softmax and the update not counted).

## Accuracy and cost per method

{(chr(10) * 2).join(sections)}

## Cost ratio against LoRA-All as the epochs grow

{costs}

## int8 weights (`skip2lora compile --dtype int8`), scenario {SCENARIOS[0]}

{int8}

## Where this agrees with the paper and where not

- **Accuracy.** On silentA-to-noisy, Skip2-LoRA reaches {100 * skip2:.1f} % against
  LoRA-All's {100 * lora:.1f} % (from {100 * noisy_before:.1f} % before fine-tuning): the
  paper's "comparable accuracy" holds here.
- **Cost.** Skip2-LoRA with an adapter on every layer input spends {100 * ratio:.1f} % of
  LoRA-All's multiply-adds over {e} epochs, a {100 * (1 - ratio):.1f} % cut, short of the
  paper's 90 %. The adapter on the raw 512-wide input costs r·d_1 every epoch and dominates
  once the frozen pass is cached. With adapters on the hidden outputs only the cut is
  {100 * (1 - ratio_hidden):.1f} %, but accuracy falls to {100 * hidden:.1f} %: on this drift
  the new room's noise lives in the input spectrum, so the x_1 adapter matters. The cut grows
  with the epochs (table above) because only the first epoch pays the frozen forward pass.
- **Trainable parameters.** The paper compares at the same number of trainable parameters;
  at the same rank r = {FINETUNE_DEFAULTS['rank']} they differ here: Skip2-LoRA trains
  {noisy[("skip2lora", "all")][0]["n_trainable"]:,} values and LoRA-All
  {noisy[("lora-all", "all")][0]["n_trainable"]:,}, because a skip adapter's B maps into the
  C = 3 logits while LoRA-All's B maps into each layer's own width.
- **Time is not MACs.** On a board the frozen pass and the adapters run in different kernels
  and the cache costs flash reads; the on-board benchmark (`make bench`, docs/BENCHMARKS.md)
  measures time, which is what the paper's 90 % refers to.
"""
    write_atomic(REPORT, report.encode("utf-8"))
    log(f"wrote {REPORT.relative_to(ROOT)} in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

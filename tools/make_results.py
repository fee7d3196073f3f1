"""`make paper`: docs/RESULTS.md and its data docs/RESULTS.json, from a fresh run of every method
on both cooling-fan drift scenarios and on the shifted digits (data/digits.py).

    .venv/bin/python tools/make_results.py            # measure, write RESULTS.json and .md
    .venv/bin/python tools/make_results.py --render   # RESULTS.md again from RESULTS.json

The report is generated, never edited by hand: every figure in it is in the JSON (with the git
commit it was measured on), and every conclusion sentence is chosen by those figures by one of
the *_sentence functions below (tests/test_reports.py re-renders the committed report from the
committed JSON and tries each sentence both ways).
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from skip2lora.training.experiments import (DIGITS_PRETRAIN, DIMS, FAN_RUNNING_ONLY,
                                            FINETUNE_DEFAULTS, LR_SWEEP, SWEEP_METHODS,
                                            VALIDATION_SHARE, accuracy, baseline_accuracy,
                                            dims_of, finetune_settings, lr_sweep, prepare,
                                            pretrain_settings, run_method, source_revision,
                                            temporary_workdir)
from skip2lora.data.digits import SCENARIO as DIGITS
from skip2lora.model.formats import write_atomic
from skip2lora.training.reference import count_macs
from skip2lora.training.step_size import CHOICE_EPOCHS, LR_GRID, MAX_TRAIN

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "docs" / "RESULTS.md"
SCENARIOS = ("silentA-to-noisy", "silentA-to-silentB", DIGITS)
SEEDS = (0, 1, 2)
ROWS = [("ft-all", "all"), ("ft-last", "all"), ("ft-bias", "all"), ("lora-all", "all"),
        ("lora-last", "all"), ("skip-lora", "all"), ("skip2lora", "all"),
        ("skip2lora", "hidden")]
EPOCH_POINTS = (1, 5, 20, 50)
PAPER_CUT_PCT = 90.0      # the paper's claimed cut of fine-tuning cost against LoRA-All
COMPARABLE_PT = 1.0       # "comparable accuracy": within this many points of LoRA-All
NO_EFFECT_PT = 0.05       # int8 against f32: below this, the figure did not move
DEFAULT_LR_PT = 2.0       # the default lr's target: within this many points of the sweep's best
OLD_LR = 0.01             # the fixed default lr before --lr auto


def label(method, targets):
    return method if targets == "all" or not method.startswith("skip") else f"{method} ({targets} only)"


def pct(values):
    values = 100 * np.asarray(values)
    return f"{values.mean():.1f} ± {values.std():.1f}"


def mean(values):
    return float(np.mean(values))


# --------------------------------------------------------------------------- measuring

def measure_scenario(name, workdir, log):
    prepared = prepare(name, workdir, log=log)
    rows = []
    for method, targets in ROWS:
        runs = [run_method(prepared, method, seed=s, targets=targets) for s in SEEDS]
        log(f"  {name} {label(method, targets)}: {pct([r['accuracy'] for r in runs])} %")
        m = runs[0]["macs"]
        rows.append({"method": method, "targets": targets,
                     "n_trainable": int(runs[0]["n_trainable"]),
                     "accuracy": [float(r["accuracy"]) for r in runs],
                     "lr": [float(r["lr"]) for r in runs],
                     "final_loss_finite": all(bool(np.isfinite(r["final_loss"])) for r in runs),
                     "macs": {"first": int(m["first_epoch"]["forward"] + m["first_epoch"]["backward"]),
                              "later": int(m["later_epoch"]["forward"] + m["later_epoch"]["backward"]),
                              "total": int(m["total"])}})
    log(f"  {name}: fixed-lr sweep, scored on the test split")
    sweep = lr_sweep(prepared, seeds=SEEDS, log=log)
    return {"dims": list(dims_of(name)), "notes": list(prepared.scenario.notes),
            "n_finetune": int(len(prepared.scenario.finetune[1])),
            "n_test": int(len(prepared.scenario.test[1])),
            "source_accuracy": float(accuracy(prepared.network.forward,
                                              *prepared.scenario.source_test)),
            "before": float(baseline_accuracy(prepared)), "rows": rows, "lr_sweep": sweep}, prepared


def measure_costs(network):
    out = {"epochs": list(EPOCH_POINTS)}
    for targets in ("all", "hidden"):
        out[targets] = []
        for e in EPOCH_POINTS:
            skip2 = count_macs(network, "skip2lora", FINETUNE_DEFAULTS["rank"], targets, e)
            lora = count_macs(network, "lora-all", FINETUNE_DEFAULTS["rank"], "all", e)
            out[targets].append(skip2["total"] / lora["total"])
    return out


def measure_int8(name, workdir, log):
    """The same pre-trained model compiled f32 and int8, before and after Skip2-LoRA."""
    out = {"scenario": name}
    for dtype in ("f32", "int8"):
        prepared = prepare(name, workdir, dtype=dtype, log=log)
        out[dtype] = {"bytes": prepared.model_path.stat().st_size,
                      "source": float(accuracy(prepared.network.forward,
                                               *prepared.scenario.source_test)),
                      "before": float(baseline_accuracy(prepared)),
                      "after": float(run_method(prepared, "skip2lora")["accuracy"])}
    return out


BOARD_METHODS_RUN = ("skip2lora", "lora-all")


def measure_board(prepared, workdir, log):
    """The user's flow with the defaults on a virtual board (the MicroPython unix port), each
    command in its own process: compile the torch file, flash, `finetune --data` with no other
    option (so --lr auto), pull, export, eval on the test split."""
    from skip2lora.board.virtual import VirtualBoard

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    sc = prepared.scenario
    np.savez(workdir / "finetune.npz", x=sc.finetune[0], y=sc.finetune[1])
    np.savez(workdir / "test.npz", x=sc.test[0], y=sc.test[1])
    torch_file = prepared.model_path.parent / f"{sc.name}.pt"

    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "skip2lora", *map(str, args)],
                              capture_output=True, text=True, timeout=1800,
                              env={**os.environ})
        if done.returncode != 0:
            raise SystemExit(f"skip2lora {' '.join(map(str, args))} failed:\n"
                             + done.stdout + done.stderr)
        return done.stdout

    model = workdir / "model.s2lm"
    cli("compile", torch_file, "-o", model)
    out = {"scenario": sc.name, "kind": "unix", "rows": {}}
    with VirtualBoard(workdir / "flash.img", heap="192K", flash="2M",
                      run_dir=workdir / "run") as board:
        cli("flash", model, "--port", board.port)
        for method in BOARD_METHODS_RUN:
            text = cli("finetune", "--port", board.port, "--data", workdir / "finetune.npz",
                       "--method", method)
            lr = float(re.search(r"^lr (\S+) chosen on the host", text, re.M).group(1))
            loss = float(re.search(r"^done: epoch \d+, loss (\S+),", text, re.M).group(1))
            cli("pull", "--port", board.port, "-o", workdir / method)
            cli("export", model, "--adapters", workdir / method, "-o", workdir / f"{method}.onnx")
            cli("eval", workdir / f"{method}.onnx", "--data", workdir / "test.npz", "--json",
                workdir / f"{method}.json")
            acc = json.loads((workdir / f"{method}.json").read_text())["accuracy"]
            out["rows"][method] = {"lr": lr, "final_loss": loss, "accuracy": float(acc)}
            log(f"  on the board: {method} lr {lr:g}: {100 * acc:.1f} % on test")
    return out


def measure(log=print):
    started = time.time()
    data = {"source": source_revision(), "machine": platform.machine(),
            "python": platform.python_version(), "dims": list(DIMS), "seeds": list(SEEDS),
            "fan_running_only": FAN_RUNNING_ONLY, "pretrain": pretrain_settings(),
            "finetune": finetune_settings(),
            "digits_pretrain": dict(DIGITS_PRETRAIN),
            "lr_auto": {"grid": list(LR_GRID), "epochs": CHOICE_EPOCHS, "max_train": MAX_TRAIN,
                        "validation_share": VALIDATION_SHARE},
            "lr_sweep": {"lrs": list(LR_SWEEP), "methods": list(SWEEP_METHODS),
                         "seeds": list(SEEDS)},
            "scenarios": {}}
    with temporary_workdir() as tmp:
        fan = None
        for name in SCENARIOS:
            log(f"scenario {name}")
            data["scenarios"][name], prepared = measure_scenario(name, Path(tmp) / name, log)
            fan = fan or prepared
            if name == DIGITS:
                log(f"scenario {name} on a virtual board, with the defaults")
                data["board"] = measure_board(prepared, Path(tmp) / "board", log)
        data["costs"] = measure_costs(fan.network)
        data["int8"] = measure_int8(SCENARIOS[0], Path(tmp) / "int8", log)
    data["generated"] = time.strftime("%Y-%m-%d %H:%M:%S")
    data["elapsed_s"] = time.time() - started
    return data


# --------------------------------------------------------------------------- sentences
# Each takes numbers and returns the words they call for; tests/test_reports.py runs both ways.

def accuracy_sentence(skip2, lora, before, tolerance_pt=COMPARABLE_PT):
    gap = 100 * (skip2 - lora)
    head = (f"Skip2-LoRA reaches {100 * skip2:.1f} % against LoRA-All's {100 * lora:.1f} % "
            f"(from {100 * before:.1f} % before fine-tuning)")
    if abs(gap) <= tolerance_pt:
        return (f"{head}, {gap:+.1f} pt: the paper's \"comparable accuracy\" holds here "
                f"(within {tolerance_pt:g} pt).")
    if gap > 0:
        return f"{head}: Skip2-LoRA is {gap:.1f} pt ahead, more than comparable."
    return (f"{head}: {-gap:.1f} pt behind, so the paper's \"comparable accuracy\" does not "
            f"hold here (more than {tolerance_pt:g} pt).")


def cost_sentence(ratio, epochs, paper_cut_pct=PAPER_CUT_PCT):
    cut = 100 * (1 - ratio)
    head = (f"Skip2-LoRA with an adapter on every layer input spends {100 * ratio:.1f} % of "
            f"LoRA-All's multiply-adds over {epochs} epochs, a cut of {cut:.1f} %")
    if cut >= paper_cut_pct:
        return f"{head}, which meets the paper's {paper_cut_pct:g} %."
    return f"{head}, {paper_cut_pct - cut:.1f} pt short of the paper's {paper_cut_pct:g} %."


def input_adapter_cost_sentence(d_in, rank, later_all, later_hidden):
    """How much of a cached epoch the adapter on the raw input costs."""
    share = (later_all - later_hidden) / later_all
    return (f"The adapter on the raw {d_in}-wide input (rank {rank}) is "
            f"{100 * share:.0f} % of Skip2-LoRA's multiply-adds in every epoch after the "
            f"first ({later_all - later_hidden:,} of {later_all:,} per sample)"
            + (", so it dominates once the frozen pass is cached." if share > 0.5 else
               "; the other adapters cost more once the frozen pass is cached."))


def hidden_only_sentence(acc_all, acc_hidden, ratio_hidden, tolerance_pt=COMPARABLE_PT):
    drop = 100 * (acc_all - acc_hidden)
    head = f"With adapters on the hidden outputs only the cut is {100 * (1 - ratio_hidden):.1f} %"
    if drop > tolerance_pt:
        return (f"{head}, but accuracy falls to {100 * acc_hidden:.1f} % ({drop:.1f} pt below "
                f"adapters on every input): on this drift the x_1 adapter matters.")
    return (f"{head}, and accuracy is {100 * acc_hidden:.1f} % ({-drop:+.1f} pt against "
            f"adapters on every input): on this drift the x_1 adapter is not needed.")


def epochs_sentence(ratios, epochs):
    """Whether the cut grows with the epochs (the cost table)."""
    if all(b < a for a, b in zip(ratios, ratios[1:])):
        return (f"The cut grows with the epochs ({100 * (1 - ratios[0]):.1f} % at E = "
                f"{epochs[0]}, {100 * (1 - ratios[-1]):.1f} % at E = {epochs[-1]}) because "
                f"only the first epoch pays the frozen forward pass.")
    return (f"The cut does not grow steadily with the epochs ({100 * (1 - ratios[0]):.1f} % at "
            f"E = {epochs[0]}, {100 * (1 - ratios[-1]):.1f} % at E = {epochs[-1]}).")


def params_sentence(n_skip, n_lora, rank, n_classes):
    if n_skip == n_lora:
        return (f"The paper compares at the same number of trainable parameters; at the same "
                f"rank r = {rank} they are equal here ({n_skip:,}).")
    return (f"The paper compares at the same number of trainable parameters; at the same rank "
            f"r = {rank} they differ here: Skip2-LoRA trains {n_skip:,} values and LoRA-All "
            f"{n_lora:,}, because a skip adapter's B maps into the C = {n_classes} logits "
            f"while LoRA-All's B maps into each layer's own width.")


def lr_default_sentence(gaps_pt, old_gaps_pt, tolerance_pt=DEFAULT_LR_PT):
    """gaps_pt: {scenario: default's accuracy minus the best fixed lr's, in points} for
    Skip2-LoRA; old_gaps_pt: the same for the old fixed lr."""
    worst = min(gaps_pt, key=gaps_pt.get)
    old_worst = min(old_gaps_pt, key=old_gaps_pt.get)
    old = (f" At the old fixed lr {OLD_LR:g} it was {-old_gaps_pt[old_worst]:.1f} pt below the "
           f"best on {old_worst}." if old_gaps_pt[old_worst] < -tolerance_pt else "")
    if gaps_pt[worst] >= -tolerance_pt:
        return (f"With the defaults (--lr auto), Skip2-LoRA comes within {tolerance_pt:g} pt of "
                f"the best fixed lr on every scenario (closest call: {gaps_pt[worst]:+.1f} pt on "
                f"{worst}).{old}")
    misses = [f"{n} ({g:+.1f} pt)" for n, g in gaps_pt.items() if g < -tolerance_pt]
    return (f"With the defaults (--lr auto), Skip2-LoRA is more than {tolerance_pt:g} pt below "
            f"the best fixed lr on " + ", ".join(misses) + f".{old}")


def board_sentence(board_rows, best_by_method, tolerance_pt=DEFAULT_LR_PT):
    """board_rows: {method: {lr, accuracy, final_loss}} of the default run on a board;
    best_by_method: {method: the sweep's best accuracy on the same scenario}."""
    parts = []
    for method, r in board_rows.items():
        gap = 100 * (r["accuracy"] - best_by_method[method])
        verdict = (f"within {tolerance_pt:g} pt of the best fixed lr" if gap >= -tolerance_pt
                   else f"{-gap:.1f} pt below the best fixed lr")
        finite = np.isfinite(r["final_loss"])
        parts.append(f"{method} chose lr {r['lr']:g} and reached {100 * r['accuracy']:.1f} % "
                     f"({gap:+.1f} pt, {verdict}; final loss "
                     + (f"{r['final_loss']:.4f})" if finite else "not finite)"))
    return "; ".join(parts) + "."


def nan_sentence(finite_by_scenario, method="LoRA-All"):
    """finite_by_scenario: {scenario: whether every seed's final loss was finite}."""
    bad = [n for n, ok in finite_by_scenario.items() if not ok]
    if not bad:
        return (f"{method}'s loss stays finite with the defaults on every scenario and seed.")
    return f"{method}'s loss goes non-finite with the defaults on " + ", ".join(bad) + "."


def int8_sentence(deltas_pt, tolerance_pt=NO_EFFECT_PT):
    names = ("source", "target before", "target after fine-tuning")
    text = "int8 minus f32: " + ", ".join(f"{n} {d:+.1f} pt" for n, d in zip(names, deltas_pt))
    if all(abs(d) < tolerance_pt for d in deltas_pt):
        return text + ": int8 weights change none of these accuracies."
    worst = max(range(len(deltas_pt)), key=lambda i: abs(deltas_pt[i]))
    return text + f": int8 weights move the {names[worst]} accuracy most."


# --------------------------------------------------------------------------- rendering

def row_for(scen, method, targets="all"):
    return next(r for r in scen["rows"] if r["method"] == method and r["targets"] == targets)


def render_scenario(name, scen, epochs, pretrain):
    lora_total = row_for(scen, "lora-all")["macs"]["total"]
    before = scen["before"]
    if name == DIGITS:
        setup = (f"A {'-'.join(map(str, scen['dims']))} MLP with BatchNorm and Dropout "
                 f"{pretrain['dropout']:g} after each hidden Linear (the network the digits user "
                 f"brought; the importer folds BatchNorm and drops Dropout), pre-trained on "
                 f"half of scikit-learn's digits (8x8 images, features 0..16, unscaled). "
                 f"Fine-tuning set: {scen['n_finetune']} other images shifted one pixel to the "
                 f"right (a new writer, or a camera mounted one pixel off); test set: "
                 f"{scen['n_test']} more, shifted the same way. Pre-trained model: "
                 f"{100 * scen['source_accuracy']:.1f} % on unshifted images it was not trained "
                 f"on, **{100 * before:.1f} %** on the shifted test images before fine-tuning.")
    else:
        setup = (f"Fine-tuning set: {scen['n_finetune']} spectra of the target room's first "
                 f"recording; test set: {scen['n_test']} spectra of its second. Pre-trained "
                 f"model: {100 * scen['source_accuracy']:.1f} % on a held-out silentA "
                 f"recording, **{100 * before:.1f} %** in the target room before fine-tuning.")
    lines = [f"### {name}", "", setup, "",
             "| method | trainable params | accuracy after (%) | gain (pt) | MACs/sample, 1st epoch "
             f"| MACs/sample, later epochs | MACs/sample, {epochs} epochs | vs LoRA-All | "
             "lr (--lr auto) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in scen["rows"]:
        m = r["macs"]
        lines.append(f"| {label(r['method'], r['targets'])} | {r['n_trainable']:,} | "
                     f"{pct(r['accuracy'])} | {100 * (mean(r['accuracy']) - before):+.1f} | "
                     f"{m['first']:,} | {m['later']:,} | {m['total']:,} | "
                     f"{m['total'] / lora_total:.3f} | {_lrs(r['lr'])} |")
    return "\n".join(lines)


def render_costs(costs):
    lines = ["| epochs E | " + " | ".join(f"E = {e}" for e in costs["epochs"]) + " |",
             "|---|" + "---|" * len(costs["epochs"])]
    for targets in ("all", "hidden"):
        lines.append(f"| Skip2-LoRA ({targets} layer inputs) / LoRA-All | "
                     + " | ".join(f"{r:.3f} ({100 * (1 - r):.1f} % cut)" for r in costs[targets])
                     + " |")
    return "\n".join(lines)


def render_int8(int8):
    lines = ["| model file | source room (%) | target room before (%) | target room after "
             "Skip2-LoRA (%) |", "|---|---|---|---|"]
    for dtype in ("f32", "int8"):
        f = int8[dtype]
        lines.append(f"| {dtype} ({f['bytes']:,} bytes) | "
                     + " | ".join(f"{100 * f[k]:.1f}" for k in ("source", "before", "after"))
                     + " |")
    deltas = [round(100 * (int8["int8"][k] - int8["f32"][k]), 6)
              for k in ("source", "before", "after")]
    return "\n".join(lines + ["", int8_sentence(deltas)])


def _lrs(values):
    return ", ".join(f"{v:g}" for v in sorted(set(values)))


def sweep_best(pairs):
    """(lr, accuracy) of the best fixed lr of a sweep row (ties: the lr nearer 0.01)."""
    lr, acc, _ = max(pairs, key=lambda p: (p[1], -abs(np.log(p[0] / OLD_LR))))
    return lr, acc


def render_sweep(data):
    sw, auto = data["lr_sweep"], data["lr_auto"]
    lrs = sw["lrs"]
    lines = [f"`skip2lora finetune` chooses lr on the host by default (`--lr auto`, "
             f"host/skip2lora/training/step_size.py): the numpy reference trains the method "
             f"with each lr of {_lrs(auto['grid'])} for {auto['epochs']} epochs on the "
             f"fine-tuning data minus a held-out part (per class, the last "
             f"{100 * auto['validation_share']:.0f} %; at most {auto['max_train']} samples) and "
             f"keeps the lr with the best held-out accuracy, never one whose loss diverged. "
             f"The test split is never looked at. The tables above ran with that choice, per "
             f"method and seed.", "",
             f"To see how good that choice is, each of {', '.join(sw['methods'])} is also "
             f"trained with every fixed lr of the sweep below on the whole fine-tuning set and "
             f"scored on the test split (mean of seeds {sw['seeds']}): the best of those rows "
             f"is the best any fixed lr could do, found by looking at the test split.", "",
             "| scenario | method | lr chosen (--lr auto) | default: accuracy (%) | "
             f"lr {OLD_LR:g} (old default) (%) | best fixed lr | its accuracy (%) | "
             "default minus best (pt) |", "|---|---|---|---|---|---|---|---|"]
    gaps, old_gaps, finite = {}, {}, {}
    for name, scen in data["scenarios"].items():
        for method, pairs in scen["lr_sweep"]["accuracy"].items():
            row = row_for(scen, method)
            default = mean(row["accuracy"])
            best_lr, best = sweep_best(pairs)
            old = dict((p[0], p[1]) for p in pairs).get(OLD_LR)
            gap = 100 * (default - best)
            if method == "skip2lora":
                gaps[name] = gap
                old_gaps[name] = 100 * (old - best) if old is not None else 0.0
            if method == "lora-all":
                finite[name] = row["final_loss_finite"]
            lines.append(f"| {name} | {method} | {_lrs(row['lr'])} | {100 * default:.1f} | "
                         + (f"{100 * old:.1f}" if old is not None else "-")
                         + f" | {best_lr:g} | {100 * best:.1f} | {gap:+.1f} |")
    lines += ["", lr_default_sentence(gaps, old_gaps) + " " + nan_sentence(finite)]
    board = data.get("board")
    if board:
        scen = data["scenarios"][board["scenario"]]
        best = {m: sweep_best(p)[1] for m, p in scen["lr_sweep"]["accuracy"].items()}
        lines += ["", f"On a virtual board ({board['kind']} port of MicroPython, its fixed-point "
                      f"path, int8-packed data), `skip2lora finetune --data ... --method M` with "
                      f"no other option on {board['scenario']}, seed 0: "
                  + board_sentence(board["rows"], best)]
    lines += ["",
              "The whole sweep (test accuracy, mean of the seeds; best per row in bold; "
              "† the loss went non-finite):", "",
              "| scenario | method | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
              "|---|---|" + "---|" * len(lrs)]
    for name, scen in data["scenarios"].items():
        for method, pairs in scen["lr_sweep"]["accuracy"].items():
            _, best = sweep_best(pairs)
            cells = [(f"**{100 * a:.1f}**" if a == best else f"{100 * a:.1f}")
                     + ("" if ok else " †") for _, a, ok in pairs]
            lines.append(f"| {name} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(data):
    ft, pt = data["finetune"], data["pretrain"]
    e = ft["epochs"]
    primary = next(iter(data["scenarios"]))
    P = data["scenarios"][primary]
    skip2, lora = row_for(P, "skip2lora"), row_for(P, "lora-all")
    hidden = row_for(P, "skip2lora", "hidden")
    ratio = skip2["macs"]["total"] / lora["macs"]["total"]
    ratio_hidden = hidden["macs"]["total"] / lora["macs"]["total"]
    dims = data["dims"]
    src = data["source"]
    sections = "\n\n".join(render_scenario(n, s, e, data["digits_pretrain"])
                           for n, s in data["scenarios"].items())
    others = "\n".join(
        f"- **Accuracy on {n}.** " + accuracy_sentence(mean(row_for(S, 'skip2lora')['accuracy']),
                                                      mean(row_for(S, 'lora-all')['accuracy']),
                                                      S['before'])
        for n, S in data["scenarios"].items() if n != primary)
    return f"""# Results: Skip2-LoRA and its baselines on the cooling-fan drift and on shifted digits

Generated by `make paper` (tools/make_results.py) in {data['elapsed_s']:.0f} s on
{data['machine']} / Python {data['python']}, code at commit {(src['commit'] or 'unknown')[:12]}{' (with local changes to ' + ', '.join(src['modified']) + ')' if src['modified'] else ''};
every figure is in RESULTS.json beside this file. Do not edit by hand.

Setup: a {'-'.join(map(str, dims))} MLP pre-trained ({pt['optimizer']}, lr {pt['lr']:g}, batch {pt['batch_size']}, {pt['epochs']} epochs) on the silentA recording
`_1` of the 12 cm fan (classes normal / damage1 / damage2), compiled to `.s2lm` and read back;
then fine-tuned on the target room's recording `_1` and tested on its recording `_2`; the
digits scenario is described in its section. Every
method uses the numpy reference with the same data, order and optimizer: {ft['optimizer']}, lr
{ft['lr']} (chosen per method and run on held-out fine-tuning data, see "Learning rate"), batch {ft['batch_size']}, {e} epochs, rank
{ft['rank']} (alpha = {ft['alpha']:g}), mean ± std over fine-tuning seeds {data['seeds']}.
{'Spectra of the stopped fan (the last quarter of every recording) are left out: in the quiet rooms they carry no class.' if data['fan_running_only'] else ''}
MACs are multiply-adds per sample counted by the reference's own code (forward + backward,
frozen forward included; bias adds, softmax and the update not counted).

## Accuracy and cost per method

{sections}

## Cost ratio against LoRA-All as the epochs grow

{render_costs(data['costs'])}

## int8 weights (`skip2lora compile --dtype int8`), scenario {data['int8']['scenario']}

{render_int8(data['int8'])}

## Learning rate

{render_sweep(data)}

## Where this agrees with the paper and where not

- **Accuracy.** On {primary}, {accuracy_sentence(mean(skip2['accuracy']), mean(lora['accuracy']), P['before'])}
{others}
- **Cost.** {cost_sentence(ratio, e)} {input_adapter_cost_sentence(dims[0], ft['rank'], skip2['macs']['later'], hidden['macs']['later'])} {hidden_only_sentence(mean(skip2['accuracy']), mean(hidden['accuracy']), ratio_hidden)} {epochs_sentence(data['costs']['all'], data['costs']['epochs'])}
- **Trainable parameters.** {params_sentence(skip2['n_trainable'], lora['n_trainable'], ft['rank'], dims[-1])}
- **Time is not MACs.** On a board the frozen pass and the adapters run in different kernels
  and the cache costs flash reads; the on-board benchmark (`make bench`, docs/BENCHMARKS.md)
  measures time, which is what the paper's {PAPER_CUT_PCT:g} % refers to.
"""


def write(data, report=REPORT):
    report = Path(report)
    write_atomic(report.with_suffix(".json"),
                 (json.dumps(data, indent=1) + "\n").encode("utf-8"))
    write_atomic(report, render(data).encode("utf-8"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--render", action="store_true",
                    help="only rewrite the report from its JSON (no runs)")
    ap.add_argument("--out", default=str(REPORT))
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.render:
        data = json.loads(out.with_suffix(".json").read_text())
        write_atomic(out, render(data).encode("utf-8"))
        return 0
    log = lambda text: print(text, flush=True)  # noqa: E731
    data = measure(log)
    write(data, out)
    log(f"wrote {out} and {out.with_suffix('.json').name} in {data['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

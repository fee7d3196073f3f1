"""The drift experiment that `make demo` and `make paper` both run, in one place.

Pre-train in the source room, go through the real import and compile path (so the numbers are
those of the file the board would receive), then fine-tune in the target room with every
method of the reference and score on the target room's held-out recording. The same runs on
the second dataset (scikit-learn's digits, shifted one pixel: data/digits.py), with the
64-32(BatchNorm, Dropout)-16-10 network a user brought for it.
"""
import inspect
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from skip2lora.config import LR_AUTO, FinetuneConfig
from skip2lora.data import digits
from skip2lora.model.compiler import compile_network
from skip2lora.data.cooling_fan import load_scenario
from skip2lora.metrics import accuracy as logits_accuracy
from skip2lora.model.formats import read_model, write_model
from skip2lora.model.importers import import_model
from skip2lora.training.reference import finetune
from skip2lora.training.pretrain import pretrain, save_torch
from skip2lora.training.step_size import VALIDATION_SHARE, choose_lr, validation_split  # noqa: F401

DIMS = (512, 64, 64, 3)
# The network the digits user brought: BatchNorm and Dropout after each hidden Linear.
DIGITS_DIMS = (64, 32, 16, 10)
DIGITS_PRETRAIN = dict(batchnorm=True, dropout=0.2)
# The settings are the CLI's defaults (skip2lora.config): the paper measures what a user runs,
# lr included: `finetune --lr auto`, chosen by training/step_size.py on held-out fine-tuning
# data, never on the test split.
FINETUNE_DEFAULTS = dict({k: getattr(FinetuneConfig, k) for k in ("rank", "epochs", "batch_size")},
                         lr=LR_AUTO)
# `make paper` trains each of SWEEP_METHODS with every lr of LR_SWEEP (the whole fine-tuning
# set, scored on the test split: the best any fixed lr could do) and sets the default's figure
# beside the best (docs/RESULTS.md, "Learning rate"). LR_SWEEP holds the old default, 0.01.
LR_SWEEP = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1)
SWEEP_METHODS = ("skip2lora", "lora-all")
# The last quarter of every hmlo recording is the fan switched off: in the quiet rooms those
# spectra carry no class at all, so the scenarios score the running fan only.
FAN_RUNNING_ONLY = True


@dataclass
class Prepared:
    """A scenario with its pre-trained model, compiled and read back as the board would."""

    scenario: object
    network: object  # the Network decoded from the compiled .s2lm file
    model_path: Path
    lr_choices: dict = field(default_factory=dict)  # (method, targets, seed) -> Choice


def accuracy(predict_logits, X, y):
    return logits_accuracy(predict_logits(X), y)


def dims_of(scenario_name):
    return DIGITS_DIMS if scenario_name == digits.SCENARIO else DIMS


def prepare(scenario_name, workdir, dtype="f32", seed=0, split="1-2", log=print):
    """Pre-train on the source domain, save with torch.save, import, compile, read back."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    dims = dims_of(scenario_name)
    if scenario_name == digits.SCENARIO:
        scenario, extra = digits.load_scenario(scenario_name), DIGITS_PRETRAIN
    else:
        scenario = load_scenario(scenario_name, split=split, fan_running_only=FAN_RUNNING_ONLY)
        extra = {}
    log(f"pre-training {'-'.join(map(str, dims))} on {len(scenario.pretrain[1])} source "
        f"samples")
    module = pretrain(*scenario.pretrain, dims=dims, seed=seed, **extra)
    torch_path = workdir / f"{scenario_name}.pt"
    save_torch(module, torch_path)
    imported = import_model(torch_path)
    model_path = workdir / f"{scenario_name}.{dtype}.s2lm"
    write_model(model_path, compile_network(imported.network, dtype=dtype,
                                            rank=FINETUNE_DEFAULTS["rank"]))
    return Prepared(scenario, read_model(model_path).to_network(), model_path)


def chosen_lr(prepared, cfg):
    """The lr `finetune --lr auto` sends the board for cfg on the scenario's fine-tuning data
    (chosen once per method, targets and seed)."""
    key = (cfg.method, str(cfg.targets), cfg.seed, cfg.rank, cfg.batch_size)
    if key not in prepared.lr_choices:
        prepared.lr_choices[key] = choose_lr(prepared.network, *prepared.scenario.finetune, cfg)
    return prepared.lr_choices[key].lr


def run_method(prepared, method, seed=0, targets="all", progress=None, **overrides):
    """Fine-tune one method on the target room; accuracy on the target room's test split."""
    settings = dict(FINETUNE_DEFAULTS, **overrides)
    cfg = FinetuneConfig(method=method, seed=seed, targets=targets, **settings)
    if cfg.lr == LR_AUTO:
        cfg.lr = chosen_lr(prepared, cfg)
    with np.errstate(all="ignore"):  # a diverging run is a figure of the report, not an error
        result = finetune(prepared.network, *prepared.scenario.finetune, cfg, progress=progress)
        test_accuracy = accuracy(result.predict, *prepared.scenario.test)
    return dict(method=method, targets=targets, seed=seed, lr=cfg.lr,
                accuracy=test_accuracy,
                n_trainable=result.n_trainable, macs=result.macs,
                final_loss=result.history[-1]["loss"], result=result)


def finetune_settings(**overrides):
    """The fine-tuning settings every method runs with, read from the config objects."""
    cfg = FinetuneConfig(**dict(FINETUNE_DEFAULTS, **overrides))
    return {"optimizer": "SGD" if cfg.momentum == 0 else f"SGD, momentum {cfg.momentum}",
            "momentum": cfg.momentum, "lr": cfg.lr, "epochs": cfg.epochs,
            "batch_size": cfg.batch_size, "rank": cfg.rank, "alpha": cfg.rank * cfg.scale,
            "shuffle": cfg.shuffle}


def pretrain_settings():
    """How prepare() pre-trains: pretrain()'s own defaults and the optimizer its code builds."""
    params = inspect.signature(pretrain).parameters
    found = re.search(r"torch\.optim\.(\w+)\(", inspect.getsource(pretrain))
    return {"optimizer": found.group(1) if found else "unknown",
            **{k: params[k].default for k in ("epochs", "lr", "batch_size")}}


def lr_sweep(prepared, methods=SWEEP_METHODS, lrs=LR_SWEEP, seeds=(0,), log=print):
    """Test accuracy (mean over seeds) of each method at each fixed lr, trained on the whole
    fine-tuning set with every other setting the default: the best a fixed lr could do, to set
    the default beside. {"accuracy": {method: [[lr, accuracy, final loss finite], ...]}}."""
    out = {}
    for method in methods:
        out[method] = []
        for lr in lrs:
            runs = [run_method(prepared, method, seed=s, lr=lr) for s in seeds]
            acc = float(np.mean([r["accuracy"] for r in runs]))
            finite = all(np.isfinite(r["final_loss"]) for r in runs)
            out[method].append([lr, acc, bool(finite)])
            log(f"  lr sweep {method} lr {lr}: {100 * acc:.1f} % on test"
                + ("" if finite else " (loss not finite)"))
    return {"seeds": list(seeds), "accuracy": out}


def baseline_accuracy(prepared):
    return accuracy(prepared.network.forward, *prepared.scenario.test)


def source_revision(root=None):
    """The git commit the figures are measured on, and which tracked source files differed
    from it (host/, device/, tools/), so a committed report names the code behind it."""
    root = Path(root) if root else Path(__file__).resolve().parents[3]  # the checkout

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=30, check=True).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = (git("rev-parse", "HEAD") or "").strip() or None
    changed = git("status", "--porcelain", "--untracked-files=no", "--", "host", "device",
                  "tools")
    return {"commit": commit,
            "modified": sorted(line[3:] for line in changed.splitlines()) if changed else []}


def temporary_workdir():
    return tempfile.TemporaryDirectory(prefix="skip2lora-")

"""The drift experiment that `make demo` and `make paper` both run, in one place.

Pre-train in the source room, go through the real import and compile path (so the numbers are
those of the file the board would receive), then fine-tune in the target room with every
method of the reference and score on the target room's held-out recording.
"""
import inspect
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skip2lora.config import FinetuneConfig
from skip2lora.model.compiler import compile_network
from skip2lora.data.cooling_fan import load_scenario
from skip2lora.metrics import accuracy as logits_accuracy
from skip2lora.model.formats import read_model, write_model
from skip2lora.model.importers import import_model
from skip2lora.training.reference import finetune
from skip2lora.training.pretrain import pretrain, save_torch

DIMS = (512, 64, 64, 3)
# `make paper` checks lr against LR_SWEEP on a validation split held out of the fine-tuning
# recording (never the test recording) and reports which lr that split prefers
# (docs/RESULTS.md, "Learning rate").
# The settings are the CLI's defaults (skip2lora.config): the paper measures what a user runs.
FINETUNE_DEFAULTS = {k: getattr(FinetuneConfig, k) for k in ("rank", "lr", "epochs", "batch_size")}
LR_SWEEP = (0.005, 0.01, 0.02, 0.05)
SWEEP_METHODS = ("skip2lora", "lora-all")
VALIDATION_SHARE = 0.25  # per class, the last quarter of the fine-tuning recording
# The last quarter of every hmlo recording is the fan switched off: in the quiet rooms those
# spectra carry no class at all, so the scenarios score the running fan only.
FAN_RUNNING_ONLY = True


@dataclass
class Prepared:
    """A scenario with its pre-trained model, compiled and read back as the board would."""

    scenario: object
    network: object  # the Network decoded from the compiled .s2lm file
    model_path: Path


def accuracy(predict_logits, X, y):
    return logits_accuracy(predict_logits(X), y)


def prepare(scenario_name, workdir, dtype="f32", seed=0, split="1-2", log=print):
    """Pre-train on the source room, save with torch.save, import, compile, read back."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    scenario = load_scenario(scenario_name, split=split, fan_running_only=FAN_RUNNING_ONLY)
    log(f"pre-training {'-'.join(map(str, DIMS))} on {len(scenario.pretrain[1])} source-room "
        f"spectra")
    module = pretrain(*scenario.pretrain, dims=DIMS, seed=seed)
    torch_path = workdir / f"{scenario_name}.pt"
    save_torch(module, torch_path)
    imported = import_model(torch_path)
    model_path = workdir / f"{scenario_name}.{dtype}.s2lm"
    write_model(model_path, compile_network(imported.network, dtype=dtype,
                                            rank=FINETUNE_DEFAULTS["rank"]))
    return Prepared(scenario, read_model(model_path).to_network(), model_path)


def run_method(prepared, method, seed=0, targets="all", progress=None, **overrides):
    """Fine-tune one method on the target room; accuracy on the target room's test split."""
    settings = dict(FINETUNE_DEFAULTS, **overrides)
    cfg = FinetuneConfig(method=method, seed=seed, targets=targets, **settings)
    result = finetune(prepared.network, *prepared.scenario.finetune, cfg, progress=progress)
    return dict(method=method, targets=targets, seed=seed,
                accuracy=accuracy(result.predict, *prepared.scenario.test),
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


def validation_split(X, y, share=VALIDATION_SHARE):
    """Per class, the last `share` of the fine-tuning recording (in recording order) is held
    out for validation; the test recording is never looked at."""
    train, val = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = int(round(len(idx) * (1 - share)))
        train.append(idx[:k])
        val.append(idx[k:])
    t, v = np.concatenate(train), np.concatenate(val)
    return (X[t], y[t]), (X[v], y[v])


def lr_sweep(prepared, methods=SWEEP_METHODS, lrs=LR_SWEEP, seed=0, log=print):
    """Validation accuracy of each method at each lr: trained on the fine-tuning recording
    minus its held-out part, scored on that part. {method: [[lr, accuracy], ...]}."""
    (Xtr, ytr), (Xv, yv) = validation_split(*prepared.scenario.finetune)
    out = {}
    for method in methods:
        out[method] = []
        for lr in lrs:
            cfg = FinetuneConfig(method=method, seed=seed, **dict(FINETUNE_DEFAULTS, lr=lr))
            with np.errstate(all="ignore"):  # a diverging lr is a result, not an error
                result = finetune(prepared.network, Xtr, ytr, cfg)
                acc = accuracy(result.predict, Xv, yv)
            out[method].append([lr, float(acc)])
            log(f"  lr sweep {method} lr {lr}: {100 * acc:.1f} % on validation")
    return {"n_train": int(len(ytr)), "n_validation": int(len(yv)), "accuracy": out}


def baseline_accuracy(prepared):
    return accuracy(prepared.network.forward, *prepared.scenario.test)


def source_revision(root=None):
    """The git commit the figures are measured on, and which tracked source files differed
    from it (host/, device/, tools/), so a committed report names the code behind it."""
    root = Path(root) if root else Path(__file__).resolve().parents[2]

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

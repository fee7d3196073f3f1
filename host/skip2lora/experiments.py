"""The drift experiment that `make demo` and `make paper` both run, in one place.

Pre-train in the source room, go through the real import and compile path (so the numbers are
those of the file the board would receive), then fine-tune in the target room with every
method of the reference and score on the target room's held-out recording.
"""
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from skip2lora.compiler import compile_network
from skip2lora.data.cooling_fan import load_scenario
from skip2lora.evaluate import accuracy as logits_accuracy
from skip2lora.formats import read_model, write_model
from skip2lora.importers import import_model
from skip2lora.reference import FinetuneConfig, finetune

DIMS = (512, 64, 64, 3)
# Chosen on the silentA-to-noisy scenario (lr 0.005..0.02 all within 1.5 pt for the skip and
# LoRA methods; 0.05 diverges for LoRA-All): see docs/RESULTS.md.
FINETUNE_DEFAULTS = dict(rank=4, lr=0.01, epochs=20, batch_size=1)
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
    from skip2lora.pretrain import pretrain, save_torch

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

"""The product's claim on real data: a silentA model loses accuracy in the noisy room and
Skip2-LoRA, run through the real import/compile path, wins it back."""
from skip2lora.training.experiments import accuracy, baseline_accuracy, prepare, run_method


def test_drift_is_real_and_skip2lora_wins_it_back(tmp_path):
    prepared = prepare("silentA-to-noisy", tmp_path, log=lambda _: None)
    source = accuracy(prepared.network.forward, *prepared.scenario.source_test)
    before = baseline_accuracy(prepared)
    assert source > 0.95
    assert source - before > 0.15, (source, before)
    after = run_method(prepared, "skip2lora", epochs=5)
    assert after["accuracy"] > before + 0.25, (before, after["accuracy"])
    history = after["result"].history
    assert history[0]["cache_hits"] == 0
    assert all(h["cache_hits"] == len(prepared.scenario.finetune[1]) for h in history[1:])


def test_the_lr_choice_never_sees_the_test_split(tmp_path):
    """make paper's rows run with the lr `finetune --lr auto` would send, chosen on the
    fine-tuning data alone: the same choice with the test split made unusable."""
    from skip2lora.config import LR_AUTO, FinetuneConfig
    from skip2lora.training.experiments import FINETUNE_DEFAULTS, LR_SWEEP, chosen_lr

    assert FINETUNE_DEFAULTS["lr"] == LR_AUTO and 0.01 in LR_SWEEP  # the old default is swept
    prepared = prepare("digits-shifted", tmp_path, log=lambda _: None)
    cfg = FinetuneConfig(method="skip2lora")
    first = chosen_lr(prepared, cfg)
    prepared.lr_choices.clear()
    test_X = prepared.scenario.test[0]
    prepared.scenario.test = (test_X * float("nan"), prepared.scenario.test[1])  # unusable
    assert chosen_lr(prepared, cfg) == first


def test_source_revision_names_the_checkouts_changed_files():
    """The report's "with local changes to" list is git's own, read at the checkout's root."""
    import subprocess
    from pathlib import Path

    from skip2lora.training.experiments import source_revision

    root = Path(__file__).resolve().parents[1]
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                             "host", "device", "tools"], cwd=root, capture_output=True,
                            text=True)
    if status.returncode != 0:
        import pytest

        pytest.skip("not a git checkout")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                          text=True).stdout.strip()
    got = source_revision()
    assert got["commit"] == head
    assert got["modified"] == sorted(line[3:] for line in status.stdout.splitlines())

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


def test_lr_sweep_scores_held_out_fine_tuning_spectra_only(tmp_path):
    """make paper's lr check never sees the test recording: it trains on the fine-tuning
    recording minus a held-out part and scores that part."""
    from skip2lora.training.experiments import FINETUNE_DEFAULTS, LR_SWEEP, lr_sweep

    assert FINETUNE_DEFAULTS["lr"] in LR_SWEEP
    prepared = prepare("silentA-to-noisy", tmp_path, log=lambda _: None)
    test_X = prepared.scenario.test[0]
    prepared.scenario.test = (test_X * float("nan"), prepared.scenario.test[1])  # unusable
    out = lr_sweep(prepared, methods=("skip2lora",), lrs=(0.01,), log=lambda _: None)
    assert out["n_train"] + out["n_validation"] == len(prepared.scenario.finetune[1])
    assert out["accuracy"]["skip2lora"][0][1] > 0.5

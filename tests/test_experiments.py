"""The product's claim on real data: a silentA model loses accuracy in the noisy room and
Skip2-LoRA, run through the real import/compile path, wins it back."""
from skip2lora.experiments import accuracy, baseline_accuracy, prepare, run_method


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

"""`make demo`: the drift problem and Skip2-LoRA winning the accuracy back.

For now the fine-tuning runs in the host's numpy reference; the board flow (virtual board,
flash, fine-tune over the serial REPL, pull) replaces that step when it lands.
"""
import sys
import time
from pathlib import Path

from skip2lora.experiments import (FINETUNE_DEFAULTS, accuracy, baseline_accuracy, prepare,
                                   run_method)
from skip2lora.formats import Adapter, AdapterFile, read_model, write_adapters

OUT = Path(__file__).resolve().parent.parent / "out" / "demo"
SCENARIO = "silentA-to-noisy"


def step(text):
    print(f"\n== {text}", flush=True)


def main():
    started = time.time()
    step(f"scenario {SCENARIO}: cooling-fan vibration spectra, normal / damage1 / damage2")
    prepared = prepare(SCENARIO, OUT)
    sc = prepared.scenario
    print(f"compiled model: {prepared.model_path} ({prepared.model_path.stat().st_size} bytes)")
    print(f"accuracy in the source room (held-out silentA recording): "
          f"{100 * accuracy(prepared.network.forward, *sc.source_test):.1f} %")
    before = baseline_accuracy(prepared)
    print(f"accuracy in the noisy room before fine-tuning:             {100 * before:.1f} %")

    step(f"fine-tuning with Skip2-LoRA on {len(sc.finetune[1])} noisy-room spectra "
         f"(rank {FINETUNE_DEFAULTS['rank']}, {FINETUNE_DEFAULTS['epochs']} epochs, "
         f"lr {FINETUNE_DEFAULTS['lr']}, numpy reference)")

    def show(record):
        print(f"  epoch {record['epoch']:2d}  loss {record['loss']:.4f}  "
              f"train acc {100 * record['train_acc']:5.1f} %  "
              f"cache hits {record['cache_hits']}", flush=True)

    skip2 = run_method(prepared, "skip2lora", progress=show)
    print(f"accuracy in the noisy room after fine-tuning:  {100 * skip2['accuracy']:.1f} % "
          f"(+{100 * (skip2['accuracy'] - before):.1f} points)")

    step("the same fine-tuning with LoRA-All, the baseline of the paper")
    lora = run_method(prepared, "lora-all")
    ratio = skip2["macs"]["total"] / lora["macs"]["total"]
    print(f"LoRA-All accuracy {100 * lora['accuracy']:.1f} %; Skip2-LoRA spends "
          f"{100 * ratio:.1f} % of LoRA-All's multiply-adds over "
          f"{FINETUNE_DEFAULTS['epochs']} epochs ({skip2['macs']['total']:,} vs "
          f"{lora['macs']['total']:,} per sample)")

    model = read_model(prepared.model_path)
    result = skip2["result"]
    adapters = AdapterFile(model.file_crc, result.config.rank, sc.n_classes,
                           float(result.config.scale * result.config.rank),
                           [Adapter(*a) for a in result.adapters()],
                           result.config.epochs, "skip2lora")
    path = OUT / "adapters.s2la"
    write_adapters(path, adapters)
    step(f"adapters written to {path} ({path.stat().st_size} bytes); done in "
         f"{time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

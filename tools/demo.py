"""`make demo`: the whole user flow on a virtual board, printed as the commands a user types.

Pre-train in a quiet room, compile, start a virtual board, flash, fine-tune ON THE BOARD with
the noisy room's data, pull the adapters back, export to ONNX and score before and after on the
noisy room's held-out recording. With PORT=/dev/ttyACM0 the same steps drive a real board;
with EMULATE=cortex-m0plus (or cortex-m4f) the virtual board is Cortex-M firmware under QEMU,
with EMULATE=circuitpython the CircuitPython unix port, and the files go to out/demo-<kind>/.
"""
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from skip2lora.training.experiments import accuracy, baseline_accuracy, prepare

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = "silentA-to-noisy"
EPOCHS = int(os.environ.get("EPOCHS", "20"))
PORT = os.environ.get("PORT", "")
EMULATE = os.environ.get("EMULATE", "") or "unix"
OUT = ROOT / "out" / ("demo" if EMULATE == "unix" else f"demo-{EMULATE}")
BOARD = {"unix": "the MicroPython unix port, 192 KB heap like an RP2040, 2 MB LittleFS flash",
         "cortex-m0plus": "MicroPython firmware for a Cortex-M0+ under QEMU, 192 KiB heap",
         "cortex-m4f": "MicroPython firmware for a Cortex-M4F under QEMU, 192 KiB heap",
         "circuitpython": "the CircuitPython unix port as a board, 192 KB heap, 2 MB FAT drive"}
SKIP2LORA = str(Path(sys.executable).with_name("skip2lora"))


def step(text):
    print(f"\n== {text}", flush=True)


def sh(*args):
    """Run a skip2lora command as a user would, echoing it; stop the demo if it fails."""
    print("$ skip2lora " + " ".join(shlex.quote(str(a)) for a in args), flush=True)
    done = subprocess.run([SKIP2LORA, *map(str, args)], env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if done.returncode:
        raise SystemExit(f"demo: `skip2lora {args[0]}` failed (exit {done.returncode})")


def port_args():
    return ["--port", PORT] if PORT else []


def main():
    started = time.time()
    OUT.mkdir(parents=True, exist_ok=True)
    step(f"1/6 pre-train in the quiet room ({SCENARIO}: normal / damage1 / damage2 fan spectra)")
    prepared = prepare(SCENARIO, OUT, dtype="int8")
    sc = prepared.scenario
    np.savez(OUT / "noisy_finetune.npz", x=sc.finetune[0], y=sc.finetune[1])
    np.savez(OUT / "noisy_test.npz", x=sc.test[0], y=sc.test[1])
    source = accuracy(prepared.network.forward, *sc.source_test)
    before = baseline_accuracy(prepared)
    print(f"accuracy in the quiet room (held-out recording): {100 * source:.1f} %; "
          f"next to the ventilation fan: {100 * before:.1f} %")

    step("2/6 compile for the board (int8 weights, rank-4 skip adapters on every layer input)")
    model = OUT / "model.s2lm"
    sh("compile", OUT / f"{SCENARIO}.pt", "-o", model, "--dtype", "int8", "--board", "rp2040",
       "--samples", len(sc.finetune[1]))

    if EMULATE not in BOARD:
        raise SystemExit(f"demo: EMULATE={EMULATE} is not one of {', '.join(BOARD)}")
    step(f"3/6 start a virtual board ({BOARD[EMULATE]}) and flash it" if not PORT
         else f"3/6 flash the board on {PORT}")
    if not PORT:  # a board of the demo's own, so a board the user started is left alone
        os.environ["SKIP2LORA_RUN_DIR"] = str(OUT / "vboard")
        sh("board", "start", "--emulate", EMULATE,
           *(["--heap", "192K", "--flash", "2M"] if EMULATE in ("unix", "circuitpython") else []))
    try:
        sh("flash", model, *port_args())

        step(f"4/6 fine-tune on the board with {len(sc.finetune[1])} noisy-room spectra")
        sh("finetune", "--data", OUT / "noisy_finetune.npz", "--epochs", EPOCHS, *port_args())

        step("5/6 pull the adapters home and export the adapted model to ONNX")
        sh("pull", "-o", OUT / "adapters", *port_args())
    finally:
        if not PORT:
            sh("board", "stop")
    sh("export", model, "--adapters", OUT / "adapters", "-o", OUT / "adapted.onnx")

    step("6/6 score on the noisy room's held-out recording, before and after")
    sh("eval", model, "--data", OUT / "noisy_test.npz", "--json", OUT / "eval_before.json")
    sh("eval", OUT / "adapted.onnx", "--data", OUT / "noisy_test.npz", "--json",
       OUT / "eval_after.json")
    after = json.loads((OUT / "eval_after.json").read_text())["accuracy"]
    before = json.loads((OUT / "eval_before.json").read_text())["accuracy"]
    print(f"\nnoisy room, held-out recording: {100 * before:.1f} % before, {100 * after:.1f} % "
          f"after fine-tuning on the board ({100 * (after - before):+.1f} points)")
    print(f"demo done in {time.time() - started:.0f} s; files in {OUT.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The Cortex-M section of docs/BENCHMARKS.md: where a fine-tune's instructions go on an
emulated Cortex-M board, against the speed targets of a fine-tune in seconds.

Its figures come from tests/device/bench_cortexm.py (key "cortexm" of BENCHMARKS.json, the run
before it as "cortexm_previous") and, for the float-against-float ratio on the Cortex-M4F, from
a `skip2lora bench --quick` run on an emulated cortex-m4f board (key "cortexm_m4f", made by
m4f_summary). Every sentence is chosen by those numbers.
"""

from skip2lora.bench.plots import CORTEXM_PNG
from skip2lora.bench.projection import FLASH_MS_PER_BLOCK, SECTOR
from skip2lora.bench.sentences import fmt_pct as _pct

# The targets (a fine-tune in seconds on an RP2040-class core, board time by instruction count)
FIT_TARGET_S = 10.0        # 20 epochs over the 533-sample fan set
EPOCH1_TARGET_S = 3.0      # of which the cache-building epoch
DENSE_TARGET = 12.0        # instructions per multiply-add of the int8 dense kernel

CACHE_RECORD_BYTES = 64 + 64 + 12 + 4  # the fan model's Skip-Cache record: x2, x3, z, CRC
# kernels_thumb._dots's inner loop: two rows, four x values: 4 x (3 LDRSB, 2 MULS, 3 ADDS), BNE
LOOP = {"instructions": 33, "macs": 8, "loads": 12, "taken": 1}


def _status(value, target, unit, fmt="{:.1f}"):
    if value <= target:
        return "met"
    return f"**missed**: {fmt.format(value)} {unit} against {fmt.format(target)} {unit}"


def flash_write_s(n_records, record_bytes=CACHE_RECORD_BYTES):
    """Typical erase + program time of n_records cache records on an RP2040's flash, by the
    projection's flash model (bench/projection.py: every 4 KB sector erased and programmed)."""
    return -(-n_records * record_bytes // SECTOR) * FLASH_MS_PER_BLOCK / 1000


def m4f_summary(bench):
    """The figures of a `skip2lora bench` JSON run on a cortex-m4f board that the Cortex-M
    section uses: per run its backend, trainable parameters, epoch times (ms) and accuracy."""
    sc = bench["scenarios"][bench["primary_scenario"]]
    runs = {name: {"backend": sc["backend"][name], "trainable": sc["trainable_params"][name],
                   "epoch_ms": sc["epoch_ms"][name]["all"], "accuracy": sc["accuracy"][name]}
            for name in sc["epoch_ms"]}
    return {"scenario": bench["primary_scenario"], "n": sc["n_finetune"],
            "board": bench["board"]["describe"], "runs": runs,
            "commit": (bench.get("source") or {}).get("commit")}


def _later_ms(run):
    later = run["epoch_ms"][1:] or run["epoch_ms"]
    return sum(later) / len(later)


def _m4f_lines(M):
    runs = M["runs"]
    if "lora-all" not in runs:
        return []
    base = _later_ms(runs["lora-all"])
    L = [f"\nOn cortex-m4f (FPU, `skip2lora bench --quick` on the emulated board at commit "
         f"{(M.get('commit') or '?')[:10]}, scenario {M['scenario']}, {M['n']} samples), later "
         "epochs against LoRA-All's "
         f"({base / 1000:.1f} s an epoch, float, {runs['lora-all']['trainable']:,} trainable "
         "parameters):\n",
         "| run | backend | trainable params | later epoch | / LoRA-All |", "|---|---|---:|---:|---:|"]
    for name, r in runs.items():
        ms = _later_ms(r)
        L.append(f"| {name} | {r['backend']} | {r['trainable']:,} | {ms:,.0f} ms | "
                 f"{ms / base:.4f} |")
    if "skip2lora-float" in runs:
        ratio = _later_ms(runs["skip2lora-float"]) / base
        L.append(f"\nIn the same arithmetic (float against float with the FPU) a cached "
                 f"Skip2-LoRA epoch takes {ratio:.3f} of LoRA-All's ({_pct(1 - ratio)} less); "
                 f"with {runs['skip2lora-float']['trainable']:,} trainable parameters against "
                 f"{runs['lora-all']['trainable']:,} (rank 4 on every layer for both).")
    best = min((r for n, r in runs.items() if n.startswith("skip2lora") and
                not n.endswith("hidden")), key=_later_ms)
    L.append(f"Best against best: Skip2-LoRA on `{best['backend']}` takes "
             f"{_later_ms(best) / base:.4f} of LoRA-All's epoch.")
    return L


def cortexm_lines(F):
    C = F.get("cortexm")
    if not C:
        return []
    rows, mips = C["rows"], C.get("mips", 125)
    names = list(rows)
    first = rows[names[0]]
    n, epochs = first["n"], len(first["epochs"])
    P = F.get("cortexm_previous")
    cols = [(f"`{b}`", rows[b]) for b in names]
    if P and P["rows"].get(names[0]):
        cols.append((f"`{names[0]}` at {P.get('commit', '?')[:10]}", P["rows"][names[0]]))
    L = []
    w = L.append
    w(f"## Cortex-M: where a fine-tune's instructions go ({C['kind']})\n")
    w(f"Measured by tests/device/bench_cortexm.py on commit {C.get('commit', '?')[:12]} under "
      f"QEMU with `-icount shift=3`: the board's `time.ticks_us` counts instructions at {mips} "
      f"per microsecond (no wait states, no flash cache misses). Skip2-LoRA on the fan model "
      f"(silentA-to-noisy, 512-64-64-3 int8, {n} samples, r = 4 on every layer input, lr 0.01, "
      f"batch 1, {epochs} epochs), one column per kernel backend (`thumb`: asm_thumb, "
      f"kernels_thumb.py; `viper`: kernels_viper.py; both give the same losses, accuracies and "
      f"bytes)" + (", and the previous run's `thumb` column for comparison." if len(cols) > len(names)
                   else ".")
      + (" A column marked *direct disk* ran on the same LittleFS on the same RAM, remounted "
         "by the benchmark through a block device that copies only the bytes asked (as a "
         "board's C flash driver does, without the flash's own erase and program time): the "
         "package's cost without the rig's slice store (below)."
         if any(rows[b].get("direct_disk") for b in names) else ""))
    w("")
    w("| stage | " + " | ".join(c for c, _ in cols) + " |")
    w("|---|" + "---:|" * len(cols))
    per = lambda us: f"{us / 1000:.2f} ms"  # noqa: E731
    stages = [
        ("calibration (L-1 = 2 passes), per sample", lambda r: per(r["calib_us"] / n)),
        ("cache build: compute, per sample", lambda r: per(r["frozen_us"] / n)),
        ("cache build: file write, all records", lambda r: f"{r['write_us'] / 1e6:.1f} s"),
        ("epoch 1 (calibration, build, epoch)", lambda r: f"{r['epochs'][0][1] / 1e3:.1f} s"),
        ("cached epoch, per sample", lambda r: per(1000 * r["epochs"][-1][1] / n)),
        ("cached epoch", lambda r: f"{r['epochs'][-1][1] / 1e3:.2f} s"),
        (f"all {epochs} epochs (Trainer.fit)", lambda r: f"{r['fit_us'] / 1e6:.1f} s"),
        ("save (adapters + .state)", lambda r: f"{r['save_us'] / 1e6:.1f} s"),
        ("predict one sample (int8 forward, no adapters)", lambda r: per(r["predict_us"])),
        ("dense_q16 instructions per multiply-add (64 x 512)",
         lambda r: f"{r['us_per_mac'] * mips:.1f}" if "us_per_mac" in r else "-"),
        ("train accuracy, last epoch", lambda r: _pct(r["epochs"][-1][2]))]
    for label, f in stages:
        w(f"| {label} | " + " | ".join(f(r) for _, r in cols) + " |")
    direct = next((rows[b] for b in names if rows[b].get("direct_disk")), None)
    L += _targets(C, rows[names[0]], mips, n, epochs, direct)
    L += _step_lines(rows, names)
    L += _repeat_lines(rows, names)
    L += _write_lines(first, n, C.get("slice_store_us"))
    M = F.get("cortexm_m4f")
    if M:
        L += _m4f_lines(M)
    w(f"\n![time per epoch on the emulated Cortex-M boards]({CORTEXM_PNG})")
    cycles = LOOP["instructions"] + LOOP["loads"] + LOOP["taken"]
    w("\nOn a real RP2040 (datasheet: Cortex-M0+ at 125-133 MHz, SRAM without wait states, "
      "single-cycle multiplier) an instruction is not one cycle: loads and taken branches take "
      f"2, so the Thumb dense loop's {LOOP['instructions']} instructions per {LOOP['macs']} "
      f"multiply-adds ({LOOP['loads']} loads, {LOOP['taken']} taken branch) are {cycles} "
      "cycles. The kernels' machine code sits in the heap (SRAM); the interpreter runs from "
      "flash through the 16 KB XIP cache, whose misses (a QSPI read) come on top of the count "
      "for every stage outside the kernels.")
    w("")
    return L


def _targets(C, r, mips, n, epochs, direct=None):
    fit_s = r["fit_us"] / 1e6
    e1_s = r["epochs"][0][1] / 1e3
    e1_compute = e1_s - r["write_us"] / 1e6
    dense = r.get("us_per_mac", 0) * mips
    L = ["", f"Targets on {C['kind']} (the first column's figures):", "",
         "| target | figure | status |", "|---|---:|---|"]
    L.append(f"| {epochs} epochs over {n} samples <= {FIT_TARGET_S:.0f} s | {fit_s:.1f} s | "
             f"{_status(fit_s, FIT_TARGET_S, 's')} |")
    L.append(f"| the cache-building epoch <= {EPOCH1_TARGET_S:.0f} s | {e1_s:.1f} s | "
             f"{_status(e1_s, EPOCH1_TARGET_S, 's')} |")
    L.append(f"| ... without the RAM disk's file write | {e1_compute:.1f} s | "
             f"{_status(e1_compute, EPOCH1_TARGET_S, 's')} |")
    if direct:
        d_fit, d_e1 = direct["fit_us"] / 1e6, direct["epochs"][0][1] / 1e3
        L.append(f"| {epochs} epochs, RAM disk through a direct block device | {d_fit:.1f} s | "
                 f"{_status(d_fit, FIT_TARGET_S, 's')} |")
        L.append(f"| the cache-building epoch, direct block device | {d_e1:.1f} s | "
                 f"{_status(d_e1, EPOCH1_TARGET_S, 's')} |")
    L.append(f"| int8 dense kernel <= {DENSE_TARGET:.0f} instructions per multiply-add | "
             f"{dense:.1f} | {_status(dense, DENSE_TARGET, 'instructions')} |")
    cached = r["epochs"][-1][1] / 1e3
    need = (FIT_TARGET_S - min(e1_s, EPOCH1_TARGET_S)) / max(epochs - 1, 1)
    if fit_s > FIT_TARGET_S:
        L.append(f"\nFor {FIT_TARGET_S:.0f} s the {epochs - 1} cached epochs would have to "
                 f"take {need:.2f} s each even with a {min(e1_s, EPOCH1_TARGET_S):.1f} s first "
                 f"epoch ({1e3 * need / n:.2f} ms a sample); they take {cached:.2f} s "
                 f"({cached / need:.1f}x that).")
    return L


def _step_lines(rows, names):
    L = []
    for b in names:
        r = rows[b]
        if "step_us" not in r:
            continue
        step, kern, reads = r["step_us"], r["kernels_us"], r["reads_us"]
        rest = step - kern - reads
        if not L:
            L += ["", "Where a cached step goes (the step: 100 steps as the Trainer runs them; "
                  "kernels and file reads: 30 steps with each kernel call and each file read "
                  "timed from inside, the collector off, the timing's own cost taken off; "
                  "*rest* is the interpreter around them and the garbage collections):", "",
                  "| backend | step | kernels | file reads (cache record, x1) | rest | "
                  "share outside kernels |", "|---|---:|---:|---:|---:|---:|"]
        L.append(f"| `{b}` | {step / 1000:.2f} ms | {kern / 1000:.2f} ms | "
                 f"{reads / 1000:.2f} ms | {rest / 1000:.2f} ms | {_pct(1 - kern / step)} |")
    return L


def _repeat_lines(rows, names):
    L = []
    for b in names:
        reps = rows[b].get("repeats")
        if not reps:
            continue
        spreads = {}
        for k in reps[0]:
            vals = [x[k] for x in reps]
            spreads[k] = max(vals) / min(vals) - 1 if min(vals) > 0 else 0.0
        comp = max(v for k, v in spreads.items() if k != "write_us")
        L.append(f"\n`{b}`, {len(reps)} runs: the computing stages agree within "
                 f"{100 * comp:.2f} %; the file write within {100 * spreads['write_us']:.1f} %.")
    return L


def _write_lines(r, n, store):
    L = [f"\n*File write* is the cache build with nothing to compute: {r['write_us'] / 1e6:.1f} "
         f"s for {n} records of {CACHE_RECORD_BYTES} bytes."]
    if store:
        big, small = store["disk"], store["block"]
        L.append(f"It is the emulated RAM disk more than the package: the firmware's block "
                 "device (../shared/platforms, build/_boot.py) stores each 32-byte LittleFS "
                 "program as a slice of a memoryview of the whole 4 MiB disk, and MicroPython's "
                 "slice store moves the view's tail onto itself: a 32-byte store at the disk's "
                 f"start took {big:,.0f} us, into a 4 KB view {small:,.0f} us (measured by "
                 "the benchmark on the board). A program costs in proportion to the disk "
                 "behind its block, so the write's time depends on where LittleFS puts the "
                 "file and varies from run to run.")
    L.append("A real RP2040's flash instead erases and programs: "
             f"{flash_write_s(n):.1f} s for these records at the datasheet's typical "
             f"{FLASH_MS_PER_BLOCK:.1f} ms to erase a 4 KB sector and program its 16 pages "
             "(W25Q16JV, the Pico's flash; the projection's flash figure).")
    return [" ".join(L)]

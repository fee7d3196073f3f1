"""The plots beside docs/BENCHMARKS.md: cumulative time per method, accuracy per checkpoint,
and the time per epoch on the emulated Cortex-M boards.

Apart from report.py because they need matplotlib (imported only here, and only when a plot
is drawn) and because their look changes for other reasons than the report's wording.
"""
from pathlib import Path

import numpy as np

from skip2lora.bench.run import RUNS

PNG_NAMES = ("bench_time.png", "bench_accuracy.png")
CORTEXM_PNG = "bench_cortexm.png"


def plot(figures, outdir):
    """docs/bench_time.png, docs/bench_accuracy.png; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    out = [_time_plot(plt, figures, outdir), _accuracy_plot(plt, figures, outdir)]
    if figures.get("cortexm"):
        cortexm_plot(figures, outdir)  # shown in the Cortex-M section itself
    return out


def cortexm_plot(figures, outdir):
    """docs/bench_cortexm.png: time per epoch on the emulated Cortex-M boards, by method and
    kernel backend (Skip2-LoRA's backends on the M0+, every method on the M4F)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    C, M = figures["cortexm"], figures.get("cortexm_m4f")
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    for b, r in C["rows"].items():
        ep = [e[0] for e in r["epochs"]]
        ax.plot(ep, [e[1] / 1000 for e in r["epochs"]], marker="o", ms=3,
                label=f"{C['kind']}: skip2lora ({b}), {r['n']} samples")
    if M:
        for name, r in M["runs"].items():
            ems = r["epoch_ms"]
            ax.plot(range(1, len(ems) + 1), [x / 1000 for x in ems], ls="--", marker="s", ms=3,
                    label=f"cortex-m4f: {name} ({r['backend']}), {M['n']} samples")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("time of the epoch on the board (s, instruction count)")
    ax.set_title("Time per epoch on the emulated Cortex-M boards", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6)
    fig.tight_layout()
    path = Path(outdir) / CORTEXM_PNG
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _time_plot(plt, figures, outdir):
    """Cumulative fine-tuning time per method, measured solid, extrapolated dashed."""
    names = list(figures["scenarios"])
    colors = {k: plt.cm.tab10(i) for i, k in enumerate(RUNS)}
    emax = max(figures["settings"]["epoch_points"])
    fig, axes = plt.subplots(1, len(names), figsize=(6.2 * len(names), 4.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        f = figures["scenarios"][name]
        for key, em in f["epoch_ms"].items():
            ems, later = em["all"], em["later"]
            cum = [em["setup"]]
            for e in range(1, emax + 1):
                cum.append(cum[-1] + (ems[e - 1] if e <= len(ems) else (later or 0)))
            cum = np.array(cum) / 1000
            xs = np.arange(0, emax + 1)
            n = len(ems)
            ax.plot(xs[:n + 1], cum[:n + 1], label=key, lw=1.8, color=colors[key])
            if n < emax and later:
                ax.plot(xs[n:], cum[n:], ls="--", color=colors[key], lw=1.2)
        ax.set_yscale("log")
        ax.set_xlabel("epochs")
        ax.set_ylabel("cumulative fine-tuning time on the board (s)")
        ax.set_title(f"{name} ({f['n_finetune']} samples); dashed = extrapolated", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    p = outdir / "bench_time.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


def _accuracy_plot(plt, figures, outdir):
    """Accuracy per method at each checkpoint, the host reference and the baseline."""
    names = list(figures["scenarios"])
    points = [str(E) for E in figures["settings"]["epoch_points"]]
    fig, axes = plt.subplots(1, len(names), figsize=(6.2 * len(names), 4.4), squeeze=False)
    shades = plt.cm.Blues(np.linspace(0.35, 0.95, len(points)))
    for ax, name in zip(axes[0], names):
        f = figures["scenarios"][name]
        keys = list(f["accuracy_by_epoch"])
        odd = {k: f["epochs_trained"][k] for k in keys if str(f["epochs_trained"][k]) not in points}
        groups = points + (["last"] if odd else [])
        width = 0.8 / len(groups)
        for j, E in enumerate(groups):
            xs = [i - 0.4 + (j + 0.5) * width for i in range(len(keys))]
            if E == "last":
                vals = [100 * f["accuracy"][k] if k in odd else np.nan for k in keys]
                ax.bar(xs, vals, width, color="0.75", hatch="//", label="board, last epoch run")
                for x, k in zip(xs, keys):
                    if k in odd:
                        ax.text(x, 100 * f["accuracy"][k] + 1, f"{odd[k]}", ha="center",
                                fontsize=6)
                continue
            vals = [100 * f["accuracy_by_epoch"][k].get(E, np.nan) for k in keys]
            ax.bar(xs, vals, width, color=shades[j], label=f"board, {E} ep")
        ref = f.get("reference_accuracy") or {}
        if ref:
            T = str(figures["settings"]["target_epochs"])
            ax.plot(range(len(keys)), [100 * ref.get(k, np.nan) for k in keys], "k_", ms=14,
                    mew=2, label=f"host reference, {T} ep")
        ax.axhline(100 * f["baseline_accuracy"], color="crimson", ls=":",
                   label=f"before fine-tuning {100 * f['baseline_accuracy']:.1f} %")
        ax.set_xticks(range(len(keys)), keys, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_ylabel("test accuracy, target room's 2nd recording (%)")
        ax.set_title(f"{name}: accuracy after fine-tuning on the board", fontsize=9)
        ax.legend(fontsize=7, loc="lower left", ncol=2)
    fig.tight_layout()
    p = outdir / "bench_accuracy.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p

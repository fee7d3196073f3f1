"""The conclusions docs/BENCHMARKS.md draws, each one function of the figures.

The words change when the comparison does, so each sentence is chosen by its numbers and
tests/test_reports.py runs each one both ways; report.py places them in its sections.
"""
from skip2lora.bench.projection import RP2040_MHZ


def fmt_pct(x, digits=1):
    return "–" if x is None else f"{100 * x:.{digits}f} %"


def fmt_ms(x):
    if x is None:
        return "–"
    if x >= 10000:
        return f"{x / 1000:,.1f} s"
    if x >= 100:
        return f"{x:,.0f} ms"
    return f"{x:.1f} ms"


def ceiling_sentence(P):
    """The cut that more epochs approach: later-epoch MACs only (the first one amortised)."""
    m = P["macs"]
    if "skip2lora-float" not in m or "lora-all" not in m:
        return ""
    r = m["skip2lora-float"]["later_per_sample"] / m["lora-all"]["later_per_sample"]
    return (f"More epochs cannot close it: with the first epoch amortised away, Skip2-LoRA's "
            f"later epochs still need {m['skip2lora-float']['later_per_sample']:,} / "
            f"{m['lora-all']['later_per_sample']:,} = {100 * r:.1f} % of LoRA-All's "
            f"multiply-adds: the cut cannot pass {100 * (1 - r):.1f} % in the same arithmetic. ")


def decomposition(P, T):
    """How much of the product ratio is the method and how much the kernels."""
    tm = P["total_ms"]
    need = ("skip2lora", "skip2lora-float", "lora-all")
    if not all(T in tm.get(k, {}) for k in need):
        return ""
    method = tm["skip2lora-float"][T]["ms"] / tm["lora-all"][T]["ms"]
    kernels = tm["skip2lora-float"][T]["ms"] / tm["skip2lora"][T]["ms"]
    return decomposition_sentence(1 / method, kernels)



def decomposition_sentence(method_x, kernels_x):
    """method_x: LoRA-All time / float Skip2-LoRA time; kernels_x: float / viper Skip2-LoRA."""
    head = (f"It factors into the method, {method_x:.1f}x faster than LoRA-All in the same "
            f"float arithmetic, times the fixed-point viper path, {kernels_x:.0f}x faster than "
            f"Skip2-LoRA in float: ")
    if kernels_x > method_x:
        return head + "the larger share is the kernels, not the method."
    return head + "the larger share is the method, not the kernels."


def hidden_only_note(ratio, acc_hidden, acc_all, T, tolerance_pt=1.0):
    head = f"Adapters on the hidden outputs only: {100 * (1 - ratio):.1f} % cut at {T} epochs"
    drop = 100 * (acc_all - acc_hidden)
    if drop > tolerance_pt:
        return (f"{head}, but {fmt_pct(acc_hidden)} accuracy against {fmt_pct(acc_all)} with the x1 "
                f"adapter ({drop:.1f} pt less): on this drift the x1 adapter matters.")
    return (f"{head}, at {fmt_pct(acc_hidden)} accuracy against {fmt_pct(acc_all)} with the x1 "
            f"adapter ({-drop:+.1f} pt): on this drift the x1 adapter can be dropped.")


def reference_gap_note(a, ref, tolerance_pt=1.0):
    """Is a board accuracy gap the method (the float64 reference shows it too) or the board?"""
    board_gap = a["gap_pt"]
    ref_gap = 100 * (ref["skip2lora"] - ref["lora-all"])
    head = (f"The float64 reference gives Skip2-LoRA {fmt_pct(ref['skip2lora'])} and LoRA-All "
            f"{fmt_pct(ref['lora-all'])} ({ref_gap:+.1f} pt)")
    if abs(board_gap - ref_gap) <= tolerance_pt:
        return head + ", the same gap: it is the method on this drift, not the board's arithmetic."
    return (head + f", {abs(board_gap - ref_gap):.1f} pt away from the board's gap: the board's "
            f"arithmetic accounts for part of it.")


def virtual_note(pr):
    lo, hi = sorted(x for x in (pr.get("viper_factor"), pr.get("py_factor")) if x) or (None, None)
    slower = (f"an RP2040 at {RP2040_MHZ:.0f} MHz runs the same kernels about {lo:.0f}x to "
              f"{hi:.0f}x slower by the instruction counts below, " if lo else "")
    return ("**Read every absolute time as unix-port time.** The virtual board runs MicroPython "
            f"on this x86-64 CPU: {slower}and its flash writes cost microseconds. What carries "
            "over to a board is the ratios *between* methods of the same kind of code; the "
            "section *On a real board* says how each figure moves and which ones only a board "
            "can settle.")


def bound_ratios(P, T):
    """measured / arithmetic lower bound per run at T epochs."""
    out = {}
    for key in P["macs"]:
        tot = P["total_ms"][key].get(T)
        lb = (P["lower_bound_ms"][key] or {}).get(T)
        if tot and lb:
            out[key] = tot["ms"] / lb
    return out


def bound_note(ratios, near=(0.8, 1.5)):
    """Explain only the cases the table shows."""
    parts = []
    lo, hi = near
    if any(r < lo for r in ratios.values()):
        parts.append(f"Below {lo:g} ({', '.join(k for k, r in ratios.items() if r < lo)}): the "
                     f"run's own loops ran faster than the microbenchmarked kernel, from timing "
                     f"noise on a shared machine and because the float kernel's "
                     f"garbage-collection cost depends on the heap's state.")
    if any(lo <= r <= hi for r in ratios.values()):
        parts.append(f"Between {lo:g} and {hi:g} "
                     f"({', '.join(k for k, r in ratios.items() if lo <= r <= hi)}): the run is "
                     f"arithmetic-bound.")
    if any(r > hi for r in ratios.values()):
        parts.append(f"Above {hi:g} ({', '.join(k for k, r in ratios.items() if r > hi)}): the "
                     f"rest of the time goes to interpreted Python around the kernels (per-sample "
                     f"glue: record reads, softmax, the kernel calls, the float path's update "
                     f"loops, which count no MACs).")
    return " ".join(parts)


def glue_share_words(P, T):
    r = bound_ratios(P, T).get("skip2lora")
    if r is None:
        return "the rest of their time"
    return (f"{100 * (1 - 1 / r):.0f} % of Skip2-LoRA's time here, by the arithmetic bound"
            if r > 1 else "none of Skip2-LoRA's time here, by the arithmetic bound")


def float_precision_note(P, T):
    """Single floats on the boards: how far the float run here is from the float64 reference."""
    board = P["accuracy_by_epoch"].get("skip2lora-float", {}).get(T)
    ref = (P.get("reference_accuracy") or {}).get("skip2lora-float")
    if board is None or ref is None:
        return ("The float path also loses double precision on the boards (single floats); "
                "this run has no float figure at the reference's epoch count to compare.")
    gap = 100 * (board - ref)
    return (f"The float path also loses double precision on the boards (single floats); here, "
            f"in double precision, float Skip2-LoRA scores {fmt_pct(board)} after {T} epochs "
            f"against the float64 reference's {fmt_pct(ref)} ({gap:+.1f} pt), so "
            + ("the reference and the board path agree to the reported digit."
               if abs(gap) < 0.05 else "they differ beyond rounding."))


def rp2040_ratio_note(P, T, proj, pr):
    """How the projection moves the product and same-arithmetic ratios, from the figures."""
    here = P["ratios"].get("product", {}).get(T)
    parts = []
    if proj.get("product_ratio") and here is not None:
        a, c = proj["product_ratio"]
        worse = a > here
        cut_lo = 100 * (1 - c)
        parts.append(
            f"Viper code slows down {'more' if pr['viper_factor'] > pr['py_factor'] else 'less'} "
            f"than interpreted code (~{pr['viper_factor']:.0f}x against "
            f"~{pr['py_factor']:.0f}x), so the product ratio gets "
            + ("*worse* on the board" if worse else "*better* on the board")
            + f" ({here:.4f} here, {a:.4f} – {c:.4f} projected) and the cut "
            + (f"stays past 90 % ({cut_lo:.1f} % at worst)." if cut_lo >= 90 else
               f"may fall below 90 % ({cut_lo:.1f} % at worst)."))
    same = P["ratios"].get("same_arithmetic", {}).get(T)
    if proj.get("same_arithmetic_ratio") and same is not None:
        d = proj["same_arithmetic_ratio"] - same
        parts.append(f"The same-arithmetic ratio moves from {same:.4f} to "
                     f"{proj['same_arithmetic_ratio']:.4f} ({d:+.4f}): "
                     + ("it barely moves." if abs(d) < 0.01 else "the cache's flash writes "
                        "move it."))
    return " ".join(parts)


def esp32_heap_note(budget, peak, dims, arch):
    """Does the model fit an ESP32 without PSRAM? The compile budget (board/budget.py against
    board/profiles.py) and the heap measured here, side by side."""
    if not budget:
        return ""
    model = "-".join(map(str, dims)) if dims else "the"
    heap = budget["heap_bytes"]
    est = budget["ram_estimate_bytes"]
    text = (f"Without PSRAM its heap is {heap / 1024:.0f} KiB (board/profiles.py: "
            f"{budget['notes']}); `skip2lora compile --board esp32` estimates the {model} int8 "
            f"model's fine-tuning at {est / 1024:.1f} KiB and "
            + ("accepts it" if budget["fits_ram"] else "refuses it"))
    if peak is None:
        return text + "."
    fits = peak <= heap
    text += (f"; the peak live heap measured here ({arch} port, package and model included) is "
             f"{peak / 1024:.1f} KiB, which "
             + ("fits it too." if fits else "does not fit it"))
    if fits == budget["fits_ram"]:
        return text + ("" if fits else ": it needs PSRAM or a smaller model.")
    if not fits:
        return text + (" (objects are smaller with 32-bit pointers, so this figure is on the "
                       "high side): only a board settles whether it fits, and PSRAM or a "
                       "smaller model is the safe choice.")
    return text + " (the estimate is the more cautious figure)."

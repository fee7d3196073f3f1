"""The benchmark's unix-port figures carried over to real boards, from numbers measured elsewhere.

No board of the target kinds has been measured yet, so the report projects: instruction counts
of the Cortex-M firmware under QEMU (PLATFORMS.md) scale the kernels, flash datasheet typicals
price the writes, and what `skip2lora compile` checks (board/budget.py against
board/profiles.py) stands beside the measured heap. Kept apart from run.py because none of it
is measured, and from report.py because run.py stores the projection in the JSON.
"""
import math

from skip2lora.board.budget import estimate
from skip2lora.board.profiles import BOARDS

BUDGET_BOARDS = ("rp2040", "esp32")
SECTOR = 4096  # what QSPI NOR flash erases at once (W25Q16)


def board_budgets(dims, rank, samples):
    """What `skip2lora compile` checks for this model on each small board (board/profiles.py
    heap, board/budget.py estimate): the report compares them with the measured heap."""
    out = {}
    for name in BUDGET_BOARDS:
        b = BOARDS[name]
        e = estimate(dims, b, dtype="int8", rank=rank, samples=samples)
        out[name] = {"description": b.description, "heap_bytes": b.heap_bytes,
                     "fs_bytes": b.fs_bytes, "ram_estimate_bytes": e.ram_total,
                     "flash_estimate_bytes": e.flash_total, "fits_ram": e.fits_ram,
                     "fits_flash": e.fits_flash, "notes": b.notes}
    return out


# Cortex-M figures from PLATFORMS.md (MicroPython v1.29 firmware under QEMU, instruction
# counts at 8 ns per instruction): one 64x96 matrix-vector product (6144 multiply-adds).
M0_VIPER_INT8_US, M0_PY_FLOAT_US, M0_NS_PER_INSN, PLAT_MACS = 2840.0, 117593.0, 8.0, 6144


RP2040_MHZ, ESP32_MHZ = 133.0, 240.0


def board_projection(figures):
    """us per MAC on an RP2040 at 133 MHz from the instruction counts, and the slow-down
    factor against the kernels measured here."""
    k = figures["kernel_us_per_mac"]
    scale = 1000.0 / RP2040_MHZ / M0_NS_PER_INSN  # instruction time at 133 MHz vs 8 ns
    viper = M0_VIPER_INT8_US / PLAT_MACS * scale
    pyf = M0_PY_FLOAT_US / PLAT_MACS * scale
    return {"viper_us_per_mac": viper, "py_float_us_per_mac": pyf,
            "viper_factor": viper / k["viper"] if k.get("viper") else None,
            "py_factor": pyf / k["py-float"] if k.get("py-float") else None,
            "speedup": pyf / viper}


FLASH_MS_PER_BLOCK = 45.0 + 16 * 0.4  # W25Q16: 4 KB sector erase + 16 page programs (typ.)


def project_rp2040(figures):
    """Each run's 20-epoch total scaled to an RP2040 from PLATFORMS.md's instruction counts:
    float runs by the Python-float factor, fixed-point runs between the viper and the
    Python factor (kernels vs interpreted glue), plus the flash writes (cache + one save)."""
    pr = board_projection(figures)
    if not (pr["viper_factor"] and pr["py_factor"]):
        return None
    P = figures["scenarios"][figures["primary_scenario"]]
    T = str(figures["settings"]["target_epochs"])
    lo_f, hi_f = sorted((pr["viper_factor"], pr["py_factor"]))
    runs = {}
    for key in P["epoch_ms"]:
        tot = P["total_ms"][key].get(T)
        if not tot:
            continue
        fixed = P["backend"][key] in ("viper", "py")
        flash = math.ceil(P["flash_written_bytes"][key] / SECTOR) * FLASH_MS_PER_BLOCK
        runs[key] = {"here_ms": tot["ms"], "flash_ms": flash,
                     "lo_ms": tot["ms"] * (lo_f if fixed else pr["py_factor"]) + flash,
                     "hi_ms": tot["ms"] * (hi_f if fixed else pr["py_factor"]) + flash}
    out = {"factors": pr, "runs": runs}
    if "skip2lora" in runs and "lora-all" in runs:
        la = runs["lora-all"]
        out["product_ratio"] = (runs["skip2lora"]["lo_ms"] / la["lo_ms"],
                                runs["skip2lora"]["hi_ms"] / la["lo_ms"])
        if "skip2lora-float" in runs:
            out["same_arithmetic_ratio"] = runs["skip2lora-float"]["lo_ms"] / la["lo_ms"]
    return out

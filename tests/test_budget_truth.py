"""The RAM budget against the need measured on the virtual boards (issue 12: "predicted RAM is
within 10 % of the measured peak, and never below it, on every virtual board kind").

tools/budget_truth.py measures the smallest GC heap on which the default fine-tuning job
completes, over a grid of models, and commits docs/BUDGET.json; the fast test holds the current
estimate to those figures, the live test re-measures a few points on the interpreters.
"""
import json
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests" / "device"))

import budget_truth as T  # noqa: E402
from mpyrun import require  # noqa: E402

DATA = json.loads((ROOT / "docs" / "BUDGET.json").read_text())
HEAP_192K = 192064  # the Cortex-M firmware's GC total, as the runs report it
# The target: predicted <= 1.10 x measured, on every kind.
TOLERANCE = 1.10


def rows(kind):
    return [r for r in DATA["rows"] if r["kind"] == kind]


@pytest.mark.parametrize("kind", T.BOARD_KINDS)
def test_verdict_on_the_192k_heap_agrees_with_the_board(kind):
    """compile's fits / does not fit for an RP2040-sized heap (192064 bytes, the profile's and
    the firmware's GC total) is what the firmware did, for every model of the grid, with the
    default 533 samples budgeted (the runs had 32)."""
    from skip2lora.board import budget
    from skip2lora.board.profiles import BOARDS
    from skip2lora.model.compiler import parse_targets

    board = BOARDS[T.KIND_BOARDS[kind]]
    wrong = []
    for r in rows(kind):
        dims = r["dims"]
        est = budget.estimate(dims, board, r["dtype"], r["rank"],
                              parse_targets(r["targets"], len(dims) - 1), budget.DEFAULT_SAMPLES)
        if (est.ram_total <= HEAP_192K) != r["fits"]:
            wrong.append(f"{'-'.join(map(str, dims))} {r['dtype']}: ran {r['fits']}, "
                         f"predicted {est.ram_total}")
    assert not wrong, "; ".join(wrong)


@pytest.mark.parametrize("kind", T.KINDS)
def test_estimate_never_below_and_close_above_the_measured_need(kind):
    measured = rows(kind)
    assert measured, f"docs/BUDGET.json has no {kind} rows: run tools/budget_truth.py"
    bad = []
    for r in measured:
        pred = T.predicted(kind, r, DATA["samples"])
        name = f"{'-'.join(map(str, r['dims']))} {r['dtype']} r{r['rank']} {r['targets']}"
        if r["fits"]:
            if not r["needed"] <= pred <= TOLERANCE * r["needed"]:
                bad.append(f"{name}: needed {r['needed']}, predicted {pred}")
        elif not pred > r["total"]:  # did not complete on the whole heap: must be refused
            bad.append(f"{name}: fails on {r['total']} bytes, predicted {pred}")
    assert not bad, "; ".join(bad)


def test_grid_covers_every_value_of_each_axis():
    grid = [T.config_dict(e) for e in T.GRID]
    widths = {d for c in grid for d in c["dims"][:-1]}
    assert {32, 512} <= widths
    assert {len(c["dims"]) - 1 for c in grid} == {2, 3, 4}
    assert {c["dtype"] for c in grid} == {"f32", "int8"}
    assert {1, 16} <= {c["rank"] for c in grid}
    assert {c["targets"] for c in grid} == {"all", "hidden"}
    assert {1, 8} <= {c["batch"] for c in grid}


# (kind, grid index): a small int8 model on the unix port, the fan model on the Cortex-M0+,
# a small int8 model on the Cortex-M4F
LIVE = [("unix", 0), ("cortex-m0plus", 14), ("cortex-m4f", 0)]


@pytest.mark.parametrize("kind,index", LIVE)
def test_live_job_completes_on_the_predicted_heap_and_not_below_the_measured_need(kind, index):
    """Re-measured on the interpreter: the default job completes with `predicted` bytes of GC
    heap, and runs out of memory with 3 % less than the committed need (so the committed
    figure is still the board's)."""
    require(kind)
    config = T.config_dict(T.GRID[index])
    pred = T.predicted(kind, config)
    need = next(r for r in rows(kind) if r["grid_index"] == index)["needed"]
    with tempfile.TemporaryDirectory(prefix="s2l-budget-") as work:
        runner = T.Runner(kind, config, work)
        total = HEAP_192K
        if kind == "unix":  # its heap is T.UNIX_HEAP less what the port keeps: ask it (0.1 s)
            status, total, _ = runner.trial(0)
            assert status == "ok", status
        # a ballast leaves the rest of the GC total to the job
        status, _, used = runner.trial(max(0, total - pred))
        assert status == "ok", f"{kind}: failed with {total - used} bytes, predicted {pred}"
        status, _, used = runner.trial(total - int(0.97 * need))
        assert status == "memory", (f"{kind}: completed with {total - used} bytes, 3 % under "
                                    f"the committed need {need}: re-run tools/budget_truth.py")

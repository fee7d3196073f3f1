"""The fixed-point path holds no float arithmetic, so no board can round it differently.

A board computes floats in float32, the unix port in float64, CircuitPython in 30 bits; an .mpy
file stores float constants as decimal text that a board may parse one ulp off, and a frozen
module stores them yet another way. test_fine_tune_gives_the_unix_ports_bytes shows the bytes
agree between the unix port and both Cortex-M firmwares from .py and .mpy; no firmware here can
be rebuilt with the package frozen in, so this test reads the source instead: the fixed path's
modules (fixedpath.py whole, with every FixedPath method) and the .state reader/writer in
formats.py have no float literal and no true division (`/`), the one exception being the loss
printed in progress lines (docs/device.md, "One result on every board").
"""
import ast
from pathlib import Path

import pytest

S2L = Path(__file__).resolve().parents[2] / "device" / "s2l"
# FixedPath's methods (fixedpath.py): all of them must be listed, so a new one is seen here
FIXED_METHODS = {"__init__", "prepare", "frozen", "step", "payload", "adapters", "save", "load",
                 "apply", "_state", "_set_scales", "_draw_a", "_batch_consts", "_load_x1",
                 "_calibrate", "_softmax", "logits", "finite"}
# the .state file's reader and writer (formats.py), which the fixed path alone uses
STATE_FUNCTIONS = {"state_head", "write_state", "read_state"}
# the printed loss, and the one constant it needs (ln 2**14)
LOSS_ONLY = ("loss", "LN_16384")


def float_ops(node, allowed_targets=()):
    """(line, what) of every float literal and true division under node, except inside an
    assignment to a name in allowed_targets."""
    skipped = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id in allowed_targets for t in sub.targets):
            skipped |= {id(n) for n in ast.walk(sub)}
    found = []
    for sub in ast.walk(node):
        if id(sub) in skipped:
            continue
        if isinstance(sub, ast.Constant) and isinstance(sub.value, float):
            found.append((sub.lineno, "float literal %r" % sub.value))
        elif isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.Div):
            found.append((sub.lineno, "true division"))
    return found


@pytest.mark.parametrize("module", ["qmath.py", "kernels.py", "kernels_viper.py",
                                    "kernels_thumb.py", "kernels_py.py", "cache.py"])
def test_integer_modules_have_no_float_arithmetic(module):
    tree = ast.parse((S2L / module).read_text())
    assert float_ops(tree) == []


def test_fixed_path_has_no_float_arithmetic_but_the_printed_loss():
    tree = ast.parse((S2L / "fixedpath.py").read_text())
    path = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "FixedPath")
    methods = {f.name: f for f in path.body if isinstance(f, ast.FunctionDef)}
    assert set(methods) == FIXED_METHODS, set(methods) ^ FIXED_METHODS
    found = {name: float_ops(methods[name], allowed_targets=LOSS_ONLY)
             for name in sorted(FIXED_METHODS)}
    assert {k: v for k, v in found.items() if v} == {}
    # and the whole module: its constants and helpers too
    assert float_ops(tree, allowed_targets=LOSS_ONLY) == []


def test_state_reader_and_writer_have_no_float_arithmetic():
    tree = ast.parse((S2L / "formats.py").read_text())
    funcs = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    assert STATE_FUNCTIONS <= set(funcs), STATE_FUNCTIONS - set(funcs)
    found = {name: float_ops(funcs[name]) for name in sorted(STATE_FUNCTIONS)}
    assert {k: v for k, v in found.items() if v} == {}

"""The fixed-point path holds no float arithmetic, so no board can round it differently.

A board computes floats in float32, the unix port in float64, CircuitPython in 30 bits; an .mpy
file stores float constants as decimal text that a board may parse one ulp off, and a frozen
module stores them yet another way. test_fine_tune_gives_the_unix_ports_bytes shows the bytes
agree between the unix port and both Cortex-M firmwares from .py and .mpy; no firmware here can
be rebuilt with the package frozen in, so this test reads the source instead: the fixed path's
modules and methods have no float literal and no true division (`/`), the one exception being
the loss printed in progress lines (docs/device.md, "One result on every board").
"""
import ast
from pathlib import Path

import pytest

S2L = Path(__file__).resolve().parents[2] / "device" / "s2l"
# the fixed path's methods of Trainer (train.py)
FIXED_METHODS = {"_alloc_fixed", "_set_scales", "_draw_a", "_batch_consts", "_load_x1_fixed",
                 "_frozen_fixed", "_calibrate", "_step_fixed", "_softmax", "_payload",
                 "_state_head", "_save_state", "_load_state"}


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


@pytest.mark.parametrize("module", ["qmath.py", "kernels_viper.py", "kernels_py.py",
                                    "cache.py"])
def test_integer_modules_have_no_float_arithmetic(module):
    tree = ast.parse((S2L / module).read_text())
    assert float_ops(tree) == []


def test_trainer_fixed_path_has_no_float_arithmetic_but_the_printed_loss():
    tree = ast.parse((S2L / "train.py").read_text())
    trainer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    methods = {f.name: f for f in trainer.body if isinstance(f, ast.FunctionDef)}
    assert FIXED_METHODS <= set(methods), FIXED_METHODS - set(methods)
    found = {name: float_ops(methods[name], allowed_targets=("loss",))
             for name in sorted(FIXED_METHODS)}
    assert {k: v for k, v in found.items() if v} == {}

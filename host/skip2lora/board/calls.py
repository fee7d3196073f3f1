"""The code the host sends to a board, built from keyword arguments and checked first.

A call names a function of the device package (`s2l.job.finetune`) or of a board script
(board/scripts/, for what runs before the package is on the board: board facts, file hashes,
directories). Its keywords are checked against the function's parameters, read from the
source file with `ast`, and its values must be plain literals: a misspelt option is a
one-line error on the host before anything is uploaded, never a TypeError traceback from the
board, and no value can smuggle code into the line.
"""
import ast
import math
from functools import lru_cache
from pathlib import Path

from skip2lora.errors import UserError

DEVICE_DIR = Path(__file__).resolve().parents[3] / "device"  # holds the s2l package
SCRIPTS_DIR = Path(__file__).resolve().parent / "scripts"
_SCALARS = (type(None), bool, int, float, str)


@lru_cache(maxsize=None)
def parameters(source, function):
    """(names, required names, takes **kwargs) of `function` defined at the top of source."""
    tree = ast.parse(Path(source).read_text(), str(source))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            a = node.args
            positional = a.posonlyargs + a.args
            names = tuple(p.arg for p in positional + a.kwonlyargs)
            required = [p.arg for p in positional[:len(positional) - len(a.defaults)]]
            required += [p.arg for p, d in zip(a.kwonlyargs, a.kw_defaults) if d is None]
            return names, tuple(required), a.kwarg is not None
    raise UserError(f"no function {function}() in {source}; the checkout is incomplete")


def literal(name, value):
    """repr(value) for a board call, if it is a literal every board parses the same."""
    if isinstance(value, (list, tuple)):
        for v in value:
            literal(name, v)
    elif not isinstance(value, _SCALARS):
        raise UserError(f"{name}={value!r} cannot be sent to the board: give None, a bool, a "
                        f"number, a string or a list of them")
    elif isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{name}={value!r} is not a finite number")
    return repr(value)


def arguments(source, function, kwargs):
    """`k=v, ...` in the order given, checked against function's parameters in source."""
    names, required, any_keyword = parameters(source, function)
    for key in kwargs:
        if key not in names and not any_keyword:
            raise UserError(f"{function}() on the board takes no argument {key!r}; it takes "
                            f"{', '.join(names)}")
    missing = [n for n in required if n not in kwargs]
    if missing:
        raise UserError(f"{function}() on the board needs {', '.join(missing)}")
    return ", ".join(f"{k}={literal(k, v)}" for k, v in kwargs.items())


def module_source(module):
    """The device source of `module`: <root>/<module path>.py or .../__init__.py, a root being
    a folder of device/ with a manifest.py (a MicroPython package: s2l, s2l_bench)."""
    parts = module.split(".")
    for root in sorted(p.parent for p in DEVICE_DIR.glob("**/manifest.py")):
        for path in (root.joinpath(*parts).with_suffix(".py"),
                     root.joinpath(*parts, "__init__.py")):
            if path.is_file():
                return path
    raise ValueError(f"no device module {module} in {DEVICE_DIR}")


def call_code(target, /, **kwargs):
    """`import s2l.job\ns2l.job.finetune(k=v, ...)\n` for target "s2l.job.finetune"."""
    module, _, function = target.rpartition(".")
    source = module_source(module)
    return f"import {module}\n{target}({arguments(source, function, kwargs)})\n"


def script_code(name, /, **kwargs):
    """The board script board/scripts/<name>.py, then a call of its function <name>(...)."""
    source = SCRIPTS_DIR / f"{name}.py"
    return f"{source.read_text()}\n{name}({arguments(source, name, kwargs)})\n"

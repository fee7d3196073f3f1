"""The circuitpython kind: the CircuitPython unix port as a board, made to look like a real one.

The CircuitPython 10.3 unix port (../shared/platforms/circuitpython, see its README) runs the
package as a CircuitPython board does: no viper, CircuitPython's own .mpy format, an `array`
that refuses out-of-range values. But its `time` module is MicroPython's (`ticks_ms`,
`ticks_us`, no `monotonic_ns`) and it has no `supervisor` module, so code that leans on
`time.ticks_*` would pass here and fail on a board. BOARD_PRELUDE, run before any program,
takes those away and adds what a board has; the mpyrun test runner and the virtual board both
use it, so a slip shows in every test of this kind.

The same platforms folder holds `micropython-ulab` (the MicroPython unix port with ulab), found
by find_interpreter() too; it needs no prelude.
"""
from skip2lora.board.virtual.qemu import platforms_dir
from skip2lora.errors import UserError

INTERPRETERS = ("circuitpython", "micropython-ulab")  # unix ports in the platforms folder

# MicroPython source, run first on the circuitpython interpreter. `time` is a builtin module
# whose attributes cannot be deleted there, so a stand-in with only a board's names takes its
# place in sys.modules (an import looks there first). supervisor.ticks_ms() wraps at 2**29 ms
# and, as on a board, starts 65.536 s before its first wrap, so a wrap bug shows in a test.
BOARD_PRELUDE = """\
import sys
def _s2l_board():
    import time as _t
    try:
        for _n in ("ticks_ms", "ticks_us", "ticks_diff", "ticks_add", "ticks_cpu"):
            delattr(_t, _n)
        return
    except (AttributeError, TypeError):
        pass
    _ns0 = _t.time_ns()
    class time:
        sleep = _t.sleep
        localtime = _t.localtime
        mktime = _t.mktime
        struct_time = tuple
        def time():
            return _t.time()
        def monotonic_ns():
            return _t.time_ns() - _ns0
        def monotonic():
            return (_t.time_ns() - _ns0) / 1e9
    class supervisor:
        def ticks_ms():
            return ((_t.time_ns() - _ns0) // 1000000 + (1 << 29) - (1 << 16)) & ((1 << 29) - 1)
    sys.modules["time"] = time
    sys.modules["supervisor"] = supervisor
_s2l_board()
del _s2l_board
"""

# Appended to BOARD_PRELUDE for a board whose drive is mounted by USB: every write to the
# filesystem raises OSError(30) (EROFS), as on a CircuitPython board without boot.py's remount.
READ_ONLY_PRELUDE = """\
def _s2l_read_only():
    import builtins, os as _os
    _open = builtins.open
    def _refuse(*a):
        raise OSError(30)
    def open(path, mode="r", *a):
        if "w" in mode or "a" in mode or "+" in mode or "x" in mode:
            raise OSError(30)
        return _open(path, mode, *a)
    builtins.open = open
    class os:
        pass
    for _n in dir(_os):
        if not _n.startswith("__"):
            setattr(os, _n, getattr(_os, _n))
    for _n in ("remove", "unlink", "rename", "mkdir", "rmdir"):
        setattr(os, _n, _refuse)
    sys.modules["os"] = os
_s2l_read_only()
del _s2l_read_only
"""


def find_interpreter(name):
    """platforms/<name> ($SKIP2LORA_PLATFORMS, else ../shared/platforms beside the checkout)."""
    if name not in INTERPRETERS:
        raise ValueError(f"unknown interpreter {name!r}: one of {', '.join(INTERPRETERS)}")
    path = platforms_dir() / name
    if not path.is_file():
        raise UserError(f"no {name} interpreter at {path}: set SKIP2LORA_PLATFORMS to the folder "
                        f"holding it, or build it as that folder's README says")
    return path

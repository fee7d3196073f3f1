# One kernel interface, backend chosen at import (or forced by name):
#   "viper" - kernels_viper.py, machine code, allocates nothing (MicroPython with viper)
#   "py"    - kernels_py.py, the same integers in plain Python (CircuitPython, anything)
# ulab is not used by the fixed-point path: ulab has no int32 dtype and its dot returns float.
import sys

# ptr32 loads are zero-extended on a 64-bit port and signed on a 32-bit board; the viper
# kernels sign-extend with (v << SX) >> SX.
SX = 32 if sys.maxsize > 0xFFFFFFFF else 0

_cache = {}


def chunk_shift(d):
    """ps for adapter_u and dot_a16x8: a row of d values sums in 512-long chunks, each
    pre-shifted by ps with 2**ps >= the chunk count, so the total stays inside int32."""
    ps = 0
    while (512 << ps) < d:
        ps += 1
    return ps

_unavailable = [None]  # why kernels_viper failed to load (wrong-arch .mpy, out of memory)


def available():
    out = []
    for name in ("viper", "py"):
        try:
            get(name)
            out.append(name)
        except ImportError:
            pass
    return out


def get(name=None):
    """The kernel module for a backend name; None = the fastest one this firmware has."""
    if name in _cache:
        return _cache[name]
    if name is None:
        try:
            mod = get("viper")
        except ImportError:
            mod = get("py")
            if _unavailable[0]:  # viper may exist here, but its module could not be loaded
                print("s2l: viper kernels unavailable (%s); using pure Python" % _unavailable[0])
        _cache[None] = mod
        return mod
    if name == "viper":
        try:
            from . import kernels_viper as mod
        except (SyntaxError, ImportError, NameError, AttributeError, ValueError,
                MemoryError) as e:
            # ValueError: a kernels_viper.mpy built for another arch ("incompatible .mpy
            # arch"). Drop whatever the failed import left so a retry starts clean.
            sys.modules.pop(__name__[:-7] + "kernels_viper", None)
            if isinstance(e, (ValueError, MemoryError)):  # not just a firmware without viper
                _unavailable[0] = str(e) or type(e).__name__
            raise ImportError("viper kernels unavailable on this firmware: %s"
                              % (str(e) or type(e).__name__))
    elif name == "py":
        from . import kernels_py as mod
    else:
        raise ImportError("unknown kernel backend %r (viper, py)" % (name,))
    _cache[name] = mod
    return mod

# One kernel interface, backend chosen at import (or forced by name), fastest first:
#   "thumb" - kernels_thumb.py, the dense layer's sums in Thumb machine code (asm_thumb), the
#             rest viper's; Cortex-M firmware with the inline assembler (rp2, stm32)
#   "viper" - kernels_viper.py, machine code, allocates nothing (MicroPython with viper)
#   "ulab"  - kernels_ulab.py, the long loops as ulab calls, the same integers (exact in
#             float32: docs/device.md, "ulab kernels"); CircuitPython and MicroPython builds
#             with ulab and no viper
#   "py"    - kernels_py.py, the same integers in plain Python (CircuitPython, anything)
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

ORDER = ("thumb", "viper", "ulab", "py")  # what get(None) tries
_unavailable = [None]  # why kernels_viper failed to load (wrong-arch .mpy, out of memory)


def available():
    out = []
    for name in ORDER:
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
            mod = get("thumb")
        except ImportError:
            mod = None
        try:
            mod = mod or get("viper")
        except ImportError:
            try:
                mod = get("ulab")
            except ImportError:
                mod = get("py")
            if _unavailable[0]:  # viper may exist here, but its module could not be loaded
                print("s2l: viper kernels unavailable (%s); using %s"
                      % (_unavailable[0], "ulab" if mod.NAME == "ulab" else "pure Python"))
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
    elif name == "thumb":
        try:
            from . import kernels_thumb as mod
        except (SyntaxError, ImportError, NameError, AttributeError, ValueError,
                MemoryError) as e:
            # no inline assembler here (unix, ESP32, CircuitPython: a SyntaxError, or no
            # module where deploy left it out), or no viper for its output step
            sys.modules.pop(__name__[:-7] + "kernels_thumb", None)
            raise ImportError("backend 'thumb': this firmware has no Thumb inline assembler "
                              "(%s); use backend auto, which picks the fastest it has"
                              % (str(e) or type(e).__name__))
    elif name == "ulab":
        try:
            from . import kernels_ulab as mod
        except ImportError as e:
            sys.modules.pop(__name__[:-7] + "kernels_ulab", None)
            raise ImportError("backend 'ulab': this firmware has no ulab (%s); use backend "
                              "auto, which picks the fastest it has"
                              % (str(e) or type(e).__name__))
    elif name == "py":
        from . import kernels_py as mod
    else:
        raise ImportError("unknown kernel backend %r (thumb, viper, ulab, py)" % (name,))
    _cache[name] = mod
    return mod

# What the board is (skip2lora.board.link.BoardInfo): implementation, version, .mpy version and
# arch, platform, heap total and free, flash total and free; one repr'd tuple.
import sys, gc, os


def info():
    gc.collect()
    try:
        st = os.statvfs('/')
        fs = (st[0] * st[2], st[0] * st[3])
    except Exception:
        fs = (0, 0)
    print(repr((sys.implementation.name, sys.implementation.version[:3],
                getattr(sys.implementation, '_mpy', 0), sys.platform,
                gc.mem_free() + gc.mem_alloc(), gc.mem_free(), fs[0], fs[1])))

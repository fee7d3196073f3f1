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
from pathlib import Path

from skip2lora.board.virtual.base import format_size
from skip2lora.board.virtual.qemu import platforms_dir
from skip2lora.board.virtual.unix import UnixBoard, prepare_image
from skip2lora.errors import UserError

INTERPRETERS = ("circuitpython", "micropython-ulab")  # unix ports in the platforms folder

# MicroPython source, run first on the circuitpython interpreter. `time` is a builtin module
# whose attributes cannot be deleted there, so a stand-in with only a board's names takes its
# place in sys.modules (an import looks there first). supervisor.ticks_ms() wraps at 2**29 ms
# and, as on a board, starts 65.536 s before its first wrap, so a wrap bug shows in a test.
BOARD_PRELUDE = """\
def _s2l_board():
    import sys, time as _t
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
    import builtins, sys, os as _os
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


# ---------------------------------------------------------------------------------------------
# The board: a CIRCUITPY drive (FAT) in an image file, read on the host by the interpreter
# ---------------------------------------------------------------------------------------------

SECTOR = 512  # FAT sectors; the image is still sized in 4 KiB blocks as the unix kind's

# Run by the interpreter on the host: mount the image read-only and print its files, so the host
# reads the FAT the board wrote with the board's own FAT code (littlefs-python reads only
# LittleFS, and the host has no FAT library).
_READ_IMAGE = r"""
import os, binascii
class D:
    def __init__(self, f, n):
        self.f, self.n = f, n
    def readblocks(self, b, buf):
        self.f.seek(b * 512)
        self.f.readinto(buf)
    def writeblocks(self, b, buf):
        raise OSError(30)
    def ioctl(self, op, arg):
        return self.n if op == 4 else (512 if op == 5 else 0)
d = D(open(%(image)r, "rb"), %(sectors)d)
os.umount("/")
try:
    os.mount(os.VfsFat(d), "/", readonly=True)
except OSError:
    print("NOFS")
    raise SystemExit
st = os.statvfs("/")
print("USED", st[0] * (st[2] - st[3]), st[0] * st[2])
def walk(top):
    for name, kind, *_ in os.ilistdir(top):
        path = top.rstrip("/") + "/" + name
        if kind == 0x4000:
            print("DIR", path)
            walk(path)
        else:
            f = open(path, "rb")
            print("FILE", path, binascii.hexlify(f.read()).decode())
            f.close()
walk("/")
"""


def read_image(image):
    """({path: bytes}, folders, used bytes, total bytes) of the FAT on a circuitpython image,
    or None when it holds none (blank: the board never booted)."""
    import subprocess

    image = Path(image)
    script = _READ_IMAGE % {"image": str(image.resolve()), "sectors": image.stat().st_size // SECTOR}
    done = subprocess.run([str(find_interpreter("circuitpython")), "-c", script],
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise UserError(f"could not read the image: {done.stderr.strip().splitlines()[-1:]}",
                        image)
    files, folders, usage = {}, [], None
    for line in done.stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word == "NOFS":
            return None
        if word == "USED":
            usage = tuple(int(v) for v in rest.split())
        elif word == "DIR":
            folders.append(rest.lstrip("/"))
        elif word == "FILE":
            path, _, data = rest.partition(" ")
            files[path.lstrip("/")] = bytes.fromhex(data)
    return files, folders, usage[0], usage[1]


class FatImage:
    """What open_image gives for a circuitpython board: listdir and open, as littlefs's."""

    def __init__(self, files, folders, used, total):
        self.files, self.folders, self.used, self.total = files, folders, used, total

    def listdir(self, path="/"):
        top = path.strip("/")
        prefix = top + "/" if top else ""
        names = {p[len(prefix):].split("/")[0] for p in list(self.files) + self.folders
                 if p.startswith(prefix) and p != top}
        if top and top not in self.folders:
            raise FileNotFoundError(path)
        return sorted(names)

    def open(self, path, mode="r"):
        import io

        data = self.files[path.strip("/")]
        return io.BytesIO(data) if "b" in mode else io.StringIO(data.decode())


def open_fat_image(image):
    read = read_image(image)
    if read is None:
        raise UserError("no FAT filesystem on the image; a new image is formatted when the "
                        "board first boots", image)
    return FatImage(*read)


class CircuitPythonBoard(UnixBoard):
    """`VirtualBoard(image, heap="192K", flash="2M", kind="circuitpython")`: the CircuitPython
    unix port with a FAT drive in the image, made to look like a board (BOARD_PRELUDE)."""

    kinds = ("circuitpython",)
    image_name = "circuitpy.img"
    supervisor_module = "skip2lora.board.virtual.circuitpython_supervisor"

    def prepare(self):
        interpreter = find_interpreter("circuitpython")
        self.flash = prepare_image(self.image, self.flash)
        return ["--heap", str(self.heap), "--micropython", str(interpreter)]

    def describe(self):
        return (f"CircuitPython unix port, heap {format_size(self.heap)}, FAT drive "
                f"{format_size(self.flash)}, image {self.image}")

    def open_image(self):
        return open_fat_image(self.image)

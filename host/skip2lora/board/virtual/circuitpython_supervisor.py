"""The circuitpython kind's supervisor: the CircuitPython unix port behind a pty, as a board
(`python -m skip2lora.board.virtual.circuitpython_supervisor supervise ...`).

Everything but the first code the interpreter runs is the unix kind's (unix_supervisor.py:
relaying, Ctrl-C, soft and hard resets). That code differs because a CircuitPython board does:
  * its CIRCUITPY drive is FAT (os.VfsFat on the image, 512-byte sectors; a blank image is
    formatted on first boot), and os.rename overwrites;
  * no time.ticks_*, a `supervisor` module (circuitpython.BOARD_PRELUDE, shared with the tests);
  * `storage` (remount, unsafe_disable_usb_drive) so a board's boot.py runs; nothing is mounted
    by USB here, so the drive is writable to code whatever boot.py asks;
  * `microcontroller.reset()` is the hard reset; boot.py, then code.py (else main.py) run;
  * sys.path is a board's ['', '/', '.frozen', '/lib'].
"""
import sys

from skip2lora.board.virtual.base import supervisor_main
from skip2lora.board.virtual.circuitpython import BOARD_PRELUDE, SECTOR
from skip2lora.board.virtual.unix_supervisor import (HARD_RESET_EXIT, MARK_MOUNTED, MARK_READY,
                                                     Supervisor, _add_arguments,
                                                     run_supervisor)

BOOT_SCRIPT = r"""
import sys as _vb_sys, os as _vb_os
class _VBDev:
    def __init__(self, f, n):
        self.f = f
        self.n = n
    def readblocks(self, b, buf):
        self.f.seek(b * %(sector)d)
        self.f.readinto(buf)
    def writeblocks(self, b, buf):
        self.f.seek(b * %(sector)d)
        self.f.write(buf)
        self.f.flush()
    def ioctl(self, op, arg):
        if op == 4:
            return self.n
        if op == 5:
            return %(sector)d
        if op == 3:
            self.f.flush()
        return 0
_vb_dev = _VBDev(open(%(image)r, "r+b"), %(sectors)d)
_vb_os.umount("/")
try:
    _vb_fs = _vb_os.VfsFat(_vb_dev)
    _vb_os.mount(_vb_fs, "/")
except OSError:
    _vb_os.VfsFat.mkfs(_vb_dev)
    _vb_fs = _vb_os.VfsFat(_vb_dev)
    _vb_os.mount(_vb_fs, "/")
_vb_os.chdir("/")
try:
    _vb_os.mkdir("/lib")
except OSError:
    pass
_vb_sys.path.clear()
_vb_sys.path.extend(("", "/", ".frozen", "/lib"))
class _VBStorage:
    def remount(mount_path, readonly=False, disable_concurrent_write_protection=False):
        pass
    def unsafe_disable_usb_drive():
        pass
class _VBMicrocontroller:
    def reset():
        raise SystemExit(%(hard)d)
_vb_sys.modules["storage"] = _VBStorage
_vb_sys.modules["microcontroller"] = _VBMicrocontroller
def _vb_exec(name):
    try:
        f = open(name)
    except OSError:
        return False
    try:
        code = compile(f.read(), name, "exec")
    finally:
        f.close()
    exec(code, globals())
    return True
def _vb_boot():
    import traceback
    _vb_sys.stdout.write(%(mounted)r)
    try:
        for names in (("boot.py",), ("code.py", "main.py")) if %(main)r else (("boot.py",),):
            for name in names:
                try:
                    if _vb_exec(name):
                        break
                except (Exception, KeyboardInterrupt) as e:
                    traceback.print_exception(e)
                    break
    finally:
        _vb_sys.stdout.write(%(ready)r)
try:
    _vb_boot()
finally:
    del _VBDev, _VBStorage, _VBMicrocontroller, _vb_dev, _vb_fs, _vb_exec, _vb_boot, _vb_os
    __import__("gc").collect()
    del _vb_sys
"""


def boot_script(image, sectors, run_main):
    return BOARD_PRELUDE + BOOT_SCRIPT % {
        "image": str(image), "sectors": sectors, "sector": SECTOR, "hard": HARD_RESET_EXIT,
        "main": bool(run_main), "mounted": MARK_MOUNTED.decode(), "ready": MARK_READY.decode()}


class CircuitPythonSupervisor(Supervisor):
    kind = "circuitpython"
    raw_after_prompt = True  # a Ctrl-A sent before its REPL starts was lost, 1 reset in 3

    def boot_code(self, run_main):
        return boot_script(self.image, self.flash // SECTOR, run_main)


def _run(args):
    return run_supervisor(CircuitPythonSupervisor, args)


if __name__ == "__main__":
    sys.exit(supervisor_main("skip2lora.board.virtual.circuitpython_supervisor", _add_arguments,
                             _run))

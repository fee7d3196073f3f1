# The few things that differ between MicroPython, CircuitPython and the unix port.
import os
import sys

IS_CIRCUITPY = sys.implementation.name == "circuitpython"

try:
    from time import ticks_ms, ticks_diff
except ImportError:  # CircuitPython
    try:
        from supervisor import ticks_ms

        def ticks_diff(a, b):
            return ((a - b + (1 << 28)) & ((1 << 29) - 1)) - (1 << 28)
    except ImportError:
        import time

        def ticks_ms():
            return int(time.monotonic() * 1000)

        def ticks_diff(a, b):
            return a - b


try:
    from time import ticks_us
    ticks_us_diff = ticks_diff
except ImportError:  # CircuitPython: microseconds from monotonic_ns, else from ticks_ms
    try:
        from time import monotonic_ns

        def ticks_us():
            return monotonic_ns() // 1000
    except ImportError:
        def ticks_us():
            return ticks_ms() * 1000

    def ticks_us_diff(a, b):
        return a - b


class S2LError(Exception):
    """Bad input (file, argument): one line naming the file, what is wrong, what to do."""

    def __init__(self, message, path=None):
        self.path = path
        super().__init__(("%s: %s" % (path, message)) if path else message)


def file_size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        raise S2LError("no such file; check the path", path)


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def replace(tmp, path):
    """Rename tmp over path. LittleFS and POSIX replace atomically; FAT needs the old file
    removed first (a power cut between the two steps leaves tmp, which load() then uses)."""
    try:
        os.rename(tmp, path)
    except OSError as e:
        if e.args and e.args[0] == 30:
            raise _cannot_write(e, path)
        remove(path)
        os.rename(tmp, path)


def _cannot_write(e, path):
    """The S2LError for an OSError of a write. On CircuitPython the drive is read-only to code
    while USB mounts it (EROFS, 30): say how to make it writable."""
    if e.args and e.args[0] == 30:
        return S2LError("filesystem is read-only (CircuitPython: remount it writable in "
                        "boot.py or call storage.unsafe_disable_usb_drive())", path)
    return S2LError("cannot write (%s)" % e, path)


def open_write(path, mode="wb"):
    """open() for every write of the package, so a refused write always reads the same."""
    try:
        return open(path, mode)
    except OSError as e:
        raise _cannot_write(e, path)


def sync():
    try:
        os.sync()
    except (AttributeError, OSError):
        pass

"""The one connection to a board: mpremote's serial transport, in the raw REPL.

Every command that talks to a board (flash, finetune, pull, bench) goes through BoardLink, so
port selection, "port in use", board-side errors and Ctrl-C are handled in one place. A real
board on /dev/ttyACM0 and the virtual board are driven by the same code: only the port differs.
"""
import ast
import hashlib
import re

from skip2lora.board.calls import call_code, script_code
from skip2lora.board.virtual import default_port
from skip2lora.errors import UserError

# Where things live on the board's filesystem (docs/formats.md names the files).
BOARD_LIB = "/lib/s2l"
BOARD_DIR = "/skip2lora"  # not /s2l: a folder of that name on the import path would shadow the package
BOARD_MODEL = BOARD_DIR + "/model.s2lm"
BOARD_CONFIG = BOARD_DIR + "/config.json"
BOARD_DATASET = BOARD_DIR + "/data.s2ld"
BOARD_CACHE = BOARD_DIR + "/data.s2lc"
BOARD_ADAPTERS = BOARD_DIR + "/adapters.s2la"

# sys.implementation._mpy bits 10..15 -> mpy-cross -march (py/persistentcode.h MP_NATIVE_ARCH_*)
MPY_ARCHES = {0: None, 1: "x86", 2: "x64", 3: "armv6", 4: "armv6m", 5: "armv7m", 6: "armv7em",
              7: "armv7emsp", 8: "armv7emdp", 9: "xtensa", 10: "xtensawin", 11: "rv32imc",
              12: "rv64imc"}

CHUNK = 2048  # bytes per raw-REPL round trip of a file transfer
_FLASH_FULL = re.compile(r"Errno 28\b|ENOSPC|OSError: 28\b")


class BoardError(UserError):
    """The board raised: carries the exception's last line, not a screenful of traceback."""


class BoardInterrupted(Exception):
    """Ctrl-C reached the board and it stopped; output up to that point is in .output."""

    def __init__(self, output=""):
        super().__init__("interrupted")
        self.output = output


class BoardInfo:
    def __init__(self, name, version, mpy, platform, heap_total, heap_free, fs_total, fs_free):
        self.name, self.version, self.platform = name, version, platform
        self.mpy_version = mpy & 0xFF
        self.mpy_sub = (mpy >> 8) & 3
        self.arch = MPY_ARCHES.get(mpy >> 10)
        self.heap_total, self.heap_free = heap_total, heap_free
        self.fs_total, self.fs_free = fs_total, fs_free

    def describe(self):
        v = ".".join(map(str, self.version))
        return (f"{self.name} {v} on {self.platform}, .mpy {self.mpy_version}.{self.mpy_sub} "
                f"arch {self.arch or 'none'}, heap {self.heap_total // 1024} KiB "
                f"({self.heap_free // 1024} free), flash {self.fs_free // 1024}/"
                f"{self.fs_total // 1024} KiB free")


def resolve_port(port):
    """The port given, else the running virtual board's; one clear error if neither exists."""
    if port:
        return port
    return default_port()


def _port_busy(port):
    """True when another process holds the port's exclusive lock (as pyserial takes it)."""
    import errno
    import fcntl
    import os

    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        return exc.errno == errno.EBUSY
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def last_error_line(stderr):
    """'MemoryError: memory allocation failed' from a whole traceback."""
    lines = [l.strip() for l in stderr.strip().splitlines() if l.strip()]
    return lines[-1] if lines else "unknown error"


class BoardLink:
    """A raw-REPL session with one board; use as a context manager."""

    def __init__(self, port=None, timeout=10.0):
        self.port = resolve_port(port)
        self.timeout = timeout
        self.transport = None

    def __enter__(self):
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport

        try:
            self.transport = SerialTransport(self.port, exclusive=True)
        except Exception as exc:  # noqa: BLE001 - pyserial raises several types for this
            busy = _port_busy(self.port)
            raise UserError(
                "the port is in use by another program (another skip2lora or mpremote?); wait for "
                "it to finish or stop it" if busy else
                f"cannot open the port ({exc}); check the cable and the PORT name "
                f"(skip2lora board status shows the virtual board's)", self.port) from None
        try:
            self.transport.enter_raw_repl(soft_reset=False)
        except TransportError as exc:
            self.transport.close()
            raise UserError(f"the board does not answer on the raw REPL ({exc}); press reset or "
                            f"replug it, and check nothing else uses the port", self.port) from None
        return self

    def __exit__(self, *exc):
        if self.transport is not None:
            try:
                self.transport.exit_raw_repl()
            except Exception:  # noqa: BLE001 - the link may already be gone
                pass
            try:
                self.transport.close()
            except Exception:  # noqa: BLE001
                pass
            self.transport = None

    # ------------------------------------------------------------ running code

    def run(self, code, on_output=None, timeout=None):
        """Run code on the board; return what it printed. Board exceptions become BoardError.

        timeout is the longest silence (seconds) before the board counts as lost; a
        fine-tuning run that prints once per epoch passes a long one.
        on_output(bytes) sees output as it arrives (for progress). Ctrl-C on the host sends
        Ctrl-C to the board, waits until it has stopped, and raises BoardInterrupted.
        """
        from mpremote.transport import TransportError

        t = self.transport
        out = bytearray()

        def consume(chunk):
            if chunk != b"\x04":  # the end-of-output marker reaches the consumer too
                out.extend(chunk)
                if on_output:
                    on_output(chunk)

        try:
            t.exec_raw_no_follow(code)
            _, stderr = t.follow(self.timeout if timeout is None else timeout, consume)
        except KeyboardInterrupt:
            self._interrupt(consume)
            raise BoardInterrupted(out.decode(errors="replace")) from None
        except (TransportError, OSError) as exc:  # pyserial's SerialException is an OSError
            raise UserError(f"lost the board while it ran code ({' '.join(str(exc).split())}); "
                            f"it may have reset, lost power or been unplugged", self.port) from None
        if stderr:
            text = stderr.decode(errors="replace")
            if "KeyboardInterrupt" in text:
                raise BoardInterrupted(out.decode(errors="replace"))
            last = last_error_line(text)
            if last.startswith("MemoryError"):
                raise BoardError(f"the board ran out of memory ({last}): the model, its buffers "
                                 f"and the device package do not fit its heap; reset the board "
                                 f"to free memory, use a smaller model (--dtype int8, --targets "
                                 f"hidden, a smaller --rank) or a board with more RAM", self.port)
            raise BoardError(f"the board raised {last}", self.port)
        return out.decode(errors="replace")

    def _interrupt(self, consume):
        """Ctrl-C to the board, then read what it prints while it stops (its last lines say
        what it kept) up to the raw REPL's end-of-output markers."""
        t = self.transport
        t.serial.write(b"\x03")
        try:
            t.follow(10, consume)
        except Exception:  # noqa: BLE001 - a second Ctrl-C or a dead link: keep going
            t.serial.write(b"\x03")
        try:
            t.enter_raw_repl(soft_reset=False)
        except Exception:  # noqa: BLE001
            pass

    def call(self, target, /, on_output=None, timeout=None, **kwargs):
        """Run target(**kwargs) on the board, e.g. call("s2l.job.finetune", epochs=20, ...).

        The keywords are checked against the function in device/ and must be literals
        (skip2lora.board.calls): a wrong one is a UserError before anything is sent. Output,
        timeout and errors as run()."""
        return self.run(call_code(target, **kwargs), on_output=on_output, timeout=timeout)

    def script(self, name, /, **kwargs):
        """Run the board script board/scripts/<name>.py (checked like call()); return the last
        line it printed, its result ("" for a script that prints nothing)."""
        lines = self.run(script_code(name, **kwargs)).strip().splitlines()
        return lines[-1] if lines else ""

    def info(self):
        return BoardInfo(*ast.literal_eval(self.script("info")))

    # ------------------------------------------------------------ files

    # The board side of a transfer keeps its file in globals of its own (mpremote's fs_readfile
    # and fs_writefile use `f`), so a transfer cut short (Ctrl-C, a host killed mid-way) can be
    # closed by the next one: an open write handle left behind would otherwise hold the file.
    _CLOSE = "try:\n _s2l_f.close()\nexcept Exception:\n pass\n"
    _OPEN = _CLOSE + "_s2l_f = open(%r, %r)\n"

    def _transferred(self, path, done, total):
        """Called after every chunk of a transfer (a seam for fault-injection tests)."""

    def _lost(self, exc, doing):
        why = " ".join(str(exc).split()) or type(exc).__name__
        return UserError(f"lost the board while {doing} ({why}); "
                         f"it may have reset, lost power or been unplugged; files on the board "
                         f"are either the old or the new complete ones: run the command again",
                         self.port)

    def _abandon(self, tmp=None):
        """After a transfer cut short: back to a clean raw REPL, close the board's handle and
        remove the half-written temporary file (best effort: the link may be gone)."""
        try:
            self.transport.enter_raw_repl(soft_reset=False)
            code = self._CLOSE + "_s2l_f = None\n"
            if tmp:
                code += script_code("remove", path=tmp, missing_ok=True)
            self.transport.exec(code)
        except Exception:  # noqa: BLE001
            pass

    def read_file(self, path, missing=None):
        """The bytes of a board file. missing: what to tell the user when it does not exist."""
        from mpremote.transport import TransportError, TransportExecError

        t = self.transport
        out = bytearray()
        try:
            t.exec(self._OPEN % (path, "rb"))
            size = t.eval("_s2l_f.seek(0, 2)")
            t.exec("_s2l_f.seek(0)")
            while True:
                chunk = t.eval("_s2l_f.read(%d)" % CHUNK)
                if not chunk:
                    break
                out += chunk
                self._transferred(path, len(out), size)
            t.exec("_s2l_f.close()\n_s2l_f = None")
        except TransportExecError as exc:
            text = str(exc)
            if "ENOENT" in text or "Errno 2]" in text:
                raise UserError(f"no file {path} on the board; "
                                f"{missing or 'check the path'}", self.port) from None
            raise UserError(f"cannot read {path} from the board "
                            f"({last_error_line(exc.error_output)})", self.port) from None
        except KeyboardInterrupt:
            self._abandon()
            raise
        except (TransportError, OSError, ValueError, SyntaxError) as exc:
            raise self._lost(exc, f"reading {path}") from None
        return bytes(out)

    def write_file(self, path, data):
        """Write via path.tmp and rename, so a cut link or power never leaves a half file at
        path; Ctrl-C closes and removes the temporary file and leaves the old file."""
        from mpremote.transport import TransportError, TransportExecError

        self.makedirs(path.rsplit("/", 1)[0])
        tmp = path + ".tmp"
        t = self.transport
        try:
            t.exec(self._OPEN % (tmp, "wb") + "_s2l_w = _s2l_f.write\n")
            for start in range(0, len(data), CHUNK):
                t.exec("_s2l_w(%r)" % data[start:start + CHUNK])
                self._transferred(path, min(start + CHUNK, len(data)), len(data))
            t.exec("_s2l_f.close()\n_s2l_f = None\nimport os\nos.rename(%r, %r)" % (tmp, path))
        except TransportExecError as exc:
            self._abandon(tmp)
            text = last_error_line(exc.error_output)
            if _FLASH_FULL.search(exc.error_output):
                raise UserError(f"the board's flash is full writing {path} ({len(data):,} "
                                f"bytes); the old {path} is intact; remove files you do not "
                                f"need, or use a smaller dataset", self.port) from None
            raise UserError(f"cannot write {path} to the board ({text})", self.port) from None
        except KeyboardInterrupt:
            self._abandon(tmp)
            raise
        except (TransportError, OSError) as exc:
            raise self._lost(exc, f"writing {path}") from None

    def file_sha256(self, path):
        """sha256 hex of a board file, or None if it does not exist."""
        text = self.script("sha256", path=path)
        if text == "NOHASH":  # CircuitPython without Wi-Fi has no hashlib: read the file back
            return sha256(self.read_file(path))
        return None if text == "MISSING" else text

    def makedirs(self, path):
        self.script("makedirs", path=path)

    def listdir(self, path):
        return ast.literal_eval(self.script("listdir", path=path))

    def file_crc(self, path):
        """The file_crc trailer (last 4 bytes) of a board file, without copying the file."""
        return int(self.script("file_crc", path=path))


def sha256(data):
    return hashlib.sha256(data).hexdigest()


PROGRESS_LINE = re.compile(rb"^S2L((?: \w+=\S+)+)\s*$")


def parse_progress(line):
    """{'epoch': 3, 'loss': 0.12, ...} from one `S2L key=value ...` line, else None."""
    m = PROGRESS_LINE.match(line.strip())
    if not m:
        return None
    record = {}
    for pair in m.group(1).split():
        key, value = pair.decode().split("=", 1)
        try:
            record[key] = int(value)
        except ValueError:
            try:
                record[key] = float(value)
            except ValueError:
                record[key] = value
    return record

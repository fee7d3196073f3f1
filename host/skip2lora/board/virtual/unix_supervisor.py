"""The unix kind's supervisor process: the MicroPython unix port behind a pty, made to act
like a board's firmware (`python -m skip2lora.board.virtual.unix_supervisor supervise ...`).

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
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import tty
from pathlib import Path

from skip2lora.board.virtual.base import (CHILD_PID_FILE, KiB, LINK_NAME, LOG_FILE, format_size,
                                          catch_stop_signals, pdeathsig_setter, point_link,
                                          remove_state, supervisor_main, write_state)
from skip2lora.board.virtual.images import BLOCK_SIZE, FLASH_IMAGE

HARD_RESET_EXIT = 211  # exit status of the interpreter for machine.reset()
SOFT_REBOOT = b"MPY: soft reboot\r\n"
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
FRIENDLY_BANNER = b'Type "help()" for more information.'
PROMPT = b">>> "
MARK_MOUNTED = b"\x00vboard:mounted\x00"
MARK_READY = b"\x00vboard:ready\x00"
CTRL_A, CTRL_C = b"\x01", b"\x03"
MOUNT_REQUEST = b"\x18"  # how the board side of `mpremote mount` starts each request
SIGINT_GAP = 0.5  # two SIGINTs before the first is handled kill the unix port: see interrupt()
MAX_TO_HOST = 64 * KiB  # stop reading the interpreter when the host is this far behind
_BARE_LF = re.compile(rb"(?<!\r)\n")

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
        "image": str(image), "blocks": blocks, "read": FLASH_IMAGE.read_size,
        "prog": FLASH_IMAGE.prog_size, "look": FLASH_IMAGE.lookahead, "hard": HARD_RESET_EXIT, "main": bool(run_main),
        "mounted": MARK_MOUNTED.decode(), "ready": MARK_READY.decode()}


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

    kind = "unix"  # in state.json; circuitpython_supervisor.py subclasses for its kind
    # Ctrl-A for the raw REPL after a soft reset goes once the interpreter has printed its
    # prompt (the CircuitPython port drops input typed before its REPL starts), else at once.
    raw_after_prompt = False

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
        self.die_with_us = pdeathsig_setter(signal.SIGKILL)
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
                "-c", self.boot_code(run_main)]
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

    def boot_code(self, run_main):
        """What the interpreter runs first: mount the image, then boot.py (and main.py)."""
        return boot_script(self.image, self.flash // BLOCK_SIZE, run_main)

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
                    self.asked_raw = not self.raw_after_prompt
                    if self.asked_raw:
                        os.write(self.child_fd, CTRL_A)
                else:
                    self.phase = "running"
            elif self.phase == "enter-raw":
                if not self.asked_raw:
                    before, found = self._take_until(PROMPT)
                    if not found:
                        break
                    os.write(self.child_fd, CTRL_A)
                    self.asked_raw = True
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
        write_state(self.run_dir, {
            "pid": os.getpid(), "kind": self.kind, "port": str(self.run_dir / LINK_NAME),
            "pts": self.pts, "image": str(self.image), "heap": self.heap, "flash": self.flash,
            "run_dir": str(self.run_dir), "started": time.time()})
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
        point_link(self.run_dir, self.pts)

    def run(self):
        self.open_port()
        wake_r = catch_stop_signals(self.on_signal)
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
        remove_state(self.run_dir, self.pts)
        self.log("supervisor stopped")


def _add_arguments(parser):
    parser.add_argument("--heap", type=int, required=True)
    parser.add_argument("--micropython", required=True)


def run_supervisor(cls, args):
    """The supervisor process's body for a unix-port kind (this one, or a subclass's)."""
    trace = os.environ.get("SKIP2LORA_VBOARD_TRACE", "") not in ("", "0")
    try:
        cls(Path(args.run_dir), args.image, args.heap, args.micropython, trace).run()
    except SystemExit as error:
        if isinstance(error.code, str):
            print(error.code, file=sys.stderr)
            return 1
        raise
    return 0


def _run(args):
    return run_supervisor(Supervisor, args)


if __name__ == "__main__":
    sys.exit(supervisor_main("skip2lora.board.virtual.unix_supervisor", _add_arguments, _run))

"""What every kind of virtual board shares: the run dir, its state file, the port link, and the
supervisor process that owns the board.

A board of any kind is one *supervisor* process (`python -m skip2lora.board.virtual.<kind>
supervise ...`) that writes `state.json` once the board answers, keeps `<run dir>/tty` pointing
at the board's pty, and stops cleanly on SIGTERM. So finding the default port, `board status`,
`board stop` and a power cut (SIGKILL) work the same whatever runs behind the pty: the
MicroPython unix port (unix.py) or real Cortex-M firmware under QEMU (qemu.py).
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from skip2lora.board.virtual import images
from skip2lora.errors import UserError

KiB = 1024
MiB = 1024 * KiB

KINDS = ("unix", "cortex-m0plus", "cortex-m4f", "circuitpython")
STATE_FILE = "state.json"
LINK_NAME = "tty"
LOG_FILE = "vboard.log"
LOCK_FILE = "lock"
CHILD_PID_FILE = "child.pid"
SUPERVISOR_MARKER = b"skip2lora.board.virtual"  # in every supervisor's command line
HOST_DIR = Path(__file__).resolve().parents[3]  # the folder holding the skip2lora package


# ---------------------------------------------------------------------------------------------
# Sizes
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


# ---------------------------------------------------------------------------------------------
# The run dir and its state
# ---------------------------------------------------------------------------------------------

def default_run_dir():
    """$SKIP2LORA_RUN_DIR, else $XDG_CACHE_HOME/skip2lora/vboard, else ~/.cache/skip2lora/vboard."""
    if os.environ.get("SKIP2LORA_RUN_DIR"):
        return Path(os.environ["SKIP2LORA_RUN_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "skip2lora" / "vboard"


def pid_alive(pid, marker=SUPERVISOR_MARKER):
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
    """The running board's state dict (pid, kind, port, pts, image, heap, flash, started) or None.

    A state left by a supervisor that died (killed, machine rebooted) is removed, with its link.
    """
    run_dir = Path(run_dir) if run_dir else default_run_dir()
    try:
        state = json.loads((run_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if pid_alive(state.get("pid", -1)):
        state.setdefault("kind", "unix")
        return state
    remove_state(run_dir, state.get("pts"))
    return None


def write_state(run_dir, state):
    """Publish the state atomically: a reader sees no board or a whole one."""
    run_dir = Path(run_dir)
    tmp = run_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(run_dir / STATE_FILE)


def remove_state(run_dir, pts=None):
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


def point_link(run_dir, pts):
    """<run dir>/tty -> pts, replaced atomically.

    The link is the port printed to users: mpremote polls a path that is not /dev/pts/... with
    timeouts, as it does /dev/ttyACM0, where it would read a /dev/pts/N path without one.
    """
    link = Path(run_dir) / LINK_NAME
    tmp = Path(run_dir) / (LINK_NAME + ".tmp")
    try:
        tmp.unlink()
    except OSError:
        pass
    os.symlink(pts, tmp)
    tmp.replace(link)
    return link


SLOT_PREFIX = "board"  # <run dir>/board2, board3, ...: the run dirs of a fleet's other boards


def slot_dir(run_dir, slot):
    """The run dir of virtual board number `slot`: 1 is the run dir itself (the board every
    command uses by default), 2 and on are sub-folders, each with its own port, state, log and
    default image."""
    run_dir = Path(run_dir)
    return run_dir if slot == 1 else run_dir / f"{SLOT_PREFIX}{slot}"


def running_boards(run_dir=None):
    """[(slot, its run dir, state)] of every virtual board running from run_dir, by slot."""
    run_dir = Path(run_dir) if run_dir else default_run_dir()
    slots = [1] + sorted(int(p.name[len(SLOT_PREFIX):]) for p in run_dir.glob(SLOT_PREFIX + "*")
                         if p.name[len(SLOT_PREFIX):].isdigit() and p.is_dir())
    found = []
    for slot in slots:
        state = read_state(slot_dir(run_dir, slot))
        if state is not None:
            found.append((slot, slot_dir(run_dir, slot), state))
    return found


def free_slots(run_dir, count):
    """The first `count` slot numbers with no board running."""
    taken = {slot for slot, _, _ in running_boards(run_dir)}
    free, slot = [], 1
    while len(free) < count:
        if slot not in taken:
            free.append(slot)
        slot += 1
    return free


def find_board(port, run_dir=None):
    """(slot, run dir, state) of the running virtual board on `port` (its link or pty)."""
    want = Path(port).expanduser().resolve()
    for found in running_boards(run_dir):
        state = found[2]
        if want in (Path(state["port"]).resolve(), Path(state.get("pts", state["port"]))):
            return found
    raise UserError(f"no running virtual board is on {port}: `skip2lora board status` lists "
                    f"their ports")


def default_port(run_dir=None):
    """The port of the running virtual board, for commands given no --port.

    Raises UserError telling the user to start one (or to name a real board) when none runs.
    """
    state = read_state(run_dir)
    others = running_boards(run_dir) if state is None else []
    if others:
        raise UserError(f"no board port given and the first virtual board is not running: give "
                        f"--port, e.g. --port {others[0][2]['port']} (`skip2lora board status` "
                        f"lists the running boards)")
    if state is None:
        raise UserError("no board port given and no virtual board is running: "
                        "run `skip2lora board start` or pass --port PORT (e.g. /dev/ttyACM0)")
    return state["port"]


def read_int(path):
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def wait_gone(pid, timeout, marker=SUPERVISOR_MARKER):
    deadline = time.monotonic() + timeout
    while pid_alive(pid, marker) and time.monotonic() < deadline:
        time.sleep(0.01)
    return not pid_alive(pid, marker)


def stop_pid(pid, timeout=20):
    """SIGTERM a supervisor and wait (a QEMU board saves its RAM disk then); SIGKILL if it hangs."""
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return
    if not wait_gone(pid, timeout):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        wait_gone(pid, 5)


def stop(run_dir=None):
    """Stop the board running from run_dir (default run dir): its state, or None if none ran."""
    run_dir = Path(run_dir) if run_dir else default_run_dir()
    state = read_state(run_dir)
    if state is None:
        return None
    stop_pid(state["pid"])
    remove_state(run_dir, state.get("pts"))
    return state


# ---------------------------------------------------------------------------------------------
# Helpers for the supervisor processes
# ---------------------------------------------------------------------------------------------

def pdeathsig_setter(sig):
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


def _lock(run_dir, image, parent):
    """Die with `parent` if given, and hold the run dir and the image locked (two boards on one
    image would overwrite each other's files). The open lock files, or an exit status."""
    import fcntl

    if parent:
        pdeathsig_setter(signal.SIGTERM)()
        if os.getppid() != parent:
            return 1
    lock = open(Path(run_dir) / LOCK_FILE, "w")
    image_lock = open(image, "rb")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(f"another virtual board runs from {run_dir}", file=sys.stderr)
        return 3
    try:
        fcntl.flock(image_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(f"the image {image} is in use by another virtual board", file=sys.stderr)
        return 3
    return lock, image_lock


def supervisor_main(module, add_arguments, run):
    """The `__main__` of every supervisor module: `python -m <module> supervise --run-dir DIR
    --image FILE [--parent PID] <its own options>`; locks, then run(args) -> exit status."""
    if sys.argv[1:2] != ["supervise"]:
        print(f"usage: python -m {module} supervise ... (use `skip2lora board start`)",
              file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"python -m {module} supervise")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--parent", type=int, default=0,
                        help="stop when this process (the one that started us) dies")
    add_arguments(parser)
    args = parser.parse_args(sys.argv[2:])
    held = _lock(args.run_dir, args.image, args.parent)
    if isinstance(held, int):
        return held
    return run(args)


def catch_stop_signals(handler):
    """SIGTERM, SIGINT and SIGHUP call handler, and wake a poll on the returned fd."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, handler)
    return wake_r


# ---------------------------------------------------------------------------------------------
# The board object, from the CLI and from tests
# ---------------------------------------------------------------------------------------------

class VirtualBoard:
    """A virtual board of any kind in its own supervisor process.

        with VirtualBoard(tmp_path / "flash.img", kind="cortex-m0plus") as board:
            subprocess.run(["mpremote", "connect", board.port, "exec", "print(1+1)"])

    `VirtualBoard(...)` returns the subclass for `kind` (unix.UnixBoard, qemu.QemuBoard).
    run_dir holds the port link, the state and the log (a new temporary folder by default).
    detach=True leaves the board running after this process exits (`skip2lora board start`);
    otherwise it stops with the thread that started it. kill() is a power cut.
    """

    kind = None
    image_name = None  # the default image in the run dir
    supervisor_module = None  # `python -m <this> supervise ...`

    kinds = ()  # the kinds a subclass runs: VirtualBoard(kind=...) builds that subclass
    _class_of_kind = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        VirtualBoard._class_of_kind.update(dict.fromkeys(cls.kinds, cls))

    def __new__(cls, *args, kind="unix", **kwargs):
        if cls is VirtualBoard:
            if kind not in VirtualBoard._class_of_kind:
                raise UserError(f"unknown virtual board kind {kind!r}: use one of "
                                f"{', '.join(KINDS)}")
            cls = VirtualBoard._class_of_kind[kind]
        return super().__new__(cls)

    def __init__(self, image=None, *, kind="unix", run_dir=None, detach=False):
        self.kind = kind
        self.run_dir = (Path(run_dir).expanduser().resolve() if run_dir
                        else Path(tempfile.mkdtemp(prefix="vboard-")))
        self.image = (Path(image).expanduser().resolve() if image
                      else self.run_dir / self.image_name)
        self.detach = detach
        self.process = None
        self.state = None

    # -- what a kind provides -------------------------------------------------------------------

    def prepare(self):
        """Check the tools and the image before spawning; return the supervisor's arguments."""
        raise NotImplementedError

    def describe(self):
        """One line for `board start`: what kind of board, heap, flash, image."""
        raise NotImplementedError

    # -- common behaviour -----------------------------------------------------------------------

    @property
    def port(self):
        """The path to give `mpremote connect` (a link to the pty in the run dir)."""
        return self.state["port"] if self.state else None

    @property
    def pid(self):
        return self.state["pid"] if self.state else None

    @property
    def running(self):
        return self.state is not None and pid_alive(self.state["pid"])

    def start(self, timeout=30):
        if self.running:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if read_state(self.run_dir) is not None:
            raise UserError(f"a virtual board is already running from {self.run_dir}")
        args = self.prepare()
        log_path = self.run_dir / LOG_FILE
        if log_path.exists() and log_path.stat().st_size > MiB:
            log_path.unlink()
        log_offset = log_path.stat().st_size if log_path.exists() else 0
        argv = [sys.executable, "-m", self.supervisor_module, "supervise",
                "--run-dir", str(self.run_dir), "--image", str(self.image), *args]
        if not self.detach:
            argv += ["--parent", str(os.getpid())]
        env = dict(os.environ)
        env["PYTHONPATH"] = str(HOST_DIR) + (os.pathsep + env["PYTHONPATH"]
                                             if env.get("PYTHONPATH") else "")
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
                lines = f.read().decode(errors="replace").strip().splitlines()
                tail = lines[-1] if lines else ""
        except OSError:
            pass
        raise UserError(f"the virtual board did not start{': ' + tail if tail else ''} "
                        f"(log: {log_path})")

    def stop(self, timeout=20):
        """Stop cleanly: the board's flash (image file or RAM disk) is whole and kept."""
        if self.state is None:
            return
        stop_pid(self.state["pid"], timeout)
        if self.process is not None:
            self.process.wait()
        remove_state(self.run_dir, self.state.get("pts"))
        self.state = None

    def kill(self):
        """Power cut: SIGKILL the supervisor; the board dies with it, mid-write or not."""
        if self.state is None:
            return
        child = read_int(self.run_dir / CHILD_PID_FILE)
        try:
            os.kill(self.state["pid"], signal.SIGKILL)
        except OSError:
            pass
        if self.process is not None:
            self.process.wait()
        wait_gone(self.state["pid"], 5)
        if child:
            wait_gone(child, 5, marker=None)
        remove_state(self.run_dir, self.state.get("pts"))
        self.state = None

    def open_image(self):
        """The board's filesystem as littlefs-python sees it (a copy: the file is not written).

        Read it after stop(): while the board runs, its writes may not be in the file yet.
        """
        return images.open_image(self.image, self.kind)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def start_board(kind="unix", **options):
    """A started VirtualBoard of `kind` (options as VirtualBoard's); stop() or kill() it."""
    return VirtualBoard(kind=kind, **options).start()

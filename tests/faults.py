"""Fault injection for the tests: a tally of the faults injected and of the states verified
consistent after them, the real `skip2lora` CLI with a pause at a chosen point of a board file
transfer, and board-side pauses inside the device code (cache build, adapter and state saves).

Every pause makes a fault deterministic: the process under test stops at a known point (it
prints a marker and sleeps), and the test then cuts the power (VirtualBoard.kill), kills the
host process or sends it a real SIGINT there.

Kept free of pytest and numpy imports: the hooked CLI child imports this module too.
"""
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

TESTS = Path(__file__).resolve().parent
MARK = "S2L-FAULT-POINT"
HOOK_ENV = "SKIP2LORA_TEST_HOOK"


# ---------------------------------------------------------------------------- the tally

class Tally:
    """Faults injected, and the ones whose aftermath was checked consistent (tests/conftest.py
    prints both at the end of the session and fails the session if they differ)."""
    injected = []
    consistent = []


@contextmanager
def fault(name):
    """`with fault("power cut while the cache is written"):` inject the fault, then check the
    state after it; the fault counts as consistent only if the block finishes."""
    Tally.injected.append(name)
    yield
    Tally.consistent.append(name)


# ---------------------------------------------------------------------------- the CLI

def _default_sigint():
    # a test run started in the background may ignore SIGINT, and a child inherits that; the
    # CLI under test must see Ctrl-C as a user's terminal delivers it
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli(*args, timeout=180):
    """Run `python -m skip2lora ARGS`; returns the CompletedProcess (text)."""
    return subprocess.run([sys.executable, "-m", "skip2lora", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=_default_sigint)


def cli_popen(*args, hook=None):
    """Start the CLI; with hook={"path": BOARD_PATH, "after": N} it pauses once N bytes of
    that board file have been transferred (written or read) and prints MARK on stderr."""
    env = dict(os.environ)
    argv = [sys.executable, "-m", "skip2lora", *map(str, args)]
    if hook is not None:
        env[HOOK_ENV] = json.dumps(hook)
        argv = [sys.executable, "-c", _HOOKED_MAIN, *map(str, args)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            bufsize=1, env=env, preexec_fn=_default_sigint)


_HOOKED_MAIN = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
import faults
faults.install_transfer_hook()
from skip2lora.cli import main
sys.exit(main(sys.argv[1:]))
"""


class _Resume(Exception):
    pass


def install_transfer_hook():
    """In the CLI child: pause inside BoardLink's transfer of one file (see cli_popen)."""
    from skip2lora.board.link import BoardLink

    spec = json.loads(os.environ[HOOK_ENV])
    fired = []

    def resume(signum, frame):
        raise _Resume()

    def transferred(self, path, done, total):
        if fired or path != spec["path"] or done < spec["after"]:
            return
        fired.append(done)
        signal.signal(signal.SIGUSR1, resume)
        sys.stderr.write(f"{MARK} {path} {done}/{total}\n")
        sys.stderr.flush()
        try:
            time.sleep(120)  # SIGINT raises KeyboardInterrupt here; SIGUSR1 resumes
        except _Resume:
            pass

    BoardLink._transferred = transferred


_read_ahead = {}  # id(stream) -> bytes read from its pipe after the line wait_for wanted


def wait_for(stream, text, timeout=60, proc=None):
    """Read lines of a child's pipe until one contains text; returns every line read. Reads
    the pipe's file descriptor itself: select() cannot see lines already sitting in the text
    stream's buffer, so two lines that arrive together would leave the second unseen."""
    import select

    fd = stream.fileno()
    pending = _read_ahead.pop(id(stream), b"")
    lines = []
    deadline = time.monotonic() + timeout
    while True:
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            lines.append(line.decode() + "\n")
            if text in lines[-1]:
                _read_ahead[id(stream)] = pending
                return lines
        if time.monotonic() >= deadline:
            break
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            if proc is not None and proc.poll() is not None:
                break
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        pending += chunk
    raise AssertionError(f"{text!r} never came; got:\n{''.join(lines)}{pending!r}")


def finish(proc, timeout=60):
    """(returncode, stdout, stderr) of a child, killed if it does not end in time; with what
    wait_for read past its line put back in front."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the command did not end in {timeout} s:\n{out}\n{err}")
    early = [_read_ahead.pop(id(s), b"").decode() for s in (proc.stdout, proc.stderr)]
    return proc.returncode, early[0] + (out or ""), early[1] + (err or "")


def one_line_error(stderr):
    """The CLI's error contract: exactly one line, `skip2lora: ...`, no traceback."""
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("skip2lora: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


# ---------------------------------------------------------------------------- the board side

# Board code run before a fine-tuning job: it wraps the device package's own writes and, at the
# (point, count) chosen, prints MARK and sleeps, so the power cut lands at exactly that write.
BOARD_PAUSE = r"""
import time
import s2l.cache, s2l.formats, s2l.train
_where = @WHERE@
_calls = {}

def _hook(name):
    _calls[name] = _calls.get(name, 0) + 1
    if (name, _calls[name]) == tuple(_where):
        print("S2L-FAULT-POINT %s %d" % (name, _calls[name]))
        time.sleep(120)

class _Counted:
    def __init__(self, f, name):
        self.f, self.name = f, name
    def write(self, b):
        n = self.f.write(b)
        _hook(self.name)
        return n
    def flush(self):
        self.f.flush()
    def close(self):
        self.f.close()

def _wrap_open(mod, name, suffix=""):
    real = mod.open_write
    mod.open_write = lambda path: (_Counted(real(path), name) if path.endswith(suffix)
                                   else real(path))

_wrap_open(s2l.cache, "cache")                  # every record buffer of the cache build
_wrap_open(s2l.formats, "state", ".state.tmp")  # every buffer of an <adapters>.state save
_real_wa = s2l.train.write_adapters
def _write_adapters(*a):
    def payload():
        for b in a[-1]:
            yield b
            _hook("adapters")   # every buffer of an .s2la save, header already written
    return _real_wa(*(a[:-1] + (payload(),)))
s2l.train.write_adapters = _write_adapters
"""


def board_pause(point, count):
    """BOARD_PAUSE set to stop at the count-th write of point ("cache", "adapters", "state")."""
    return BOARD_PAUSE.replace("@WHERE@", repr((point, count)))


class _Cut(Exception):
    pass


def run_until_cut(board, code, timeout=120):
    """Run code on the board (raw REPL) and cut its power the moment it prints MARK.
    Returns the board's output up to the cut."""
    from skip2lora.board.link import BoardLink

    seen = bytearray()

    def feed(chunk):
        seen.extend(chunk)
        if MARK.encode() in seen:
            board.kill()
            raise _Cut()

    try:
        with BoardLink(board.port) as link:
            link.run(code, on_output=feed, timeout=timeout)
    except _Cut:
        return seen.decode(errors="replace")
    raise AssertionError("the board never reached the fault point:\n"
                         + seen.decode(errors="replace"))


def install_pause(board, point, count):
    """Patch the device package in the board's running interpreter (its modules stay imported
    between commands until a soft reset) so that the next fine-tuning job, whoever starts it,
    prints MARK and sleeps at that write. A Ctrl-C sent then lands in that sleep: on the unix
    port a SIGINT that lands inside the garbage collector leaves the heap locked, which a board
    (Ctrl-C scheduled at the next bytecode) never does."""
    board_run(board, board_pause(point, count))


def soft_reset(board):
    """A fresh interpreter on the same flash: no patches, no globals, a clean heap."""
    from skip2lora.board.link import BoardLink

    with BoardLink(board.port) as link:
        link.transport.enter_raw_repl(soft_reset=True)


def board_run(board, code, timeout=120):
    """Run code on the board; returns its output."""
    from skip2lora.board.link import BoardLink

    with BoardLink(board.port) as link:
        return link.run(code, timeout=timeout)


def board_json(board, code, timeout=120):
    """Run code that ends with `print("JSON", json.dumps(...))`; returns the object."""
    out = board_run(board, "import json\n" + code, timeout)
    line = [l for l in out.splitlines() if l.startswith("JSON ")][-1]
    return json.loads(line[5:])


# ---------------------------------------------------------------------------- mutated files

def reseal(raw, trailer=True):
    """Recompute a binary file's header CRC (and whole-file CRC trailer) after a mutation, so
    the mutation reaches the field checks behind the CRCs (docs/formats.md)."""
    import struct
    import zlib

    raw = bytearray(raw)
    if len(raw) >= 12:
        hl = struct.unpack_from("<H", raw, 6)[0]
        if 12 <= hl <= len(raw) and hl % 4 == 0:
            struct.pack_into("<I", raw, hl - 4, zlib.crc32(bytes(raw[:hl - 4])))
    if trailer and len(raw) >= 8:
        struct.pack_into("<I", raw, len(raw) - 4, zlib.crc32(bytes(raw[:-4])))
    return bytes(raw)


def mutate(data, rng, trailer=True):
    """One seeded mutation of a real file: (how, bytes). rng: random.Random."""
    import struct

    raw = bytearray(data)
    op = rng.choice(["truncate", "flip", "reseal-flip", "reseal-header", "reseal-extend",
                     "reseal-truncate", "reseal-nan"])
    if op in ("truncate", "reseal-truncate"):
        raw = raw[:rng.randrange(len(raw))]
    elif op == "reseal-extend":
        raw = raw[:-4] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))) + raw[-4:]
    elif op == "reseal-header":  # one header field: a byte, or a u16 like a dim
        hl = struct.unpack_from("<H", raw, 6)[0] if len(raw) >= 8 else 12
        pos = rng.randrange(8, max(9, min(hl - 4, len(raw) - 1)))
        if rng.random() < 0.5 and pos + 2 <= len(raw):
            struct.pack_into("<H", raw, pos, rng.choice([0, 1, 2, 255, 4096, 4097, 65535,
                                                         rng.randrange(65536)]))
        else:
            raw[pos] = rng.randrange(256)
    elif op == "reseal-nan":  # a NaN or Inf float32 where the payload holds values
        hl = struct.unpack_from("<H", raw, 6)[0]
        pos = hl + 4 * rng.randrange(max(1, (len(raw) - 4 - hl) // 4))
        value = rng.choice([float("nan"), float("inf"), -float("inf")])
        struct.pack_into("<f", raw, min(pos, len(raw) - 8), value)
    else:
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
    if op.startswith("reseal"):
        raw = reseal(raw, trailer)
    return op, bytes(raw)

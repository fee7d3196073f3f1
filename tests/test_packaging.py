"""The device package can be installed the micropython-lib way: package.json is what
tools/write_package_json.py derives from device/manifest.py, it lists every module of the package
folder and nothing of the bench extension, and `mpremote mip install` of it onto a fresh virtual
board gives an importable package."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from skip2lora.board import deploy
from skip2lora.board.virtual import VirtualBoard

ROOT = Path(__file__).resolve().parent.parent
DEVICE = ROOT / "device"
sys.path.insert(0, str(ROOT / "tools"))

import write_package_json  # noqa: E402


def test_committed_package_json_is_what_the_manifest_gives():
    assert (DEVICE / "package.json").read_text() == \
        write_package_json.package_json(DEVICE / "manifest.py"), \
        "device/package.json is stale: run python tools/write_package_json.py"


def test_package_json_lists_every_module_of_the_package_folder_and_no_bench():
    urls = json.loads((DEVICE / "package.json").read_text())["urls"]
    listed = sorted(target for target, _ in urls)
    shipped = sorted(p.relative_to(DEVICE).as_posix() for p in (DEVICE / "s2l").rglob("*.py"))
    assert listed == shipped
    assert all(target == source for target, source in urls)
    assert not any("bench" in target for target in listed)


def _tool(*args):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "write_package_json.py"), *args],
                          capture_output=True, text=True)


def test_a_new_module_fails_the_check_until_package_json_is_rewritten(tmp_path):
    device = tmp_path / "device"
    shutil.copytree(DEVICE / "s2l", device / "s2l")
    shutil.copy(DEVICE / "manifest.py", device)
    shutil.copy(DEVICE / "package.json", device)
    assert _tool("--check", "--device", str(device)).returncode == 0
    (device / "s2l" / "newmodule.py").write_text("X = 1\n")
    stale = _tool("--check", "--device", str(device))
    assert stale.returncode == 1 and "write_package_json.py" in stale.stderr
    assert _tool("--device", str(device)).returncode == 0
    assert ["s2l/newmodule.py", "s2l/newmodule.py"] in \
        json.loads((device / "package.json").read_text())["urls"]
    assert _tool("--check", "--device", str(device)).returncode == 0


def test_a_manifest_command_the_tool_does_not_understand_stops_it(tmp_path):
    (tmp_path / "manifest.py").write_text('metadata(version="1")\nrequire("aioble")\n')
    done = _tool("--device", str(tmp_path))
    assert done.returncode == 2 and "require()" in done.stderr
    assert not (tmp_path / "package.json").exists()


class _Info:
    name, arch, mpy_version, mpy_sub = "circuitpython", None, 6, 3  # plain .py, no mpy-cross


def test_flash_leaves_the_bench_extension_out_and_bench_puts_it_beside_s2l():
    flashed = [u.remote for u in deploy.package_uploads(_Info())]
    assert flashed and all(r.startswith("/lib/s2l/") for r in flashed)
    assert not any("bench" in r for r in flashed)
    bench = [u.remote for u in deploy.bench_uploads(_Info())]
    assert bench == ["/lib/s2l_bench/__init__.py"]


def test_mip_install_from_package_json_onto_a_board(tmp_path):
    mp = os.path.join(os.path.dirname(sys.executable), "mpremote")
    with VirtualBoard(tmp_path / "flash.img", heap="192K", flash="1M",
                      run_dir=tmp_path / "run") as board:
        done = subprocess.run([mp, "connect", board.port, "mip", "install", "--target", "/lib",
                               str(DEVICE / "package.json")], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        out = subprocess.run([mp, "connect", board.port, "exec",
                              "from s2l import Model, Trainer, Dataset; print('imported')"],
                             capture_output=True, text=True, timeout=60)
        assert "imported" in out.stdout, out.stdout + out.stderr

"""The device package can be installed the micropython-lib way: package.json lists every module,
and `mpremote mip install` of it onto a fresh virtual board gives an importable package."""
import json
import os
import subprocess
import sys
from pathlib import Path

from skip2lora.board.virtual import VirtualBoard

DEVICE = Path(__file__).resolve().parent.parent / "device"


def test_package_json_lists_every_device_module():
    urls = json.loads((DEVICE / "package.json").read_text())["urls"]
    listed = sorted(target for target, _ in urls)
    shipped = sorted(f"s2l/{p.name}" for p in (DEVICE / "s2l").glob("*.py"))
    assert listed == shipped
    assert all(target == source for target, source in urls)


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

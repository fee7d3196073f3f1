"""Every board script (host/skip2lora/board/scripts/) as the link sends it (the file, then one
call), run on the MicroPython unix port without the s2l package, and its answer checked
against what the host computes itself."""
import ast
import hashlib
import os
import struct

import pytest

from mpyrun import FIXTURES, MpyError, run
from skip2lora.board.calls import SCRIPTS_DIR, script_code
from skip2lora.board.link import BoardInfo

TESTED = {"info", "sha256", "makedirs", "listdir", "remove", "file_crc", "unique_id"}


def board(name, cwd, **kwargs):
    """What the script printed, as BoardLink.script returns it."""
    return run(script_code(name, **kwargs), cwd)[1]


def test_every_script_is_tested_here():
    assert {p.stem for p in SCRIPTS_DIR.glob("*.py")} == TESTED


def test_info(tmp_path):
    fields = ast.literal_eval(board("info", tmp_path).strip().splitlines()[-1])
    info = BoardInfo(*fields)
    assert info.name == "micropython" and info.platform == "linux"
    assert info.arch == "x64" and info.mpy_version == 6
    assert 150 * 1024 < info.heap_total <= 192 * 1024 and 0 < info.heap_free < info.heap_total
    assert info.fs_total > info.fs_free > 0


def test_sha256(tmp_path):
    data = bytes(range(256)) * 5 + b"tail"  # more than one 512-byte read, not a multiple of it
    (tmp_path / "f.bin").write_bytes(data)
    assert board("sha256", tmp_path, path="f.bin").strip() == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert board("sha256", tmp_path, path="empty").strip() == hashlib.sha256(b"").hexdigest()
    assert board("sha256", tmp_path, path="nothing.bin").strip() == "MISSING"


def test_sha256_without_hashlib_says_so(tmp_path):
    """CircuitPython without Wi-Fi has no hashlib: NOHASH, and the host hashes a copy."""
    code = script_code("sha256", path="f.bin").replace("import hashlib, binascii",
                                                      "import no_such_module")
    (tmp_path / "f.bin").write_bytes(b"x")
    assert run(code, tmp_path)[1].strip() == "NOHASH"


def test_unique_id(tmp_path):
    """No machine.unique_id (the unix port): the id kept in a file, written once from `new`;
    with one, its bytes in hex, unless the board is virtual (stored_first)."""
    path = str(tmp_path / "skip2lora" / "board_id")
    assert board("unique_id", tmp_path, new="a1b2c3", path=path).strip() == "a1b2c3"
    assert (tmp_path / "skip2lora" / "board_id").read_text() == "a1b2c3"
    assert board("unique_id", tmp_path, new="ffff", path=path).strip() == "a1b2c3"  # kept
    chip = ("import sys\nclass M:\n def unique_id():\n  return b'\\xde\\xad\\x01'\n"
            "sys.modules['machine'] = M\n")
    assert run(chip + script_code("unique_id", new="ffff", path=path), tmp_path)[1].strip() == \
        "dead01"
    assert run(chip + script_code("unique_id", new="ffff", path=path, stored_first=True),
               tmp_path)[1].strip() == "a1b2c3"


def test_makedirs(tmp_path):
    (tmp_path / "a").mkdir()  # an existing part is no error
    board("makedirs", tmp_path, path=str(tmp_path / "a" / "b" / "c"))
    assert (tmp_path / "a" / "b" / "c").is_dir()


def test_listdir(tmp_path):
    for name in ("x.s2la", "y.s2ld"):
        (tmp_path / "d" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "d" / name).write_bytes(b"1")
    listed = ast.literal_eval(board("listdir", tmp_path, path="d").strip())
    assert sorted(listed) == sorted(os.listdir(tmp_path / "d"))


def test_remove(tmp_path):
    (tmp_path / "f.tmp").write_bytes(b"1")
    board("remove", tmp_path, path="f.tmp")
    assert not (tmp_path / "f.tmp").exists()
    board("remove", tmp_path, path="f.tmp", missing_ok=True)  # already gone: fine
    with pytest.raises(MpyError, match="OSError"):
        board("remove", tmp_path, path="f.tmp")


@pytest.mark.parametrize("name", ["model-int8.s2lm", "dataset-f32.s2ld"])
def test_file_crc(tmp_path, name):
    data = (FIXTURES / name).read_bytes()
    (tmp_path / name).write_bytes(data)
    assert int(board("file_crc", tmp_path, path=name).strip()) == \
        struct.unpack("<I", data[-4:])[0]

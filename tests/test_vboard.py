"""The virtual board, driven by the real mpremote as a board on /dev/ttyACM0 (docs/virtual-board.md)."""
import argparse
import os
import select
import signal
import subprocess
import sys
import time

import littlefs
import pytest
import serial

from skip2lora.board import virtual as vboard
from skip2lora.board.virtual.images import BLOCK_SIZE, FLASH_IMAGE
from skip2lora.commands import board as board_command
from skip2lora.errors import UserError


def mpremote(port, *args, check=True, timeout=30):
    """Run the real mpremote on the port; return its stdout."""
    proc = subprocess.run([sys.executable, "-m", "mpremote", "connect", port, *args],
                          capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"mpremote {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout.decode(errors='replace')}"
                             f"{proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode(errors="replace") if check else proc


def read_until(port, ending, timeout=5.0):
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(ending):
        if time.monotonic() > deadline:
            raise AssertionError(f"waited for {ending!r}, got {data!r}")
        data += port.read(1)
    return data


@pytest.fixture
def vb(tmp_path):
    board = vboard.VirtualBoard(image=tmp_path / "flash.img", run_dir=tmp_path / "run")
    board.start()
    yield board
    board.stop()


def write_image(path, files, flash=256 * 1024):
    """A LittleFS image made on the host, as the board's VfsLfs2 lays it out."""
    ctx = littlefs.UserContext(buffsize=flash)
    fs = littlefs.LittleFS(ctx, block_size=BLOCK_SIZE, block_count=flash // BLOCK_SIZE,
                           read_size=FLASH_IMAGE.read_size, prog_size=FLASH_IMAGE.prog_size,
                           lookahead_size=FLASH_IMAGE.lookahead)
    for name, text in files.items():
        with fs.open(name, "w") as f:
            f.write(text)
    path.write_bytes(bytes(ctx.buffer))


def test_exec_prints_through_real_mpremote(vb):
    assert mpremote(vb.port, "exec", "print(1+1)").strip() == "2"
    # Like a board: LittleFS at /, /lib on sys.path, the host's filesystem out of sight.
    out = mpremote(vb.port, "exec", "import sys, os; print(sys.path); print(sorted(os.listdir('/')))")
    assert out.splitlines() == ["['', '.frozen', '/lib']", "['lib']"]
    assert "ENOENT" in mpremote(vb.port, "exec", "open('/etc/passwd')", check=False).stdout.decode()
    heap = mpremote(vb.port, "exec", "import gc; gc.collect(); print(gc.mem_free() + gc.mem_alloc())")
    assert 180 * 1024 <= int(heap) <= 192 * 1024  # -X heapsize=192K (rp2040: 192064)


def test_files_land_in_the_image_and_survive_a_restart(tmp_path):
    payload = "".join(chr(c) for c in range(32, 1200)).encode() * 3 + b"\r\n\n\t end"
    local = tmp_path / "local.txt"
    local.write_bytes(payload)
    image = tmp_path / "flash.img"
    with vboard.VirtualBoard(image=image, run_dir=tmp_path / "run") as board:
        mpremote(board.port, "fs", "cp", str(local), ":x.txt")
    assert vboard.open_image(image).open("x.txt", "rb").read() == payload
    with vboard.VirtualBoard(image=image, run_dir=tmp_path / "run") as board:
        back = tmp_path / "back.txt"
        mpremote(board.port, "fs", "cp", ":x.txt", str(back))
        assert back.read_bytes() == payload
        assert mpremote(board.port, "fs", "cat", ":x.txt").startswith(" !\"#$%")


def test_mpremote_mount_carries_binary_both_ways(vb, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "hostmod.py").write_text("def f():\n    return 'from host'\n")
    (shared / "in.bin").write_bytes(bytes(range(256)) * 4)
    out = mpremote(vb.port, "mount", str(shared), "exec", """
import hostmod
print(hostmod.f(), open('in.bin', 'rb').read() == bytes(range(256)) * 4)
with open('out.bin', 'wb') as f:
    f.write(bytes(range(255, -1, -1)) * 2)
""")
    assert out.splitlines()[-1] == "from host True"
    assert (shared / "out.bin").read_bytes() == bytes(range(255, -1, -1)) * 2


def test_soft_reset_restarts_the_interpreter_and_exec_still_works(vb):
    # `resume` skips mpremote's soft reset, so a global survives; a soft reset clears it.
    mpremote(vb.port, "resume", "exec", "kept = 41")
    assert mpremote(vb.port, "resume", "exec", "print(kept + 1)").strip() == "42"
    mpremote(vb.port, "soft-reset")
    out = mpremote(vb.port, "resume", "exec", "print('kept' in globals())")
    assert out.strip() == "False"
    assert mpremote(vb.port, "exec", "print(6*7)").strip() == "42"


def test_boot_py_runs_at_every_boot_and_main_py_outside_the_raw_repl(tmp_path):
    image = tmp_path / "flash.img"
    write_image(image, {
        "boot.py": "BOOTED = 'yes'\nwith open('log.txt', 'a') as f:\n    f.write('boot\\n')\n",
        "main.py": "with open('log.txt', 'a') as f:\n    f.write('main\\n')\n",
    })
    with vboard.VirtualBoard(image=image, run_dir=tmp_path / "run") as board:
        assert board.flash == 256 * 1024  # an existing image keeps its size
        # at power-on: boot.py then main.py (resume: no soft reset by mpremote)
        assert mpremote(board.port, "resume", "exec", "print(BOOTED)").strip() == "yes"
        # mpremote's soft reset from the raw REPL runs boot.py again, not main.py
        out = mpremote(board.port, "exec", "print(open('log.txt').read().split())")
        assert out.strip() == "['boot', 'main', 'boot']"
        # a hard reset (machine.reset(), `mpremote reset`) boots as at power-on
        mpremote(board.port, "reset")
        # mpremote's reset is `time.sleep_ms(100); machine.reset()`, sent without waiting: a
        # connection within 100 ms interrupts the sleep with its Ctrl-C (on a real board too)
        time.sleep(0.5)
        out = mpremote(board.port, "resume", "exec", "print(open('log.txt').read().split())")
        # (mpremote soft-resets before it runs machine.reset())
        assert out.strip() == "['boot', 'main', 'boot', 'boot', 'boot', 'main']"


def test_a_full_flash_raises_enospc(tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(100 * 1024))
    with vboard.VirtualBoard(image=tmp_path / "small.img", flash="64K",
                             run_dir=tmp_path / "run") as board:
        proc = mpremote(board.port, "fs", "cp", str(big), ":big.bin", check=False)
        assert proc.returncode != 0
        assert b"No space left on device" in proc.stdout + proc.stderr
        out = mpremote(board.port, "exec", """
f = open('fill.bin', 'wb')
try:
    for i in range(200):
        f.write(bytes(1024))
except OSError as e:
    print('errno', e.errno)
""")
        assert out.strip() == "errno 28"
        assert mpremote(board.port, "exec", "print('still up')").strip() == "still up"
    assert (tmp_path / "small.img").stat().st_size == 64 * 1024
    vboard.open_image(tmp_path / "small.img")  # still a sound LittleFS


def test_ctrl_c_through_the_port_interrupts_a_running_loop(vb):
    with serial.Serial(vb.port, 115200, timeout=0.1, exclusive=True) as port:
        port.write(b"\r\x03\x03\r\x01")
        read_until(port, b"raw REPL; CTRL-B to exit\r\n>")
        port.write(b"n = 0\nprint('go')\nwhile True:\n    n += 1\n\x04")
        read_until(port, b"OKgo\n")
        time.sleep(0.2)
        port.write(b"\x03")
        out = read_until(port, b"\x04>")
        assert b"KeyboardInterrupt" in out
        port.write(b"print(n > 1000)\x04")  # the raw REPL passes the unix port's bare LF
        assert read_until(port, b"\x04>") == b"OKTrue\n\x04\x04>"
        # Ctrl-C at the prompt is a byte for the REPL, not a signal that would kill it
        port.write(b"\x03\x03kept = 1\x04")
        read_until(port, b"\x04>")
        port.write(b"\x02")  # friendly REPL: the board's CR LF line ends, Ctrl-C stops a sleep
        read_until(port, b">>> ")
        port.write(b"import time\rprint('go'); time.sleep(30)\r")
        read_until(port, b"go\r\n")
        time.sleep(0.2)
        port.write(b"\x03")
        out = read_until(port, b">>> ")
        assert b"KeyboardInterrupt: \r\n" in out
        port.write(b"print(kept + 1)\r")
        assert read_until(port, b">>> ").endswith(b"\r\n2\r\n>>> ")


def test_sigint_to_mpremote_then_the_next_mpremote_interrupts_the_loop(vb):
    loop = subprocess.Popen([sys.executable, "-m", "mpremote", "connect", vb.port, "exec",
                             "print('looping')\nwhile True:\n    pass"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready, _, _ = select.select([loop.stdout], [], [], 20)
        assert ready and loop.stdout.readline().strip() == b"looping"
    finally:
        loop.send_signal(signal.SIGINT)
    loop.wait(timeout=10)
    # The loop still runs on the board, as on a real one; mpremote's Ctrl-C stops it.
    assert mpremote(vb.port, "exec", "print('alive')").strip() == "alive"


def test_power_cut_leaves_a_mountable_image(tmp_path):
    image = tmp_path / "flash.img"
    board = vboard.VirtualBoard(image=image, run_dir=tmp_path / "run").start()
    mpremote(board.port, "exec", "with open('a.txt', 'w') as f: f.write('kept')")
    board.kill()
    assert not board.running and vboard.read_state(tmp_path / "run") is None
    assert vboard.open_image(image).open("a.txt", "r").read() == "kept"
    with vboard.VirtualBoard(image=image, run_dir=tmp_path / "run") as again:
        assert mpremote(again.port, "fs", "cat", ":a.txt") == "kept"


def _board_cli(*argv):
    parser = argparse.ArgumentParser(prog="skip2lora")
    board_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["board", *argv])
    return args.run(args)


def test_board_command_start_status_stop(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SKIP2LORA_RUN_DIR", str(tmp_path / "run"))
    with pytest.raises(UserError, match="board start"):
        vboard.default_port()
    assert _board_cli("status") == 1
    assert "stopped" in capsys.readouterr().out
    try:
        assert _board_cli("start", "--heap", "128K", "--flash", "1M") == 0
        port = capsys.readouterr().out.splitlines()[-1]
        assert port == vboard.default_port() == str(tmp_path / "run" / "tty")
        assert mpremote(port, "exec", "print('up')").strip() == "up"
        assert _board_cli("start", "--heap", "128K") == 0  # already running: says so
        assert capsys.readouterr().out.splitlines()[-1] == port
        with pytest.raises(UserError, match="already running"):
            _board_cli("start", "--heap", "64K")
        assert _board_cli("status") == 0
        out = capsys.readouterr().out
        assert "running" in out and port in out and "128K" in out
        assert str(tmp_path / "run" / "flash.img") in out and "of 1024 KiB" in out
    finally:
        assert _board_cli("stop") == 0
    assert "stopped" in capsys.readouterr().out
    assert _board_cli("status") == 1
    with pytest.raises(UserError):
        vboard.default_port()
    assert vboard.open_image(tmp_path / "run" / "flash.img").listdir("/") == ["lib"]
    assert _board_cli("stop") == 0  # stopping a stopped board is fine
    with pytest.raises(UserError, match="drop --flash"):
        _board_cli("start", "--flash", "2M")  # the image is 1M
    with pytest.raises(UserError, match="bad heap size"):
        _board_cli("start", "--heap", "lots")


def test_a_killed_supervisor_is_not_a_default_port(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIP2LORA_RUN_DIR", str(tmp_path / "run"))
    board = vboard.VirtualBoard(run_dir=tmp_path / "run").start()
    assert vboard.default_port() == board.port
    os.kill(board.pid, signal.SIGKILL)
    board.process.wait()
    with pytest.raises(UserError, match="board start"):
        vboard.default_port()
    assert not (tmp_path / "run" / "tty").exists()

"""One host, many boards: the real `skip2lora` commands with --port given once per board.

Four virtual boards of two kinds (three MicroPython unix ports and a Cortex-M0+ under QEMU) are
flashed, fine-tuned and pulled by one command each; one board loses power mid-run, the others
finish, the command names the lost board, and `finetune --resume` on that board alone finishes
it. The boards start with `board start --count`, as a user starts them.
"""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import one_line_error, run_cli, skip2lora
from skip2lora.board.virtual import base, open_image
from skip2lora.board.fleet import Worker, summary_lines
from skip2lora.model.formats import read_adapters
from unavailable import require_emulator

MODEL = Path(__file__).parent / "fixtures" / "model-int8.s2lm"  # 8-6-5-3, int8, rank 2
EPOCHS = 20


def _data(path, n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    np.savez(path, x=x, y=(x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5))
    return path


def _rows(stdout):
    """The summary table's rows by board: [epochs, loss, accuracy, board s, result...]."""
    lines = stdout.splitlines()
    head = max(i for i, line in enumerate(lines) if line.startswith("board ") and "result" in line)
    rows = {}
    for line in lines[head + 1:]:
        if " boards succeeded" in line:
            break
        port, *cells = line.split()
        rows[port] = cells
    return rows


def _ports(stdout, n):
    return stdout.strip().splitlines()[-n:]


def test_board_start_count_lists_and_stops_each_or_all(tmp_path, capsys):
    env = {"SKIP2LORA_RUN_DIR": str(tmp_path / "run")}
    try:
        ports = _ports(skip2lora("board", "start", "--count", 3, "--heap", "64K",
                                 env=env).stdout, 3)
        assert ports == [str(tmp_path / "run" / "tty"), str(tmp_path / "run" / "board2" / "tty"),
                         str(tmp_path / "run" / "board3" / "tty")]
        again = skip2lora("board", "start", "--count", 3, "--heap", "64K", env=env).stdout
        assert again.count("already running") == 3 and "started" not in again
        assert _ports(again, 3) == ports
        status = skip2lora("board", "status", env=env).stdout
        assert status.startswith("3 virtual boards running:")
        assert all(f"port:  {p} -> /dev/pts/" in status for p in ports), status
        stopped = skip2lora("board", "stop", "--port", ports[1], env=env).stdout
        assert stopped.count("stopped") == 1 and "board2/flash.img" in stopped
        status = skip2lora("board", "status", env=env).stdout
        assert status.startswith("2 virtual boards running:") and ports[1] not in status
        # a fourth like them goes to the first free slot, the stopped board's, and its image
        fourth = skip2lora("board", "start", "--count", 3, "--heap", "64K", env=env).stdout
        assert fourth.count("started") == 1 and "board2/flash.img" in fourth
        bad = skip2lora("board", "start", "--count", 0, env=env, check=False)
        assert bad.returncode == 2 and "--count 0: give 1 or more" in bad.stderr
    finally:
        stopped = skip2lora("board", "stop", env=env).stdout
    assert stopped.count("stopped") == 3
    assert skip2lora("board", "status", env=env, check=False).returncode == 1

    code, _, err = run_cli(capsys, "finetune", "--data", "a.npz", "--data", "b.npz",
                           "--port", "p1", "--port", "p2", "--port", "p3")
    assert code == 2
    one_line_error(err, "--data given 2 times for 3 --port", "once per --port")
    code, _, err = run_cli(capsys, "pull", "-o", tmp_path, "--port", "p1", "--port", "p1")
    one_line_error(err, "--port p1 is given twice")


def test_summary_table_names_a_failed_board_with_its_reason():
    ok = Worker("/dev/ttyACM0", 0, ok=True, reason="ok", epochs=3, loss=0.51234, accuracy=0.875,
                board_s=1.25)
    lost = Worker("/dev/ttyACM1", 1, reason="lost the board while it ran code")
    head, row_ok, row_lost = summary_lines([ok, lost])
    assert head.split() == ["board", "epochs", "loss", "accuracy", "board", "s", "result"]
    assert row_ok.split() == ["/dev/ttyACM0", "3", "0.5123", "87.5", "%", "1.2", "ok"]
    assert row_lost.split()[:5] == ["/dev/ttyACM1", "-", "-", "-", "-"]
    assert row_lost.endswith("FAILED: lost the board while it ran code")
    second = {len(line) - len(line[len(line.split()[0]):].lstrip())  # where column 2 starts
              for line in (head, row_ok, row_lost)}
    assert second == {len("/dev/ttyACM0  ")}


def test_four_boards_one_lost_mid_run_the_others_finish_and_resume_finishes_it(tmp_path):
    require_emulator("cortex-m0plus")
    run = tmp_path / "run"
    env = {"SKIP2LORA_RUN_DIR": str(run)}
    small, tiny, big = (_data(tmp_path / "small.npz", 400, 1), _data(tmp_path / "tiny.npz", 100, 2),
                        _data(tmp_path / "big.npz", 3000, 3))
    try:
        unix = _ports(skip2lora("board", "start", "--count", 3, env=env).stdout, 3)
        m0 = _ports(skip2lora("board", "start", "--emulate", "cortex-m0plus", "--count", 1,
                              env=env).stdout, 1)
        ports = unix + m0
        victim = ports[1]
        listed = skip2lora("board", "status", env=env).stdout
        assert listed.startswith("4 virtual boards running:") and "cortex-m0plus" in listed
        each = [a for p in ports for a in ("--port", p)]

        flashed = skip2lora("flash", MODEL, *each, env=env)
        assert "4 of 4 boards succeeded" in flashed.stdout
        assert {p: r[-1] for p, r in _rows(flashed.stdout).items()} == dict.fromkeys(ports, "ok")

        # the victim trains on 3000 samples (~90 ms an epoch), so it is mid-run when the others
        # are done; it loses power once it has saved an epoch
        argv = [sys.executable, "-m", "skip2lora", "finetune", *each, "--epochs", EPOCHS,
                "--lr", 0.01, "--data", small, "--data", big, "--data", small, "--data", tiny]
        proc = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
        out = []
        for line in proc.stdout:
            out.append(line)
            if line.startswith(f"{victim}: epoch 2/{EPOCHS}:"):
                os.kill(base.read_state(run / "board2")["pid"], signal.SIGKILL)
        err = proc.stderr.read()
        assert proc.wait(timeout=120) == 2, "".join(out) + err
        stdout = "".join(out)
        rows = _rows(stdout)
        for port in ports:
            if port != victim:
                assert rows[port][0] == str(EPOCHS) and rows[port][-1] == "ok", stdout
        # its row: how far it got (the epoch it last reported), and why it stopped
        saved = int(rows[victim][0])
        assert 2 <= saved < EPOCHS and rows[victim][4:6] == ["-", "FAILED:"], stdout
        assert "lost the board" in " ".join(rows[victim])
        assert "3 of 4 boards succeeded" in stdout
        one_line_error(err, "1 of 4 boards failed", victim, "lost the board")

        # the lost board alone: started again on its own image, it resumes from what it saved
        restarted = skip2lora("board", "start", "--count", 3, env=env).stdout
        assert restarted.count("started") == 1 and victim in restarted.splitlines()[-3:]
        resumed = skip2lora("finetune", "--resume", "--port", victim, "--data", big,
                            "--epochs", EPOCHS, "--lr", 0.01, env=env).stdout
        after = re.search(r"resuming after epoch (\d+) ", resumed)
        assert after and int(after.group(1)) in (saved, saved + 1), resumed  # +1: saved, unsaid
        assert f"done: epoch {EPOCHS}," in resumed

        pulled = skip2lora("pull", "-o", tmp_path / "out", *each, env=env)
        assert [r[0] for r in _rows(pulled.stdout).values()] == [str(EPOCHS)] * 4
    finally:
        skip2lora("board", "stop", env=env)

    folders = {}
    for folder in (tmp_path / "out").iterdir():
        board = json.loads((folder / "adapter_config.json").read_text())["skip2lora"]["board"]
        assert board["unique_id"] == folder.name
        assert read_adapters(folder / "adapters.s2la").epochs_done == EPOCHS
        folders[board["port"]] = folder
    assert sorted(folders) == sorted(ports)
    # a virtual board's id is kept in its image: the folder is named by what the image holds
    for port, image in ((victim, run / "board2" / "flash.img"), (m0[0], run / "board4" /
                                                                 "cortex-m0plus.img")):
        kind = "unix" if image.name == "flash.img" else "cortex-m0plus"
        with open_image(image, kind).open("/skip2lora/board_id", "r") as f:
            assert f.read().strip() == folders[port].name
    config = json.loads((folders[m0[0]] / "adapter_config.json").read_text())
    assert config["skip2lora"]["board"]["arch"] == "armv6m"
    # the two unix boards given the same data and seed trained the same bytes
    assert (folders[ports[0]] / "adapters.s2la").read_bytes() == \
        (folders[ports[2]] / "adapters.s2la").read_bytes()

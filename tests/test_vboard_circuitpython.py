"""The circuitpython virtual board: the CircuitPython unix port behind a pty, made to look like a
board, driven by the real mpremote and the real skip2lora commands (docs/virtual-board.md).

It needs ../shared/platforms/circuitpython (or $SKIP2LORA_PLATFORMS). Outside CI a missing
interpreter skips these tests with the reason; under CI=true it fails them. Expected values come
from the unix kind running the same commands, never from a CircuitPython run.
"""
import pytest

from cli_helpers import mpremote, skip2lora, uart_sized_drift
from skip2lora.board.virtual import VirtualBoard, open_image
from skip2lora.errors import UserError
from unavailable import require_emulator

KIND = "circuitpython"


@pytest.fixture
def needs_cp():
    require_emulator(KIND)


def test_looks_like_a_circuitpython_board_and_keeps_its_files(needs_cp, tmp_path):
    """Through mpremote: CircuitPython, no viper, no time.ticks_*, supervisor.ticks_ms, a
    board's sys.path; a file written survives a stop and a start, and the host reads the FAT."""
    env = {"SKIP2LORA_RUN_DIR": str(tmp_path / "run")}
    image = tmp_path / "circuitpy.img"
    port = skip2lora("board", "start", "--emulate", KIND, "--image", image,
                     env=env).stdout.strip().splitlines()[-1]
    try:
        status = skip2lora("board", "status", env=env).stdout
        assert "kind:  circuitpython" in status and "heap:  192K" in status, status
        out = mpremote(port, "exec", "import sys, time, supervisor\n"
                                     "print(sys.implementation.name, hasattr(time, 'ticks_ms'),"
                                     " hasattr(time, 'monotonic_ns'), sys.path)\n"
                                     "print(0 <= supervisor.ticks_ms() < 1 << 29)\n"
                                     "f = open('kept.txt', 'w'); f.write('on CIRCUITPY'); "
                                     "f.close()")
        assert out.split("\n")[:2] == [
            "circuitpython False True ['', '/', '.frozen', '/lib']", "True"], out
        out = mpremote(port, "exec", "try:\n exec('@micropython.viper\\ndef f(): pass')\n"
                                     "except SyntaxError as e:\n print('refused', e)")
        assert out.startswith("refused"), out
    finally:
        skip2lora("board", "stop", env=env)
    assert open_image(image, KIND).open("kept.txt").read() == "on CIRCUITPY"
    with VirtualBoard(image, kind=KIND, run_dir=tmp_path / "run2") as board:
        assert mpremote(board.port, "exec", "print(open('kept.txt').read())").strip() == \
            "on CIRCUITPY"
    assert board.open_image().listdir("/") == ["kept.txt", "lib"]


def test_missing_interpreter_is_one_line(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("SKIP2LORA_PLATFORMS", str(empty))
    monkeypatch.setenv("SKIP2LORA_RUN_DIR", str(tmp_path / "run"))
    done = skip2lora("board", "start", "--emulate", KIND, check=False)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "no circuitpython interpreter" in done.stderr and "SKIP2LORA_PLATFORMS" in done.stderr
    monkeypatch.delenv("SKIP2LORA_PLATFORMS")
    require_emulator(KIND)
    (tmp_path / "blank.img").write_bytes(b"\xff" * 65536)  # never booted: not formatted
    with pytest.raises(UserError, match="no FAT filesystem"):
        open_image(tmp_path / "blank.img", KIND)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    uart_sized_drift(d)
    return d


def cli_flow(kind, d, work, backend):
    """flash, finetune 2 epochs, pull, resume to 3, pull; the two pulled .s2la files' bytes."""
    env = {"SKIP2LORA_RUN_DIR": str(work / "run")}
    skip2lora("board", "start", "--emulate", kind, "--image", work / "disk.img", env=env)
    try:
        flashed = skip2lora("flash", d / "model.s2lm", env=env, timeout=180).stdout
        tune = ["finetune", "--data", d / "finetune.npz", "--lr", "0.1", "--backend", backend]
        tuned = skip2lora(*tune, "--epochs", 2, env=env, timeout=180).stdout
        skip2lora("pull", "-o", work / "two", env=env)
        resumed = skip2lora(*tune, "--epochs", 3, "--resume", env=env, timeout=180).stdout
        pulled = skip2lora("pull", "-o", work / "three", env=env).stdout
    finally:
        skip2lora("board", "stop", env=env)
    return flashed, tuned, resumed, pulled, [(work / n / "adapters.s2la").read_bytes()
                                             for n in ("two", "three")]


def test_flash_finetune_pull_resume_give_the_unix_boards_adapters(needs_cp, tiny, tmp_path):
    """The whole CLI flow on --emulate circuitpython: plain .py flashed and verified, pure
    Python training, pull, resume; the adapters are byte for byte the unix board's (viper)."""
    (tmp_path / "cp").mkdir()
    (tmp_path / "unix").mkdir()
    flashed, tuned, resumed, pulled, got = cli_flow(KIND, tiny, tmp_path / "cp", "python")
    assert "device package: plain .py" in flashed and "all verified by sha256" in flashed, flashed
    assert "as .mpy" not in flashed and "writing   /lib/s2l/train.py" in flashed, flashed
    assert "skip2lora, python backend" in tuned and "done: epoch 2" in tuned, tuned
    assert "resum" in resumed and "done: epoch 3" in resumed, resumed
    assert "3 epochs, CRC ok" in pulled, pulled
    *_, want = cli_flow("unix", tiny, tmp_path / "unix", "viper")
    assert got == want
    assert "adapters.s2la" in open_image(tmp_path / "cp" / "disk.img", KIND).listdir("/skip2lora")

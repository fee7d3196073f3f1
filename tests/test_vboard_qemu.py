"""The Cortex-M virtual boards: real MicroPython firmware under qemu-system-arm, driven by the
real mpremote and the real skip2lora commands (docs/virtual-board.md).

They need qemu-system-arm and the firmware in ../shared/platforms (or $SKIP2LORA_PLATFORMS).
Outside CI a missing one skips these tests with the reason; under CI=true it fails them.
"""

import pytest

from cli_helpers import mpremote, skip2lora, uart_sized_drift
from skip2lora.board.virtual import VirtualBoard, open_image, start_board
from skip2lora.errors import UserError
from unavailable import require_emulator

ARCH = {"cortex-m0plus": "armv6m", "cortex-m4f": "armv7emsp"}
KINDS = pytest.mark.parametrize("kind", sorted(ARCH))


@pytest.fixture
def needs_qemu(kind):
    require_emulator(kind)


@KINDS
def test_status_exec_and_files_kept_across_stop_start(kind, needs_qemu, tmp_path):
    env = {"SKIP2LORA_RUN_DIR": str(tmp_path / "run")}
    image = tmp_path / "disk.img"
    port = skip2lora("board", "start", "--emulate", kind, "--image", image,
                     env=env).stdout.strip().splitlines()[-1]
    try:
        status = skip2lora("board", "status", env=env).stdout
        assert f"kind:  {kind}" in status and "heap:  192K" in status, status
        out = mpremote(port, "exec", "import sys, gc; print(sys.implementation._mpy >> 10, "
                                     "gc.mem_free() + gc.mem_alloc()); "
                                     "f = open('kept.txt', 'w'); f.write('on the RAM disk'); "
                                     "f.close()")
        arch, heap = map(int, out.split())
        assert arch == {"armv6m": 4, "armv7emsp": 7}[ARCH[kind]]
        assert 180 * 1024 <= heap <= 192 * 1024
        assert mpremote(port, "exec", "print(1.0 + 2 ** -30 == 1.0)").strip() == "True"  # float32
    finally:
        skip2lora("board", "stop", env=env)
    assert open_image(image, kind).open("kept.txt", "r").read() == "on the RAM disk"
    with VirtualBoard(image, kind=kind, run_dir=tmp_path / "run2") as board:
        assert mpremote(board.port, "exec", "print(open('kept.txt').read())").strip() == \
            "on the RAM disk"
        (tmp_path / "second.txt").write_text("2")
        mpremote(board.port, "fs", "cp", str(tmp_path / "second.txt"), ":second.txt")
    assert sorted(board.open_image().listdir("/")) == ["kept.txt", "second.txt"]
    assert board.open_image().open("second.txt", "r").read() == "2"


@KINDS
def test_kill_loses_what_was_written_since_the_last_start(kind, needs_qemu, tmp_path):
    image = tmp_path / "disk.img"
    board = start_board(kind, image=image, run_dir=tmp_path / "run")
    mpremote(board.port, "exec", "open('lost.txt', 'w').write('x')")
    board.kill()
    assert not board.running
    assert image.stat().st_size == 4 * 1024 * 1024
    with pytest.raises(UserError, match="no LittleFS"):
        open_image(image, kind)  # never saved: the blank disk the board started from


@KINDS
def test_clean_errors_for_missing_firmware_and_heap(kind, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("SKIP2LORA_PLATFORMS", str(empty))
    monkeypatch.setenv("SKIP2LORA_RUN_DIR", str(tmp_path / "run"))
    done = skip2lora("board", "start", "--emulate", kind, check=False)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"no {kind} firmware" in done.stderr and "SKIP2LORA_PLATFORMS" in done.stderr
    done = skip2lora("board", "start", "--emulate", kind, "--heap", "100K", check=False)
    assert done.returncode == 2 and "--heap does not apply" in done.stderr, done.stderr
    with pytest.raises(UserError, match="--flash does not apply"):
        VirtualBoard(kind=kind, flash="1M")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    uart_sized_drift(d)
    return d


@KINDS
def test_flash_finetune_pull_eval_end_to_end(kind, needs_qemu, tiny, tmp_path):
    d = tiny
    env = {"SKIP2LORA_RUN_DIR": str(tmp_path / "run")}
    skip2lora("board", "start", "--emulate", kind, "--image", tmp_path / "disk.img", env=env)
    try:
        flashed = skip2lora("flash", d / "model.s2lm", env=env, timeout=180).stdout
        assert f".mpy ({ARCH[kind]})" in flashed and "all verified by sha256" in flashed, flashed
        tuned = skip2lora("finetune", "--data", d / "finetune.npz", "--epochs", 2, env=env,
                          timeout=180)
        assert "done: epoch 2" in tuned.stdout, tuned.stdout + tuned.stderr
        pulled = skip2lora("pull", "-o", tmp_path / "adapters", env=env)
        assert "2 epochs, CRC ok" in pulled.stdout, pulled.stdout
    finally:
        skip2lora("board", "stop", env=env)
    skip2lora("export", d / "model.s2lm", "--adapters", tmp_path / "adapters",
              "-o", tmp_path / "adapted.onnx")
    scored = skip2lora("eval", tmp_path / "adapted.onnx", "--data", d / "test.npz")
    assert "accuracy" in scored.stdout.lower(), scored.stdout
    assert "adapters.s2la" in open_image(tmp_path / "disk.img", kind).listdir("/skip2lora")

"""Board profiles and the RAM/flash budget compile checks a model against."""
import numpy as np
import pytest

from skip2lora.board import budget
from skip2lora.board.profiles import BOARDS, get_board
from skip2lora.cli import main
from skip2lora.errors import UserError
from skip2lora.model.formats import (DTYPE_F32, DTYPE_I8, KIND_SKIP, Adapter, AdapterFile, CacheFile,
                               CacheSegment, ModelFile, ModelLayer, dataset_from_arrays,
                               encode_adapters, encode_cache, encode_dataset, encode_model)
from test_importers import gemm_chain

RP2040 = BOARDS["rp2040"]


def test_profiles():
    assert {"rp2040", "rp2350", "esp32", "esp32s3-psram", "pyboard", "unix"} <= set(BOARDS)
    archs = {name: board.mpy_arch for name, board in BOARDS.items()}
    assert archs["rp2040"] == "armv6m" and archs["pyboard"] == "armv7emsp"
    assert archs["esp32"] == "xtensawin" and archs["unix"] == "x64"
    for board in BOARDS.values():
        assert board.heap_bytes > 0 and board.fs_bytes > 0
        bits = (64, 64) if board.name == "unix" else (32, 32)
        assert (board.word_bits, board.float_bits) == bits
    with pytest.raises(UserError, match="unknown board 'rp2041'.*rp2040"):
        get_board("rp2041")


def test_512_64_64_3_int8_fits_rp2040_with_weights_in_ram():
    b = budget.estimate([512, 64, 64, 3], RP2040, "int8")
    assert b.fits and b.weights_in_ram and b.weights_ram == b.weights_bytes


def test_512_64_64_3_f32_streams_weights_and_is_too_big_for_rp2040():
    """145 KiB of f32 weights exceed half the heap, and even the streamed first layer
    (128 KiB) leaves too little for the adapters and the interpreter."""
    b = budget.estimate([512, 64, 64, 3], RP2040, "f32")
    assert not b.weights_in_ram
    assert b.weights_ram == budget.layer_payload_bytes(512, 64, "f32") == 512 * 64 * 4 + 64 * 4
    assert b.fits_flash and not b.fits_ram


def test_small_case_equals_a_hand_calculation():
    """dims 4-3-2, int8, rank 2, adapters on both layer inputs, 10 int8 samples."""
    b = budget.estimate([4, 3, 2], RP2040, "int8", rank=2, mask=0b11, samples=10)
    # weights: layer 0 scale 3*4 + codes pad4(12) + bias 3*4; layer 1 2*4 + pad4(6) + 2*4
    assert b.weights_bytes == 36 + 24 and b.weights_ram == 60
    # x1..x2, z (4+3+2) + u (2 adapters x r 2) + p and g (2 x C 2), 4 bytes each
    assert b.activations == 4 * (9 + 4 + 4)
    values = (2 * 4 + 2 * 2) + (2 * 3 + 2 * 2)  # A r x d_i plus B C x r, per adapter
    assert (b.adapters, b.gradients, b.momentum) == (6 * values, 4 * values, 4 * values)
    # dataset record (4 int8 + label) + cache record (x2 pad4(3) + z 2 f32, + CRC) + file block
    assert b.io_buffers == 5 + (4 + 8 + 4) + 512
    assert b.overhead == 30 * 1024
    assert b.ram_total == 60 + 68 + 22 * 14 + 533 + 30720
    assert b.model_file == 36 + (8 + 36) + (8 + 24) + 4
    assert b.dataset_file == 24 + 10 * 5 + 4
    assert b.cache_file == 44 + 10 * 16
    assert b.adapter_files == 2 * (56 + 4 * values + 4)
    assert b.flash_total == 116 + 78 + 204 + 296


def test_file_sizes_equal_what_the_writers_produce():
    """The budget's size formulas and formats.py cannot drift apart."""
    dims, rank, n = [4, 3, 2], 2, 10
    rng = np.random.default_rng(0)
    for dtype, code in (("f32", DTYPE_F32), ("int8", DTYPE_I8)):
        layers = [ModelLayer(np.zeros((o, i), np.int8 if code else np.float32), np.zeros(o),
                             np.ones(o, np.float32) if code else None)
                  for i, o in zip(dims[:-1], dims[1:])]
        assert budget.model_file_bytes(dims, dtype) == len(encode_model(ModelFile(layers)))
        ds = dataset_from_arrays(rng.standard_normal((n, 4)), np.zeros(n), 2, code)
        assert budget.dataset_file_bytes(4, n, dtype) == len(encode_dataset(ds))
    segments = [CacheSegment(3, DTYPE_I8, 0.1), CacheSegment(2, DTYPE_F32)]
    records = [[np.zeros(3, np.int8), np.zeros(2, np.float32)]] * n
    assert budget.cache_file_bytes(dims, n) == len(encode_cache(CacheFile(0, 0, segments, records)))
    adapters = [Adapter(i, KIND_SKIP, np.zeros((rank, d)), np.zeros((2, rank)))
                for i, d in enumerate(dims[:-1])]
    assert budget.adapter_file_bytes(dims, rank, 0b11) == len(
        encode_adapters(AdapterFile(0, rank, 2, 2.0, adapters)))


def test_hidden_targets_need_less_ram():
    everything = budget.estimate([512, 64, 64, 3], RP2040, "int8", mask=0b111)
    hidden = budget.estimate([512, 64, 64, 3], RP2040, "int8", mask=0b110)
    assert hidden.ram_total < everything.ram_total
    assert hidden.adapters == 6 * (4 * 64 * 2 + 3 * 4 * 2)


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    return gemm_chain(tmp_path_factory.mktemp("big") / "big.onnx", dims=(2048, 1024, 1024, 10))


def test_big_model_refused_for_rp2040_and_accepted_with_force(big_model, tmp_path, capsys):
    out = tmp_path / "big.s2lm"
    assert main(["compile", str(big_model), "-o", str(out), "--board", "rp2040"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("skip2lora: error:")
    expected = budget.estimate([2048, 1024, 1024, 10], RP2040, "f32")
    assert f"RAM {budget.kib(expected.ram_total)} needed of 187.6 KiB heap" in err
    assert f"flash {budget.kib(expected.flash_total)} needed of 1408.0 KiB" in err
    assert not out.exists()
    assert main(["compile", str(big_model), "-o", str(out), "--board", "rp2040", "--force"]) == 0
    assert out.exists() and "DOES NOT FIT" in capsys.readouterr().out

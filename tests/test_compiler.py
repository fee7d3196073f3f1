"""Compiler: the stored arrays compute what the original runtime computes (float exactly, int8
within the documented bound), and the file the board reads holds what compile meant."""
import numpy as np
import pytest
import torch

from skip2lora.model import compiler
from skip2lora.errors import UserError
from skip2lora.model.formats import DTYPE_F32, DTYPE_I8, encode_model, read_model
from skip2lora.model.importers import ImportedModel, import_model
from skip2lora.model.network import Dense, Network
from skip2lora.model.quantize import QMAX, quantize_rows
from test_importers import bn_dropout_model, export_onnx, gemm_chain

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """The same BN + Dropout model as a torch.save file and as an ONNX export."""
    root = tmp_path_factory.mktemp("models")
    model = bn_dropout_model((64, 32, 32, 5), seed=4)
    torch.save(model, root / "m.pt")
    export_onnx(model, root / "m.onnx", 64)
    return {"torch": root / "m.pt", "onnx": root / "m.onnx"}


@pytest.mark.parametrize("kind", ["torch", "onnx"])
def test_float_compiled_matches_runtime(saved_models, kind):
    imported = import_model(saved_models[kind])
    model = compiler.compile_network(imported.network, "f32")
    check = compiler.check_against_runtime(imported, model, compiler.random_inputs(64))
    assert check.relative_error <= compiler.F32_TOLERANCE
    assert check.argmax_agreement == 1.0
    assert check.runtime == ("torch" if kind == "torch" else "onnxruntime")


@pytest.mark.parametrize("kind", ["torch", "onnx"])
def test_int8_compiled_within_documented_error(saved_models, kind):
    imported = import_model(saved_models[kind])
    model = compiler.compile_network(imported.network, "int8")
    check = compiler.check_against_runtime(imported, model, compiler.random_inputs(64))
    assert 0 < check.relative_error <= compiler.INT8_DOCUMENTED_ERROR


@pytest.mark.parametrize("dims, seed", [((512, 64, 64, 3), 0), ((256, 96, 96, 3), 1),
                                        ((16, 8, 8, 2), 2)])
def test_int8_error_on_default_initialised_torch_models(dims, seed):
    """The model sizes docs/compiler.md reports, with torch's own initialisation."""
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])]
    network = Network([Dense(l.weight.detach().numpy(), l.bias.detach().numpy()) for l in layers])
    exact = compiler.compile_network(network, "f32")
    reference = ImportedModel(network, "test", lambda x: compiler.logits(exact, x))
    quantized = compiler.compile_network(network, "int8")
    check = compiler.check_against_runtime(reference, quantized, compiler.random_inputs(dims[0]))
    assert check.relative_error <= compiler.INT8_DOCUMENTED_ERROR
    assert check.argmax_agreement >= 0.97


def test_softmax_model_is_checked_in_its_output_space(tmp_path):
    imported = import_model(gemm_chain(tmp_path / "m.onnx", extra=[("Softmax", "sm", {})]))
    model = compiler.compile_network(imported.network, "f32")
    check = compiler.check_against_runtime(imported, model, compiler.random_inputs(6))
    assert check.output == "softmax" and check.relative_error <= compiler.F32_TOLERANCE
    assert "after the model's own softmax" in check.summary()


def test_quantize_rows_is_symmetric_per_channel():
    w = np.random.default_rng(0).standard_normal((5, 9)) * np.array([[0.01], [1], [10], [0], [3]])
    codes, scale = quantize_rows(w)
    assert codes.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == (5,)
    assert codes.min() >= -QMAX and codes.max() <= QMAX
    assert scale[3] == 1.0 and not codes[3].any()  # an all-zero row: no zero scale in the file
    for row in (0, 1, 2, 4):
        assert np.max(np.abs(codes[row])) == QMAX  # the largest weight uses the full range
        assert np.max(np.abs(codes[row] * scale[row] - w[row])) <= scale[row] / 2 + 1e-9


@pytest.mark.parametrize("dtype, code", [("f32", DTYPE_F32), ("int8", DTYPE_I8)])
def test_compiled_file_round_trips(tmp_path, saved_models, dtype, code):
    imported = import_model(saved_models["onnx"])
    model = compiler.compile_network(imported.network, dtype, rank=8, alpha=16, targets="hidden")
    back = read_model(encode_model(model))
    assert back.dims == [64, 32, 32, 5] and back.dtype == code
    assert (back.rank, back.alpha, back.adapter_mask) == (8, 16.0, 0b110)
    x = compiler.random_inputs(64, 16)
    np.testing.assert_array_equal(compiler.logits(back, x), compiler.logits(model, x))


def test_parse_targets():
    assert compiler.parse_targets("all", 3) == 0b111
    assert compiler.parse_targets("hidden", 3) == 0b110
    assert compiler.parse_targets("0,2", 3) == 0b101
    assert compiler.describe_targets(0b101, 3) == "x1, x3"
    for bad in ("3", "x", "", "-1"):
        with pytest.raises(UserError, match="--targets"):
            compiler.parse_targets(bad, 3)


def test_bad_rank_and_alpha(saved_models):
    network = import_model(saved_models["onnx"]).network
    with pytest.raises(UserError, match="--rank 0"):
        compiler.compile_network(network, rank=0)
    with pytest.raises(UserError, match="--alpha"):
        compiler.compile_network(network, alpha=-1)
    assert compiler.compile_network(network, rank=2).alpha == 2.0  # default scale alpha/r = 1


def test_rank_and_alpha_limits_and_relu_on_all_but_the_last_layer():
    from skip2lora.model.formats import MAX_RANK
    net = Network([Dense(np.eye(4, dtype=np.float32), np.zeros(4, np.float32)),
                   Dense(np.ones((3, 4), np.float32), np.arange(3, dtype=np.float64))])
    for rank in (1, MAX_RANK):
        assert compiler.compile_network(net, rank=rank).rank == rank
    for rank in (0, MAX_RANK + 1):
        with pytest.raises(UserError, match=rf"^--rank {rank} is outside 1\.\.{MAX_RANK}$"):
            compiler.compile_network(net, rank=rank)
    for alpha in (0.0, -1.0, float("nan")):
        with pytest.raises(UserError, match="must be a positive number"):
            compiler.compile_network(net, alpha=alpha)
    default = compiler.compile_network(net)
    assert default.rank == 4 and default.alpha == 4.0  # alpha defaults to the rank
    for dtype in ("f32", "int8"):
        mf = compiler.compile_network(net, dtype=dtype)
        assert [layer.relu for layer in mf.layers] == [True, False]
        assert all(layer.bias.dtype == np.float32 for layer in mf.layers)
        np.testing.assert_array_equal(mf.layers[1].bias, [0.0, 1.0, 2.0])
    assert compiler.compile_network(net).layers[0].weight.dtype == np.float32

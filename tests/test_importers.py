"""Importers: every supported way a user's MLP arrives becomes the same Network, and every
unsupported construct is refused with a message naming what was found and what is supported.

The model builders here are imported by the other compile tests (test_compiler, test_boards,
test_cli), so every test exercises the same models.
"""
import re
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from skip2lora.errors import UserError
from skip2lora.model.importers import (LOGITS, SOFTMAX, fold_batchnorm, import_model, import_onnx,
                                 import_torch)

nn = torch.nn
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit, legacy export


# ------------------------------------------------------------------ builders

def bn_dropout_model(dims=(12, 10, 8, 4), seed=0):
    """Linear-BN-ReLU-Dropout blocks (one nested in a second Sequential) with BatchNorm running
    statistics far from the identity, so folding really changes the weights. Eval mode."""
    torch.manual_seed(seed)
    blocks = []
    for d_in, d_out in zip(dims[:-2], dims[1:-1]):
        blocks.append(nn.Sequential(nn.Linear(d_in, d_out), nn.BatchNorm1d(d_out), nn.ReLU(),
                                    nn.Dropout(0.3)))
    model = nn.Sequential(*blocks, nn.Flatten(), nn.Identity(), nn.Linear(dims[-2], dims[-1]))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.running_mean.normal_(0.0, 0.5)
                module.running_var.uniform_(0.3, 3.0)
                module.weight.normal_(1.0, 0.3)
                module.bias.normal_(0.0, 0.3)
    return model.eval()


def torch_logits(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(x, np.float32))).double().numpy()


def export_onnx(model, path, d_in):
    """The TorchScript-based exporter (dynamo=False) works in torch 2.13, only deprecated."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(2, d_in), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})
    return path


def onnx_graph(path, nodes, weights, d_in, output="y", d_out=None):
    """Write a hand-built ONNX graph reading input 'x' (n, d_in); weights become initializers."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", d_in])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["n", d_out])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def rng_weights(seed, *shapes):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def gemm_chain(path, dims=(6, 5, 3), extra=(), final_relu=False, seed=0):
    """Gemm-Relu-...-Gemm with transB=1 (torch layout), plus optional trailing nodes `extra`."""
    nodes, weights, current = [], {}, "x"
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        w, b = rng_weights(seed + i, (d_out, d_in), (d_out,))
        weights.update({f"W{i}": w, f"b{i}": b})
        nodes.append(helper.make_node("Gemm", [current, f"W{i}", f"b{i}"], [f"h{i}"], f"fc{i}",
                                      transB=1))
        current = f"h{i}"
        if i < len(dims) - 2 or final_relu:
            nodes.append(helper.make_node("Relu", [current], [f"r{i}"], f"relu{i}"))
            current = f"r{i}"
    for op, name, attrs in extra:
        nodes.append(helper.make_node(op, [current], [f"{name}_out"], name, **attrs))
        current = f"{name}_out"
    return onnx_graph(path, nodes, weights, dims[0], current, dims[-1])


# ------------------------------------------------------------------ torch

def assert_same_logits(network, model, x):
    expected = torch_logits(model, x)
    assert np.max(np.abs(network.forward(x) - expected)) <= 1e-5 * np.max(np.abs(expected))


def test_fold_batchnorm_matches_torch():
    model = bn_dropout_model((5, 4, 2))
    linear, bn = model[0][0], model[0][1]
    w, b = fold_batchnorm(linear.weight.detach().numpy(), linear.bias.detach().numpy(),
                          bn.weight.detach().numpy(), bn.bias.detach().numpy(),
                          bn.running_mean.numpy(), bn.running_var.numpy(), bn.eps)
    x = np.random.default_rng(1).standard_normal((7, 5)).astype(np.float32)
    expected = torch_logits(nn.Sequential(linear, bn).eval(), x)
    np.testing.assert_allclose(x @ w.T + b, expected, rtol=1e-5, atol=1e-6)


def test_torch_save_folds_batchnorm_and_drops_dropout(tmp_path):
    model = bn_dropout_model()
    torch.save(model, tmp_path / "m.pt")
    imported = import_torch(tmp_path / "m.pt")
    net = imported.network
    assert net.dims == [12, 10, 8, 4] and imported.source == "torch"
    assert [l.name for l in net.layers] == ["0.0", "1.0", "4"]
    assert sum("folded BatchNorm1d" in n for n in net.notes) == 2
    assert any("dropped Dropout" in n for n in net.notes)
    unfolded = model[0][0].weight.detach().numpy()
    assert not np.allclose(net.layers[0].weight, unfolded, atol=1e-3)  # folding did something
    x = np.random.default_rng(0).standard_normal((32, 12)).astype(np.float32)
    assert_same_logits(net, model, x)
    np.testing.assert_allclose(imported.run(x), torch_logits(model, x))


def test_torch_model_saved_in_training_mode_is_compiled_in_eval_mode(tmp_path):
    model = bn_dropout_model().train()
    torch.save(model, tmp_path / "m.pt")
    imported = import_torch(tmp_path / "m.pt")
    assert any("training mode" in n for n in imported.network.notes)
    x = np.random.default_rng(0).standard_normal((8, 12)).astype(np.float32)
    assert_same_logits(imported.network, model.eval(), x)


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript(tmp_path, how):
    model = bn_dropout_model()
    model[0][1].eps = 1e-2  # traced modules inline eps into their graph: it must be read there
    scripted = (torch.jit.script(model) if how == "script"
                else torch.jit.trace(model, torch.zeros(2, 12)))
    torch.jit.save(scripted, tmp_path / "m.pt")
    imported = import_model(tmp_path / "m.pt")
    assert imported.source == "torchscript" and imported.network.dims == [12, 10, 8, 4]
    x = np.random.default_rng(2).standard_normal((16, 12)).astype(np.float32)
    assert_same_logits(imported.network, model, x)


def test_torch_trailing_softmax_is_dropped(tmp_path):
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3), nn.Softmax(dim=1)).eval()
    torch.save(model, tmp_path / "m.pth")
    imported = import_model(tmp_path / "m.pth")
    assert imported.output == SOFTMAX
    assert any("trailing Softmax" in n for n in imported.network.notes)


class CustomNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 3), nn.Linear(3, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x))) * 2


@pytest.mark.parametrize("model, expected", [
    (nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)), "Tanh module '1'"),
    (nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU(), nn.Linear(3, 2)), "Conv1d module '0'"),
    (nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.LayerNorm(3), nn.Linear(3, 2)),
     "LayerNorm module '2'"),
    (nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Sequential(CustomNet())),
     "CustomNet module '2.0'"),
    (CustomNet(), "CustomNet"),
    (nn.Sequential(nn.Linear(4, 2)), "only Linear module '0'"),
    (nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2), nn.ReLU()), "ReLU module '3'"),
    (nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), "no ReLU between"),
    (nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2)),
     "ReLU module '3' follows BatchNorm1d module '2', which can only be folded into a linear"),
])
def test_torch_unsupported(tmp_path, model, expected):
    torch.save(model.eval(), tmp_path / "m.pt")
    with pytest.raises(UserError) as info:
        import_torch(tmp_path / "m.pt")
    message = str(info.value)
    assert expected in message and "Linear, ReLU, BatchNorm1d" in message


def test_torch_state_dict_is_refused(tmp_path):
    torch.save(bn_dropout_model().state_dict(), tmp_path / "m.pt")
    with pytest.raises(UserError, match="state_dict"):
        import_torch(tmp_path / "m.pt")


# ------------------------------------------------------------------ ONNX

def test_onnx_export_of_torch_model(tmp_path):
    model = bn_dropout_model()
    imported = import_onnx(export_onnx(model, tmp_path / "m.onnx", 12))
    net = imported.network
    assert net.dims == [12, 10, 8, 4] and imported.output == LOGITS
    assert sum("folded BatchNormalization" in n for n in net.notes) == 2
    x = np.random.default_rng(3).standard_normal((40, 12)).astype(np.float32)
    assert_same_logits(net, model, x)
    np.testing.assert_allclose(imported.run(x), torch_logits(model, x), rtol=1e-5, atol=1e-5)


def test_onnx_matmul_add_and_gemm_transb0(tmp_path):
    w0, b0, w1, b1 = rng_weights(7, (6, 5), (5,), (5, 3), (3,))  # (in, out): x @ W
    nodes = [helper.make_node("MatMul", ["x", "W0"], ["m0"], "mm0"),
             helper.make_node("Add", ["b0", "m0"], ["a0"], "add0"),  # bias first also works
             helper.make_node("Relu", ["a0"], ["r0"], "relu0"),
             helper.make_node("Gemm", ["r0", "W1", "b1"], ["y"], "fc1", alpha=0.5, beta=2.0)]
    path = onnx_graph(tmp_path / "m.onnx", nodes, {"W0": w0, "b0": b0, "W1": w1, "b1": b1}, 6)
    imported = import_onnx(path)
    x = np.random.default_rng(0).standard_normal((10, 6)).astype(np.float32)
    expected = np.maximum(x @ w0 + b0, 0) @ (0.5 * w1) + 2.0 * b1
    np.testing.assert_allclose(imported.network.forward(x), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(imported.run(x), expected, rtol=1e-5, atol=1e-5)
    assert imported.network.dims == [6, 5, 3]


def test_onnx_constant_nodes_identity_flatten_and_trailing_softmax(tmp_path):
    w0, b0, w1, b1 = rng_weights(3, (5, 6), (5,), (3, 5), (3,))
    nodes = [helper.make_node("Constant", [], ["W0"], "c0",
                              value=numpy_helper.from_array(w0, "W0")),
             helper.make_node("Identity", ["W0"], ["W0_alias"], "alias"),
             helper.make_node("Flatten", ["x"], ["f"], "flat", axis=1),
             helper.make_node("Gemm", ["f", "W0_alias", "b0"], ["h0"], "fc0", transB=1),
             helper.make_node("Relu", ["h0"], ["r0"], "relu0"),
             helper.make_node("Dropout", ["r0"], ["d0"], "drop0"),
             helper.make_node("Gemm", ["d0", "W1", "b1"], ["z"], "fc1", transB=1),
             helper.make_node("Softmax", ["z"], ["y"], "probs", axis=1)]
    imported = import_onnx(onnx_graph(tmp_path / "m.onnx", nodes,
                                      {"b0": b0, "W1": w1, "b1": b1}, 6))
    assert imported.output == SOFTMAX and imported.network.dims == [6, 5, 3]
    notes = " ".join(imported.network.notes)
    assert "Softmax node 'probs'" in notes and "Dropout node 'drop0'" in notes
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    logits = np.maximum(x @ w0.T + b0, 0) @ w1.T + b1
    np.testing.assert_allclose(imported.network.forward(x), logits, rtol=1e-5, atol=1e-5)


def _residual_graph(path):
    w0, b0, w1, b1, w2, b2 = rng_weights(0, (4, 4), (4,), (4, 4), (4,), (2, 4), (2,))
    nodes = [helper.make_node("Gemm", ["x", "W0", "b0"], ["h0"], "fc0", transB=1),
             helper.make_node("Relu", ["h0"], ["r0"], "relu0"),
             helper.make_node("Gemm", ["r0", "W1", "b1"], ["h1"], "fc1", transB=1),
             helper.make_node("Add", ["h1", "r0"], ["s"], "skip_add"),
             helper.make_node("Relu", ["s"], ["r1"], "relu1"),
             helper.make_node("Gemm", ["r1", "W2", "b2"], ["y"], "fc2", transB=1)]
    return onnx_graph(path, nodes, dict(W0=w0, b0=b0, W1=w1, b1=b1, W2=w2, b2=b2), 4)


def _layernorm_graph(path):
    w0, b0, w1, b1 = rng_weights(1, (5, 6), (5,), (3, 5), (3,))
    nodes = [helper.make_node("Gemm", ["x", "W0", "b0"], ["h0"], "fc0", transB=1),
             helper.make_node("LayerNormalization", ["h0", "g", "beta"], ["n0"], "ln0"),
             helper.make_node("Relu", ["n0"], ["r0"], "relu0"),
             helper.make_node("Gemm", ["r0", "W1", "b1"], ["y"], "fc1", transB=1)]
    return onnx_graph(path, nodes, dict(W0=w0, b0=b0, W1=w1, b1=b1, g=np.ones(5),
                                        beta=np.zeros(5)), 6)


@pytest.mark.parametrize("build, op, node", [
    (lambda p: gemm_chain(p, extra=[("Sigmoid", "sig", {})]), "Sigmoid", "sig"),
    (lambda p: gemm_chain(p, extra=[("Tanh", "act", {})]), "Tanh", "act"),
    (lambda p: onnx_graph(p, [helper.make_node("Conv", ["x", "K"], ["y"], "conv0")],
                          {"K": np.ones((1, 1, 3), np.float32)}, 6), "Conv", "conv0"),
    (_layernorm_graph, "LayerNormalization", "ln0"),
    (_residual_graph, "Add", "skip_add"),
    (lambda p: gemm_chain(p, dims=(6, 3)), "Gemm", "fc0"),
    (lambda p: gemm_chain(p, final_relu=True), "Relu", "relu1"),
    (lambda p: gemm_chain(p, extra=[("Softmax", "sm", {}), ("Relu", "late", {})]), "Relu", "late"),
])
def test_onnx_unsupported(tmp_path, build, op, node):
    path = build(tmp_path / "m.onnx")
    with pytest.raises(UserError) as info:
        import_onnx(path)
    message = str(info.value)
    assert f"{op} node '{node}'" in message, message
    assert "Gemm, MatMul" in message and "BatchNormalization" in message  # the supported ops
    assert "\n" not in message


def test_onnx_single_linear_and_final_relu_say_what_was_found(tmp_path):
    with pytest.raises(UserError, match="only Gemm node 'fc0'.*at least two linear layers"):
        import_onnx(gemm_chain(tmp_path / "a.onnx", dims=(6, 3)))
    with pytest.raises(UserError, match="last linear layer Gemm node 'fc1' is followed by Relu"):
        import_onnx(gemm_chain(tmp_path / "b.onnx", final_relu=True))


@pytest.mark.parametrize("name, content, message", [
    ("m.onnx", b"not a protobuf at all \xff\xfe", "cannot read it as an ONNX model"),
    ("m.pt", b"garbage", "cannot read it as a PyTorch model"),
    ("m.h5", b"", "unknown model type '.h5'"),
])
def test_unreadable_files(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=message):
        import_model(tmp_path / name)


def test_missing_file(tmp_path):
    for name in ("nope.onnx", "nope.pt"):
        with pytest.raises(UserError, match="no such file"):
            import_model(tmp_path / name)


# ------------------------------------------------------------------ affine maps folded

def test_torch_batchnorm_on_the_input_and_after_a_relu_folds_into_the_next_linear(tmp_path):
    """BatchNorm1d before the first Linear (an input standardisation) and between a ReLU and the
    next Linear is an affine map of that Linear's input: folded into its columns."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.BatchNorm1d(6), nn.Linear(6, 5), nn.ReLU(), nn.BatchNorm1d(5),
                          nn.Linear(5, 3))
    with torch.no_grad():
        for bn in (model[0], model[3]):
            bn.running_mean.normal_(3.0, 2.0)
            bn.running_var.uniform_(0.01, 30.0)
            bn.weight.normal_(1.0, 0.5)
            bn.bias.normal_(0.0, 0.5)
    torch.save(model.eval(), tmp_path / "m.pt")
    net = import_torch(tmp_path / "m.pt").network
    assert net.dims == [6, 5, 3]
    assert sum("folded BatchNorm1d" in n for n in net.notes) == 2
    x = np.random.default_rng(0).uniform(0, 16, (32, 6)).astype(np.float32)  # raw, large scale
    assert_same_logits(net, model, x)


def test_onnx_input_normalisation_and_output_scaling_fold(tmp_path):
    """(x - mean) / std before the first Gemm, a Mul after it, c - x before the second: each an
    affine map, folded; the result is checked against numpy's own evaluation of the graph."""
    w0, b0, w1, b1 = rng_weights(5, (5, 6), (5,), (3, 5), (3,))
    mean = np.linspace(0, 12, 6).astype(np.float32)
    std = np.linspace(0.5, 4, 6).astype(np.float32)
    k = np.linspace(-2, 2, 5).astype(np.float32)
    nodes = [helper.make_node("Sub", ["x", "mean"], ["c"], "center"),
             helper.make_node("Div", ["c", "std"], ["s"], "scale"),
             helper.make_node("Gemm", ["s", "W0", "b0"], ["h0"], "fc0", transB=1),
             helper.make_node("Mul", ["h0", "k"], ["m0"], "gain"),
             helper.make_node("Relu", ["m0"], ["r0"], "relu0"),
             helper.make_node("Sub", ["one", "r0"], ["n0"], "flip"),
             helper.make_node("Gemm", ["n0", "W1", "b1"], ["y"], "fc1", transB=1)]
    path = onnx_graph(tmp_path / "m.onnx", nodes, dict(W0=w0, b0=b0, W1=w1, b1=b1, mean=mean,
                                                       std=std, k=k, one=np.ones(1)), 6)
    imported = import_onnx(path)
    assert imported.network.dims == [6, 5, 3]
    x = np.random.default_rng(1).uniform(0, 16, (20, 6))
    r0 = np.maximum(((x - mean) / std @ w0.T + b0) * k, 0)
    expected = (1 - r0) @ w1.T + b1
    np.testing.assert_allclose(imported.network.forward(x), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(imported.run(x), expected, rtol=1e-5, atol=1e-4)


def test_torch_binary_sigmoid_becomes_two_logits(tmp_path):
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 1), nn.Sigmoid()).eval()
    torch.save(model, tmp_path / "m.pt")
    imported = import_torch(tmp_path / "m.pt")
    assert imported.network.dims == [6, 4, 2] and imported.output == SOFTMAX
    x = np.random.default_rng(2).standard_normal((50, 6)).astype(np.float32)
    z = imported.network.forward(x)
    p = torch_logits(model, x)[:, 0]  # torch's sigmoid
    np.testing.assert_allclose(np.exp(z[:, 1]) / np.exp(z).sum(1), p, rtol=1e-5)
    np.testing.assert_array_equal(z.argmax(1), (p > 0.5).astype(int))


def _two_output_graph(path, second):
    """Gemm-Relu-Gemm with a second output: 'second' names what it is computed from."""
    w0, b0, w1, b1 = rng_weights(2, (5, 6), (5,), (3, 5), (3,))
    nodes = [helper.make_node("Gemm", ["x", "W0", "b0"], ["h0"], "fc0", transB=1),
             helper.make_node("Relu", ["h0"], ["r0"], "relu0"),
             helper.make_node("Gemm", ["r0", "W1", "b1"], ["z"], "fc1", transB=1)]
    if second == "softmax":
        nodes.append(helper.make_node("Softmax", ["z"], ["p"], "probs", axis=1))
    else:  # a hidden layer's output as well, or the logits through a Mul
        nodes.append(helper.make_node("Mul", ["z" if second == "mul" else "r0", "two"], ["p"],
                                      "extra"))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", None]) for n in ("z", "p")],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in
         dict(W0=w0, b0=b0, W1=w1, b1=b1, two=np.full(1, 2.0)).items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_onnx_logits_and_probabilities_outputs_import_the_logits(tmp_path):
    imported = import_onnx(_two_output_graph(tmp_path / "m.onnx", "softmax"))
    assert imported.network.dims == [6, 5, 3] and imported.output == LOGITS
    assert any("scores at 'z'" in n and "Softmax" in n for n in imported.network.notes)


@pytest.mark.parametrize("second, message", [
    ("hidden", "Gemm node 'fc1': the graph has 2 outputs (z, p)"),
    ("mul", "Mul node 'extra': the graph has 2 outputs (z, p)"),
])
def test_onnx_second_output_that_is_not_post_processing_is_refused(tmp_path, second, message):
    with pytest.raises(UserError, match=re.escape(message)) as info:
        import_onnx(_two_output_graph(tmp_path / "m.onnx", second))
    assert "one output" in str(info.value) and "\n" not in str(info.value)


def test_onnx_cast_to_an_integer_is_refused(tmp_path):
    path = gemm_chain(tmp_path / "m.onnx", extra=[("Cast", "round", {"to": TensorProto.INT64})])
    with pytest.raises(UserError, match="Cast node 'round': it casts to INT64"):
        import_onnx(path)

"""The command line: exit codes, one-line errors, and what `compile` writes."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import helper

from skip2lora import cli
from skip2lora.model.formats import DTYPE_F32, DTYPE_I8, read_model
from test_importers import bn_dropout_model, gemm_chain, onnx_graph
from cli_helpers import one_line_error as assert_one_line_error, run_cli

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    return gemm_chain(tmp_path_factory.mktemp("m") / "m.onnx", dims=(12, 10, 8, 4))


def test_missing_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "compile", tmp_path / "absent.onnx", "-o", tmp_path / "o.s2lm")
    assert code == 2
    assert_one_line_error(err, "absent.onnx", "no such file")


@pytest.mark.parametrize("name, content, fragment", [
    ("model.h5", b"\x89HDF", "unknown model type '.h5'"),
    ("model.onnx", b"\x00garbage\xff" * 10, "cannot read it as an ONNX model"),
    ("model.pt", b"garbage", "cannot read it as a PyTorch model"),
])
def test_wrong_extension_or_unreadable(capsys, tmp_path, name, content, fragment):
    (tmp_path / name).write_bytes(content)
    code, _, err = run_cli(capsys, "compile", tmp_path / name, "-o", tmp_path / "o.s2lm")
    assert code == 2
    assert_one_line_error(err, name, fragment)


def test_unsupported_op(capsys, tmp_path):
    path = onnx_graph(tmp_path / "conv.onnx", [helper.make_node("Conv", ["x", "K"], ["y"], "c1")],
                      {"K": np.ones((1, 1, 3))}, 6)
    code, _, err = run_cli(capsys, "compile", path, "-o", tmp_path / "o.s2lm")
    assert code == 2
    assert_one_line_error(err, "Conv node 'c1'", "supported ONNX ops: Gemm")


@pytest.mark.parametrize("dtype, code", [("f32", DTYPE_F32), ("int8", DTYPE_I8)])
def test_compile_writes_a_readable_model(capsys, tmp_path, onnx_model, dtype, code):
    out = tmp_path / "m.s2lm"
    status, stdout, err = run_cli(capsys, "compile", onnx_model, "-o", out, "--dtype", dtype,
                                  "--rank", 2, "--targets", "0,2", "--board", "rp2040")
    assert status == 0, err
    model = read_model(out)
    assert model.dims == [12, 10, 8, 4] and model.dtype == code
    assert (model.rank, model.alpha, model.adapter_mask) == (2, 2.0, 0b101)
    assert "float32 arrays vs onnxruntime" in stdout and ": ok" in stdout
    assert ("int8 weights vs onnxruntime" in stdout) == (dtype == "int8")
    assert "RAM" in stdout and "kept in RAM" in stdout and "adapters on x1, x3" in stdout


def folded_layers(model):
    """(weight, bias) of each Linear of a torch Sequential with the BatchNorm after it folded
    in, float64, written here from the BatchNorm formula (not the importer's code)."""
    layers = []
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            layers.append((m.weight.detach().double().numpy(), m.bias.detach().double().numpy()))
        elif isinstance(m, torch.nn.BatchNorm1d):
            g = (m.weight.detach().double() / torch.sqrt(m.running_var.double() + m.eps)).numpy()
            w, b = layers[-1]
            layers[-1] = (w * g[:, None], (b - m.running_mean.double().numpy()) * g
                          + m.bias.detach().double().numpy())
    return layers


def numpy_forward(layers, x, int8=False):
    """The MLP in numpy; int8: each row's weights rounded to q * s, s = max|row| / 127 in
    float32, q = round(w / s) (docs/formats.md, compiled model), ReLU between layers."""
    h = np.asarray(x, np.float64)
    for i, (w, b) in enumerate(layers):
        if int8:
            s = (np.max(np.abs(w), axis=1) / 127).astype(np.float32).astype(np.float64)
            w = np.clip(np.rint(w / s[:, None]), -127, 127) * s[:, None]
        h = h @ w.T + b
        h = np.maximum(h, 0) if i < len(layers) - 1 else h
    return h


def test_test_data_reports_float_and_int8_accuracy(capsys, tmp_path):
    """The accuracies compile prints are those of the original model (torch) and of a numpy
    int8 model built here, on labels from a rule of the inputs that knows nothing of the
    model. The rule and 2000 samples are chosen so int8 changes the accuracy (5 predictions
    flip, -0.15 pt): a report of the float accuracy as the int8 one fails."""
    model = bn_dropout_model()
    torch.save(model, tmp_path / "m.pt")
    x = np.random.default_rng(0).standard_normal((2000, 12)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)  # quadrant of the first two inputs
    with torch.no_grad():
        float_pred = model(torch.from_numpy(x)).argmax(1).numpy()
    layers = folded_layers(model)
    assert np.array_equal(numpy_forward(layers, x).argmax(1), float_pred)  # the fold is right
    int8_pred = numpy_forward(layers, x, int8=True).argmax(1)
    float_acc, int8_acc = np.mean(float_pred == y), np.mean(int8_pred == y)
    assert float_acc != int8_acc and 0 < float_acc < 1
    np.savez(tmp_path / "test.npz", x=x, y=y)
    status, stdout, err = run_cli(capsys, "compile", tmp_path / "m.pt", "-o", tmp_path / "m.s2lm",
                                  "--dtype", "int8", "--test-data", tmp_path / "test.npz")
    assert status == 0, err
    line = next(l for l in stdout.splitlines() if l.startswith("test data"))
    assert line == (f"test data (2000 samples): float32 accuracy {100 * float_acc:.2f} %, int8 "
                    f"{100 * int8_acc:.2f} % (change {100 * (int8_acc - float_acc):+.2f} pt)")

    np.savez(tmp_path / "bad.npz", features=x)
    status, _, err = run_cli(capsys, "compile", tmp_path / "m.pt", "-o", tmp_path / "m.s2lm",
                             "--test-data", tmp_path / "bad.npz")
    assert status == 2
    assert_one_line_error(err, "bad.npz", "x, y")


def test_unknown_board_and_bad_targets(capsys, tmp_path, onnx_model):
    code, _, err = run_cli(capsys, "compile", onnx_model, "-o", tmp_path / "o", "--board", "uno")
    assert code == 2
    assert_one_line_error(err, "unknown board 'uno'")
    code, _, err = run_cli(capsys, "compile", onnx_model, "-o", tmp_path / "o", "--targets", "7")
    assert code == 2
    assert_one_line_error(err, "--targets '7'")


def test_usage_errors_exit_2(capsys):
    assert cli.main([]) == 2
    assert cli.main(["compile"]) == 2
    assert cli.main(["--version"]) == 0
    assert "skip2lora" in capsys.readouterr().out


def test_boards_lists_every_profile(capsys):
    code, out, _ = run_cli(capsys, "boards")
    assert code == 0
    for name in ("rp2040", "rp2350", "esp32", "esp32s3-psram", "pyboard", "unix"):
        assert f"\n{name} " in out


def test_keyboard_interrupt_exits_130(capsys, monkeypatch, onnx_model, tmp_path):
    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr("skip2lora.commands.compile.import_model", interrupted)
    code, _, err = run_cli(capsys, "compile", onnx_model, "-o", tmp_path / "o.s2lm")
    assert code == 130 and err.strip() == "skip2lora: interrupted"


def test_installed_script_and_python_m(tmp_path, onnx_model):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    out = tmp_path / "script.s2lm"
    done = subprocess.run([VENV_BIN / "skip2lora", "compile", onnx_model, "-o", out, "--dtype",
                           "int8"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert read_model(out).dtype == DTYPE_I8
    done = subprocess.run([sys.executable, "-m", "skip2lora", "compile", tmp_path / "absent.pt",
                           "-o", out], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert_one_line_error(done.stderr, "absent.pt")

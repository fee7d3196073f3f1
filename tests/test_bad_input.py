"""Bad input on the host: every reader refuses a broken file with one line naming the file and
the problem, exit status 2, no traceback.

* every corrupted fixture (tests/fixtures/bad-*) through the command that reads that kind of
  file (the binary readers' own fuzzing is in tests/test_formats.py, the device readers' in
  tests/device/test_device_fuzz.py);
* ONNX and torch models: NaN/Inf weights refused, and mutated or truncated real files fuzzed
  through the importer and the compiler (hypothesis);
* the board config that `flash` writes and reads back (deploy.read_board_config).

Mismatches across files (data against the model, adapters of another model) are in
tests/test_export.py (export, eval) and tests/test_faults.py (finetune on a board).
"""
import json
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from faults import mutate
from skip2lora.model.compiler import compile_network
from skip2lora.board.deploy import board_config, read_board_config
from skip2lora.errors import UserError
from skip2lora.model.export import export_onnx
from skip2lora.model.formats import read_cache, read_model
from skip2lora.model.importers import import_model
from cli_helpers import one_line_error as one_line, run_cli

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*is deprecated:DeprecationWarning")
FIXTURES = Path(__file__).resolve().parent / "fixtures"
BAD = sorted(p.name for p in FIXTURES.iterdir() if p.name.startswith("bad-"))
MODEL, DATA = FIXTURES / "model-f32.s2lm", FIXTURES / "dataset-f32.s2ld"


# ------------------------------------------------------------------ the binary formats

@pytest.mark.parametrize("name", BAD)
def test_every_corrupted_fixture_is_one_line_exit_2(tmp_path, capsys, name):
    path = FIXTURES / name
    ext = name.rsplit(".", 1)[1]
    if ext == "s2lc":  # no command reads a cache on the host: the reader itself
        with pytest.raises(UserError) as info:
            read_cache(path)
        assert "\n" not in str(info.value) and str(info.value).startswith(f"{path}: ")
        return
    argv = {"s2lm": ["eval", path, "--data", DATA],
            "s2ld": ["eval", MODEL, "--data", path],
            "s2la": ["export", MODEL, "--adapters", path, "-o", tmp_path / "x.onnx"]}[ext]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    one_line(err, f"{path}: ")
    assert not (tmp_path / "x.onnx").exists()


def test_a_subprocess_shows_no_traceback(tmp_path):
    from faults import cli as run

    done = run("eval", FIXTURES / "bad-model-truncated.s2lm", "--data", DATA)
    assert done.returncode == 2 and done.stdout == ""
    one_line(done.stderr, "bad-model-truncated.s2lm: ", "truncated")
    assert "Traceback" not in done.stderr


# ------------------------------------------------------------------ ONNX and torch models

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A real ONNX file (from export), a torch.save'd Sequential and a TorchScript file."""
    import torch

    d = tmp_path_factory.mktemp("models")
    export_onnx(read_model(MODEL), None, d / "m.onnx")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(),
                              torch.nn.Linear(6, 3)).eval()
    torch.save(net, d / "m.pt")
    torch.jit.save(torch.jit.script(net), d / "m.torchscript")
    return d


def _poison_onnx(src, dst, value, which=0):
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(src))
    init = proto.graph.initializer[which]
    arr = numpy_helper.to_array(init).copy()
    arr.flat[arr.size // 2] = value
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(proto, str(dst))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_onnx_initializers_is_refused(models, tmp_path, capsys, value):
    import onnx

    n_init = len(onnx.load(str(models / "m.onnx")).graph.initializer)
    for which in range(n_init):
        bad = tmp_path / f"nan{which}.onnx"
        _poison_onnx(models / "m.onnx", bad, value, which)
        code, _, err = run_cli(capsys, "compile", bad, "-o", tmp_path / "x.s2lm")
        assert code == 2
        one_line(err, f"{bad}: ", "holds NaN or Inf")
        assert not (tmp_path / "x.s2lm").exists()


@pytest.mark.parametrize("where", ["0.weight", "0.bias", "1.weight", "1.running_mean",
                                   "1.running_var", "3.weight"])
def test_nan_or_inf_in_torch_state_is_refused(models, tmp_path, capsys, where):
    import torch

    for kind in ("pt", "torchscript"):
        net = (torch.load(models / "m.pt", weights_only=False) if kind == "pt"
               else torch.jit.load(str(models / "m.torchscript")))
        with torch.no_grad():
            dict(net.named_parameters(), **dict(net.named_buffers()))[where].view(-1)[1] = \
                float("nan") if where != "1.running_var" else float("inf")
        bad = tmp_path / f"bad.{kind}"
        (torch.save if kind == "pt" else torch.jit.save)(net, str(bad))
        code, _, err = run_cli(capsys, "compile", bad, "-o", tmp_path / "x.s2lm")
        assert code == 2
        line = one_line(err, f"{bad}: ")
        assert "NaN or Inf" in line or "not positive" in line, line


def test_negative_batchnorm_variance_is_refused(models, tmp_path, capsys):
    import torch

    net = torch.load(models / "m.pt", weights_only=False)
    with torch.no_grad():
        net[1].running_var[2] = -1.0
    torch.save(net, tmp_path / "neg.pt")
    code, _, err = run_cli(capsys, "compile", tmp_path / "neg.pt", "-o", tmp_path / "x.s2lm")
    assert code == 2
    one_line(err, "neg.pt: ", "BatchNorm1d module '1'", "not positive")


def _import_and_compile(raw, suffix):
    """The compile pipeline up to the file written: only UserError may come out."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"m{suffix}"
        path.write_bytes(raw)
        try:
            imported = import_model(path)
            compile_network(imported.network, "int8")
            compile_network(imported.network, "f32")
        except UserError as e:
            assert "\n" not in str(e) and str(path) in str(e), str(e)


def _mutations(data):
    return st.builds(lambda seed: mutate(data, random.Random(seed), trailer=False)[1],
                     st.integers(0, 2 ** 32 - 1))


FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.data())
def test_fuzz_onnx_files(models, data):
    raw = (models / "m.onnx").read_bytes()
    _import_and_compile(data.draw(_mutations(raw)), ".onnx")


@settings(FUZZ, max_examples=60)
@given(data=st.data(), kind=st.sampled_from([".pt", ".torchscript"]))
def test_fuzz_torch_files(models, data, kind):
    raw = (models / f"m{kind}").read_bytes()
    _import_and_compile(data.draw(_mutations(raw)), kind)


# ------------------------------------------------------------------ the board config

def test_board_config_round_trip_and_refusals():
    good = board_config("model.s2lm", "rp2040", {"rank": 4, "alpha": 4.0})
    assert read_board_config(good)["defaults"] == {"rank": 4, "alpha": 4.0}
    base = json.loads(good)
    cases = [(b"", "not JSON"), (b"\xff\xfe", "not JSON"), (b"[1]", "a JSON list"),
             (json.dumps({**base, "model": 3}), "field 'model'"),
             (json.dumps({k: v for k, v in base.items() if k != "board"}), "field 'board'"),
             (json.dumps({**base, "defaults": {"rank": 0, "alpha": 1}}), "defaults.rank 0"),
             (json.dumps({**base, "defaults": {"rank": True, "alpha": 1}}), "defaults.rank True"),
             (json.dumps({**base, "defaults": {"rank": 4, "alpha": float("nan")}}),
              "defaults.alpha nan"),
             (json.dumps({**base, "defaults": {"rank": 4}}), "defaults.alpha None")]
    for raw, fragment in cases:
        raw = raw.encode() if isinstance(raw, str) else raw
        with pytest.raises(UserError) as info:
            read_board_config(raw, "/skip2lora/config.json on the board")
        msg = str(info.value)
        assert "\n" not in msg and msg.startswith("/skip2lora/config.json on the board: ")
        assert fragment in msg, (fragment, msg)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2 ** 32 - 1), cut=st.integers(0, 200))
def test_fuzz_board_config(seed, cut):
    rng = random.Random(seed)
    raw = bytearray(board_config("model.s2lm", "rp2040", {"rank": 4, "alpha": 4.0}))
    for _ in range(rng.randint(0, 3)):
        raw[rng.randrange(len(raw))] = rng.randrange(256)
    raw = raw[:len(raw) - cut] if cut < len(raw) else raw
    try:
        config = read_board_config(bytes(raw))
    except UserError as e:
        assert "\n" not in str(e)
    else:
        assert 1 <= config["defaults"]["rank"] <= 64


# ------------------------------------------------------------------ host outputs

def test_ctrl_c_while_an_output_is_written_leaves_the_old_file(tmp_path, monkeypatch):
    """Every host output (compile, export, eval --json, pull, PEFT) goes through
    formats.write_atomic: a temporary name, fsync, rename."""
    import os

    from faults import fault
    from skip2lora.model.formats import write_atomic

    out = tmp_path / "model.s2lm"
    out.write_bytes(b"old, complete")
    with fault("Ctrl-C while the host writes an output file"):
        def interrupted(fd):
            raise KeyboardInterrupt
        monkeypatch.setattr(os, "fsync", interrupted)
        with pytest.raises(KeyboardInterrupt):
            write_atomic(out, b"new" * 1000)
        assert out.read_bytes() == b"old, complete"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model.s2lm"]  # no debris
        monkeypatch.undo()
        write_atomic(out, b"new")
        assert out.read_bytes() == b"new"


def test_an_unwritable_output_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "export", MODEL, "-o", tmp_path / "no" / "such" / "x.onnx")
    assert code == 2
    one_line(err, "x.onnx: cannot write the ONNX file")

"""One settings source (skip2lora/config.py) and one way to call the board (board/calls.py).

The CLI's options and the board's defaults are read from the config, the board's through the
generated device/s2l/config.py, which must be what tools/write_device_config.py writes now.
Board calls are built from keyword arguments checked against the device source on the host:
the line `finetune` sends is the one the hand-built job_call used to send, and a wrong
keyword fails before anything reaches a board.
"""
import argparse
import importlib.util
from dataclasses import dataclass, field, fields
from pathlib import Path

import pytest

from skip2lora import config
from skip2lora.board import calls
from skip2lora.board.calls import DEVICE_DIR, SCRIPTS_DIR, call_code, parameters, script_code
from skip2lora.board.link import BOARD_DATASET, BoardLink
from skip2lora.cli import build_parser
from skip2lora.commands.common import add_config_arguments
from skip2lora.commands.finetune import job_arguments
from skip2lora.config import FinetuneConfig
from skip2lora.errors import UserError
from skip2lora.commands.finetune import lr_for_board

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location(
        "write_device_config", ROOT / "tools" / "write_device_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- the board's copy

def test_device_config_is_what_the_generator_writes_now():
    tool = _tool()
    assert (DEVICE_DIR / "s2l" / "config.py").read_text() == tool.render(), \
        "device/s2l/config.py is stale: run python tools/write_device_config.py"
    assert tool.main(["--check"]) == 0


def test_device_config_holds_every_default_method_and_kind():
    text = _tool().render()
    assert text.startswith("# generated from host/skip2lora/config.py by "
                           "tools/write_device_config.py; do not edit\n")
    names = {}
    exec(compile(text, "config.py", "exec"), names)
    for f in fields(FinetuneConfig):
        assert names[f.name.upper()] == f.default, f.name
    assert names["LR"] == 0.01 and "LR = 0.01\n" in text and names["EPOCHS"] == 20
    assert names["METHODS"] == config.METHODS and names["SKIP_METHODS"] == config.SKIP_METHODS
    assert names["BOARD_METHODS"] == config.BOARD_METHODS
    assert (names["KIND_SKIP"], names["KIND_PARALLEL"], names["KIND_DELTA"]) == (0, 1, 2)


def test_a_changed_default_makes_the_committed_file_stale(monkeypatch):
    tool = _tool()
    monkeypatch.setattr(config, "BACKENDS", config.BACKENDS + ("turbo",))
    assert tool.render() != (DEVICE_DIR / "s2l" / "config.py").read_text()


# ---------------------------------------------------------------- the CLI reads the config

def _defaults(argv):
    return vars(build_parser().parse_args(argv))


def test_finetune_options_are_the_config_fields():
    args = _defaults(["finetune", "--data", "x.npz"])
    for name in ("method", "epochs", "batch_size", "seed", "backend", "dataset_dtype"):
        assert args[name] == getattr(FinetuneConfig, name), name
    # lr: chosen on the host by default; the board's own default stays FinetuneConfig.lr
    assert args["lr"] == config.LR_AUTO == "auto" and isinstance(FinetuneConfig.lr, float)
    assert args["rank"] is None and args["targets"] is None  # the model's, as before
    parsed = _defaults(["finetune", "--data", "x.npz", "--epochs", "3", "--lr", "0.5",
                        "--batch-size", "2", "--rank", "8", "--backend", "viper"])
    assert (parsed["epochs"], parsed["lr"], parsed["batch_size"], parsed["rank"]) == (3, 0.5, 2, 8)
    for bad in (["--method", "ft-all"], ["--backend", "gpu"], ["--dataset-dtype", "int4"]):
        with pytest.raises(SystemExit):  # ft-all: the reference trains it, the board does not
            build_parser().parse_args(["finetune", "--data", "x", *bad])


def test_compile_options_are_the_config_fields():
    args = _defaults(["compile", "m.onnx", "-o", "m.s2lm"])
    assert (args["rank"], args["alpha"], args["targets"], args["dataset_dtype"]) == \
        (FinetuneConfig.rank, None, FinetuneConfig.targets, FinetuneConfig.dataset_dtype)


def test_a_new_field_is_a_new_option_with_its_help_type_and_choices():
    @dataclass
    class Config:
        warmup: int = field(default=3, metadata={"help": "epochs of warm-up"})
        mode: str = field(default="b", metadata={"help": "the mode", "choices": ("a", "b")})

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Config, ("warmup", "mode"))
    assert vars(parser.parse_args([])) == {"warmup": 3, "mode": "b"}
    assert parser.parse_args(["--warmup", "5"]).warmup == 5
    assert "epochs of warm-up (default: 3)" in " ".join(parser.format_help().split())
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "c"])


# ---------------------------------------------------------------- one call API

def _finetune_args(**kw):
    base = dict(method="skip2lora", epochs=20, lr=0.01, batch_size=1, seed=0, resume=False,
                backend="auto", rank=None, targets=None)
    return argparse.Namespace(**dict(base, **kw))


def test_the_finetune_call_is_the_line_job_call_sent():
    """Expected lines as the old hand-built commands.finetune.job_call wrote them."""
    assert call_code("s2l.job.finetune", **job_arguments(_finetune_args(), BOARD_DATASET)) == (
        "import s2l.job\ns2l.job.finetune(model='/skip2lora/model.s2lm', "
        "data='/skip2lora/data.s2ld', adapters='/skip2lora/adapters.s2la', "
        "cache='/skip2lora/data.s2lc', method='skip2lora', epochs=20, lr=0.010000228881835938, "
        "batch_size=1, seed=0, resume=False, backend=None)\n")
    args = _finetune_args(method="lora-all", epochs=5, lr=0.05, batch_size=4, seed=3,
                          resume=True, backend="float", rank=8, targets="2,0")
    assert call_code("s2l.job.finetune", **job_arguments(args, "mine.s2ld")) == (
        "import s2l.job\ns2l.job.finetune(model='/skip2lora/model.s2lm', data='mine.s2ld', "
        "adapters='/skip2lora/adapters.s2la', cache='/skip2lora/data.s2lc', method='lora-all', "
        "epochs=5, lr=0.049999237060546875, batch_size=4, seed=3, resume=True, "
        "backend='float', rank=8, targets=[0, 2])\n")


def test_the_cli_defaults_send_the_same_line_as_before():
    args = build_parser().parse_args(["finetune", "--data", ":" + BOARD_DATASET])
    args.data = args.data[0]  # one board: run() hands finetune_board its one --data
    # --lr auto needs the data on the host; for a dataset on the board it sends the board's default
    args.lr = lr_for_board(args, None, "the model", log=lambda _: None)
    assert call_code("s2l.job.finetune", **job_arguments(args, BOARD_DATASET)) == \
        call_code("s2l.job.finetune", **job_arguments(_finetune_args(), BOARD_DATASET))


def test_parameters_are_read_from_the_device_source():
    names, required, any_keyword = parameters(DEVICE_DIR / "s2l" / "job.py", "finetune")
    assert names[:4] == ("model", "data", "adapters", "cache") and "momentum" in names
    assert required == ("model", "data", "adapters") and not any_keyword


def test_an_unknown_keyword_fails_on_the_host_in_one_line():
    link = BoardLink("/dev/nonexistent-port")  # never opened: nothing can be sent
    with pytest.raises(UserError) as info:
        link.call("s2l.job.finetune", model="m", data="d", adapters="a", epoch=3)
    message = str(info.value)
    assert "\n" not in message and "'epoch'" in message and "finetune()" in message
    assert "epochs" in message  # it lists what the function takes


@pytest.mark.parametrize("kwargs,words", [
    (dict(model="m", data="d"), "needs adapters"),
    (dict(model="m", data="d", adapters="a", lr=float("nan")), "lr=nan is not a finite"),
    (dict(model="m", data="d", adapters="a", targets=[0, object()]), "cannot be sent"),
    (dict(model="m", data="d", adapters="a", cache=Path("c")), "cannot be sent"),
])
def test_only_complete_literal_calls_are_built(kwargs, words):
    with pytest.raises(UserError, match=words):
        call_code("s2l.job.finetune", **kwargs)


def test_nested_literals_are_sent_as_their_repr():
    line = call_code("s2l.job.finetune", model="m", data="d", adapters="a",
                     targets=(1, 2), rank=None, resume=True)
    assert line.endswith("targets=(1, 2), rank=None, resume=True)\n")


def test_a_board_script_is_its_file_then_one_checked_call():
    code = script_code("sha256", path="/skip2lora/model.s2lm")
    assert code == ((SCRIPTS_DIR / "sha256.py").read_text()
                    + "\nsha256(path='/skip2lora/model.s2lm')\n")
    compile(code, "sha256", "exec")
    with pytest.raises(UserError, match="takes no argument 'name'"):
        script_code("sha256", name="x")
    with pytest.raises(UserError, match="needs path"):
        script_code("sha256")


def test_a_call_finds_its_function_in_any_device_package(tmp_path, monkeypatch):
    """A package is a folder of device/ with a manifest.py (device/ itself for s2l); its
    modules are <name>.py or <name>/__init__.py."""
    (tmp_path / "manifest.py").write_text("package('pkg')\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "job.py").write_text("def go(a, b=1):\n    pass\n")
    (tmp_path / "extra" / "pkg_extra").mkdir(parents=True)
    (tmp_path / "extra" / "manifest.py").write_text("package('pkg_extra')\n")
    (tmp_path / "extra" / "pkg_extra" / "__init__.py").write_text("def run(*, n):\n    pass\n")
    monkeypatch.setattr(calls, "DEVICE_DIR", tmp_path)
    assert call_code("pkg.job.go", a=[1.5]) == "import pkg.job\npkg.job.go(a=[1.5])\n"
    assert call_code("pkg_extra.run", n=2) == "import pkg_extra\npkg_extra.run(n=2)\n"
    with pytest.raises(UserError, match="needs n"):
        call_code("pkg_extra.run")
    with pytest.raises(ValueError, match="no device module nowhere"):
        call_code("nowhere.f")

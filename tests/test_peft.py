"""PEFT-style adapter files: exact round trip, key names, config contents, every refusal."""
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from skip2lora import __version__, cli
from skip2lora.errors import UserError
from skip2lora.model.formats import (
    KIND_DELTA, KIND_PARALLEL, KIND_SKIP, METHOD_CODES, Adapter, AdapterFile, encode_adapters,
    read_adapters, write_adapters)
from skip2lora.model.peft import (
    CONFIG_NAME, WEIGHTS_NAME, load_peft_dir, tensor_keys, write_peft_dir)
from test_export import DIMS, RANK, assert_one_line_error, make_model, save_adapters, train

FIXTURES = Path(__file__).resolve().parent / "fixtures"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def assert_same(a, b):
    """Every field and every array bit for bit, and the same .s2la bytes."""
    for name in ("model_crc", "rank", "n_classes", "alpha", "epochs_done", "method", "file_crc"):
        assert getattr(a, name) == getattr(b, name), name
    assert len(a.adapters) == len(b.adapters)
    for x, y in zip(a.adapters, b.adapters):
        assert (x.layer, x.kind) == (y.layer, y.kind)
        for u, v in ((x.A, y.A), (x.B, y.B)):
            assert u.dtype == v.dtype == np.float32 and u.shape == v.shape
            assert u.tobytes() == v.tobytes()
    assert encode_adapters(a) == encode_adapters(b)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The .s2la AdapterFile of each kind of method, read back from disk."""
    directory = tmp_path_factory.mktemp("trained")
    _, model = make_model(directory)
    files = {}
    for method, targets in (("skip2lora", "all"), ("skip2lora", "hidden"), ("lora-all", "all"),
                            ("ft-last", "all"), ("ft-all", "all")):
        _, af = train(model, method, targets)
        files[f"{method}-{targets}"] = read_adapters(
            save_adapters(directory, af, f"{method}-{targets}.s2la"))
    return files


@pytest.mark.parametrize("name", ["skip2lora-all", "skip2lora-hidden", "lora-all-all",
                                  "ft-last-all", "ft-all-all"])
def test_round_trip_exact(tmp_path, trained, name):
    af = trained[name]
    write_peft_dir(af, tmp_path / "peft", base_model="models/m.s2lm")
    back = load_peft_dir(tmp_path / "peft")
    assert_same(af, back)
    assert sorted(p.name for p in (tmp_path / "peft").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]


@pytest.mark.parametrize("fixture", ["adapters.s2la", "adapters-ft-last.s2la"])
def test_round_trip_of_the_fixtures(tmp_path, fixture):
    af = read_adapters(FIXTURES / fixture)
    write_peft_dir(af, tmp_path)
    assert_same(af, load_peft_dir(tmp_path))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_round_trip_property(tmp_path, data):
    """Any valid adapter file, every float32 bit pattern that is finite."""
    rank = data.draw(st.integers(1, 4))
    n_classes = data.draw(st.integers(2, 5))
    floats = st.floats(width=32, allow_nan=False, allow_infinity=False)
    adapters = []
    for layer in data.draw(st.lists(st.integers(0, 4), unique=True, max_size=4)):
        kind = data.draw(st.sampled_from([KIND_SKIP, KIND_PARALLEL, KIND_DELTA]))
        d_in, d_out = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
        a_shape = (d_out, d_in) if kind == KIND_DELTA else (rank, d_in)
        b_shape = {KIND_SKIP: (n_classes, rank), KIND_PARALLEL: (d_out, rank),
                   KIND_DELTA: (d_out, 1)}[kind]
        A, B = (np.array(data.draw(st.lists(floats, min_size=int(np.prod(s)),
                                            max_size=int(np.prod(s)))),
                         np.float32).reshape(s) for s in (a_shape, b_shape))
        adapters.append(Adapter(layer, kind, A, B))
    af = AdapterFile(data.draw(st.integers(0, 2**32 - 1)), rank, n_classes,
                     data.draw(floats), adapters, data.draw(st.integers(0, 2**32 - 1)),
                     data.draw(st.sampled_from(sorted(METHOD_CODES))))
    path = tmp_path / "a.s2la"
    write_adapters(path, af)
    af = read_adapters(path)
    write_peft_dir(af, tmp_path / "p")
    assert_same(af, load_peft_dir(tmp_path / "p"))


def test_key_names_and_shapes(tmp_path, trained):
    C = DIMS[-1]
    expected = {
        "skip2lora-all": {f"base_model.model.layers.{i}.lora_{m}.weight": shape
                          for i in range(3)
                          for m, shape in (("A", (RANK, DIMS[i])), ("B", (C, RANK)))},
        "lora-all-all": {f"base_model.model.layers.{i}.lora_{m}.weight": shape
                         for i in range(3)
                         for m, shape in (("A", (RANK, DIMS[i])), ("B", (DIMS[i + 1], RANK)))},
        "ft-last-all": {"base_model.model.layers.2.delta.weight": (C, DIMS[2]),
                        "base_model.model.layers.2.delta.bias": (C,)},
    }
    for name, keys in expected.items():
        write_peft_dir(trained[name], tmp_path / name)
        tensors = load_file(str(tmp_path / name / WEIGHTS_NAME))
        assert {k: v.shape for k, v in tensors.items()} == keys, name
        assert all(v.dtype == np.float32 for v in tensors.values())
    assert tensor_keys(1, KIND_SKIP) == ("base_model.model.layers.1.lora_A.weight",
                                         "base_model.model.layers.1.lora_B.weight")
    # the values are the adapters' arrays
    af = trained["skip2lora-all"]
    tensors = load_file(str(tmp_path / "skip2lora-all" / WEIGHTS_NAME))
    np.testing.assert_array_equal(tensors["base_model.model.layers.1.lora_B.weight"],
                                  af.adapters[1].B)


def test_config_contents(tmp_path, trained):
    af = trained["skip2lora-hidden"]
    write_peft_dir(af, tmp_path, base_model=Path("some/dir/model.s2lm"))
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["peft_type"] == "LORA"
    assert (config["r"], config["lora_alpha"]) == (RANK, af.alpha)
    assert config["target_modules"] == ["layers.1", "layers.2"]
    assert config["base_model_name_or_path"] == "model.s2lm"
    own = config["skip2lora"]
    assert own["method"] == "skip2lora" and own["epochs_done"] == af.epochs_done
    assert own["model_crc"] == f"0x{af.model_crc:08x}" and own["n_classes"] == DIMS[-1]
    assert own["base_model_file"] == "model.s2lm"
    assert own["created_by"] == f"skip2lora {__version__}"
    assert own["scaling"] == af.alpha / af.rank
    assert list(own["kinds"]) == ["skip"] and "logits" in own["kinds"]["skip"]
    assert own["adapters"][0] == {
        "module": "layers.1", "layer": 1, "kind": "skip", "reads": "x2", "adds_to": "logits",
        "keys": ["base_model.model.layers.1.lora_A.weight",
                 "base_model.model.layers.1.lora_B.weight"]}

    write_peft_dir(trained["lora-all-all"], tmp_path / "lora")
    own = json.loads((tmp_path / "lora" / CONFIG_NAME).read_text())["skip2lora"]
    assert [a["kind"] for a in own["adapters"]] == ["parallel"] * 3
    assert own["adapters"][1]["adds_to"] == "layers.1"
    assert json.loads((tmp_path / "lora" / CONFIG_NAME).read_text())[
        "base_model_name_or_path"] is None
    write_peft_dir(trained["ft-all-all"], tmp_path / "ft")
    own = json.loads((tmp_path / "ft" / CONFIG_NAME).read_text())["skip2lora"]
    assert [a["kind"] for a in own["adapters"]] == ["delta"] * 3


def test_overwrite_is_atomic_and_leaves_no_temp_files(tmp_path, trained):
    write_peft_dir(trained["skip2lora-all"], tmp_path)
    write_peft_dir(trained["ft-last-all"], tmp_path)  # replaces both files
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    assert_same(trained["ft-last-all"], load_peft_dir(tmp_path))


def test_write_refusals(tmp_path, trained):
    af = trained["skip2lora-all"]
    two = AdapterFile(af.model_crc, af.rank, af.n_classes, af.alpha,
                      af.adapters + [Adapter(0, KIND_PARALLEL, af.adapters[0].A,
                                             np.zeros((DIMS[1], RANK), np.float32))])
    with pytest.raises(UserError, match="layer 0 has more than one low-rank adapter"):
        write_peft_dir(two, tmp_path / "p")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is not a directory"):
        write_peft_dir(af, tmp_path / "file")


# ---------------------------------------------------------------- corrupt directories

def _edit_config(change):
    def edit(d):
        config = json.loads((d / CONFIG_NAME).read_text())
        change(config)
        (d / CONFIG_NAME).write_text(json.dumps(config))
    return edit


def _edit_tensors(change):
    def edit(d):
        tensors = load_file(str(d / WEIGHTS_NAME))
        change(tensors)
        save_file(tensors, str(d / WEIGHTS_NAME))
    return edit


KEY_A0 = "base_model.model.layers.0.lora_A.weight"
CORRUPTIONS = [  # (how, file named in the message, fragment)
    ("no-config", lambda d: (d / CONFIG_NAME).unlink(), "peft", "no adapter_config.json here"),
    ("bad-json", lambda d: (d / CONFIG_NAME).write_text("{oops"), CONFIG_NAME, "not valid JSON"),
    ("not-object", lambda d: (d / CONFIG_NAME).write_text("[]"), CONFIG_NAME, "not a JSON object"),
    ("peft-type", _edit_config(lambda c: c.update(peft_type="IA3")), CONFIG_NAME,
     "peft_type is 'IA3'"),
    ("foreign", _edit_config(lambda c: c.pop("skip2lora")), CONFIG_NAME,
     "not written by skip2lora"),
    ("version", _edit_config(lambda c: c["skip2lora"].update(format_version=9)), CONFIG_NAME,
     "format_version 9"),
    ("rank", _edit_config(lambda c: c.update(r="two")), CONFIG_NAME, "field r is 'two'"),
    ("rank-range", _edit_config(lambda c: c.update(r=0)), CONFIG_NAME, "outside 1..64"),
    ("method", _edit_config(lambda c: c["skip2lora"].update(method="sgd")), CONFIG_NAME,
     "method 'sgd'"),
    ("crc", _edit_config(lambda c: c["skip2lora"].update(model_crc="zz")), CONFIG_NAME,
     "model_crc 'zz'"),
    ("entry", _edit_config(lambda c: c["skip2lora"]["adapters"][0].update(kind="wide")),
     CONFIG_NAME, "adapters[0]"),
    ("no-weights", lambda d: (d / WEIGHTS_NAME).unlink(), WEIGHTS_NAME, "missing"),
    ("garbage-weights", lambda d: (d / WEIGHTS_NAME).write_bytes(b"\x05garbage"), WEIGHTS_NAME,
     "cannot read it as safetensors"),
    ("missing-key", _edit_tensors(lambda t: t.pop(KEY_A0)), WEIGHTS_NAME,
     f"lacks the tensor {KEY_A0}"),
    ("extra-key", _edit_tensors(lambda t: t.update(extra=np.zeros(2, np.float32))),
     WEIGHTS_NAME, "holds tensor(s) extra"),
    ("shape", _edit_tensors(lambda t: t.update({KEY_A0: np.zeros((3, DIMS[0]), np.float32)})),
     WEIGHTS_NAME, "do not fit r = 2"),
    ("nan", _edit_tensors(lambda t: t[KEY_A0].__setitem__((0, 0), np.nan)), WEIGHTS_NAME,
     "NaN or Inf"),
    ("int", _edit_tensors(lambda t: t.update({KEY_A0: np.zeros((2, DIMS[0]), np.int32)})),
     WEIGHTS_NAME, "dtype int32"),
]


@pytest.mark.parametrize("how, culprit, fragment", [(c[0], c[2], c[3]) for c in CORRUPTIONS],
                         ids=[c[0] for c in CORRUPTIONS])
def test_corrupt_directories_are_refused(tmp_path, capsys, trained, how, culprit, fragment):
    corrupt = dict((c[0], c[1]) for c in CORRUPTIONS)[how]
    peft_dir = tmp_path / "peft"
    write_peft_dir(trained["skip2lora-all"], peft_dir)
    corrupt(peft_dir)
    with pytest.raises(UserError) as info:
        load_peft_dir(peft_dir)
    message = str(info.value)
    assert culprit in message and fragment in message, message
    # through the CLI: one line, exit 2
    model_path, _ = make_model(tmp_path)
    code = cli.main(["export", str(model_path), "--adapters", str(peft_dir), "-o",
                     str(tmp_path / "x.onnx")])
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, culprit, fragment)


def test_missing_directory(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        load_peft_dir(tmp_path / "absent")

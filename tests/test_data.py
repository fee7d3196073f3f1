"""Data loaders, the synthetic drift problem, pre-training and ONNX export."""
import time
import zipfile

import numpy as np
import pytest

from skip2lora.data import Scenario
from skip2lora.data import cooling_fan as cf
from skip2lora.data.synthetic import make_drift
from skip2lora.errors import UserError
from unavailable import require_cooling_fan_data


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """Keep the tests' parsed-array cache out of the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SKIP2LORA_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


def _need_data():
    require_cooling_fan_data()


def _rows(X):
    return {row.tobytes() for row in np.asarray(X)}


# ---- the real recordings -------------------------------------------------------------------

def test_every_12cm_hmlo_recording_has_235_spectra():
    _need_data()
    names = [n for n in cf.recording_names() if n.startswith("12cm_hmlo_")]
    assert len(names) == 18
    for n in names:
        x = cf.load_recording(n)
        assert x.shape == (235, 512) and x.dtype == np.float32, n
        assert 0.0 <= x.min() and x.max() <= 1.0, n
        assert not x.flags.writeable  # shared through the cache: nobody may edit it


def test_recording_is_in_file_name_order_and_parsed_exactly():
    _need_data()
    x = cf.load_recording("12cm_hmlo_normal_silentA_1")
    # 2022-02-09-23-07-51.csv, the first by name, begins "0, 0.000000" / "1, 0.040549".
    assert x[0, 0] == 0.0
    assert x[0, 1] == np.float32(0.040549)
    # the recording steps the speed down and stops the fan: the loud part comes first
    assert x[:60].sum(axis=1).mean() > 5 * x[-30:].sum(axis=1).mean()
    assert cf.load_recording("12cm_hmlo_normal_silentA_1.zip") is x  # same cached array


def test_unknown_recording_is_a_user_error():
    _need_data()
    with pytest.raises(UserError, match="no such recording"):
        cf.load_recording("12cm_hmlo_normal_kitchen_1")


def test_room_labels_and_counts():
    _need_data()
    X, y = cf.load_room("noisy", 2)
    assert X.shape == (705, 512) and y.dtype == np.int64
    assert np.bincount(y).tolist() == [235, 235, 235]
    assert cf.CLASS_NAMES == ("normal", "damage1", "damage2")
    np.testing.assert_array_equal(X[y == 2], cf.load_recording("12cm_hmlo_damage2_noisy_2"))


@pytest.mark.parametrize("name", list(cf.SCENARIOS))
def test_scenario_splits_are_disjoint_recordings(name):
    _need_data()
    s = cf.load_scenario(name)
    assert isinstance(s, Scenario) and s.n_features == 512 and s.n_classes == 3
    splits = {"pretrain": s.pretrain, "source_test": s.source_test,
              "finetune": s.finetune, "test": s.test}
    for key, (X, y) in splits.items():
        assert X.shape == (705, 512) and y.shape == (705,), key
        assert np.bincount(y).tolist() == [235, 235, 235], key
    keys = list(splits)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert not _rows(splits[a][0]) & _rows(splits[b][0]), (a, b)
    target = cf.SCENARIOS[name]
    np.testing.assert_array_equal(s.pretrain[0], cf.load_room("silentA", 1)[0])
    np.testing.assert_array_equal(s.test[0], cf.load_room(target, 2)[0])


def test_split_2_1_swaps_the_recordings():
    _need_data()
    a = cf.load_scenario("silentA-to-noisy", "1-2")
    b = cf.load_scenario("silentA-to-noisy", "2-1")
    np.testing.assert_array_equal(a.finetune[0], b.test[0])
    np.testing.assert_array_equal(a.test[0], b.finetune[0])
    np.testing.assert_array_equal(a.pretrain[0], b.source_test[0])


def test_pretrain_on_both_source_recordings():
    _need_data()
    s = cf.load_scenario("silentA-to-silentB", holdout_source=False)
    assert s.pretrain[0].shape == (1410, 512)
    assert s.source_test[0].shape == (0, 512) and s.source_test[1].shape == (0,)


def test_fan_running_only_drops_the_stopped_tail():
    _need_data()
    for room in cf.ROOMS:
        for cls in cf.CLASS_NAMES:
            x = cf.load_recording(f"12cm_hmlo_{cls}_{room}_1")
            k = cf.fan_stop_index(x)
            assert 170 <= k <= 185, (room, cls, k)
            # running spectra are louder than the stopped fan in the same room
            assert x[:k].sum(axis=1).min() > x[k + 5:].sum(axis=1).max()
    s = cf.load_scenario("silentA-to-noisy", fan_running_only=True)
    for X, y in (s.pretrain, s.finetune, s.test, s.source_test):
        assert 3 * 170 <= len(X) <= 3 * 185 and len(X) == len(y)
        assert set(np.bincount(y)) <= set(range(170, 186))


def test_bad_scenario_and_split_are_user_errors():
    with pytest.raises(UserError, match="unknown scenario"):
        cf.load_scenario("silentA-to-kitchen")
    with pytest.raises(UserError, match="unknown split"):
        cf.load_scenario("silentA-to-noisy", split="1-1")


def test_missing_data_dir_names_path_and_env_var(monkeypatch, tmp_path):
    missing = tmp_path / "nowhere"
    monkeypatch.setenv("SKIP2LORA_DATA_DIR", str(missing))
    with pytest.raises(UserError) as info:
        cf.load_recording("12cm_hmlo_normal_silentA_1")
    msg = str(info.value)
    assert str(missing) in msg and "SKIP2LORA_DATA_DIR" in msg
    assert "\n" not in msg


def _write_zip(path, files):
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)


def test_small_zip_parses_and_disk_cache_is_used(monkeypatch, tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    data.mkdir()
    spectra = np.round(np.random.default_rng(0).random((3, 512)), 6).astype(np.float32)
    files = {f"rec/{name}.csv": "".join(f"{i}, {v:.6f}\n" for i, v in enumerate(row))
             for name, row in zip(["b", "c", "a"], spectra)}  # stored out of name order
    files["rec/"] = ""
    _write_zip(data / "rec.zip", files)
    monkeypatch.setenv("SKIP2LORA_DATA_DIR", str(data))
    monkeypatch.setenv("SKIP2LORA_CACHE_DIR", str(cache))
    x = cf.load_recording("rec")
    np.testing.assert_array_equal(x, spectra[[2, 0, 1]])  # a, b, c
    cached = list(cache.glob("cooling-fan-rec-*.npy"))
    assert len(cached) == 1
    cf._load.cache_clear()
    np.save(cached[0], x * 0 + 7)  # prove the second load reads the disk cache
    assert float(cf.load_recording("rec")[0, 0]) == 7.0
    cf._load.cache_clear()


def test_malformed_csv_is_a_user_error(monkeypatch, tmp_path):
    _write_zip(tmp_path / "bad.zip", {"bad/x.csv": "0, 0.1\n1, 0.2\n"})
    monkeypatch.setenv("SKIP2LORA_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SKIP2LORA_CACHE_DIR", "")
    with pytest.raises(UserError, match="expected 1 CSVs of 512 lines"):
        cf.load_recording("bad")
    _write_zip(tmp_path / "worse.zip", {"w/x.csv": "0, zero\n"})
    with pytest.raises(UserError, match="malformed"):
        cf.load_recording("worse")


# ---- the synthetic drift problem -----------------------------------------------------------

def test_synthetic_is_deterministic_and_shaped():
    a = make_drift(seed=3)
    b = make_drift(seed=3)
    c = make_drift(seed=4)
    for key in ("pretrain", "finetune", "test", "source_test"):
        np.testing.assert_array_equal(getattr(a, key)[0], getattr(b, key)[0])
        np.testing.assert_array_equal(getattr(a, key)[1], getattr(b, key)[1])
    assert not np.array_equal(a.pretrain[0], c.pretrain[0])
    s = make_drift(n_features=12, n_classes=4, n_train=80, n_finetune=40, n_test=60, seed=1)
    assert s.pretrain[0].shape == (80, 12) and s.pretrain[0].dtype == np.float32
    assert s.finetune[0].shape == (40, 12) and s.test[0].shape == (60, 12)
    assert s.source_test[0].shape == (60, 12)
    assert np.bincount(s.test[1]).tolist() == [15, 15, 15, 15]
    assert s.n_classes == 4 and s.n_features == 12


def test_synthetic_drift_hurts_a_source_model():
    from skip2lora.training.pretrain import accuracy, pretrain
    s = make_drift(seed=0)
    src = pretrain(*s.pretrain, dims=(16, 16, 16, 3), epochs=20, lr=3e-3)
    tgt = pretrain(*s.finetune, dims=(16, 16, 16, 3), epochs=60, lr=3e-3)
    assert accuracy(src, *s.source_test) > 0.95
    assert accuracy(src, *s.test) < 0.85            # the room moved the data ...
    assert accuracy(tgt, *s.test) > 0.95            # ... but the target room is learnable


# ---- pre-training and export ---------------------------------------------------------------

def test_pretrain_is_deterministic():
    import torch
    from skip2lora.training.pretrain import pretrain
    s = make_drift(seed=1, n_train=200)
    for bn, do in ((False, 0.0), (True, 0.1)):
        a = pretrain(*s.pretrain, dims=(16, 8, 3), epochs=3, seed=5, batchnorm=bn, dropout=do)
        b = pretrain(*s.pretrain, dims=(16, 8, 3), epochs=3, seed=5, batchnorm=bn, dropout=do)
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb), ka
        assert not a.training


def test_build_mlp_layers():
    from skip2lora.training.pretrain import build_mlp
    kinds = lambda m: [type(l).__name__ for l in m]  # noqa: E731
    assert kinds(build_mlp((8, 4, 4, 2))) == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert kinds(build_mlp((8, 4, 2), batchnorm=True, dropout=0.5)) == [
        "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]


def test_pretrain_cooling_fan_is_fast_and_learns():
    _need_data()
    from skip2lora.training.pretrain import accuracy, pretrain
    s = cf.load_scenario("silentA-to-noisy")
    t = time.perf_counter()
    m = pretrain(*s.pretrain)
    assert time.perf_counter() - t < 30
    # ~100 % on the running fan, chance on the stopped quarter: ~82 % on the other recording
    assert accuracy(m, *s.source_test) > 0.75


@pytest.mark.parametrize("bn,do,ops", [
    (False, 0.0, ["Gemm", "Relu", "Gemm", "Relu", "Gemm"]),
    (True, 0.2, ["Gemm", "BatchNormalization", "Relu", "Gemm", "BatchNormalization", "Relu",
                 "Gemm"]),
])
def test_onnx_export_matches_torch(tmp_path, bn, do, ops):
    import torch
    import onnx
    import onnxruntime as ort
    from skip2lora.training.pretrain import export_onnx, predict, pretrain, save_torch
    s = make_drift(n_features=32, seed=2)
    m = pretrain(*s.pretrain, dims=(32, 16, 16, 3), epochs=3, batchnorm=bn, dropout=do)
    path = export_onnx(m, tmp_path / "m.onnx", 32)
    graph = onnx.load(str(path)).graph
    assert [n.op_type for n in graph.node] == ops
    assert {o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")} == {17}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    X = s.test[0]  # a batch larger than the export's dummy: the batch axis is dynamic
    got = sess.run(None, {sess.get_inputs()[0].name: X})[0]
    np.testing.assert_allclose(got, predict(m, X), atol=1e-5, rtol=0)
    save_torch(m, tmp_path / "m.pt")
    back = torch.load(str(tmp_path / "m.pt"), weights_only=False)
    np.testing.assert_array_equal(predict(back, X), predict(m, X))


def test_onnx_export_of_untrained_batchnorm_aliases_equal_tensors(tmp_path):
    """Fresh BatchNorm layers hold equal tensors (ones, zeros); the TorchScript exporter
    stores each once and aliases the rest with Identity nodes, which importers must follow."""
    import torch
    import onnx
    import onnxruntime as ort
    from skip2lora.training.pretrain import build_mlp, export_onnx, predict
    torch.manual_seed(0)
    m = build_mlp((32, 16, 16, 3), batchnorm=True).eval()
    path = export_onnx(m, tmp_path / "fresh.onnx", 32)
    graph = onnx.load(str(path)).graph
    inits = {i.name for i in graph.initializer}
    ident = [n for n in graph.node if n.op_type == "Identity"]
    assert ident and all(n.input[0] in inits for n in ident)
    assert {n.op_type for n in graph.node} == {"Identity", "Gemm", "BatchNormalization", "Relu"}
    X = np.random.default_rng(0).random((5, 32), dtype=np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"input": X})[0], predict(m, X), atol=1e-5, rtol=0)

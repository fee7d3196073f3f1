"""Host reader/writer of the four formats against the committed fixtures (docs/formats.md).

The fixtures are written by tools/make_fixtures.py's own struct-level writer from the tables
of docs/formats.md, and their .json from the values written (not decoded), so the host's
decoder and encoder are both compared with an independent statement of the formats."""
import importlib.util
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from skip2lora.model import formats as F
from skip2lora.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


def _load_maker():
    spec = importlib.util.spec_from_file_location("make_fixtures", ROOT / "tools" / "make_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


MAKER = _load_maker()
BUILT = MAKER.build()
VALID = sorted(n for n in BUILT if n.rsplit(".", 1)[1] in ("s2lm", "s2ld", "s2lc", "s2la")
               and not n.startswith("bad-"))
BAD = sorted(n for n in BUILT if n.startswith("bad-"))
DECODE = {"s2lm": F.decode_model, "s2ld": F.decode_dataset, "s2lc": F.decode_cache,
          "s2la": F.decode_adapters}


def _decoder(name):
    return DECODE[name.rsplit(".", 1)[1]]


# ------------------------------------------------------------------ fixtures cannot drift

def test_fixture_set_is_complete():
    for ext in DECODE:
        assert any(n.endswith(ext) for n in VALID), ext
        assert any(n.endswith(ext) for n in BAD), ext
    for what in ("model", "dataset", "cache", "adapters"):
        for how in ("truncated", "magic", "version", "header-crc", "dims", "nan"):
            assert any(n.startswith("bad-%s-%s" % (what, how)) for n in BAD), (what, how)
        if what != "cache":
            assert "bad-%s-file-crc.%s" % (what, {"model": "s2lm", "dataset": "s2ld",
                                                  "adapters": "s2la"}[what]) in BAD


@pytest.mark.parametrize("name", sorted(BUILT))
def test_committed_fixture_equals_writer_output(name):
    path = FIXTURES / name
    assert path.is_file(), "missing fixture %s: run python tools/make_fixtures.py" % name
    assert path.read_bytes() == BUILT[name], (
        "%s differs from what the writer produces now: run python tools/make_fixtures.py "
        "and review the diff" % name)


def test_no_stray_fixtures():
    on_disk = {p.name for p in FIXTURES.iterdir() if p.suffix in (
        ".s2lm", ".s2ld", ".s2lc", ".s2la", ".json")}
    assert on_disk == set(BUILT)


@pytest.mark.parametrize("name", VALID)
def test_valid_fixture_decodes_to_its_json(name):
    kind = MAKER.KINDS[name.rsplit(".", 1)[1]]
    decoded = MAKER.describe(kind, _decoder(name)(FIXTURES / name))
    expected = json.loads((FIXTURES / (name.rsplit(".", 1)[0] + ".json")).read_text())
    assert json.loads(json.dumps(decoded)) == expected


# ------------------------------------------------------------------ the host writer

def _host_object(ext, c):
    """skip2lora.model.formats objects from the contents make_fixtures wrote."""
    if ext == "s2lm":
        return F.ModelFile([F.ModelLayer(l["weight"], l["bias"], l["scale"], l["relu"])
                            for l in c["layers"]], c["rank"], c["alpha"], c["adapter_mask"])
    if ext == "s2ld":
        return F.DatasetFile(c["features"], c["labels"], c["n_classes"], c["dtype"], c["scale"])
    if ext == "s2lc":
        return F.CacheFile(c["model_crc"], c["dataset_crc"],
                           [F.CacheSegment(s["dim"], s["dtype"], s["scale"])
                            for s in c["segments"]], c["records"])
    return F.AdapterFile(c["model_crc"], c["rank"], c["n_classes"], c["alpha"],
                         [F.Adapter(a["layer"], a["kind"], a["A"], a["B"])
                          for a in c["adapters"]], epochs_done=c["epochs_done"],
                         method=c["method"])


@pytest.mark.parametrize("name", sorted(MAKER.contents()))
def test_host_writer_writes_the_independent_bytes(name):
    ext = name.rsplit(".", 1)[1]
    enc = {"s2lm": F.encode_model, "s2ld": F.encode_dataset, "s2lc": F.encode_cache,
           "s2la": F.encode_adapters}[ext]
    assert enc(_host_object(ext, MAKER.contents()[name])) == BUILT[name]


# header_len and file size of each valid fixture, worked out by hand from docs/formats.md:
#   model (L = 3): 24 + 2*(L+1) = 32 -> header_len 36. f32 blocks 8 + 4*d_out*d_in + 4*d_out:
#     224 + 148 + 80; int8 blocks 8 + 4*d_out + pad4(d_out*d_in) + 4*d_out: 104 + 80 + 48.
#   dataset: header_len 24, records n_features*itemsize + 1 = 33 (f32) or 9 (int8), 6 of them.
#   cache (S = 3): 24 + 8*S = 48 -> 52; int: record_len pad4(6) + pad4(10) + 12 = 32,
#     f32: 24 + 20 + 12 = 56; records of record_len + 4, no trailer.
#   adapters (K = 3): 28 + 12*K = 64 -> 68; A 2 x d and B 3 x 2 for d = 8, 6, 5: 56 floats.
#     ft-last (K = 1): 40 -> 44; A 3 x 5 and B 3 x 1: 18 floats.
BY_HAND = {
    "model-f32.s2lm": (36, 36 + 224 + 148 + 80 + 4),
    "model-int8.s2lm": (36, 36 + 104 + 80 + 48 + 4),
    "dataset-f32.s2ld": (24, 24 + 6 * 33 + 4),
    "dataset-int8.s2ld": (24, 24 + 6 * 9 + 4),
    "cache-int.s2lc": (52, 52 + 6 * 36),
    "cache-f32.s2lc": (52, 52 + 6 * 60),
    "adapters.s2la": (68, 68 + 4 * 56 + 4),
    "adapters-ft-last.s2la": (44, 44 + 4 * 18 + 4),
}


def test_fixture_layout_by_hand():
    assert set(BY_HAND) == set(VALID) - {n for n in VALID if n.startswith("badrecord")}
    for name, (header_len, size) in BY_HAND.items():
        data = BUILT[name]
        assert data[:4] == b"S2L" + name.split(".")[1][3].upper().encode()
        assert struct.unpack_from("<HH", data, 4) == (1, header_len), name
        assert len(data) == size, name
        assert struct.unpack_from("<I", data, header_len - 4)[0] == \
            zlib.crc32(data[:header_len - 4]), name
    m = BUILT["model-int8.s2lm"]
    assert struct.unpack_from("<BBHfII4H", m, 8) == (3, 1, 2, 4.0, 7, 0, 8, 6, 5, 3)
    assert struct.unpack_from("<HHBBH", m, 36) == (8, 6, 1, 1, 0)  # first block: int8, ReLU
    assert struct.unpack_from("<6f", m, 44) == tuple((k + 1) / 256 for k in range(6))
    a = BUILT["adapters.s2la"]
    assert struct.unpack_from("<IBBHfIB", a, 8)[1:] == (3, 2, 3, 4.0, 3, 0)
    assert struct.unpack_from("<BBHHHHH", a, 28 + 12) == (1, 0, 2, 6, 3, 2, 0)


# ------------------------------------------------------------------ round trips

@pytest.mark.parametrize("name", VALID)
def test_reencode_is_identity(name):
    data = BUILT[name]
    obj = _decoder(name)(data)
    enc = {"s2lm": F.encode_model, "s2ld": F.encode_dataset, "s2lc": F.encode_cache,
           "s2la": F.encode_adapters}[name.rsplit(".", 1)[1]]
    if name.startswith("badrecord"):
        return
    assert enc(obj) == data


def test_model_roundtrip_values(tmp_path):
    rng = np.random.default_rng(0)
    for int8 in (False, True):
        layers = []
        dims = [7, 5, 4]
        for i in range(2):
            w = rng.standard_normal((dims[i + 1], dims[i])).astype(np.float32)
            b = rng.standard_normal(dims[i + 1]).astype(np.float32)
            if int8:
                layers.append(F.ModelLayer(rng.integers(-127, 128, w.shape).astype(np.int8), b,
                                           np.abs(b) + 0.1, i == 0))
            else:
                layers.append(F.ModelLayer(w, b, None, i == 0))
        m = F.ModelFile(layers, rank=3, alpha=6.0)
        path = tmp_path / ("m%d.s2lm" % int8)
        F.write_model(path, m)
        back = F.read_model(path)
        assert back.dims == dims and back.rank == 3 and back.alpha == 6.0
        assert back.file_crc == m.file_crc
        for a, b in zip(m.layers, back.layers):
            np.testing.assert_array_equal(a.weight, b.weight)
            np.testing.assert_array_equal(a.bias, b.bias)
            np.testing.assert_array_equal(a.dequantized(), b.dequantized())


def test_dataset_roundtrip_and_append_rule(tmp_path):
    x = np.linspace(-2, 3, 40, dtype=np.float32).reshape(5, 8)
    y = np.array([0, 1, 2, 1, 0], np.uint8)
    for dtype in (F.DTYPE_F32, F.DTYPE_I8):
        ds = F.dataset_from_arrays(x, y, 3, dtype)
        data = F.encode_dataset(ds)
        back = F.decode_dataset(data)
        np.testing.assert_array_equal(back.labels, y)
        tol = 0 if dtype == F.DTYPE_F32 else ds.scale / 2 + 1e-7
        np.testing.assert_allclose(back.float_features(), x, atol=tol)
        # the documented append: drop trailer, add record, new CRC continues the old one
        rec = F.dataset_record(ds.features[0], 2, dtype)
        old_crc = struct.unpack("<I", data[-4:])[0]
        appended = data[:-4] + rec + struct.pack("<I", F.crc32(rec, old_crc))
        back2 = F.decode_dataset(appended)
        assert len(back2.labels) == 6 and back2.labels[-1] == 2


def test_cache_and_adapter_roundtrip():
    c = F.decode_cache(BUILT["cache-int.s2lc"])
    assert F.decode_cache(F.encode_cache(c)).records[3][1].tolist() == c.records[3][1].tolist()
    a = F.decode_adapters(BUILT["adapters.s2la"])
    assert a.method == "skip2lora" and len(a.adapters) == 3 and a.adapters[1].A.shape == (2, 6)


# ------------------------------------------------------------------ rejection

@pytest.mark.parametrize("name", BAD)
def test_bad_fixture_rejected_with_one_line_error(name):
    path = FIXTURES / name
    with pytest.raises(UserError) as info:
        _decoder(name)(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path) in msg


@pytest.mark.parametrize("name", ["badrecord-cache-crc.s2lc", "badrecord-cache-truncated.s2lc"])
def test_bad_cache_record_is_recompute_not_values(name):
    c = F.decode_cache(FIXTURES / name)
    good = F.decode_cache(FIXTURES / "cache-int.s2lc")
    assert len(c.records) == len(good.records)
    bad = [k for k, r in enumerate(c.records) if r is None]
    assert bad  # at least one record refused
    for k, r in enumerate(c.records):
        if r is not None:
            for u, v in zip(r, good.records[k]):
                np.testing.assert_array_equal(u, v)


def test_missing_file_is_user_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        F.read_model(tmp_path / "nope.s2lm")


# ------------------------------------------------------------------ fuzz

_SEEDS = [n for n in VALID if not n.startswith("badrecord")]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(_SEEDS), data=st.data())
def test_fuzz_mutations_only_raise_user_error(name, data):
    raw = bytearray(BUILT[name])
    op = data.draw(st.sampled_from(["flip", "truncate", "extend", "reseal-flip"]))
    if op == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    elif op == "extend":
        raw += bytes(data.draw(st.binary(min_size=1, max_size=16)))
    else:
        for _ in range(data.draw(st.integers(1, 4))):
            pos = data.draw(st.integers(0, len(raw) - 1))
            raw[pos] = data.draw(st.integers(0, 255))
        if op == "reseal-flip" and len(raw) >= 12:
            # recompute the CRCs so the mutation reaches the field checks behind them
            hl = struct.unpack_from("<H", raw, 6)[0]
            if 12 <= hl <= len(raw) and hl % 4 == 0:
                struct.pack_into("<I", raw, hl - 4, F.crc32(bytes(raw[:hl - 4])))
                if not name.endswith("s2lc"):
                    struct.pack_into("<I", raw, len(raw) - 4, F.crc32(bytes(raw[:-4])))
    try:
        _decoder(name)(bytes(raw))
    except UserError as e:
        assert "\n" not in str(e)


def test_quantize_features_maps_the_peak_to_127_and_clips_symmetrically():
    from skip2lora.model.formats import quantize_features
    q, scale = quantize_features([[0.0, 63.5, -127.0], [1.0, -2.5, 127.0]])
    assert scale == 1.0 and q.dtype == np.int8
    np.testing.assert_array_equal(q, [[0, 64, -127], [1, -2, 127]])  # round half to even
    q, scale = quantize_features([[2.54, -1.27]])
    assert scale == pytest.approx(0.02, rel=1e-6)
    np.testing.assert_array_equal(q, [[127, -64]])
    q, scale = quantize_features(np.zeros((2, 3)))  # nothing to scale: 1.0, codes 0
    assert scale == 1.0 and not q.any()
    q, scale = quantize_features(np.zeros((0, 3)))
    assert scale == 1.0 and q.shape == (0, 3)


def test_limits_are_inclusive_and_a_zero_scale_is_refused():
    """The readers' range checks at their exact ends: 2 classes and rank MAX_RANK are valid,
    an empty dataset is a valid file, a scale of exactly 0 is not."""
    from skip2lora.model.formats import MAX_RANK
    ds = F.dataset_from_arrays(np.ones((3, 4)), [0, 1, 1], 2, F.DTYPE_I8)
    back = F.decode_dataset(F.encode_dataset(ds))
    assert back.n_classes == 2 and back.features.shape == (3, 4)
    empty = F.decode_dataset(F.encode_dataset(
        F.DatasetFile(np.zeros((0, 4), np.float32), np.zeros(0, np.uint8), 3)))
    assert empty.features.shape == (0, 4) and len(empty.labels) == 0
    zero = F.encode_dataset(F.DatasetFile(np.zeros((1, 4), np.int8), np.zeros(1, np.uint8), 3,
                                          F.DTYPE_I8, 0.0))
    with pytest.raises(UserError, match="scale"):
        F.decode_dataset(zero)
    af = F.AdapterFile(7, MAX_RANK, 2, 1.0,
                       [F.Adapter(0, F.KIND_SKIP, np.zeros((MAX_RANK, 4), np.float32),
                                  np.zeros((2, MAX_RANK), np.float32))])
    back = F.decode_adapters(F.encode_adapters(af))
    assert back.rank == MAX_RANK and back.n_classes == 2
    cache = F.CacheFile(1, 2, [F.CacheSegment(4, F.DTYPE_I8, 0.0)], [[np.zeros(4, np.int8)]])
    with pytest.raises(UserError, match="scale"):
        F.decode_cache(F.encode_cache(cache))

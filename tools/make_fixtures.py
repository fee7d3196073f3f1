"""Write the format fixtures in tests/fixtures/: small valid files of every format, a .json of
each one's decoded contents, and corrupted copies named bad-<what>-<how>.<ext>.

    python tools/make_fixtures.py          # (re)write tests/fixtures/
    python tools/make_fixtures.py --check  # exit 1 if the files on disk differ

Everything is built from fixed integer formulas (no RNG, no platform-dependent float maths),
so the bytes are the same on every machine; tests/test_formats.py calls build() and compares
with the committed files, so the spec, the writer and the fixtures cannot drift apart.

Besides the bad-* files (which every reader must reject with a one-line error), the cache has
`badrecord-*` copies: their header is valid, so a reader accepts the file, but one record is
damaged and must come back as "recompute" (None on the host), never as values.
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "host"))

from skip2lora import formats as F  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
DIMS = (8, 6, 5, 3)


def _ramp(n, mul, mod, off, div):
    """Deterministic pseudo-random float32 values, exact on every machine."""
    return np.array([((k * mul + off) % mod - mod // 2) / div for k in range(n)], np.float32)


def _model(int8):
    layers = []
    for i in range(len(DIMS) - 1):
        d_in, d_out = DIMS[i], DIMS[i + 1]
        w = _ramp(d_out * d_in, 7 + i, 23, 3 * i, 32.0).reshape(d_out, d_in)
        b = _ramp(d_out, 5, 11, i, 64.0)
        relu = i < len(DIMS) - 2
        if int8:
            scale = (np.arange(d_out, dtype=np.float32) + 1) / np.float32(256.0)
            q = _ramp(d_out * d_in, 37 + i, 251, 11 * i, 1.0).astype(np.int8).reshape(d_out, d_in)
            layers.append(F.ModelLayer(q, b, scale, relu))
        else:
            layers.append(F.ModelLayer(w, b, None, relu))
    return F.ModelFile(layers, rank=2, alpha=4.0, adapter_mask=0b111)


def _dataset(int8):
    n = 6
    x = _ramp(n * DIMS[0], 13, 29, 1, 8.0).reshape(n, DIMS[0])
    y = np.array([k % DIMS[-1] for k in range(n)], np.uint8)
    if int8:
        q = _ramp(n * DIMS[0], 41, 255, 0, 1.0).astype(np.int8).reshape(n, DIMS[0])
        return F.DatasetFile(q, y, DIMS[-1], F.DTYPE_I8, 0.03125)
    return F.DatasetFile(x, y, DIMS[-1], F.DTYPE_F32, 1.0)


def _cache(model_crc, dataset_crc):
    segs = [F.CacheSegment(6, F.DTYPE_I8, 0.0625), F.CacheSegment(5, F.DTYPE_I16, 0.001953125),
            F.CacheSegment(3, F.DTYPE_I32, 1.0 / 65536)]
    recs = []
    for k in range(6):
        recs.append([np.array([(k * 3 + j * 5) % 128 for j in range(6)], np.int8),
                     np.array([(k * 1000 + j * 77) % 30000 - 15000 for j in range(5)], np.int16),
                     np.array([(k * 65536 + j * 12345) - 200000 for j in range(3)], np.int32)])
    return F.CacheFile(model_crc, dataset_crc, segs, recs)


def _cache_f32(model_crc, dataset_crc):
    segs = [F.CacheSegment(6), F.CacheSegment(5), F.CacheSegment(3)]
    recs = [[_ramp(6, 3, 17, k, 4.0), _ramp(5, 5, 19, k, 8.0), _ramp(3, 7, 13, k, 2.0)]
            for k in range(6)]
    return F.CacheFile(model_crc, dataset_crc, segs, recs)


def _adapters(model_crc):
    ads = []
    for i, d in enumerate(DIMS[:-1]):
        ads.append(F.Adapter(i, F.KIND_SKIP, _ramp(2 * d, 3 + i, 17, i, 64.0).reshape(2, d),
                             _ramp(3 * 2, 5, 13, i, 128.0).reshape(3, 2)))
    return F.AdapterFile(model_crc, 2, 3, 4.0, ads, epochs_done=3, method="skip2lora")


def _adapters_ft_last(model_crc):
    a = F.Adapter(2, F.KIND_DELTA, _ramp(15, 3, 17, 0, 64.0).reshape(3, 5),
                  _ramp(3, 5, 13, 1, 64.0).reshape(3, 1))
    return F.AdapterFile(model_crc, 1, 3, 1.0, [a], epochs_done=1, method="ft-last")


# ------------------------------------------------------------------ decoded contents as JSON

def _list(a):
    return np.asarray(a).tolist()


def describe(kind, obj):
    """The decoded contents of a file as plain JSON values (floats are exact float32 values)."""
    if kind == "model":
        return {"dims": list(obj.dims), "dtype": obj.dtype, "rank": obj.rank,
                "alpha": obj.alpha, "adapter_mask": obj.adapter_mask, "file_crc": obj.file_crc,
                "layers": [{"weight": _list(l.weight), "bias": _list(l.bias),
                            "scale": None if l.scale is None else _list(l.scale),
                            "relu": l.relu} for l in obj.layers]}
    if kind == "dataset":
        return {"n_features": obj.features.shape[1], "n_classes": obj.n_classes,
                "dtype": obj.dtype, "scale": obj.scale, "file_crc": obj.file_crc,
                "features": _list(obj.features), "labels": _list(obj.labels)}
    if kind == "cache":
        return {"model_crc": obj.model_crc, "dataset_crc": obj.dataset_crc,
                "record_len": obj.record_len,
                "segments": [{"dim": s.dim, "dtype": s.dtype, "scale": s.scale}
                             for s in obj.segments],
                "records": [None if r is None else [_list(v) for v in r] for r in obj.records]}
    if kind == "adapters":
        return {"model_crc": obj.model_crc, "rank": obj.rank, "n_classes": obj.n_classes,
                "alpha": obj.alpha, "epochs_done": obj.epochs_done, "method": obj.method,
                "file_crc": obj.file_crc,
                "adapters": [{"layer": a.layer, "kind": a.kind, "A": _list(a.A), "B": _list(a.B)}
                             for a in obj.adapters]}
    raise ValueError(kind)


DECODERS = {"s2lm": ("model", F.decode_model), "s2ld": ("dataset", F.decode_dataset),
            "s2lc": ("cache", F.decode_cache), "s2la": ("adapters", F.decode_adapters)}


# ------------------------------------------------------------------ corruptions

def _reseal(data, trailer=True):
    """Recompute the header CRC (and the file CRC) after a field was changed on purpose."""
    data = bytearray(data)
    header_len = struct.unpack_from("<H", data, 6)[0]
    struct.pack_into("<I", data, header_len - 4, F.crc32(bytes(data[:header_len - 4])))
    if trailer:
        struct.pack_into("<I", data, len(data) - 4, F.crc32(bytes(data[:-4])))
    return bytes(data)


def _put(data, offset, fmt, *values, trailer=True):
    data = bytearray(data)
    struct.pack_into("<" + fmt, data, offset, *values)
    return _reseal(bytes(data), trailer)


def _flip(data, offset):
    data = bytearray(data)
    data[offset] ^= 0x40
    return bytes(data)


def _common_bad(data, trailer=True):
    header_len = struct.unpack_from("<H", data, 6)[0]
    out = {"truncated": data[:header_len - 2],
           "magic": b"XXXX" + data[4:],
           "version": _put(data, 4, "H", 2, trailer=trailer),
           "header-crc": _flip(data, header_len - 4)}
    if trailer:
        out["file-crc"] = _flip(data, len(data) - 4)
        out["payload"] = _flip(data, header_len + 9)  # payload byte changed, CRCs left alone
        out["short"] = _reseal(data[:-5] + data[-4:])  # resealed but one byte missing
    return out


def _nan_at(data, offset):
    data = bytearray(data)
    data[offset:offset + 4] = struct.pack("<f", float("nan"))
    return _reseal(bytes(data))


def build():
    """name -> bytes of every fixture file (valid, .json, bad-*, badrecord-*)."""
    files = {}
    valid = {}
    m32, m8 = _model(False), _model(True)
    valid["model-f32.s2lm"] = F.encode_model(m32)
    valid["model-int8.s2lm"] = F.encode_model(m8)
    valid["dataset-f32.s2ld"] = F.encode_dataset(_dataset(False))
    valid["dataset-int8.s2ld"] = F.encode_dataset(_dataset(True))
    mcrc = struct.unpack("<I", valid["model-int8.s2lm"][-4:])[0]
    dcrc = struct.unpack("<I", valid["dataset-int8.s2ld"][-4:])[0]
    mcrc32 = struct.unpack("<I", valid["model-f32.s2lm"][-4:])[0]
    dcrc32 = struct.unpack("<I", valid["dataset-f32.s2ld"][-4:])[0]
    valid["cache-int.s2lc"] = F.encode_cache(_cache(mcrc, dcrc))
    valid["cache-f32.s2lc"] = F.encode_cache(_cache_f32(mcrc32, dcrc32))
    valid["adapters.s2la"] = F.encode_adapters(_adapters(mcrc32))
    valid["adapters-ft-last.s2la"] = F.encode_adapters(_adapters_ft_last(mcrc32))

    m, mi, d, di = (valid["model-f32.s2lm"], valid["model-int8.s2lm"], valid["dataset-f32.s2ld"],
                    valid["dataset-int8.s2ld"])
    c, a = valid["cache-int.s2lc"], valid["adapters.s2la"]
    bad = {}
    for how, v in _common_bad(m).items():
        bad["bad-model-%s.s2lm" % how] = v
    mhl = struct.unpack_from("<H", m, 6)[0]
    bad["bad-model-dims.s2lm"] = _put(m, 24 + 2, "H", 0)           # d_2 = 0
    bad["bad-model-layers.s2lm"] = _put(m, 8, "B", 1)               # L = 1
    bad["bad-model-classes.s2lm"] = _put(m, 24 + 6, "H", 1)         # C = 1
    bad["bad-model-block.s2lm"] = _put(m, mhl, "H", 9)              # block d_in disagrees
    bad["bad-model-nan.s2lm"] = _nan_at(m, mhl + 8 + 4 * 5)         # a weight is NaN
    bad["bad-model-int8-nan.s2lm"] = _nan_at(mi, struct.unpack_from("<H", mi, 6)[0] + 8)  # scale
    bad["bad-model-dtype.s2lm"] = _put(m, 9, "B", 7)
    for how, v in _common_bad(d).items():
        bad["bad-dataset-%s.s2ld" % how] = v
    bad["bad-dataset-dims.s2ld"] = _put(d, 8, "H", 0)               # n_features = 0
    bad["bad-dataset-classes.s2ld"] = _put(d, 10, "H", 1)
    bad["bad-dataset-dtype.s2ld"] = _put(d, 12, "B", 5)
    bad["bad-dataset-scale.s2ld"] = _put(di, 16, "f", -1.0)
    bad["bad-dataset-nan.s2ld"] = _nan_at(d, 24 + 4)
    bad["bad-dataset-label.s2ld"] = _put(d, 24 + 32, "B", 3)         # label 3 of 3 classes
    for how, v in _common_bad(c, trailer=False).items():
        bad["bad-cache-%s.s2lc" % how] = v
    bad["bad-cache-dims.s2lc"] = _put(c, 24, "H", 0, trailer=False)      # segment dim 0
    bad["bad-cache-record-len.s2lc"] = _put(c, 20, "H", 99, trailer=False)
    bad["bad-cache-dtype.s2lc"] = _put(c, 26, "B", 9, trailer=False)
    bad["bad-cache-nan.s2lc"] = _put(c, 28, "f", float("nan"), trailer=False)  # segment scale
    chl = struct.unpack_from("<H", c, 6)[0]
    for how, v in _common_bad(a).items():
        bad["bad-adapters-%s.s2la" % how] = v
    bad["bad-adapters-dims.s2la"] = _put(a, 13, "B", 0)             # rank 0
    bad["bad-adapters-kind.s2la"] = _put(a, 29, "B", 7)
    bad["bad-adapters-method.s2la"] = _put(a, 24, "B", 99)
    bad["bad-adapters-nan.s2la"] = _nan_at(a, struct.unpack_from("<H", a, 6)[0] + 4)
    # header valid, one record damaged: the reader must hand back "recompute", not values
    rec = F.CacheFile(0, 0, _cache(0, 0).segments).record_len + 4
    badrec = {"badrecord-cache-crc.s2lc": _flip(c, chl + rec * 2 + 1),
              "badrecord-cache-truncated.s2lc": c[:chl + rec * 5 + 3]}

    for name, data in list(valid.items()) + list(badrec.items()):
        kind, decode = DECODERS[name.rsplit(".", 1)[1]]
        files[name] = data
        files[name.rsplit(".", 1)[0] + ".json"] = (
            json.dumps(describe(kind, decode(data)), indent=1, sort_keys=True) + "\n").encode()
    files.update(bad)
    return files


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    files = build()
    if "--check" in argv:
        stale = [n for n, b in files.items()
                 if not (FIXTURES / n).is_file() or (FIXTURES / n).read_bytes() != b]
        for n in stale:
            print("stale fixture:", n)
        return 1 if stale else 0
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for old in FIXTURES.iterdir():
        if old.is_file() and old.name not in files and old.suffix in (
                ".s2lm", ".s2ld", ".s2lc", ".s2la", ".json"):
            old.unlink()
    for name, data in sorted(files.items()):
        (FIXTURES / name).write_bytes(data)
    print("wrote %d files to %s" % (len(files), FIXTURES))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write the format fixtures in tests/fixtures/: small valid files of every format, a .json of
each one's contents, and corrupted copies named bad-<what>-<how>.<ext>.

    python tools/make_fixtures.py          # (re)write tests/fixtures/
    python tools/make_fixtures.py --check  # exit 1 if the files on disk differ

Everything is built from fixed integer formulas (no RNG, no platform-dependent float maths),
so the bytes are the same on every machine.

The bytes are packed here field by field with `struct` and `zlib.crc32`, straight from the
tables of docs/formats.md, and each .json is written from the values that went in, not from
decoding the file: this module does not import host/skip2lora/model/formats.py. So the fixtures are
an independent statement of the formats that the host's reader and writer
(tests/test_formats.py) and the board's reader (tests/device/test_device_formats.py) are held
to; a bug in either one's encoding or decoding fails there instead of being written into the
fixtures.

Besides the bad-* files (which every reader must reject with a one-line error), the cache has
`badrecord-*` copies: their header is valid, so a reader accepts the file, but one record is
damaged and must come back as "recompute" (null in the .json), never as values.
"""
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
DIMS = (8, 6, 5, 3)

# docs/formats.md
F32, I8, I16, I32 = 0, 1, 2, 3
ITEMSIZE = {F32: 4, I8: 1, I16: 2, I32: 4}
NUMPY = {F32: "<f4", I8: "i1", I16: "<i2", I32: "<i4"}
KIND_SKIP, KIND_LORA, KIND_DELTA = 0, 1, 2
METHODS = {"skip2lora": 0, "skip-lora": 1, "lora-all": 2, "lora-last": 3, "ft-last": 4,
           "ft-bias": 5, "ft-all": 6}


def crc32(data, value=0):
    return zlib.crc32(bytes(data), value) & 0xFFFFFFFF


def pad4(n):
    return (n + 3) & ~3


def header(magic, fields):
    """magic | version u16 = 1 | header_len u16 | fields | zero padding | header_crc u32."""
    header_len = pad4(8 + len(fields)) + 4
    body = struct.pack("<4sHH", magic, 1, header_len) + fields
    body += bytes(header_len - 4 - len(body))
    return body + struct.pack("<I", crc32(body))


def with_trailer(data):
    return data + struct.pack("<I", crc32(data))


def _arr(values, dtype):
    return np.ascontiguousarray(values, NUMPY[dtype]).tobytes()


def _ramp(n, mul, mod, off, div):
    """Deterministic pseudo-random float32 values, exact on every machine."""
    return np.array([((k * mul + off) % mod - mod // 2) / div for k in range(n)], np.float32)


def _model(int8):
    """The contents of a model file as its .json gives them (file_crc filled in by write)."""
    layers = []
    for i in range(len(DIMS) - 1):
        d_in, d_out = DIMS[i], DIMS[i + 1]
        w = _ramp(d_out * d_in, 7 + i, 23, 3 * i, 32.0).reshape(d_out, d_in)
        b = _ramp(d_out, 5, 11, i, 64.0)
        relu = i < len(DIMS) - 2
        if int8:
            scale = (np.arange(d_out, dtype=np.float32) + 1) / np.float32(256.0)
            q = _ramp(d_out * d_in, 37 + i, 251, 11 * i, 1.0).astype(np.int8).reshape(d_out, d_in)
            layers.append({"weight": q, "bias": b, "scale": scale, "relu": relu})
        else:
            layers.append({"weight": w, "bias": b, "scale": None, "relu": relu})
    return {"dims": list(DIMS), "dtype": I8 if int8 else F32, "rank": 2, "alpha": 4.0,
            "adapter_mask": 0b111, "layers": layers}


def _dataset(int8):
    n = 6
    x = _ramp(n * DIMS[0], 13, 29, 1, 8.0).reshape(n, DIMS[0])
    y = np.array([k % DIMS[-1] for k in range(n)], np.uint8)
    if int8:
        q = _ramp(n * DIMS[0], 41, 255, 0, 1.0).astype(np.int8).reshape(n, DIMS[0])
        return {"n_features": DIMS[0], "n_classes": DIMS[-1], "dtype": I8, "scale": 0.03125,
                "features": q, "labels": y}
    return {"n_features": DIMS[0], "n_classes": DIMS[-1], "dtype": F32, "scale": 1.0,
            "features": x, "labels": y}


def _cache(model_crc, dataset_crc):
    segs = [(6, I8, 0.0625), (5, I16, 0.001953125), (3, I32, 1.0 / 65536)]
    recs = []
    for k in range(6):
        recs.append([np.array([(k * 3 + j * 5) % 128 for j in range(6)], np.int8),
                     np.array([(k * 1000 + j * 77) % 30000 - 15000 for j in range(5)], np.int16),
                     np.array([(k * 65536 + j * 12345) - 200000 for j in range(3)], np.int32)])
    return _cache_dict(model_crc, dataset_crc, segs, recs)


def _cache_f32(model_crc, dataset_crc):
    segs = [(6, F32, 1.0), (5, F32, 1.0), (3, F32, 1.0)]
    recs = [[_ramp(6, 3, 17, k, 4.0), _ramp(5, 5, 19, k, 8.0), _ramp(3, 7, 13, k, 2.0)]
            for k in range(6)]
    return _cache_dict(model_crc, dataset_crc, segs, recs)


def _cache_dict(model_crc, dataset_crc, segs, recs):
    return {"model_crc": model_crc, "dataset_crc": dataset_crc,
            "record_len": sum(pad4(dim * ITEMSIZE[dt]) for dim, dt, _ in segs),
            "segments": [{"dim": dim, "dtype": dt, "scale": sc} for dim, dt, sc in segs],
            "records": recs}


def _adapters(model_crc):
    ads = []
    for i, d in enumerate(DIMS[:-1]):
        ads.append({"layer": i, "kind": KIND_SKIP,
                    "A": _ramp(2 * d, 3 + i, 17, i, 64.0).reshape(2, d),
                    "B": _ramp(3 * 2, 5, 13, i, 128.0).reshape(3, 2)})
    return {"model_crc": model_crc, "rank": 2, "n_classes": 3, "alpha": 4.0, "epochs_done": 3,
            "method": "skip2lora", "adapters": ads}


def _adapters_ft_last(model_crc):
    a = {"layer": 2, "kind": KIND_DELTA, "A": _ramp(15, 3, 17, 0, 64.0).reshape(3, 5),
         "B": _ramp(3, 5, 13, 1, 64.0).reshape(3, 1)}
    return {"model_crc": model_crc, "rank": 1, "n_classes": 3, "alpha": 1.0, "epochs_done": 1,
            "method": "ft-last", "adapters": [a]}


# ------------------------------------------------------------------ the writer (docs/formats.md)

def write_model(m):
    L = len(m["layers"])
    fields = struct.pack("<BBHfII", L, m["dtype"], m["rank"], m["alpha"], m["adapter_mask"], 0)
    fields += struct.pack("<%dH" % (L + 1), *m["dims"])
    out = header(b"S2LM", fields)
    for lay in m["layers"]:
        d_out, d_in = lay["weight"].shape
        dt = F32 if lay["scale"] is None else I8
        out += struct.pack("<HHBBH", d_in, d_out, dt, 1 if lay["relu"] else 0, 0)
        if dt == F32:
            out += _arr(lay["weight"], F32) + _arr(lay["bias"], F32)
        else:
            w = _arr(lay["weight"], I8)
            out += _arr(lay["scale"], F32) + w + bytes(pad4(len(w)) - len(w))
            out += _arr(lay["bias"], F32)
    return with_trailer(out)


def write_dataset(d):
    out = header(b"S2LD", struct.pack("<HHB3xf", d["n_features"], d["n_classes"], d["dtype"],
                                      d["scale"]))
    for x, y in zip(d["features"], d["labels"]):
        out += _arr(x, d["dtype"]) + struct.pack("<B", int(y))
    return with_trailer(out)


def write_cache(c):
    segs = c["segments"]
    fields = struct.pack("<IIIHBx", c["model_crc"], c["dataset_crc"], len(c["records"]),
                         c["record_len"], len(segs))
    for s in segs:
        fields += struct.pack("<HBxf", s["dim"], s["dtype"], s["scale"])
    out = header(b"S2LC", fields)
    for rec in c["records"]:
        payload = b""
        for s, v in zip(segs, rec):
            b = _arr(v, s["dtype"])
            payload += b + bytes(pad4(len(b)) - len(b))
        out += payload + struct.pack("<I", crc32(payload))
    return out  # no trailer: one CRC per record


def write_adapters(a):
    ads = a["adapters"]
    fields = struct.pack("<IBBHfIB3x", a["model_crc"], len(ads), a["rank"], a["n_classes"],
                         a["alpha"], a["epochs_done"], METHODS[a["method"]])
    for ad in ads:
        fields += struct.pack("<BBHHHHH", ad["layer"], ad["kind"], *ad["A"].shape,
                              *ad["B"].shape, 0)
    out = header(b"S2LA", fields)
    for ad in ads:
        out += _arr(ad["A"], F32) + _arr(ad["B"], F32)
    return with_trailer(out)


WRITERS = {"s2lm": write_model, "s2ld": write_dataset, "s2lc": write_cache,
           "s2la": write_adapters}
KINDS = {"s2lm": "model", "s2ld": "dataset", "s2lc": "cache", "s2la": "adapters"}


def _plain(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def contents_json(ext, contents, data):
    """The .json of a file: its contents as written, with the file_crc (trailer) it got."""
    out = _plain(contents)
    if ext != "s2lc":
        out["file_crc"] = struct.unpack("<I", data[-4:])[0]
    return (json.dumps(out, indent=1, sort_keys=True) + "\n").encode()


# ------------------------------------------------------------------ decoded contents as JSON

def _list(a):
    return np.asarray(a).tolist()


def describe(kind, obj):
    """A decoded host object (skip2lora.model.formats) as the plain JSON values of a fixture's .json,
    for the tests to compare the host reader with; not used to write the fixtures."""
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


# ------------------------------------------------------------------ corruptions

def _reseal(data, trailer=True):
    """Recompute the header CRC (and the file CRC) after a field was changed on purpose."""
    data = bytearray(data)
    header_len = struct.unpack_from("<H", data, 6)[0]
    struct.pack_into("<I", data, header_len - 4, crc32(bytes(data[:header_len - 4])))
    if trailer:
        struct.pack_into("<I", data, len(data) - 4, crc32(bytes(data[:-4])))
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


def contents():
    """name -> (the contents written, as the .json gives them) of every valid fixture."""
    out = {}
    out["model-f32.s2lm"] = _model(False)
    out["model-int8.s2lm"] = _model(True)
    out["dataset-f32.s2ld"] = _dataset(False)
    out["dataset-int8.s2ld"] = _dataset(True)
    crc = {n: struct.unpack("<I", WRITERS[n.rsplit(".", 1)[1]](c)[-4:])[0]
           for n, c in out.items()}
    out["cache-int.s2lc"] = _cache(crc["model-int8.s2lm"], crc["dataset-int8.s2ld"])
    out["cache-f32.s2lc"] = _cache_f32(crc["model-f32.s2lm"], crc["dataset-f32.s2ld"])
    out["adapters.s2la"] = _adapters(crc["model-f32.s2lm"])
    out["adapters-ft-last.s2la"] = _adapters_ft_last(crc["model-f32.s2lm"])
    return out


def build():
    """name -> bytes of every fixture file (valid, .json, bad-*, badrecord-*)."""
    files = {}
    valid = {}
    written = contents()
    for name, c in written.items():
        valid[name] = WRITERS[name.rsplit(".", 1)[1]](c)

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
    rec = written["cache-int.s2lc"]["record_len"] + 4
    badrec = {"badrecord-cache-crc.s2lc": (_flip(c, chl + rec * 2 + 1), [2]),
              "badrecord-cache-truncated.s2lc": (c[:chl + rec * 5 + 3], [5])}

    for name, data in valid.items():
        files[name] = data
        files[name.rsplit(".", 1)[0] + ".json"] = contents_json(name.rsplit(".", 1)[1],
                                                                written[name], data)
    for name, (data, damaged) in badrec.items():
        content = dict(written["cache-int.s2lc"])
        content["records"] = [None if k in damaged else r
                              for k, r in enumerate(content["records"])]
        files[name] = data
        files[name.rsplit(".", 1)[0] + ".json"] = contents_json("s2lc", content, data)
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

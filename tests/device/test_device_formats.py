"""The device reader (device/s2l/formats.py and friends) on the MicroPython unix port: it accepts
every valid fixture with the contents its .json gives (written by tools/make_fixtures.py from
the values it packed, independently of both readers), and rejects every corrupted one with a
one-line error naming the file."""
import json
import struct

import numpy as np
import pytest

from mpyrun import FIXTURES, run

VALID = sorted(p.name for p in FIXTURES.iterdir()
               if p.suffix in (".s2lm", ".s2ld", ".s2la", ".s2lc") and not p.name.startswith("bad"))
BAD = sorted(p.name for p in FIXTURES.iterdir() if p.name.startswith("bad-"))

DECODE = r"""
from s2l.model import Model
from s2l.dataset import Dataset
from s2l.formats import read_adapters
from s2l.cache import Cache
from s2l.compat import S2LError

def lst(a):
    return [float(v) if isinstance(v, float) else v for v in a]

def decode(name):
    ext = name.rsplit(".", 1)[1]
    if ext == "s2lm":
        m = Model(name)
        layers = []
        for lay in m.layers:
            w = []
            for W, j0, nr in lay.W:
                for j in range(nr):
                    w.append(lst(W[j * lay.d_in:(j + 1) * lay.d_in]))
            layers.append({"weight": w, "bias": lst(lay.bias),
                           "scale": None if lay.scale is None else lst(lay.scale),
                           "relu": lay.relu})
        return {"dims": m.dims, "dtype": m.dtype, "rank": m.rank, "alpha": m.alpha,
                "adapter_mask": m.adapter_mask, "file_crc": m.file_crc, "layers": layers}
    if ext == "s2ld":
        d = Dataset(name)
        feats = []
        for k in range(d.n):
            d.read(k)
            feats.append(lst(d.x))
        return {"n_features": d.n_features, "n_classes": d.n_classes, "dtype": d.dtype,
                "scale": d.scale, "file_crc": d.file_crc, "features": feats,
                "labels": list(d.labels)}
    if ext == "s2la":
        a = read_adapters(name)
        ads = []
        for (layer, kind, A, ar, ac, B, br, bc) in a["adapters"]:
            ads.append({"layer": layer, "kind": kind, "A": [lst(r) for r in A],
                        "B": [lst(B[i * bc:(i + 1) * bc]) for i in range(br)]})
        a["adapters"] = ads
        return a
    raise ValueError(ext)

for name in NAMES:
    try:
        r = {"ok": decode(name)}
    except S2LError as e:
        r = {"error": str(e)}
    except Exception as e:
        r = {"crash": "%s: %s" % (type(e).__name__, e)}
    RESULT(name=name, result=r)
    r = None
    gc.collect()
"""


def _decode_on_device(names, cwd):
    res, _ = run("NAMES = %r\n" % names + DECODE, cwd)
    return {r["name"]: r["result"] for r in res}


def _close(a, b, path=""):
    if isinstance(a, dict):
        assert set(a) == set(b), (path, set(a) ^ set(b))
        for k in a:
            _close(a[k], b[k], path + "." + k)
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            _close(u, v, "%s[%d]" % (path, i))
    elif isinstance(a, float) or isinstance(b, float):
        assert np.float32(a) == np.float32(b), (path, a, b)
    else:
        assert a == b, (path, a, b)


@pytest.mark.parametrize("ext", ["s2lm", "s2ld", "s2la"])
def test_device_reads_valid_fixtures_like_the_host(fixdir, ext):
    names = [n for n in VALID if n.endswith(ext)]
    got = _decode_on_device(names, fixdir)
    for name in names:
        assert "ok" in got[name], (name, got[name])
        expected = json.loads((FIXTURES / (name.rsplit(".", 1)[0] + ".json")).read_text())
        dev = got[name]["ok"]
        if ext == "s2la":
            for key in ("epochs_done", "file_crc", "method", "model_crc", "rank", "n_classes",
                        "alpha"):
                assert dev[key] == expected[key], (name, key)
            _close(dev["adapters"], expected["adapters"])
        else:
            _close(dev, expected)


def test_device_rejects_every_bad_fixture(fixdir):
    names = [n for n in BAD if not n.endswith(".s2lc")]
    got = _decode_on_device(names, fixdir)
    for name in names:
        r = got[name]
        assert "error" in r, (name, r)
        assert "\n" not in r["error"] and r["error"].startswith(name + ": "), r["error"]


CACHE = r"""
from s2l.cache import Cache
from s2l.formats import zeros, pad4
import json
out = {}
for name, segs, mcrc, dcrc, n in JOBS:
    tc = {0: "f", 1: "b", 2: "h", 3: "i"}
    size = {0: 4, 1: 1, 2: 2, 3: 4}
    bufs = [zeros(tc[dt], pad4(dim * size[dt]) // size[dt]) for dim, dt in segs]
    c = Cache(name, mcrc, dcrc, n, [tuple(s) for s in segs], bufs)
    scales = c.open()
    recs = None
    if scales is not None:
        recs = []
        for k in range(n):
            if c.read(k):
                recs.append([[float(v) if isinstance(v, float) else v for v in b[:dim]]
                             for b, (dim, dt) in zip(bufs, segs)])
            else:
                recs.append(None)
    out[name] = {"scales": scales, "records": recs, "reason": c.reason, "bad": c.bad}
RESULT(results=out)
"""


def test_device_cache_reader(fixdir):
    good = json.loads((FIXTURES / "cache-int.json").read_text())
    segs = [[s["dim"], s["dtype"]] for s in good["segments"]]
    jobs = []
    for name in ["cache-int.s2lc", "badrecord-cache-crc.s2lc"] + \
            [n for n in BAD if n.endswith(".s2lc")]:
        jobs.append((name, segs, good["model_crc"], good["dataset_crc"], 6))
    # a valid cache built from another model or dataset is stale, never used
    jobs.append(("cache-int.s2lc#model", segs, good["model_crc"] ^ 1, good["dataset_crc"], 6))
    jobs.append(("cache-int.s2lc#data", segs, good["model_crc"], good["dataset_crc"] ^ 1, 6))
    jobs.append(("cache-int.s2lc#layout", [[6, 1], [5, 1], [3, 3]], good["model_crc"],
                 good["dataset_crc"], 6))
    for suffix in ("#model", "#data", "#layout"):
        (fixdir / ("cache-int.s2lc" + suffix)).write_bytes((fixdir / "cache-int.s2lc").read_bytes())
    (fixdir / "cache-f32.s2lc").unlink()
    res, _ = run("JOBS = %r\n" % jobs + CACHE, fixdir)
    got = res[0]["results"]
    ok = got["cache-int.s2lc"]
    # the board returns the scales as float32 bit patterns (no float arithmetic on the board)
    assert ok["scales"] == [int(np.float32(s["scale"]).view(np.uint32)) for s in good["segments"]]
    assert ok["records"] == good["records"]
    rec = got["badrecord-cache-crc.s2lc"]
    expected_bad = json.loads((FIXTURES / "badrecord-cache-crc.json").read_text())["records"]
    assert rec["records"] == expected_bad and rec["bad"] == 1
    # the truncated-record copy is incomplete, so the whole cache is rebuilt
    for name in [n for n in BAD if n.endswith(".s2lc")] + ["cache-int.s2lc#model",
                                                             "cache-int.s2lc#data",
                                                             "cache-int.s2lc#layout"]:
        assert got[name]["scales"] is None, (name, got[name])
        assert got[name]["reason"].startswith("stale"), got[name]


def test_device_crc_table_fallback_matches_binascii(tmp_path):
    res, _ = run(r"""
from s2l.formats import crc32, crc32_table
from array import array
data = [b"", b"abc", bytes(range(256)) * 3, array("f", [1.5, -2.0])]
RESULT(same=[crc32(b, c) == crc32_table(b, c) for b in data for c in (0, 12345, 0xFFFFFFFF)])
""", tmp_path)
    assert all(res[0]["same"])

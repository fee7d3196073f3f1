"""The device readers against a few hundred mutated and truncated copies of real files, on the
MicroPython unix port with an RP2040's heap, in one interpreter: every file is either read or
refused with the documented S2LError (one line naming the file); nothing else is raised, the
interpreter does not hang, and the heap is the same after all of them. The host readers judge
the same bytes the same way (accept or refuse).
"""
import json
import random

from faults import mutate
from mpyrun import FIXTURES, run
from skip2lora.model import formats as F
from skip2lora.errors import UserError

SEEDS = ["model-f32.s2lm", "model-int8.s2lm", "dataset-f32.s2ld", "dataset-int8.s2ld",
         "adapters.s2la", "adapters-ft-last.s2la", "cache-int.s2lc", "cache-f32.s2lc"]
PER_SEED = 75  # 600 files

READ_ALL = r"""
import gc
from s2l.model import Model
from s2l.dataset import Dataset
from s2l.formats import read_adapters, zeros, pad4
from s2l.cache import Cache
from s2l.compat import S2LError

TC = {0: "f", 1: "b", 2: "h", 3: "i"}
SZ = {0: 4, 1: 1, 2: 2, 3: 4}

def read_all(name, cache):
    ext = name.rsplit(".", 1)[1]
    if ext == "s2lm":
        m = Model(name)
        m.forward([0.5] * m.dims[0])
    elif ext == "s2ld":
        d = Dataset(name)
        for k in range(d.n):
            d.read(k)
        d.close()
    elif ext == "s2la":
        read_adapters(name)
    else:
        segs, mcrc, dcrc, n = cache
        bufs = [zeros(TC[dt], pad4(dim * SZ[dt]) // SZ[dt]) for dim, dt in segs]
        c = Cache(name, mcrc, dcrc, n, [tuple(s) for s in segs], bufs)
        if c.open() is None:
            return "stale"
        for k in range(n):
            c.read(k)
        c.close()
        return "bad %d" % c.bad
    return "ok"

import json
with open("files.json") as f:
    FILES, CACHES = json.load(f)  # names; cache name stem -> its segments, CRCs, records
gc.collect()
free0 = gc.mem_free()
for name in FILES:
    try:
        r = {"ok": read_all(name, CACHES.get(name.rsplit("-", 1)[0]))}
    except S2LError as e:
        r = {"error": str(e)}
    except Exception as e:  # anything else is a reader bug
        r = {"crash": "%s: %s" % (type(e).__name__, e)}
    RESULT(name=name, result=r)
    r = None
    gc.collect()
RESULT(free0=free0, free1=gc.mem_free())
"""


def _cache_meta(seed):
    meta = json.loads((FIXTURES / seed.replace(".s2lc", ".json")).read_text())
    return [[[s["dim"], s["dtype"]] for s in meta["segments"]], meta["model_crc"],
            meta["dataset_crc"], len(meta["records"])]


HOST = {"s2lm": F.decode_model, "s2ld": F.decode_dataset, "s2la": F.decode_adapters}


def test_mutated_files_only_raise_the_documented_error(tmp_path):
    rng = random.Random(20251126)
    files, how, caches = [], {}, {}
    for seed in SEEDS:
        data = (FIXTURES / seed).read_bytes()
        stem, ext = seed.rsplit(".", 1)
        if ext == "s2lc":
            caches[stem] = _cache_meta(seed)
        for i in range(PER_SEED):
            op, raw = mutate(data, rng, trailer=ext != "s2lc")
            name = f"{stem}-{i:02d}.{ext}"
            (tmp_path / name).write_bytes(raw)
            files.append(name)
            how[name] = op
    (tmp_path / "files.json").write_text(json.dumps([files, caches]))
    res, _ = run(READ_ALL, tmp_path, timeout=180)
    heap = res.pop()
    got = {r["name"]: r["result"] for r in res}
    assert len(got) == len(files)
    crashes = {n: (how[n], r["crash"]) for n, r in got.items() if "crash" in r}
    assert not crashes
    refused = 0
    for name, r in got.items():
        if "error" in r:
            refused += 1
            assert "\n" not in r["error"] and r["error"].startswith(name + ": "), r
        ext = name.rsplit(".", 1)[1]
        if ext in HOST:  # the host reader agrees: accepted by both, or refused by both
            try:
                HOST[ext](tmp_path / name)
                host_ok = True
            except UserError:
                host_ok = False
            assert host_ok == ("ok" in r), (name, how[name], r)
    assert refused > len(files) // 2  # the mutations do reach the checks
    # the heap after every file is where it was (no leak, nothing left allocated)
    assert abs(heap["free1"] - heap["free0"]) <= 1024, heap

"""Device Model.predict / forward against the host's numpy forward pass, with and without
adapters of every kind (skip, parallel LoRA, dense delta)."""
import numpy as np
import pytest

from mpyrun import run
from skip2lora.model import formats as F

X = np.array([[((k * 7 + j * 3) % 11 - 5) / 4.0 for j in range(8)] for k in range(5)])


def host_logits(model, adapters, x):
    net = model.to_network()
    s = adapters.alpha / adapters.rank if adapters else 1.0
    ads = adapters.adapters if adapters else []
    h = np.asarray(x, np.float64)
    xs = []
    for i, layer in enumerate(net.layers):
        xs.append(h)
        out = h @ layer.weight.astype(np.float64).T + layer.bias
        for a in ads:
            if a.layer == i and a.kind == F.KIND_PARALLEL:
                out = out + s * (h @ a.A.T) @ a.B.T
            if a.layer == i and a.kind == F.KIND_DELTA:
                out = out + h @ a.A.T + a.B[:, 0]
        h = np.maximum(out, 0) if i < len(net.layers) - 1 else out
    for a in ads:
        if a.kind == F.KIND_SKIP:
            h = h + s * (xs[a.layer] @ a.A.T) @ a.B.T
    return h


SCRIPT = r"""
from s2l import Model
m = Model(MODEL)
if ADAPTERS:
    m.load_adapters(ADAPTERS)
for x in XS:
    y = m.forward(x)
    RESULT(logits=[v for v in y], cls=m.predict(x))
"""


def _parallel(model_crc):
    rng = np.random.default_rng(1)
    a1 = F.Adapter(1, F.KIND_PARALLEL, rng.standard_normal((2, 6)).astype(np.float32),
                   rng.standard_normal((5, 2)).astype(np.float32))
    a0 = F.Adapter(0, F.KIND_SKIP, rng.standard_normal((2, 8)).astype(np.float32),
                   rng.standard_normal((3, 2)).astype(np.float32))
    return F.AdapterFile(model_crc, 2, 3, 3.0, [a0, a1], method="lora-all")


@pytest.mark.parametrize("model", ["model-f32.s2lm", "model-int8.s2lm"])
@pytest.mark.parametrize("adapters", [None, "adapters.s2la", "adapters-ft-last.s2la", "parallel"])
def test_device_predict_equals_host(fixdir, model, adapters):
    mf = F.read_model(fixdir / model)
    af = None
    if adapters == "parallel":
        af = _parallel(mf.file_crc)
        F.write_adapters(fixdir / "p.s2la", af)
        adapters = "p.s2la"
    elif adapters:
        af = F.read_adapters(fixdir / adapters)
        af.model_crc = mf.file_crc  # the fixtures are for model-f32: retarget them
        F.write_adapters(fixdir / ("t-" + adapters), af)
        adapters = "t-" + adapters
    res, _ = run("MODEL=%r\nADAPTERS=%r\nXS=%r\n" % (model, adapters, X.tolist()) + SCRIPT,
                 fixdir)
    want = host_logits(mf, af, X)
    got = np.array([r["logits"] for r in res])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert [r["cls"] for r in res] == list(np.argmax(want, axis=1))


def test_device_refuses_adapters_of_another_model(fixdir):
    res, out = run(r"""
from s2l import Model, S2LError
m = Model("model-int8.s2lm")
try:
    m.load_adapters("adapters.s2la")
    RESULT(err=None)
except S2LError as e:
    RESULT(err=str(e))
""", fixdir)
    assert res[0]["err"].startswith("adapters.s2la: adapters were trained for another model")

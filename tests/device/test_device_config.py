"""The board's settings are the host's: device/s2l/config.py imported by the real MicroPython
interpreter holds the values of host/skip2lora/config.py, and s2l.job.finetune takes its
defaults from it."""
import importlib.util

from mpyrun import ROOT, run
from skip2lora.model import formats as F

_spec = importlib.util.spec_from_file_location("write_device_config",
                                               ROOT / "tools" / "write_device_config.py")
write_device_config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(write_device_config)


def test_micropython_reads_the_hosts_values(tmp_path):
    res, _ = run("""
import s2l.config as c
RESULT(**{k: getattr(c, k) for k in dir(c) if k.isupper()})
""", tmp_path)
    host = {k: list(v) if isinstance(v, tuple) else v
            for k, v in write_device_config.constants().items()}
    assert res[0] == host
    assert res[0]["LR"] == 0.01 and res[0]["EPOCHS"] == 20 and res[0]["KIND_PARALLEL"] == 1


JOB = """
import s2l.config
%s
import s2l.job
n = s2l.job.finetune("model-int8.s2lm", "dataset-int8.s2ld", %r, cache=%r, rank=2, seed=3%s)
RESULT(n=n)
"""


def test_the_job_defaults_come_from_the_board_config(fixdir):
    """Patched in s2l.config before s2l.job is imported, EPOCHS and LR are what a job given
    neither trains with: the same adapters as a job given them explicitly."""
    res, _ = run(JOB % ("s2l.config.EPOCHS = 2\ns2l.config.LR = 1 / 64", "a.s2la", "a.s2lc", ""),
                 fixdir)
    assert res == [{"n": 2}]
    res, _ = run(JOB % ("", "b.s2la", "b.s2lc", ", epochs=2, lr=1 / 64"), fixdir)
    assert res == [{"n": 2}]
    res, _ = run(JOB % ("", "c.s2la", "c.s2lc", ", epochs=2"), fixdir)  # lr 0.01
    a, b, c = (F.read_adapters(fixdir / n) for n in ("a.s2la", "b.s2la", "c.s2la"))
    assert a.epochs_done == b.epochs_done == c.epochs_done == 2
    assert (fixdir / "a.s2la").read_bytes() == (fixdir / "b.s2la").read_bytes()
    assert (fixdir / "a.s2la").read_bytes() != (fixdir / "c.s2la").read_bytes()

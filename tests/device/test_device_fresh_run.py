"""A fresh run (resume=False) of s2l.job.finetune first removes the adapters and .state an
earlier run left (issue 12, item 10): stopped by Ctrl-C at its first step, before anything of
its own is saved, it leaves the board with no adapters, so neither `pull` nor `--resume` can
take the older run's for its own. A resumed run stopped the same way keeps them.
"""
import os
import signal

import pytest

from test_device_job import job, paused_job, s2l_lines

IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.mark.skipif(not hasattr(signal, "SIGINT") and not IN_CI, reason="needs POSIX signals")
def test_a_fresh_run_stopped_before_its_first_save_leaves_no_adapters(fixdir):
    assert job(fixdir, epochs=2)[0] is None  # an earlier run's adapters and .state
    older = {p.name: p.read_bytes() for p in fixdir.glob("a.s2la*")}
    assert sorted(older) == ["a.s2la", "a.s2la.state"]

    out, rc = paused_job(fixdir, ("step", 1), epochs=4, resume=True)  # resumed: kept
    assert rc != 0 and s2l_lines(out)[-1] == {"stopped": 2}
    assert {p.name: p.read_bytes() for p in fixdir.glob("a.s2la*")} == older

    out, rc = paused_job(fixdir, ("step", 1), epochs=4)  # fresh: the first step of epoch 1
    assert "PAUSED" in out and rc != 0
    assert s2l_lines(out)[-1] == {"stopped": 0}
    assert not [p.name for p in fixdir.glob("a.s2la*")]
    err, out = job(fixdir, epochs=1, resume=True)
    assert err is None and "no adapters at a.s2la yet: starting from epoch 0" in out

"""Session-wide: the fault tally of the fault-injection tests (tests/faults.py).

Each injected fault (power cut, link dropped, flash full, Ctrl-C, ...) is counted, and so is
each state after it that the test verified consistent. The session prints both counts and fails
if they differ, even when the test that left a fault unverified was deselected or xfailed.
"""


def _tally():
    import sys

    mod = sys.modules.get("faults")
    return (mod.Tally.injected, mod.Tally.consistent) if mod is not None else ([], [])


def pytest_sessionfinish(session, exitstatus):
    injected, consistent = _tally()
    if len(injected) != len(consistent) and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    injected, consistent = _tally()
    if not injected:
        return
    terminalreporter.write_sep("-", "fault injection")
    terminalreporter.write_line(f"faults injected: {len(injected)}, consistent: {len(consistent)}")
    left = list(injected)
    for name in consistent:
        left.remove(name)
    for name in left:
        terminalreporter.write_line(f"  NOT verified consistent: {name}")

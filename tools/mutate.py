"""`make mutate`: how strong the fast host tests are on the numeric core, by mutation testing.

    .venv/bin/python tools/mutate.py [--jobs 2] [--json out/mutate/score.json]

mutmut (pinned below) changes one operator, constant or call at a time in the modules that
hold the numbers the rest trusts (formats, reference, quantize, budget, compiler), runs the
tests that reach the changed function, and counts a mutant as killed when a test fails. A
mutant that survives is a change to the maths no test notices.

mutmut imports the mutated copy from `src/` (or the checkout root), while this package lives
in `host/`: so the run happens in a staging copy, out/mutate/, with host/skip2lora as
src/skip2lora and the tests and device package beside it, as in the checkout.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "out" / "mutate"
MUTMUT = "mutmut==3.8.1"
MODULES = ["model/formats.py", "training/reference.py", "model/quantize.py", "board/budget.py",
           "model/compiler.py"]
TESTS = ["tests/test_formats.py", "tests/test_reference.py", "tests/test_compiler.py",
         "tests/test_boards.py"]
KILLED = {"killed", "timeout", "segfault", "suspicious"}  # mutmut's words for "a test noticed"
CONFIG = """[tool.mutmut]
source_paths = ["src/skip2lora"]
only_mutate = {only}
also_copy = ["tests", "device", "tools"]
pytest_add_cli_args_test_selection = {tests}
# torch and onnxruntime start thread pools; a worker forked from a process that ran them can
# deadlock on a lock another thread held: fork the workers from a clean server instead
process_isolation = "forkserver"

[tool.pytest.ini_options]
testpaths = ["tests"]
"""


def stage():
    """out/mutate/ holding src/skip2lora, tests, device and tools, and mutmut's settings.
    mutmut's own results (out/mutate/mutants/) stay: it re-tests only what changed."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for src, dst in ((ROOT / "host" / "skip2lora", STAGE / "src" / "skip2lora"),
                     *((ROOT / n, STAGE / n) for n in ("tests", "device", "tools"))):
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst, ignore=ignore)
    only = [f"src/skip2lora/{m}" for m in MODULES]
    (STAGE / "pyproject.toml").write_text(CONFIG.format(only=json.dumps(only),
                                                        tests=json.dumps(TESTS)))


def mutmut(*args, capture=True):
    """Run mutmut in the staging copy (not beside ../shared: the data and the boards are named
    explicitly)."""
    env = dict(os.environ)
    env.setdefault("SKIP2LORA_DATA_DIR", str(ROOT.parent / "shared" / "datasets" / "cooling-fan"))
    env.setdefault("SKIP2LORA_PLATFORMS", str(ROOT.parent / "shared" / "platforms"))
    return subprocess.run([str(Path(sys.executable).with_name("mutmut")), *args], cwd=STAGE,
                          env=env, text=True, capture_output=capture)


def results():
    """{mutant name: status} of the last run."""
    out = mutmut("results", "--all", "true").stdout
    found = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep:
            found[name] = status
    return found


def survivor_kind(name):
    """("message", diff) when the mutant only changes the text of an error message (a string
    literal, or a message replaced by None), else ("logic", diff)."""
    import re

    diff = [line for line in mutmut("show", name).stdout.splitlines()
            if line[:1] in "-+" and line[:3] not in ("---", "+++")]
    old = [line[1:] for line in diff if line.startswith("-")]
    new = [line[1:] for line in diff if line.startswith("+")]
    strings = re.compile(r"""(f?"[^"]*"|f?'[^']*'|None)""")
    same_code = len(old) == len(new) and all(
        strings.sub("S", a) == strings.sub("S", b) for a, b in zip(old, new))
    text = " | ".join(f"{a.strip()} -> {b.strip()}" for a, b in zip(old, new))
    return ("message" if same_code and old else "logic"), text


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", default=str(STAGE.parent / "mutate-score.json"))
    args = ap.parse_args()
    if shutil.which("mutmut", path=str(Path(sys.executable).parent)) is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", MUTMUT], check=True)
    stage()
    print(f"mutating {', '.join(MODULES)}; tests: {' '.join(TESTS)} ({args.jobs} jobs)",
          flush=True)
    run = mutmut("run", "--max-children", str(args.jobs), capture=False)
    if run.returncode:
        raise SystemExit(f"mutate: mutmut run failed (exit {run.returncode})")
    status = results()
    counted = {k: v for k, v in status.items() if v not in ("skipped", "not checked")}
    killed = sorted(k for k, v in counted.items() if v in KILLED)
    survived = sorted(k for k, v in counted.items() if v not in KILLED)
    per_module = {}
    for name, st in counted.items():
        mod = name.split(".x")[0].split(".xǁ")[0]
        k, n = per_module.get(mod, (0, 0))
        per_module[mod] = (k + (st in KILLED), n + 1)
    kinds = {name: survivor_kind(name) for name in survived}
    score = len(killed) / len(counted) if counted else 0.0
    report = {"score": score, "killed": len(killed), "mutants": len(counted),
              "per_module": {m: {"killed": k, "mutants": n} for m, (k, n) in
                             sorted(per_module.items())},
              "timeouts": sum(v == "timeout" for v in counted.values()),
              "survived": {n: {"kind": kinds[n][0], "diff": kinds[n][1]} for n in survived},
              "tests": TESTS, "mutmut": MUTMUT}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    for mod, (k, n) in sorted(per_module.items()):
        print(f"  {mod}: {k} of {n} killed ({100 * k / n:.1f} %)")
    logic = [n for n in survived if kinds[n][0] == "logic"]
    print(f"survivors: {len(survived)}, of which {len(survived) - len(logic)} change only an "
          f"error message's text; {len(logic)} change the computation:")
    for name in logic:
        print(f"  {name}: {kinds[name][1]}")
    print(f"mutation score: {len(killed)} of {len(counted)} mutants killed "
          f"({100 * score:.1f} %); survivors listed in {args.json} "
          f"(`cd {STAGE.relative_to(ROOT)} && mutmut show NAME` shows one)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

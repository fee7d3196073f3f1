"""`skip2lora bench`: Skip2-LoRA against LoRA-All and the other baselines, timed on the board."""
import json
import time
from dataclasses import replace
from pathlib import Path

from skip2lora.bench import report as bench_report
from skip2lora.bench import run as bench


def register(subparsers):
    parser = subparsers.add_parser(
        "bench", help="time every fine-tuning method and kernel on the board",
        description="Fine-tune the cooling-fan model on the board with Skip2-LoRA, Skip-LoRA, "
                    "LoRA-All and FT-Last (and Skip2-LoRA on every backend), timed with the "
                    "board's own ticks_us; score each on the target room's held-out recording; "
                    "time the kernels per multiply-add. Without --port a fresh virtual board "
                    "(192 KB heap, 2 MB flash) is started for the run and stopped after it. On a real "
                    "board the full run takes hours (LoRA-All in float needs minutes per "
                    "epoch there); --quick takes minutes.")
    parser.add_argument("--port", "-p", default=None,
                        help="serial port of a real board, e.g. /dev/ttyACM0 (default: a fresh "
                             "virtual board of the benchmark's own)")
    parser.add_argument("--quick", action="store_true",
                        help="one scenario, 120 samples, few epochs: under a minute")
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE (JSON)")
    parser.add_argument("--report", metavar="FILE",
                        help="write the markdown report (e.g. docs/BENCHMARKS.md) and its "
                             "bench_*.png plots beside it")
    parser.add_argument("--from-json", metavar="FILE", dest="from_json",
                        help="run nothing: write --report (and its plots) from the figures in "
                             "FILE, the JSON of an earlier run")
    parser.add_argument("--workdir", default="out/bench",
                        help="models, the virtual board's image (default out/bench)")
    parser.add_argument("--scenario", action="append", default=None,
                        choices=("silentA-to-noisy", "silentA-to-silentB"),
                        help="scenario to run (repeatable; default: both, --quick: the first)")
    parser.set_defaults(run=run)


def _log(*args, **kw):
    print(*args, **kw, flush=True)


def run(args):
    if args.from_json:
        figures = json.loads(Path(args.from_json).read_text())
        if args.report:
            bench_report.report(figures, args.report)
            _log(f"report: {args.report} (from {args.from_json})")
        for line in bench_report.headline_lines(figures):
            _log(line)
        return 0
    config = bench.QUICK if args.quick else bench.FULL
    if args.scenario:
        config = replace(config, scenarios=tuple(args.scenario))
    started = time.time()
    _log(f"skip2lora bench{' --quick' if args.quick else ''}: scenarios "
         f"{', '.join(config.scenarios)}; pre-training the model in silentA")
    scenarios = bench.cooling_fan_scenarios(config.scenarios, args.workdir, log=_log)
    figures = bench.run(config, scenarios, port=args.port, workdir=args.workdir, log=_log)
    if args.json:
        bench_report.write_json(figures, args.json)
        _log(f"figures: {args.json}")
    if args.report:
        bench_report.report(figures, args.report)
        _log(f"report: {args.report}")
    _log("")
    for line in bench_report.headline_lines(figures):
        _log(line)
    _log(f"bench done in {time.time() - started:.0f} s")
    return 0

"""`skip2lora bench` at a tiny scale: a 16-12-8-3 model on synthetic drift data, a fresh virtual
board, every method and kernel backend. Checks the figures' keys and types, recomputes every
derived figure from the board's raw records and checks the report's tables against them (also
for the committed docs/BENCHMARKS.json); no timing is asserted (speed targets are benchmark
figures, not tests)."""
import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest

from skip2lora.bench import run as bench, report as bench_report
from skip2lora.board.virtual import open_image
from skip2lora.model.compiler import compile_network
from skip2lora.data.synthetic import make_drift
from skip2lora.model.formats import read_model, write_model
from skip2lora.model.importers import import_model
from skip2lora.training.pretrain import pretrain, save_torch

DIMS = (16, 12, 8, 3)
EPOCHS = {"skip2lora": 5, "skip2lora-hidden": 3, "skip-lora": 2, "skip2lora-float": 2,
          "skip2lora-py": 2, "lora-all": 2, "ft-last": 2}
CONFIG = bench.BenchConfig(scenarios=("tiny",), epochs=EPOCHS, epoch_points=(1, 2, 5, 10),
                           target_epochs=5, kernel_shapes=((12, 16), (3, 8)), kernel_min_us=500,
                           reference=True, quick=True)


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    sc = make_drift(n_features=DIMS[0], n_train=300, n_finetune=48, n_test=60, seed=3)
    save_torch(pretrain(*sc.pretrain, dims=DIMS, epochs=30, seed=0), d / "model.pt")
    net = import_model(d / "model.pt").network
    write_model(d / "model.s2lm", compile_network(net, dtype="int8", rank=4))
    scenario = bench.BenchScenario("tiny", d / "model.s2lm", sc.finetune, sc.test)
    lines = []
    figs = bench.run(CONFIG, [scenario], port=None, workdir=d / "work",
                     log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    bench_report.write_json(figs, d / "bench.json")
    bench_report.report(figs, d / "docs" / "BENCHMARKS.md")
    return figs, json.loads((d / "bench.json").read_text()), d, lines


def test_json_has_every_required_key_with_its_type(figures):
    _, f, _, _ = figures
    assert isinstance(f["ratio_skip2lora_vs_lora_all"], float)
    assert set(f["accuracy"]) == set(EPOCHS)
    for key, acc in f["accuracy"].items():
        assert 0.0 <= acc <= 1.0
    for key, em in f["epoch_ms"].items():
        assert em["first"] > 0 and em["later"] > 0
    assert set(f["heap_peak_bytes"]) == set(EPOCHS)
    assert all(isinstance(v, int) and v > 0 for v in f["heap_peak_bytes"].values())
    assert all(isinstance(v, int) for v in f["flash_written_bytes"].values())
    for backend in ("viper", "py", "py-float", "native-float", "numpy-f32"):
        assert f["kernel_us_per_mac"][backend] > 0
    assert "ulab" in f["kernels_missing"]  # the unix port has no ulab
    assert f["board"]["virtual"] and f["board"]["name"] == "micropython"
    assert f["machine"]["python"] and f["settings"]["lr"] == CONFIG.lr


def test_figures_agree_with_each_other(figures):
    _, f, _, _ = figures
    emax = str(max(CONFIG.epoch_points))
    tot = f["total_ms"]
    assert f["ratio_epochs"] == max(CONFIG.epoch_points)
    assert math.isclose(f["ratio_skip2lora_vs_lora_all"],
                        tot["skip2lora"][emax]["ms"] / tot["lora-all"][emax]["ms"])
    assert math.isclose(f["ratio_skip2lora_vs_lora_all_same_arithmetic"],
                        tot["skip2lora-float"][emax]["ms"] / tot["lora-all"][emax]["ms"])
    P = f["scenarios"]["tiny"]
    for key, n in EPOCHS.items():
        ems = P["epoch_ms"][key]["all"]
        assert len(ems) == n == P["epochs_trained"][key]
        assert math.isclose(f["epoch_ms"][key]["first"], ems[0])
        assert math.isclose(f["epoch_ms"][key]["later"], sum(ems[1:]) / (n - 1))
        setup = P["epoch_ms"][key]["setup"]
        for E, t in tot[key].items():
            E = int(E)
            assert t["measured"] == (E <= n)
            want = setup + sum(ems[:E]) if E <= n else \
                setup + sum(ems) + (E - n) * sum(ems[1:]) / (n - 1)
            assert math.isclose(t["ms"], want)
        # accuracy reported is the one at the last epoch trained
        assert f["accuracy"][key] == P["accuracy_by_epoch"][key][str(n)]
        assert P["flash_written_bytes"][key] == P["cache_bytes"][key] + P["adapter_bytes"][key]
    for name, r in f["ratios"].items():
        num = bench.COMPARISONS[name][0]
        for E, v in r.items():
            assert math.isclose(v, tot[num][E]["ms"] / tot["lora-all"][E]["ms"])
    # only Skip2-LoRA keeps a cache; fixed point runs on viper, baselines in float
    assert P["cache_bytes"]["skip2lora"] > 0 and P["cache_bytes"]["skip-lora"] == 0
    assert P["cache_bytes"]["lora-all"] == 0
    assert P["backend"]["skip2lora"] == "viper" and P["backend"]["skip2lora-py"] == "py"
    assert P["backend"]["lora-all"] == P["backend"]["skip2lora-float"] == "float"
    runs = P["runs"]
    assert runs["skip2lora"]["cache_reads"][1:] == [P["n_finetune"]] * (EPOCHS["skip2lora"] - 1)
    assert runs["skip2lora"]["cache_built"]
    # MACs: the reference's count, Skip2-LoRA's later epochs cheaper than LoRA-All's
    assert f["macs"]["skip2lora"]["later_per_sample"] < f["macs"]["lora-all"]["later_per_sample"]
    assert f["macs"]["skip2lora"]["calibration_per_sample"] > 0
    assert f["macs"]["skip2lora-float"]["calibration_per_sample"] == 0
    sp = f["kernel_speedup_vs_py_float"]
    assert math.isclose(sp["viper"], f["kernel_us_per_mac"]["py-float"]
                        / f["kernel_us_per_mac"]["viper"])


def test_same_training_on_every_backend_gives_the_same_model(figures):
    _, f, _, _ = figures
    runs = f["scenarios"]["tiny"]["runs"]
    # viper and py are the same integers; skip-lora computes what skip2lora's cache holds
    assert runs["skip2lora"]["losses"][:2] == runs["skip2lora-py"]["losses"]
    assert runs["skip2lora"]["losses"][:2] == runs["skip-lora"]["losses"]


ROOT = Path(__file__).resolve().parent.parent


def _row(md, section, label):
    """The cells of the table row starting with `label` in the part of md after `section`."""
    part = md.split(section, 1)[1]
    line = next(l for l in part.splitlines() if l.startswith(f"| {label} |"))
    return [c.strip() for c in line.split("|")[2:-1]]


def check_bench_numbers(f, md):
    """Recompute every derived figure from the raw board records (epoch_us, setup_us, heap
    samples, file sizes) and check the JSON and the report's ratio tables against them."""
    T = str(f["settings"]["target_epochs"])
    points = [str(E) for E in f["settings"]["epoch_points"]]
    for name, P in f["scenarios"].items():
        for key, raw in P["runs"].items():
            ems = [u / 1000 for u in raw["epoch_us"]]
            setup = raw["setup_us"] / 1000
            n = len(ems)
            em = P["epoch_ms"][key]
            assert P["epochs_trained"][key] == n
            assert em["all"] == pytest.approx(ems) and em["setup"] == pytest.approx(setup)
            assert em["first"] == pytest.approx(ems[0])
            assert em["later"] == pytest.approx(sum(ems[1:]) / (n - 1))
            for E, t in P["total_ms"][key].items():
                E = int(E)
                want = setup + sum(ems[:E]) if E <= n else \
                    setup + sum(ems) + (E - n) * sum(ems[1:]) / (n - 1)
                assert t["ms"] == pytest.approx(want), (name, key, E)
                assert t["measured"] == (E <= n)
            live = [raw["heap_built"]] + raw["heap_before"] + raw["heap_after"]
            assert P["heap_peak_bytes"][key] == max(live)
            assert P["heap_trainer_bytes"][key] == max(live) - raw["heap_base"]
            assert P["flash_written_bytes"][key] == P["cache_bytes"][key] + P["adapter_bytes"][key]
            assert P["accuracy"][key] == P["accuracy_by_epoch"][key][str(n)]
        tot = P["total_ms"]
        for cname, r in P["ratios"].items():
            num = bench.COMPARISONS[cname][0]
            assert set(r) == set(tot[num]) & set(tot["lora-all"])
            for E, v in r.items():
                assert v == pytest.approx(tot[num][E]["ms"] / tot["lora-all"][E]["ms"])
            cells = _row(md, f"### Time ratio against LoRA-All ({name})", bench.COMPARISONS[cname][1])
            for E, cell in zip(points, cells):
                want = "–" if E not in r else f"{r[E]:.4f} ({100 * (1 - r[E]):.1f} % cut)"
                assert cell == want, (name, cname, E, cell)
        t = P["targets"]
        for cname in ("product", "same_arithmetic"):
            if T in P["ratios"].get(cname, {}):
                cut = 100 * (1 - P["ratios"][cname][T])
                x = t[f"time_cut_{cname}"]
                assert x["value_pct"] == pytest.approx(cut) and x["met"] == (cut >= 90)
        if "accuracy_vs_lora_all" in t:
            a = t["accuracy_vs_lora_all"]
            assert a["gap_pt"] == pytest.approx(100 * (a["skip2lora"] - a["lora_all"]))
            assert a["met"] == (a["gap_pt"] >= -1)
    names = list(f["scenarios"])
    for cname in ("product", "same_arithmetic", "hidden_only"):
        cells = _row(md, "## Headline", bench.COMPARISONS[cname][1])
        for n, cell in zip(names, cells):
            r = f["scenarios"][n]["ratios"][cname][T]
            assert cell.startswith(f"{r:.4f} (**{100 * (1 - r):.1f} %**)"), (n, cname, cell)
        if len(names) > 1:
            mean = sum(f["scenarios"][n]["ratios"][cname][T] for n in names) / len(names)
            assert cells[len(names)] == f"{mean:.4f} ({100 * (1 - mean):.1f} %)"
    P = f["scenarios"][f["primary_scenario"]]
    assert f["ratios"] == P["ratios"] and f["accuracy"] == P["accuracy"]
    emax = str(f["ratio_epochs"])
    assert f["ratio_skip2lora_vs_lora_all"] == pytest.approx(P["ratios"]["product"][emax])
    k = f["kernel_us_per_mac"]
    for b_, v in f["kernel_speedup_vs_py_float"].items():
        assert v == pytest.approx(k["py-float"] / k[b_])
    ks = P["targets"]["kernel_speedup"]
    assert ks["value_x"] == pytest.approx(k["py-float"] / k["viper"])
    assert f"**{ks['value_x']:.0f}x** per multiply-add" in md


def test_report_numbers_recompute_from_the_raw_records(figures):
    figs, f, d, lines = figures
    md = (d / "docs" / "BENCHMARKS.md").read_text()
    check_bench_numbers(f, md)
    # the report is a function of the JSON alone
    assert bench_report.render(f) == md
    assert (d / "docs" / "bench_time.png").stat().st_size > 1000
    assert (d / "docs" / "bench_accuracy.png").stat().st_size > 1000
    # one progress line per epoch of every run
    assert sum("epoch" in line and "/" in line for line in lines) == sum(EPOCHS.values())
    assert bench_report.headline_lines(figs)


@pytest.mark.parametrize("break_it", ["epoch time", "ratio", "report cell"])
def test_a_broken_figure_fails_the_check(figures, break_it):
    _, f, d, _ = figures
    f = copy.deepcopy(f)
    md = (d / "docs" / "BENCHMARKS.md").read_text()
    if break_it == "epoch time":  # a raw record no longer matches the figures built from it
        f["scenarios"]["tiny"]["runs"]["lora-all"]["epoch_us"][1] *= 1.5
    elif break_it == "ratio":
        f["scenarios"]["tiny"]["ratios"]["product"]["5"] *= 1.01
    else:
        r = f["scenarios"]["tiny"]["ratios"]["same_arithmetic"]["5"]
        md = md.replace(f"{r:.4f} (**", f"{r + 0.01:.4f} (**", 1)
    with pytest.raises(AssertionError):
        check_bench_numbers(f, md)


def test_committed_benchmarks_recompute():
    """docs/BENCHMARKS.json: every derived figure agrees with its raw records, and the
    committed report's tables hold them (tests/test_reports.py checks the whole text)."""
    f = json.loads((ROOT / "docs" / "BENCHMARKS.json").read_text())
    check_bench_numbers(f, (ROOT / "docs" / "BENCHMARKS.md").read_text())


def test_the_bench_extension_is_deployed_beside_s2l_not_inside_it(figures):
    """`skip2lora bench` uploads s2l_bench into its own folder (.mpy for the board's arch);
    the s2l package itself carries no bench module."""
    _, _, d, lines = figures
    fs = open_image(d / "work" / "vboard" / "flash.img")
    assert fs.listdir("/lib/s2l_bench") == ["__init__.mpy"]
    assert not any("bench" in name for name in fs.listdir("/lib/s2l"))
    assert any("bench extension: 1" in line for line in lines)


def test_bench_command_is_registered():
    from skip2lora.cli import build_parser

    args = build_parser().parse_args(["bench", "--quick", "--json", "x.json"])
    assert args.quick and args.json == "x.json" and args.port is None

"""The committed reports are their committed data: docs/RESULTS.md, docs/BENCHMARKS.md and
docs/BOARD_KINDS.md re-render exactly from the JSON beside them, README's figures block is what
tools/readme_figures.py writes from those JSONs, and every conclusion sentence is chosen by its
numbers (each sentence function is tried both ways)."""
import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from skip2lora.bench import report as bench_report
from skip2lora.bench import sentences as bench_sentences

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT / "tools"))

import board_kinds  # noqa: E402
import make_results  # noqa: E402
import readme_figures  # noqa: E402


def _json(name):
    return json.loads((DOCS / f"{name}.json").read_text())


def _md(name):
    return (DOCS / f"{name}.md").read_text()


def _kinds_md(data):
    data = copy.deepcopy(data)
    return board_kinds.report(data["rows"], data["samples"], data["epochs"], data["source"])


RENDER = {
    "RESULTS": make_results.render,
    "BENCHMARKS": bench_report.render,
    "BOARD_KINDS": _kinds_md,
}


# --------------------------------------------------------------------------- re-rendering

@pytest.mark.parametrize("name", sorted(RENDER))
def test_report_is_rendered_from_its_committed_json(name):
    assert RENDER[name](_json(name)) == _md(name), (
        f"docs/{name}.md differs from what its JSON renders: `make figures` (or re-run it)")


@pytest.mark.parametrize("name,path", [
    ("RESULTS", ("scenarios", "silentA-to-noisy", "rows", 6, "accuracy", 0)),
    ("BENCHMARKS", ("scenarios", "silentA-to-noisy", "ratios", "same_arithmetic", "20")),
    ("BOARD_KINDS", ("rows", 2, "later_ms")),
])
def test_a_changed_figure_changes_the_report(name, path):
    """The re-render test would catch a figure edited in either file."""
    data = _json(name)
    node = data
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] *= 0.9
    assert RENDER[name](data) != _md(name)


def test_json_names_the_commit_it_was_measured_on():
    for name in ("RESULTS", "BENCHMARKS", "BOARD_KINDS"):
        src = _json(name)["source"]
        assert re.fullmatch(r"[0-9a-f]{40}", src["commit"]), name
        assert isinstance(src["modified"], list)
        assert src["commit"][:12] in _md(name)
        known = subprocess.run(["git", "cat-file", "-e", src["commit"] + "^{commit}"],
                               cwd=ROOT, capture_output=True)
        if known.returncode != 0 and (ROOT / ".git").exists():
            shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT,
                                     capture_output=True, text=True).stdout.strip()
            assert shallow == "true", f"{name}.json names a commit this repository lacks"


def test_readme_figures_block_is_what_the_tool_writes():
    text = (ROOT / "README.md").read_text()
    assert readme_figures.update(text, readme_figures.block(*readme_figures.load())) == text, (
        "README.md's figures block is out of date: run tools/readme_figures.py")


def test_readme_leads_with_the_like_for_like_figure():
    text = (ROOT / "README.md").read_text()
    block = text[text.index("<!-- figures:begin"):text.index(readme_figures.END)]
    bench = _json("BENCHMARKS")
    P = bench["scenarios"][bench["primary_scenario"]]
    T = str(bench["settings"]["target_epochs"])
    same, product = P["ratios"]["same_arithmetic"][T], P["ratios"]["product"][T]
    i_same = block.index(f"a cut of {100 * (1 - same):.1f} %")
    i_product = block.index(f"a cut of {100 * (1 - product):.1f} %")
    assert i_same < i_product


# --------------------------------------------------------------------------- independent recomputation

def test_results_numbers_recompute():
    """RESULTS.json's derived figures from its raw ones: the MAC ratios from the reference's
    own counter on a network of the same shape, the table's means and gains."""
    from skip2lora.model.network import Dense, Network
    from skip2lora.training.reference import count_macs

    data = _json("RESULTS")

    def network(dims):
        rng = np.random.default_rng(0)
        return Network([Dense(rng.standard_normal((dims[i + 1], dims[i])).astype(np.float32),
                              np.zeros(dims[i + 1], np.float32)) for i in range(len(dims) - 1)])

    net = network(data["dims"])
    rank, e = data["finetune"]["rank"], data["finetune"]["epochs"]
    for targets in ("all", "hidden"):
        for E, r in zip(data["costs"]["epochs"], data["costs"][targets]):
            want = (count_macs(net, "skip2lora", rank, targets, E)["total"]
                    / count_macs(net, "lora-all", rank, "all", E)["total"])
            assert r == pytest.approx(want)
    md = _md("RESULTS")
    for name, scen in data["scenarios"].items():
        net = network(scen["dims"])  # the digits' network is not the fan's
        section = md.split(f"### {name}", 1)[1]
        lora = next(r for r in scen["rows"] if r["method"] == "lora-all")["macs"]["total"]
        for row in scen["rows"]:
            m = row["macs"]
            assert m["total"] == m["first"] + (e - 1) * m["later"]
            if row["method"] == "skip2lora":
                c = count_macs(net, "skip2lora", rank, row["targets"], e)
                assert m["total"] == c["total"]
            acc = 100 * np.asarray(row["accuracy"])
            line = next(l for l in section.splitlines()
                        if l.startswith(f"| {make_results.label(row['method'], row['targets'])} |"))
            cells = [c.strip() for c in line.split("|")[1:-1]]
            assert cells[2] == f"{acc.mean():.1f} ± {acc.std():.1f}"
            assert cells[3] == f"{acc.mean() - 100 * scen['before']:+.1f}"
            assert cells[7] == f"{m['total'] / lora:.3f}"


def test_results_settings_come_from_the_config_objects():
    from skip2lora import config
    from skip2lora.training.experiments import FINETUNE_DEFAULTS
    from skip2lora.config import FinetuneConfig

    data = _json("RESULTS")
    ft = data["finetune"]
    for k, v in FINETUNE_DEFAULTS.items():
        assert ft[k] == v, k
    assert ft["momentum"] == FinetuneConfig().momentum
    md = _md("RESULTS")
    pt = data["pretrain"]
    assert f"({pt['optimizer']}, lr {pt['lr']:g}, batch {pt['batch_size']}, {pt['epochs']} epochs)" in md
    # every row ran with the lr --lr auto chose (one of its grid), the sweep with every lr
    from skip2lora.training.step_size import CHOICE_EPOCHS, LR_GRID

    assert ft["lr"] == config.LR_AUTO
    assert data["lr_auto"]["grid"] == list(LR_GRID) and data["lr_auto"]["epochs"] == CHOICE_EPOCHS
    for scen in data["scenarios"].values():
        for row in scen["rows"]:
            assert len(row["lr"]) == len(data["seeds"]) and set(row["lr"]) <= set(LR_GRID)
        s = scen["lr_sweep"]
        assert set(s["accuracy"]) == set(data["lr_sweep"]["methods"])
        for pairs in s["accuracy"].values():
            assert [p[0] for p in pairs] == data["lr_sweep"]["lrs"]


def test_validation_split_holds_out_the_end_of_each_class():
    from skip2lora.training.experiments import validation_split

    y = np.repeat([0, 1, 2], [8, 4, 12])
    X = np.arange(len(y))[:, None].astype(float)
    (Xt, yt), (Xv, yv) = validation_split(X, y, share=0.25)
    assert list(Xv[:, 0]) == [6, 7, 11, 21, 22, 23]
    assert len(yt) + len(yv) == len(y) and not set(Xt[:, 0]) & set(Xv[:, 0])


# --------------------------------------------------------------------------- sentences, both ways

def test_results_sentences_follow_the_numbers():
    M = make_results
    assert "holds here" in M.accuracy_sentence(0.946, 0.945, 0.5)
    assert "does not hold" in M.accuracy_sentence(0.90, 0.945, 0.5)
    assert "ahead" in M.accuracy_sentence(0.99, 0.945, 0.5)
    assert "short of the paper's 90 %" in M.cost_sentence(0.146, 20)
    assert "meets the paper's 90 %" in M.cost_sentence(0.08, 20)
    assert "dominates" in M.input_adapter_cost_sentence(512, 4, 5228, 1096)
    assert "other adapters cost more" in M.input_adapter_cost_sentence(16, 4, 5228, 5000)
    assert "x_1 adapter matters" in M.hidden_only_sentence(0.946, 0.60, 0.06)
    assert "not needed" in M.hidden_only_sentence(0.946, 0.944, 0.06)
    assert "grows with the epochs" in M.epochs_sentence([0.9, 0.3, 0.1], [1, 5, 20])
    assert "does not grow" in M.epochs_sentence([0.9, 0.3, 0.4], [1, 5, 20])
    assert "they differ" in M.params_sentence(2596, 3084, 4, 3)
    assert "they are equal" in M.params_sentence(100, 100, 4, 3)
    assert "within 2 pt of the best fixed lr on every" in M.lr_default_sentence(
        {"a": -1.5, "b": 0.3}, {"a": -1.0, "b": 0.0})
    missed = M.lr_default_sentence({"a": -2.5, "b": 0.3}, {"a": -1.0, "b": 0.0})
    assert "more than 2 pt below the best fixed lr on a (-2.5 pt)" in missed
    assert "old fixed lr 0.01 it was 25.0 pt below the best on b" in M.lr_default_sentence(
        {"a": -1.5, "b": 0.3}, {"a": -1.0, "b": -25.0})
    assert "stays finite" in M.nan_sentence({"a": True, "b": True})
    near = M.board_sentence({"skip2lora": {"lr": 0.003, "accuracy": 0.92, "final_loss": 0.1}},
                            {"skip2lora": 0.93})
    assert "reached 92.0 % (-1.0 pt, within 2 pt of the best fixed lr; final loss 0.1000)" in near
    far = M.board_sentence({"lora-all": {"lr": 0.01, "accuracy": 0.40,
                                         "final_loss": float("nan")}}, {"lora-all": 0.93})
    assert "53.0 pt below the best fixed lr; final loss not finite" in far
    assert "goes non-finite with the defaults on b" in M.nan_sentence({"a": True, "b": False})
    assert "change none" in M.int8_sentence([0.0, 0.0, 0.0])
    assert "move the target after fine-tuning" in M.int8_sentence([0.0, -0.2, 0.4])


def test_bench_sentences_follow_the_numbers():
    B = bench_sentences
    assert "larger share is the kernels" in B.decomposition_sentence(4.7, 60)
    assert "larger share is the method" in B.decomposition_sentence(8.0, 3)
    assert "x1 adapter matters" in B.hidden_only_note(0.002, 0.58, 0.944, "20")
    assert "can be dropped" in B.hidden_only_note(0.002, 0.94, 0.944, "20")
    a = {"gap_pt": -2.2}
    assert "not the board's arithmetic" in B.reference_gap_note(
        a, {"skip2lora": 0.970, "lora-all": 0.993})
    assert "accounts for part" in B.reference_gap_note(a, {"skip2lora": 0.99, "lora-all": 0.993})
    assert "Between" in B.bound_note({"a": 1.2}) and "Below" not in B.bound_note({"a": 1.2})
    assert "Below 0.8 (a)" in B.bound_note({"a": 0.5, "b": 2.0})
    esp = {"heap_bytes": 112640, "ram_estimate_bytes": 108981, "fits_ram": True, "notes": "x"}
    assert "fits it too" in B.esp32_heap_note(esp, 100_000, [512, 64, 64, 3], "armv6m")
    disagree = B.esp32_heap_note(esp, 145_000, [512, 64, 64, 3], "x64")
    assert "accepts it" in disagree and "does not fit it" in disagree
    assert "only a board settles" in disagree
    refused = dict(esp, fits_ram=False)
    assert "needs PSRAM" in B.esp32_heap_note(refused, 145_000, [512, 64, 64, 3], "x64")
    P = {"ratios": {"product": {"20": 0.0035}, "same_arithmetic": {"20": 0.21}}}
    pr = {"viper_factor": 81, "py_factor": 38}
    worse = B.rp2040_ratio_note(P, "20", {"product_ratio": [0.0036, 0.0076],
                                          "same_arithmetic_ratio": 0.2124}, pr)
    assert "*worse*" in worse and "stays past 90 %" in worse and "barely moves" in worse
    better = B.rp2040_ratio_note(P, "20", {"product_ratio": [0.002, 0.15],
                                           "same_arithmetic_ratio": 0.30}, pr)
    assert "*better*" in better and "may fall below 90 %" in better and "move it" in better


def test_readme_words_follow_the_numbers():
    assert "comparable accuracy" in readme_figures.accuracy_words(0.944, 0.942, "a", "b")
    assert "2.3 pt less accuracy" in readme_figures.accuracy_words(0.970, 0.993, "a", "b")
    assert "2.3 pt more accuracy" in readme_figures.accuracy_words(0.993, 0.970, "a", "b")

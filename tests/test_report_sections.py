"""Strategy sections of the reports, contributed through the ``report`` trait of the strategy
contract: each appears only for runs of its strategies and holds their records; records
written before a section's columns existed draw no section and break nothing; ``--open``."""
import re

import pandas as pd
import pytest
from click.testing import CliRunner

import clplatform
from clplatform.app.cli import cli
from clplatform.contract import StrategyRecords
from clplatform.reports import load_runs
from clplatform.reports.plots import group_colors

from conftest import TINY_GLYPHS

SEMA_FAST = {"functional_epochs": 2, "rd_epochs": 4, "threshold": 0.5}
TINY_DOMAINS = {"domains": ("sans", "mono"), "samples_per_class": 4,
                "test_samples_per_class": 2}
LFTL_FAST = {"rounds": 2, "budget_per_round": 0.03, "source_epochs": 8, "source_lr": 0.05}
HEADING = re.compile(r"<h3>([^<]*)</h3>")
STRATEGY_HEADINGS = {"SEMA: expansion", "Prompt methods: selection and storage",
                     "LFTL: accuracy against labels"}


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="clplat")


@pytest.fixture(scope="module")
def section_runs(tmp_path_factory, pretrained_backbone):
    out = tmp_path_factory.mktemp("section-runs")
    clplatform.run("sema", "glyphs", stream_options=TINY_GLYPHS, seed=0, out=out / "sema",
                   strategy_options=SEMA_FAST)
    for strategy in ("prompt", "qprompt"):
        clplatform.run(strategy, "glyphs", stream_options=TINY_GLYPHS, seed=0, epochs=1,
                       out=out / "prompts")
    clplatform.run("simplecil", "glyphs", stream_options=TINY_GLYPHS, seed=0,
                   out=out / "simplecil")
    clplatform.run("lftl", "glyphs-domains", stream_options=TINY_DOMAINS, seed=0,
                   out=out / "lftl", strategy_options=LFTL_FAST)
    return out


def _headings(folders, tmp_path) -> set[str]:
    out = tmp_path / "report.html"
    result = invoke("compare", *folders, "--out", out)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "could not be drawn" not in text
    return set(HEADING.findall(text)) & STRATEGY_HEADINGS


def test_each_section_appears_only_for_runs_of_its_strategies(section_runs, tmp_path):
    assert _headings([section_runs / "simplecil"], tmp_path) == set()
    assert _headings([section_runs / "sema"], tmp_path) == {"SEMA: expansion"}
    assert _headings([section_runs / "prompts"], tmp_path) == {
        "Prompt methods: selection and storage"}
    assert _headings([section_runs / "lftl"], tmp_path) == {"LFTL: accuracy against labels"}
    everything = tmp_path / "all.html"
    assert invoke("compare", section_runs, "--out", everything).exit_code == 0
    found = HEADING.findall(everything.read_text())
    # prompt and qprompt share one section; each strategy section once per stream
    assert sorted(h for h in found if h in STRATEGY_HEADINGS) == sorted(STRATEGY_HEADINGS)


def _records(folder, strategies) -> StrategyRecords:
    runs = load_runs([folder])
    colors = group_colors(runs.table["label"])
    return StrategyRecords(
        stream=runs.table["stream"].iloc[0], strategies=tuple(strategies), runs=runs.table,
        accuracy=runs.accuracy, experiences=runs.experiences, rounds=runs.rounds,
        configs={r.path.name: r.config for r in runs.runs}, group_by="label", colors=colors)


def test_sema_section_holds_its_records(section_runs):
    from clplatform.strategies.sema.report import SECTION, decisions, expansion_timeline
    records = _records(section_runs / "sema", ["sema"])
    exps = records.experiences.set_index("train_exp")
    timeline = expansion_timeline(records).droplevel("group")
    assert list(timeline.columns) == [3, 4, 5]  # the expandable blocks of vit-glyphs
    for i, row in timeline.iterrows():
        assert ";".join(f"{v:g}" for v in row) == exps.loc[i, "sema.adapters_per_layer"]
    scores = decisions(records)
    # experience 0 adds an adapter everywhere without a scan; later: a layer expanded exactly
    # when the highest score its scans saw exceeded the threshold
    assert scores[scores["train_exp"] == 0]["peak_z"].isna().all()
    later = scores[scores["train_exp"] > 0]
    assert len(later) == 2 * 3 and later["peak_z"].notna().all()
    assert (later["expanded"] == (later["peak_z"] > SEMA_FAST["threshold"])).all()
    assert (later["threshold"] == SEMA_FAST["threshold"]).all()
    for _, row in later.iterrows():  # the decisions match the recorded expansions
        expanded = str(exps.loc[row["train_exp"], "sema.layers_expanded"])
        assert row["expanded"] == (str(row["block"]) in expanded.split(";"))
    items = SECTION.build(records)
    assert [bool(i.figure) for i in items] == [True, True, False]
    final = items[2].table
    assert final.filter(like="block").iloc[0].tolist() == timeline.iloc[-1].tolist()


def test_prompt_section_holds_its_records(section_runs):
    from clplatform.strategies.prompts.report import SECTION, storage_table
    records = _records(section_runs / "prompts", ["prompt", "qprompt"])
    table = storage_table(records).set_index("label")
    exps = records.experiences
    for strategy in ("prompt", "qprompt"):
        last = exps[exps["strategy"] == strategy].sort_values("train_exp").iloc[-1]
        row = table.loc[next(label for label in table.index
                             if label.split()[0] == strategy)]
        assert row["stored KiB"] == pytest.approx(last["stored_bytes"] / 1024, abs=0.01)
        assert row["prompt KiB"] == pytest.approx(last[f"{strategy}.prompt_bytes"] / 1024,
                                                  abs=0.01)
        assert row["right prompt (%)"] == pytest.approx(100 * last["task_selection_accuracy"],
                                                        abs=0.01)
    # quantized prompts take less storage than full-precision ones
    kib = {label.split()[0]: v for label, v in table["prompt KiB"].items()}
    assert kib["qprompt"] < kib["prompt"]
    assert len(SECTION.build(records)) == 2


def test_lftl_section_holds_its_records(section_runs):
    from clplatform.strategies.lftl.report import labels_table
    records = _records(section_runs / "lftl", ["lftl"])
    table = labels_table(records)
    rounds = records.rounds
    assert list(table["target experience"]) == [1]  # experience 0 is the labelled source
    before = rounds[(rounds["train_exp"] == 1) & (rounds["round"] == 0)]["accuracy"].item()
    after = rounds[(rounds["train_exp"] == 1) & (rounds["round"] == 2)]["accuracy"].item()
    assert table["accuracy before (%)"].item() == pytest.approx(100 * before, abs=0.01)
    assert table["accuracy after (%)"].item() == pytest.approx(100 * after, abs=0.01)
    queried = records.experiences.set_index("train_exp").loc[1, "labels_queried"]
    assert table["labels queried"].item() == queried > 0


def test_records_without_the_sections_columns_draw_no_section(section_runs, tmp_path):
    """A SEMA run recorded before the columns existed (older version): no section, no
    error, the rest of the report as usual."""
    import shutil
    old = tmp_path / "old"
    shutil.copytree(section_runs / "sema", old)
    [run_dir] = list(old.iterdir())
    path = run_dir / "experiences.csv"
    frame = pd.read_csv(path)
    frame.drop(columns=["sema.expandable_blocks", "sema.peak_z_scores"]).to_csv(path,
                                                                                index=False)
    assert _headings([old], tmp_path) == set()


def test_open_shows_the_report_in_a_browser(section_runs, tmp_path, monkeypatch):
    import webbrowser
    opened = []
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or True)
    out = tmp_path / "r.html"
    result = invoke("report", section_runs / "simplecil", "--out", out, "--open")
    assert result.exit_code == 0 and opened == [out.resolve().as_uri()]
    monkeypatch.setattr(webbrowser, "open", lambda url: False)  # no browser on this machine
    result = invoke("compare", section_runs / "simplecil", "--out", out, "--open")
    assert result.exit_code == 0
    assert result.stderr.strip() == f"clplat: no web browser could be started; the report " \
                                    f"is {out}"

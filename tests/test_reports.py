"""Reports: tables, HTML, exports, bad input, and a real browser rendering the HTML."""
import json
from html import escape as html_escape
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import clplatform
from clplatform.app.cli import cli

from conftest import TINY_GLYPHS

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="clplat")


@pytest.fixture(scope="module")
def runs_folder(tmp_path_factory, pretrained_backbone):
    out = tmp_path_factory.mktemp("report-runs")
    for strategy in ("simplecil", "linear-probe"):
        for seed in (0, 1):
            clplatform.run(strategy, "glyphs", stream_options=TINY_GLYPHS, epochs=1,
                           seed=seed, out=out / "glyphs")
    clplatform.run("simplecil", "digits", seed=0, out=out / "digits")
    return out


def test_compare_table_mean_and_std_over_seeds(runs_folder, tmp_path):
    html_path = tmp_path / "cmp.html"
    result = invoke("compare", runs_folder / "glyphs", "--out", html_path,
                    "--export", tmp_path / "export")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "stream glyphs (4 runs)"
    rows = {line.split()[0]: line for line in lines[2:4]}
    assert set(rows) == {"linear-probe", "simplecil"}
    # recompute the mean and std of final accuracy from the exported per-run table
    runs = pd.read_csv(tmp_path / "export" / "runs.csv")
    simplecil = 100 * runs[runs["strategy"] == "simplecil"]["final_accuracy"]
    assert f"{simplecil.mean():.1f} ± {simplecil.std():.1f}" in rows["simplecil"]
    # exports hold every record of every run
    accuracy = pd.read_csv(tmp_path / "export" / "accuracy.csv")
    assert len(accuracy) == 4 * 4 * 3 and set(accuracy["seed"]) == {0, 1}
    assert len(pd.read_csv(tmp_path / "export" / "experiences.csv")) == 4 * 3
    # each run's stored summary equals the recomputation from its records
    for run_dir in (runs_folder / "glyphs").iterdir():
        stored = json.loads((run_dir / "summary.json").read_text())
        row = runs[runs["run"] == run_dir.name].iloc[0]
        assert stored["final_accuracy"] == pytest.approx(row["final_accuracy"])
        assert stored["average_incremental_accuracy"] == pytest.approx(
            row["average_incremental_accuracy"])


def test_html_is_self_contained_with_every_figure(runs_folder, tmp_path):
    html_path = tmp_path / "cmp.html"
    assert invoke("compare", runs_folder, "--out", html_path).exit_code == 0
    text = html_path.read_text()
    assert "<script" not in text and not re.search(r'(src|href)="(?!data:)', text)
    # two streams, compared separately: 6 figures each
    assert text.count("<h2>Stream ") == 2
    assert text.count('src="data:image/png;base64,') == 12
    assert text.count("<tr>") >= 2 + 1  # comparison rows of glyphs, digits


def test_different_streams_are_grouped_separately(runs_folder):
    result = invoke("compare", runs_folder, "--out", runs_folder / "all.html")
    assert result.exit_code == 0
    assert "stream digits (1 run)" in result.stdout
    assert "stream glyphs (4 runs)" in result.stdout


def test_report_single_run_writes_into_the_run_directory(runs_folder):
    run_dir = next((runs_folder / "digits").iterdir())
    (run_dir / "report.html").unlink()
    result = invoke("report", run_dir)
    assert result.exit_code == 0, result.stderr
    assert (run_dir / "report.html").is_file() and "simplecil" in result.stdout


def _fake_incomplete(runs_folder, tmp_path) -> Path:
    source = next((runs_folder / "digits").iterdir())
    target = tmp_path / "runs" / "broken"
    shutil.copytree(source, target)
    record = json.loads((target / "run.json").read_text())
    record["status"] = "failed"
    (target / "run.json").write_text(json.dumps(record))
    return target


def test_incomplete_runs_are_skipped_unless_asked(runs_folder, tmp_path):
    target = _fake_incomplete(runs_folder, tmp_path)
    result = invoke("compare", target.parent, "--out", tmp_path / "x.html")
    assert result.exit_code == 2 and "no complete run to report" in result.stderr
    result = invoke("compare", target.parent, "--out", tmp_path / "x.html",
                    "--include-incomplete")
    assert result.exit_code == 0 and "stream digits (1 run)" in result.stdout


@pytest.mark.parametrize("case, message", [
    ("missing", "no such run directory or folder"),
    ("empty", "no run directory in"),
    ("file", "not a directory"),
    ("corrupt-csv", "corrupt records file"),
    ("corrupt-json", "corrupt file"),
    ("group", "invalid --group-by 'colour'"),
])
def test_report_bad_input(case, message, runs_folder, tmp_path):
    source = next((runs_folder / "digits").iterdir())
    args = []
    if case == "missing":
        target = tmp_path / "nope"
    elif case == "empty":
        target = tmp_path / "empty"
        target.mkdir()
    elif case == "file":
        target = tmp_path / "file.txt"
        target.write_text("x")
    else:
        target = tmp_path / "run"
        shutil.copytree(source, target)
        if case == "corrupt-csv":
            (target / "accuracy.csv").write_text("garbage,\n\x00\x01")
            message = f"corrupt records file {target / 'accuracy.csv'}"
        elif case == "corrupt-json":
            (target / "config.json").write_text("{not json")
        else:
            args = ["--group-by", "colour"]
    result = invoke("compare", target, "--out", tmp_path / "out.html", *args)
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert not (tmp_path / "out.html").exists()


CHECK_SCRIPT = """
<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const rows = Array.from(document.querySelector("table.comparison")
                          .querySelectorAll("tbody tr")).map(r => r.cells[0].textContent);
  const out = document.createElement("pre");
  out.id = "check";
  out.textContent = JSON.stringify({
    images: images.length,
    // a broken or undecodable image has no natural size once the page has loaded
    decoded: images.filter(img => img.complete && img.naturalWidth > 100).length,
    rows: rows});
  document.body.appendChild(out);
});
</script>
"""


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or \
        shutil.which("google-chrome")


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


@pytest.mark.skipif(_chromium() is None, reason="no Chromium installed")
@pytest.mark.parametrize("kind", ["compare", "report"])
def test_real_browser_renders_the_report(kind, runs_folder, tmp_path):
    """Both kinds of report, the comparison and a single run's, decode every figure."""
    html_path = tmp_path / "report.html"
    target = runs_folder / "glyphs" if kind == "compare" else \
        next((runs_folder / "digits").iterdir())
    assert invoke(kind, target, "--out", html_path).exit_code == 0
    # a copy with a checking script: the report itself carries none
    browser = _chromium()
    common = CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]

    def check(text: str) -> dict:
        probe = tmp_path / "probe.html"
        probe.write_text(text.replace("</body>", CHECK_SCRIPT + "</body>"))
        dom = subprocess.run([browser, *common, "--virtual-time-budget=10000", "--dump-dom",
                              probe.as_uri()], capture_output=True, text=True, timeout=120)
        found = re.search(r'<pre id="check">(.*?)</pre>', dom.stdout)
        assert found, dom.stderr[-2000:]
        return json.loads(found.group(1).replace("&quot;", '"'))

    text = html_path.read_text()
    result = check(text)
    figures = text.count('<img alt="')
    assert figures == 6
    assert result["images"] == figures and result["decoded"] == figures
    assert result["rows"] == (["linear-probe", "simplecil"] if kind == "compare"
                              else ["simplecil"])
    # the check notices a figure that does not decode
    broken = text.replace('src="data:image/png;base64,iVBOR', 'src="data:image/png;base64,AAAA', 1)
    assert check(broken)["decoded"] == figures - 1
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"{kind}.png"
    subprocess.run([browser, *common, "--window-size=1280,4000", f"--screenshot={shot}",
                    html_path.as_uri()], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 50_000


def test_parquet_export_works_out_of_the_box(runs_folder, tmp_path):
    result = invoke("compare", runs_folder / "digits", "--out", tmp_path / "r.html",
                    "--export", tmp_path / "pq", "--export-format", "parquet")
    assert result.exit_code == 0, result.stderr  # pyarrow is a dependency
    assert len(pd.read_parquet(tmp_path / "pq" / "runs.parquet")) == 1
    bad = invoke("compare", runs_folder / "digits", "--out", tmp_path / "r.html",
                 "--export", tmp_path / "x", "--export-format", "xlsx")
    assert bad.exit_code == 2 and "invalid --export-format 'xlsx'" in bad.stderr


def test_export_to_an_unwritable_folder_writes_nothing(runs_folder, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = invoke("compare", runs_folder / "digits", "--out", tmp_path / "r.html",
                    "--export", blocker / "tables")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert f"cannot create export folder {blocker / 'tables'}" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no HTML either


@pytest.fixture(scope="module")
def settings_folder(tmp_path_factory, pretrained_backbone):
    """naive with --epochs 2 once, --epochs 1 twice, and once on a 2-experience stream."""
    out = tmp_path_factory.mktemp("settings-runs")
    for epochs, seed, experiences in ((2, 0, 3), (1, 0, 3), (1, 1, 3), (1, 0, 2)):
        clplatform.run("naive", "glyphs", stream_options={**TINY_GLYPHS,
                                                          "experiences": experiences},
                       epochs=epochs, seed=seed, out=out)
    return out


def test_compare_averages_only_runs_with_the_same_settings(settings_folder, tmp_path):
    result = invoke("compare", settings_folder, "--out", tmp_path / "c.html",
                    "--export", tmp_path / "x")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    header = lines[1].split()
    assert header[:5] == ["label", "stream.experiences", "stream.experiences_in_stream",
                          "epochs", "runs"]
    rows = sorted(tuple(line.split()[:5]) for line in lines[2:5])
    assert rows == [("naive", "2", "2", "1", "1"), ("naive", "3", "3", "1", "2"),
                    ("naive", "3", "3", "2", "1")]
    exported = pd.read_csv(tmp_path / "x" / "runs.csv")
    assert {"epochs", "stream.experiences"} <= set(exported.columns)
    assert exported["label"].nunique() == 3  # one group (colour, heat map) per setting
    text = (tmp_path / "c.html").read_text()
    assert "<th>epochs</th>" in text and "<th>stream.experiences</th>" in text
    # a coarser grouping may not average different streams
    merged = invoke("compare", settings_folder, "--out", tmp_path / "m.html",
                    "--group-by", "strategy")
    assert merged.exit_code == 2 and merged.stderr.count("\n") == 1
    assert "differ in stream.experiences (2, 3): they cannot be averaged" in merged.stderr
    assert not (tmp_path / "m.html").exists()


def test_single_run_report(runs_folder, tmp_path):
    from clplatform.reports import load_runs, plots
    run_dir = next((runs_folder / "digits").iterdir())
    written = (run_dir / "report.html").read_text()
    title = re.search("<title>(.*?)</title>", written).group(1)
    assert title == f"clplatform run {run_dir.name}"
    result = invoke("report", run_dir, "--out", tmp_path / "again.html")
    assert result.exit_code == 0, result.stderr
    text = (tmp_path / "again.html").read_text()
    assert re.search("<title>(.*?)</title>", text).group(1) == title  # the same title
    record = json.loads((run_dir / "run.json").read_text())
    for shown in ("<h2>Run</h2>", "Configuration (resolved)", "<td>stream.experiences</td>",
                  f"<td>{html_escape(record['command'])}</td>",
                  f"<td>torch</td><td>{record['versions']['torch']}</td>", "1 run;"):
        assert shown in text, shown
    assert "1 runs" not in text and "Pareto front" not in text
    assert "table.comparison td, table.comparison th { white-space: nowrap; }" in text
    # A_T with one decimal, as in the comparison table
    assert re.search(r"<td>\d+\.\d</td></tr></tbody></table></div></body>", text.replace(
        "\n", ""))
    # experiences not trained yet are masked in the heat map, trained ones drawn
    runs = load_runs([run_dir])
    image = plots.accuracy_matrices(runs.accuracy, "label").axes[0].images[0]
    mask = np.ma.getmaskarray(image.get_array())
    assert mask.shape == (5, 5)
    assert (mask == np.triu(np.ones((5, 5), dtype=bool), k=1)).all()


def test_summary_text_is_aligned_and_shows_only_recorded_metrics(runs_folder):
    from clplatform import load_run
    from clplatform.reports.tables import run_summary_text
    text = run_summary_text(load_run(next((runs_folder / "digits").iterdir())))
    metrics = [line for line in text.splitlines()[3:] if line.startswith("  ")]
    assert len(metrics) == 16 and "task-selection" not in text
    ends = {len(line.rstrip(" %")) for line in metrics}
    assert len(ends) == 1  # every value ends in the same column


def test_published_values_match_only_their_setting():
    from clplatform.reports.published import VIT_B16_IN1K, VIT_B16_IN1K_SEMA, published_for
    config = {"stream": {"name": "avalanche:SplitCIFAR100", "experiences_in_stream": 10},
              "backbone": {"name": f"timm:{VIT_B16_IN1K}"}}
    row = published_for("sema", config)
    assert (row.final_accuracy, row.average_incremental_accuracy) == (86.98, 91.37)
    assert "Table 1" in row.source
    assert published_for("coda-prompt", config).final_accuracy == 86.11
    # SEMA's own timm loads the augreg2 tag (the sema-* presets): matched too
    sema_tag = {**config, "backbone": {"name": f"timm:{VIT_B16_IN1K_SEMA}"}}
    assert published_for("sema", sema_tag) == row
    assert published_for("l2p", sema_tag) == published_for("l2p", config)
    other_tag = {**config, "backbone": {"name": "timm:vit_base_patch16_224"}}  # a bare name
    five = {**config, "stream": {**config["stream"], "experiences_in_stream": 5}}
    glyphs = {**config, "stream": {"name": "glyphs", "experiences_in_stream": 10}}
    assert all(published_for("sema", c) is None for c in (other_tag, five, glyphs))
    assert published_for("naive", config) is None
    inr = {"stream": {"name": "imagenet-r", "experiences_in_stream": 20},
           "backbone": {"name": VIT_B16_IN1K}}
    assert published_for("l2p", inr).final_accuracy == 62.90


def test_comparison_shows_the_published_column_only_where_a_setting_matches():
    from clplatform.reports.tables import PUBLISHED_HEADER, SOURCE_HEADER, comparison_table
    table = pd.DataFrame({
        "label": ["sema", "sema", "naive"], "seed": [0, 1, 0], "stream": ["s"] * 3,
        "final_accuracy": [0.8, 0.9, 0.2],
        "published_final_accuracy": [0.8698, 0.8698, None],
        "published_source": ["SEMA Table 1", "SEMA Table 1", None]})
    frame = comparison_table(table).set_index("label")
    assert frame.loc["sema", "A_T (%)"] == "85.0 ± 7.1"
    assert frame.loc["sema", PUBLISHED_HEADER] == "86.98"
    assert frame.loc["sema", SOURCE_HEADER] == "SEMA Table 1"
    assert frame.loc["naive", PUBLISHED_HEADER] == "n/a"
    none = table.assign(published_final_accuracy=None, published_source=None)
    assert PUBLISHED_HEADER not in comparison_table(none).columns


def test_settings_leave_out_the_training_settings_a_strategy_does_not_read():
    """SEMA reads its own epochs, batch size and lr (``unused_train``): a comparison of SEMA
    with naive neither labels SEMA with the [train] values nor calls them a difference."""
    from clplatform.reports.collect import differing, settings

    def config(strategy, epochs):
        return {"strategy": {"name": strategy}, "stream": {"name": "glyphs"},
                "backbone": {"name": "vit-glyphs"},
                "train": {"epochs": epochs, "batch_size": 32, "lr": 0.003, "seed": 0}}
    sema, naive = settings(config("sema", 3)), settings(config("naive", 3))
    assert not {"epochs", "batch_size", "lr"} & set(sema)
    assert (naive["epochs"], naive["batch_size"], naive["lr"]) == ("3", "32", "0.003")
    simplecil = settings(config("simplecil", 3))  # reads the batch size only
    assert "batch_size" in simplecil and "epochs" not in simplecil
    assert differing([sema, naive, simplecil]) == []
    assert differing([sema, naive, settings(config("naive", 5))]) == ["epochs"]
    unknown = settings(config("not-installed", 3))  # unknown strategy: everything shown
    assert unknown["epochs"] == "3"

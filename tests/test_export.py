"""Exports of a comparison: LaTeX (paper-ready), Markdown, CSV and Parquet."""
import re

import pandas as pd
import pytest
from click.testing import CliRunner

import clplatform
from clplatform.app.cli import cli
from clplatform.reports import comparison_table, load_runs
from clplatform.reports.export import comparison_latex, parse_mean_std
from clplatform.reports.tables import BEST, COMPARISON_COLUMNS

from conftest import TINY_GLYPHS

HEADERS = {header: key for key, (header, _, _) in COMPARISON_COLUMNS.items()}


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="clplat")


@pytest.fixture(scope="module")
def runs_folder(tmp_path_factory, pretrained_backbone):
    """2 strategies x 2 seeds on a tiny stream."""
    out = tmp_path_factory.mktemp("export-runs")
    for strategy in ("simplecil", "naive"):
        for seed in (0, 1):
            clplatform.run(strategy, "glyphs", stream_options=TINY_GLYPHS, epochs=1,
                           seed=seed, out=out)
    return out


@pytest.fixture(scope="module")
def compared(runs_folder):
    """The comparison table of the runs, as the terminal shows it."""
    runs = load_runs([runs_folder])
    return runs, comparison_table(runs.table)


def latex_tabular(text: str) -> tuple[list[str], list[list[str]]]:
    """Header cells and body rows (cells) of the one tabular in ``text``, checking its
    structure: balanced environments, booktabs rules in order, rows ending in \\\\."""
    for env in ("table", "tabular"):
        assert text.count(f"\\begin{{{env}}}") == text.count(f"\\end{{{env}}}") == 1
    assert text.index(r"\begin{table}") < text.index(r"\begin{tabular}") \
        < text.index(r"\end{tabular}") < text.index(r"\end{table}")
    lines = text.splitlines()
    top, mid, bottom = (lines.index(rule) for rule in (r"\toprule", r"\midrule",
                                                       r"\bottomrule"))
    assert lines.index(r"\begin{tabular}" + re.search(r"\\begin\{tabular\}(\{[lr]+\})",
                                                       text).group(1)) == top - 1
    assert top + 2 == mid < bottom and lines[bottom + 1] == r"\end{tabular}"
    table_lines = [lines[top + 1], *lines[mid + 1:bottom]]
    assert all(line.endswith(r" \\") for line in table_lines)
    cells = [re.split(r"(?<!\\)&", line[:-3]) for line in table_lines]
    columns = len(re.search(r"\\begin\{tabular\}\{([lr]+)\}", text).group(1))
    assert {len(row) for row in cells} == {columns}  # same number of & in every row
    # no unescaped _ % # $ in the text (metric cells hold $\pm$ and $-$; comments and
    # \label keys are no text)
    for line in lines:
        if not line.startswith(("%", r"\label{")):
            stripped = line.replace(r"$\pm$", "").replace("$-$", "")
            assert not re.search(r"(?<!\\)[_%#$]", stripped), line
    return [c.strip() for c in cells[0]], [[c.strip() for c in row] for row in cells[1:]]


def unbold(cell: str) -> tuple[str, bool]:
    match = re.fullmatch(r"\\textbf\{(.*)\}", cell)
    return (match.group(1), True) if match else (cell, False)


def latex_number(cell: str) -> tuple[float, float | None]:
    mean, _, std = cell.replace("$-$", "-").partition(r" $\pm$ ")
    return float(mean), float(std) if std else None


def test_latex_export_holds_the_comparison_numbers_with_the_best_in_bold(
        runs_folder, compared, tmp_path):
    runs, table = compared
    result = invoke("compare", runs_folder, "--out", tmp_path / "c.html",
                    "--export", tmp_path / "tex", "--export-format", "latex")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "tex").iterdir()) == ["comparison-glyphs.tex"]
    text = (tmp_path / "tex" / "comparison-glyphs.tex").read_text()
    header, rows = latex_tabular(text)
    assert r"\caption{glyphs: mean $\pm$ std over 2 seeds; best per column in bold.}" in text
    escaped = {h.replace("_", r"\_").replace("%", r"\%"): h for h in table.columns}
    assert header[0] == "label" and r"A\_T (\%)" in header and r"forgetting (\%)" in header
    assert [r[0] for r in rows] == list(table["label"]) == ["naive", "simplecil"]
    metrics = [h for h in header if escaped[h] in HEADERS]
    assert [escaped[h] for h in metrics] == [
        "A_T (%)", "avg inc acc (%)", "forgetting (%)", "params (M)", "growth x",
        "train TFLOPs", "inf MFLOPs/sample", "train s"]
    for h in metrics:
        column = escaped[h]
        parsed = [(*latex_number(unbold(row[header.index(h)])[0]),
                   unbold(row[header.index(h)])[1]) for row in rows]
        # the numbers are the comparison table's, with its decimals
        assert [p[:2] for p in parsed] == [parse_mean_std(c) for c in table[column]], column
        means = [p[0] for p in parsed]
        best = (max if BEST[HEADERS[column]] == "max" else min)(means)
        expected = [m == best and len(set(means)) > 1 for m in means]
        assert [p[2] for p in parsed] == expected, column
    # ... and the comparison table's are the runs' (mean ± std over seeds, in %)
    a_t = [latex_number(unbold(row[header.index(r"A\_T (\%)")])[0]) for row in rows]
    for (mean, std), label in zip(a_t, ["naive", "simplecil"]):
        values = 100 * runs.table[runs.table["strategy"] == label]["final_accuracy"]
        assert (mean, std) == (round(values.mean(), 1), round(values.std(), 1))
    # a frozen backbone's class means beat one epoch of fine-tuning
    assert rows[1][header.index(r"A\_T (\%)")].startswith(r"\textbf{")
    # the setting in which the rows differ is a text column
    assert header[1] == r"batch\_size" and [r[1] for r in rows] == ["32", "128"]


def test_latex_escapes_text_and_shows_published_values():
    table = pd.DataFrame({
        "label": ["my_method 50% & #1", "my_method 50% & #1", "b{c}~^\\", "b{c}~^\\"],
        "stream": "s_1", "seed": [0, 1, 0, 1],
        "final_accuracy": [0.50, 0.62, 0.70, 0.72], "forgetting": [0.30, 0.10, -0.05, -0.15],
        "bwt": [-0.30, -0.10, -0.25, -0.35],
        "published_final_accuracy": [0.7787, 0.7787, None, None],
        "published_source": ["SEMA (Wang et al., CVPR 2025), Table 1"] * 2 + [None] * 2})
    frame = comparison_table(table)
    text = comparison_latex(frame, "s_1")
    header, rows = latex_tabular(text)
    # BWT is in the comparison, not among the paper's columns; published beside A_T
    assert list(frame.columns) == ["label", "runs", "seeds", "A_T (%)", "published A_T (%)",
                                   "published in", "forgetting (%)", "BWT (%)"]
    assert header == ["label", r"A\_T (\%)", r"published A\_T (\%)", r"forgetting (\%)"]
    assert rows == [
        [r"b\{c\}\textasciitilde{}\textasciicircum{}\textbackslash{}",
         r"\textbf{71.0 $\pm$ 1.4}", "--", r"\textbf{$-$10.0 $\pm$ 7.1}"],
        [r"my\_method 50\% \& \#1", r"56.0 $\pm$ 8.5", "77.87", r"20.0 $\pm$ 14.1"]]
    assert "Published values: SEMA (Wang et al., CVPR 2025), Table 1." in text
    assert r"\caption{s\_1: mean" in text


def test_every_comparison_column_has_a_best_direction():
    assert set(BEST) == set(COMPARISON_COLUMNS)
    assert BEST["final_accuracy"] == "max" and BEST["forgetting"] == "min"


def test_markdown_round_trips_through_pandas(runs_folder, compared, tmp_path):
    runs, table = compared
    result = invoke("report", runs_folder, "--out", tmp_path / "r.html",
                    "--export", tmp_path / "md", "--export-format", "markdown")
    assert result.exit_code == 0, result.stderr
    lines = (tmp_path / "md" / "comparison-glyphs.md").read_text().splitlines()
    assert all(line.startswith("| ") and line.endswith(" |") for line in lines)
    assert set(lines[1].replace("|", "").split()) <= {":---", "---:"}  # GFM alignment row
    cells = [[c.strip() for c in line[1:-1].split("|")] for line in lines]
    read = pd.DataFrame(cells[2:], columns=cells[0])
    pd.testing.assert_frame_equal(read, table.astype(str))
    back = pd.read_csv(tmp_path / "md" / "comparison-glyphs.md", sep=r"\s*\|\s*",
                       engine="python", skiprows=[1]).iloc[:, 1:-1]
    assert list(back.columns) == list(table.columns)
    assert list(back["A_T (%)"]) == list(table["A_T (%)"])


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_csv_and_parquet_hold_merged_and_comparison_tables(runs_folder, compared, tmp_path,
                                                           fmt):
    runs, table = compared
    result = invoke("compare", runs_folder, "--out", tmp_path / "c.html",
                    "--export", tmp_path / "x", "--export-format", fmt)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == sorted(
        f"{name}.{fmt}" for name in ("runs", "accuracy", "experiences", "comparison"))
    expected = table.assign(stream="glyphs")[["stream", *table.columns]]
    if fmt == "parquet":
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "x" / "comparison.parquet"),
                                      expected)
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "x" / "runs.parquet"),
                                      runs.table, check_dtype=False)
        accuracy = pd.read_parquet(tmp_path / "x" / "accuracy.parquet")
    else:
        pd.testing.assert_frame_equal(
            pd.read_csv(tmp_path / "x" / "comparison.csv", dtype=str), expected.astype(str))
        accuracy = pd.read_csv(tmp_path / "x" / "accuracy.csv")
    assert len(accuracy) == 4 * 4 * 3  # runs x (before training + 3 experiences) x 3
    pd.testing.assert_series_equal(accuracy["accuracy"], runs.accuracy["accuracy"])


def test_a_bad_export_format_writes_nothing(runs_folder, tmp_path):
    result = invoke("compare", runs_folder, "--out", tmp_path / "c.html",
                    "--export", tmp_path / "x", "--export-format", "docx")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert result.stderr == ("clplat: error: invalid --export-format 'docx': choose from csv, "
                             "parquet, latex, markdown\n")
    assert list(tmp_path.iterdir()) == []


def test_one_file_per_stream_and_one_comparison_table_for_all(tmp_path):
    from clplatform.reports import RunSet, export_tables
    table = pd.DataFrame({"label": ["a", "b", "a"], "seed": [0, 0, 0],
                          "stream": ["avalanche:SplitMNIST", "avalanche:SplitMNIST", "digits"],
                          "final_accuracy": [0.5, 0.6, 0.9],
                          "forgetting": [0.2, 0.1, float("nan")]})
    runs = RunSet(runs=[], skipped=[], table=table, accuracy=pd.DataFrame({"x": [1]}),
                  experiences=pd.DataFrame({"x": [1]}))
    for fmt, suffix in (("latex", "tex"), ("markdown", "md")):
        written = export_tables(runs, tmp_path / fmt, fmt)
        assert [p.name for p in written] == [f"comparison-avalanche-SplitMNIST.{suffix}",
                                             f"comparison-digits.{suffix}"]
    assert r"\caption{avalanche:SplitMNIST: mean $\pm$ std over 1 seed;" in (
        tmp_path / "latex" / "comparison-avalanche-SplitMNIST.tex").read_text()
    export_tables(runs, tmp_path / "pq", "parquet")
    comparison = pd.read_parquet(tmp_path / "pq" / "comparison.parquet")
    assert list(comparison.columns) == ["stream", "label", "runs", "seeds", "A_T (%)",
                                        "forgetting (%)"]
    assert list(comparison["A_T (%)"]) == ["50.0", "60.0", "90.0"]
    # digits has no forgetting column of its own: missing, not "n/a"
    assert list(comparison["forgetting (%)"].fillna("-")) == ["20.0", "10.0", "-"]

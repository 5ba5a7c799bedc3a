"""Exports of a comparison (``--export DIR --export-format ...``).

- ``csv``/``parquet``: the merged tables (``runs``, ``accuracy``, ``experiences``, and
  ``rounds`` when active runs have them) and ``comparison``: the comparison table of every
  stream (:func:`~clplatform.reports.tables.comparison_table`, cells ``mean ± std``) with a
  ``stream`` column first.
- ``latex``: ``comparison-<stream>.tex`` per stream, a booktabs ``table`` ready for
  ``\\input``: one row per group, the settings in which groups differ, the main metrics
  (:data:`LATEX_METRICS`; cells ``mean $\\pm$ std`` with the comparison's decimals, best per
  column in bold), the published final accuracy where a run has one (sources in the
  caption).
- ``markdown``: ``comparison-<stream>.md`` per stream, the comparison table cell for cell as
  a GitHub-flavoured Markdown table, then the ranking against a published one where the
  stream maps to one (:mod:`.ranking`).
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from clplatform.errors import UserError

from .tables import (BEST, COMPARISON_COLUMNS, PUBLISHED_HEADER, SOURCE_HEADER,
                     comparison_table, count)

EXPORT_FORMATS = ("csv", "parquet", "latex", "markdown")
SUFFIXES = {"csv": "csv", "parquet": "parquet", "latex": "tex", "markdown": "md"}
# comparison column header -> summary key
METRIC_KEYS = {header: key for key, (header, _, _) in COMPARISON_COLUMNS.items()}
# the comparison columns of the LaTeX table (where the comparison has them): the main
# accuracy metrics and the compute columns; Markdown, CSV and Parquet hold them all
LATEX_METRICS = ("final_accuracy", "average_incremental_accuracy", "forgetting",
                 "final_params_total", "params_growth_ratio", "total_train_flops",
                 "inference_flops_per_sample", "train_seconds")

LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$",
                  "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def check_export_format(fmt: str) -> None:
    """Refuse an unknown export format, before anything is written."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"invalid --export-format {fmt!r}: choose from "
                        f"{', '.join(EXPORT_FORMATS)}")


def latex_escape(text) -> str:
    """``text`` with LaTeX's special characters written as literal characters."""
    return "".join(LATEX_SPECIALS.get(c, c) for c in str(text))


def parse_mean_std(cell) -> tuple[float, float | None] | None:
    """``(mean, std)`` of a comparison cell (``"12.3 ± 0.4"``, ``"12.3"`` for one run);
    None for ``"n/a"``."""
    if not isinstance(cell, str) or cell == "n/a":
        return None
    mean, _, std = cell.partition(" ± ")
    return float(mean), float(std) if std else None


def comparison_tables(table: pd.DataFrame, group_by: str = "label") -> dict[str, pd.DataFrame]:
    """The comparison table of each stream of a runs table, by stream name."""
    return {stream: comparison_table(runs, group_by)
            for stream, runs in table.groupby("stream", sort=True)}


def _latex_number(text: str) -> str:
    return "$-$" + text[1:] if text.startswith("-") else text


def best_rows(frame: pd.DataFrame, header: str) -> set[int]:
    """Positions of the rows holding the best mean of a metric column (:data:`BEST`);
    none when fewer than two values differ."""
    means = {i: parsed[0] for i, parsed in enumerate(map(parse_mean_std, frame[header]))
             if parsed is not None}
    if len(set(means.values())) < 2:
        return set()
    best = (max if BEST[METRIC_KEYS[header]] == "max" else min)(means.values())
    return {i for i, mean in means.items() if mean == best}


def comparison_latex(frame: pd.DataFrame, stream: str, group_by: str = "label") -> str:
    """One stream's comparison table as a booktabs LaTeX ``table``."""
    shown = {COMPARISON_COLUMNS[key][0] for key in LATEX_METRICS} | {PUBLISHED_HEADER}
    text_columns = [c for c in frame.columns if c not in METRIC_KEYS
                    and c not in ("runs", "seeds", PUBLISHED_HEADER, SOURCE_HEADER)]
    numbers = [c for c in frame.columns if c in shown]  # published beside A_T
    columns = text_columns + numbers
    bold = {header: best_rows(frame, header) for header in numbers if header in METRIC_KEYS}
    rows = []
    for i, (_, row) in enumerate(frame.iterrows()):
        cells = [latex_escape(row[c]) for c in text_columns]
        for header in numbers:
            if row[header] == "n/a":
                cells.append("--")
                continue
            mean, _, std = row[header].partition(" ± ")
            cell = _latex_number(mean) + (f" $\\pm$ {std}" if std else "")
            cells.append(f"\\textbf{{{cell}}}" if i in bold.get(header, ()) else cell)
        rows.append(" & ".join(cells) + r" \\")
    published = PUBLISHED_HEADER in frame.columns
    runs = sorted(set(frame["runs"]))
    noun = "seed" if group_by == "label" else "run"  # a label's runs differ in the seed only
    seeds = (count(runs[0], noun) if len(runs) == 1
             else f"{runs[0]} to {runs[-1]} {noun}s per row")
    caption = (f"{latex_escape(stream)}: mean $\\pm$ std over {seeds}; "
               f"best per column in bold.")
    if published and SOURCE_HEADER in frame.columns:
        sources = sorted(set(frame[SOURCE_HEADER].astype(str)) - {"n/a", "nan"})
        if sources:
            caption += f" Published values: {latex_escape('; '.join(sources))}."
    label = "tab:comparison-" + file_stem(stream)
    return "\n".join([
        f"% clplat compare: stream {stream}, {count(int(frame['runs'].sum()), 'run')}; "
        r"needs \usepackage{booktabs}",
        r"\begin{table}[t]", r"\centering",
        f"\\caption{{{caption}}}", f"\\label{{{label}}}",
        r"\begin{tabular}{" + "l" * len(text_columns)
        + "r" * (len(columns) - len(text_columns)) + "}",
        r"\toprule", " & ".join(latex_escape(c) for c in columns) + r" \\", r"\midrule",
        *rows, r"\bottomrule", r"\end{tabular}", r"\end{table}", ""])


def comparison_markdown(frame: pd.DataFrame) -> str:
    """A comparison table as a GitHub-flavoured Markdown table, cell for cell (``|``
    escaped); numbers right-aligned."""
    def cell(value) -> str:
        return str(value).replace("|", r"\|").replace("\n", " ")

    def line(cells) -> str:
        return "| " + " | ".join(cells) + " |"
    from .ranking import HEADERS
    right = set(METRIC_KEYS) | {"runs", PUBLISHED_HEADER, *HEADERS}
    return "\n".join([line(cell(c) for c in frame.columns),
                      line("---:" if c in right else ":---" for c in frame.columns),
                      *(line(cell(v) for v in row) for row in frame.itertuples(index=False)),
                      ""])


def ranking_markdown(runs: pd.DataFrame, group_by: str = "label") -> str:
    """The rankings of one stream's runs against a published one (:mod:`.ranking`), each
    a heading line with Kendall's τ and a Markdown table; '' when there is none."""
    from .ranking import rankings
    return "".join(f"\nRanking against {r.column}: {r.summary()}.\n\n"
                   + comparison_markdown(r.table) for r in rankings(runs, group_by))


def file_stem(stream: str) -> str:
    """A stream name as a file name / LaTeX label part (``avalanche:SplitCIFAR100`` ->
    ``avalanche-SplitCIFAR100``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(stream)).strip("-") or "stream"


def export_tables(runs, folder: str | Path, fmt: str = "csv",
                  group_by: str = "label") -> list[Path]:
    """Write the export of a :class:`~clplatform.reports.collect.RunSet` in ``fmt`` into
    ``folder`` (see the module's doc); the written paths."""
    from clplatform.cache import atomic_path, write_text
    check_export_format(fmt)
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create export folder {folder}: {exc.strerror}") from None
    comparisons = comparison_tables(runs.table, group_by)
    written = []
    if fmt in ("latex", "markdown"):
        stems: set[str] = set()
        for stream, frame in comparisons.items():
            stem = file_stem(stream)
            while stem in stems:  # two names that read the same as file names
                stem += "-"
            stems.add(stem)
            path = folder / f"comparison-{stem}.{SUFFIXES[fmt]}"
            write_text(path, comparison_latex(frame, stream, group_by) if fmt == "latex"
                       else comparison_markdown(frame) + ranking_markdown(
                           runs.table[runs.table["stream"] == stream], group_by))
            written.append(path)
        return written
    tables = [("runs", runs.table), ("accuracy", runs.accuracy),
              ("experiences", runs.experiences)]
    if runs.rounds is not None and not runs.rounds.empty:
        tables.append(("rounds", runs.rounds))
    tables.append(("comparison", pd.concat(
        [frame.assign(stream=stream)[["stream", *frame.columns]]
         for stream, frame in comparisons.items()], ignore_index=True)))
    for name, frame in tables:
        path = folder / f"{name}.{fmt}"
        with atomic_path(path) as tmp:
            if fmt == "csv":
                frame.to_csv(tmp, index=False)
            else:
                frame.to_parquet(tmp, index=False)
        written.append(path)
    return written

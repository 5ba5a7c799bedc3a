"""One self-contained HTML report: tables and figures (PNG, base64-embedded), no scripts,
no external files."""
from __future__ import annotations

import base64
import datetime as dt
import html
import io
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from clplatform.cache import write_text
from clplatform.errors import UserError

from . import plots
from .collect import RunSet
from .tables import comparison_table, count

STYLE = """
body { font-family: 'DejaVu Sans', Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
table.comparison td, table.comparison th { white-space: nowrap; }
table.record td { text-align: left; max-width: 60em; overflow-wrap: anywhere; }
.scroll { overflow-x: auto; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; }
figcaption { font-size: 0.85em; color: #555; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.4em;
          vertical-align: middle; border: 1px solid #444; }
.note { color: #555; font-size: 0.9em; }
"""


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(fig, caption: str) -> str:
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,'
            f'{_png(fig)}"><figcaption>{html.escape(caption)}</figcaption></figure>')


def _table(frame: pd.DataFrame, row_colors: list | None = None,
           key: str | None = None, wrap: bool = False) -> str:
    """``frame`` as an HTML table; ``row_colors``: a colour swatch per row in column ``key``.
    Cells of numbers never wrap (the table scrolls); ``wrap``: a table of long texts."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for i, (_, row) in enumerate(frame.iterrows()):
        cells = []
        for column in frame.columns:
            text = html.escape(str(row[column]))
            if row_colors and column == key:
                r, g, b, _a = row_colors[i]
                text = (f'<span class="swatch" style="background: rgb({int(255 * r)},'
                        f'{int(255 * g)},{int(255 * b)})"></span>{text}')
            cells.append(f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    kind = "record" if wrap else "comparison"
    return (f'<div class="scroll"><table class="{kind}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _stream_section(stream: str, runs: RunSet, group_by: str) -> str:
    table = runs.table[runs.table["stream"] == stream]
    accuracy = runs.accuracy[runs.accuracy["stream"] == stream]
    experiences = (runs.experiences[runs.experiences["stream"] == stream]
                   if not runs.experiences.empty else runs.experiences)
    colors = plots.group_colors(table[group_by])
    parts = [f"<h2>Stream {html.escape(stream)}</h2>",
             f'<p class="note">{count(len(table), "run")}; cells are mean ± standard '
             f"deviation over the runs (seeds) of each {html.escape(group_by)}.</p>",
             _table(comparison_table(table, group_by),
                    [colors[g] for g in sorted(colors)], group_by),
             *_ranking_section(table, group_by),
             _figure(plots.accuracy_matrices(accuracy, group_by),
                     "Accuracy matrix: accuracy (%) on test experience j after training "
                     "experience i, mean over runs; blank: experiences not trained yet "
                     "(j > i)."),
             _figure(plots.accuracy_over_experiences(accuracy, group_by, colors),
                     "Mean accuracy over the experiences seen so far (A_i)."),
             _figure(plots.forgetting_per_experience_plot(accuracy, group_by, colors),
                     "Forgetting of each experience after the last one (Chaudhry et al.).")]
    if not experiences.empty:
        parts += [_figure(plots.parameter_growth(experiences, group_by, colors),
                          "Parameters after each experience, and parameters added since "
                          "the start."),
                  _figure(plots.compute_per_experience(experiences, group_by, colors),
                          "Training FLOPs (torch.utils.flop_counter's formulas) and seconds "
                          "per experience."),
                  _figure(plots.accuracy_vs_cost(table, group_by, colors),
                          "Final accuracy against parameters, training FLOPs, stored bytes "
                          "and inference FLOPs per sample (the efficiency frontier)"
                          + ("; the dashed line (Pareto front) joins the groups no other "
                             "group beats at lower cost." if len(colors) > 1 else "."))]
    rounds = (runs.rounds[runs.rounds["stream"] == stream]
              if runs.rounds is not None and not runs.rounds.empty else pd.DataFrame())
    parts += _strategy_sections(stream, runs, table, accuracy, experiences, rounds, group_by,
                                colors)
    parts += _compression_section(runs, table)
    listing = table[["run", "strategy", "seed", "final_accuracy"]].assign(
        final_accuracy=lambda f: (100 * f["final_accuracy"]).map("{:.1f}".format))
    parts += ["<h3>Runs</h3>", _table(listing.rename(columns={"final_accuracy": "A_T (%)"}))]
    return "\n".join(parts)


def _ranking_section(table: pd.DataFrame, group_by: str) -> list[str]:
    """The measured ranking beside the published one of the column the stream stands for,
    with Kendall's τ (:mod:`.ranking`); nothing when the stream maps to none."""
    from .ranking import rankings
    parts = []
    for ranking in rankings(table, group_by):
        parts += [f"<h3>Ranking against {html.escape(ranking.column)}</h3>",
                  f'<p class="note">{html.escape(ranking.summary())}. Measured: mean final '
                  f"accuracy A_T ± std over each {html.escape(group_by)}'s runs (seeds), "
                  "rank 1 the highest; published: A_N and its rank among the rows that "
                  "have one; τ-b over those rows.</p>",
                  _table(ranking.table)]
    return parts


def _strategy_sections(stream: str, runs: RunSet, table: pd.DataFrame, accuracy: pd.DataFrame,
                       experiences: pd.DataFrame, rounds: pd.DataFrame, group_by: str,
                       colors: dict) -> list[str]:
    """The sections the strategies of the stream's runs contribute through their ``report``
    trait (:class:`clplatform.contract.ReportSection`), each drawn from the records of the
    runs of the strategies sharing it; a strategy this installation does not know adds
    none."""
    from clplatform.contract import StrategyRecords
    from clplatform.registry import STRATEGIES
    shared: dict = {}
    for name in sorted(table["strategy"].unique()):
        try:
            section = STRATEGIES.get(name).traits.report
        except UserError:
            continue
        if section is not None:
            shared.setdefault(section, []).append(name)
    parts = []
    for section, names in shared.items():
        def only(frame: pd.DataFrame) -> pd.DataFrame:
            return frame[frame["strategy"].isin(names)] if not frame.empty else frame
        mine = only(table)
        records = StrategyRecords(
            stream=stream, strategies=tuple(names), runs=mine, accuracy=only(accuracy),
            experiences=only(experiences), rounds=only(rounds),
            configs={r.path.name: r.config for r in runs.runs
                     if r.path.name in set(mine["run"])},
            group_by=group_by, colors={g: colors[g] for g in mine[group_by]})
        try:
            items = section.build(records)
        except Exception as exc:  # a report on odd records still shows the rest
            items, failed = [], f"{type(exc).__name__}: {exc}"
        else:
            failed = None
        if not items and failed is None:
            continue
        parts.append(f"<h3>{html.escape(section.title)}</h3>")
        if failed:
            parts.append(f'<p class="note">This section could not be drawn from the records '
                         f"({html.escape(failed)}).</p>")
        for item in items:
            if item.figure is not None:
                parts.append(_figure(item.figure, item.caption))
            if item.table is not None:
                parts += [f'<p class="note">{html.escape(item.caption)}</p>',
                          _table(item.table)]
    return parts


COMPRESSION_COLUMNS = {  # compression.json field -> column
    "strategy": "strategy", "method": "method", "ratio": "ratio", "data": "data",
    "final_accuracy_before": "A_T before (%)", "final_accuracy_after": "A_T after (%)",
    "flops_before": "MFLOPs before", "flops_after": "MFLOPs after",
    "target_flops_ratio_achieved": "targets' FLOPs kept", "params_before": "params before",
    "params_after": "params after", "train_seconds": "seconds"}


def _compression_section(runs: RunSet, table: pd.DataFrame) -> list[str]:
    """The compressed children of the stream's runs (``clplat compress``), one row each."""
    from clplatform.store import load_compressions
    names = set(table["run"])
    rows = []
    for run in runs.runs:
        if run.path.name not in names:
            continue
        for found in load_compressions(run.path):
            row = {"run": run.path.name, "compression": found["child"]}
            row.update({column: found.get(key) for key, column in COMPRESSION_COLUMNS.items()})
            rows.append(row)
    if not rows:
        return []
    frame = pd.DataFrame(rows)
    for column in ("A_T before (%)", "A_T after (%)"):
        frame[column] = (100 * frame[column]).map("{:.1f}".format)
    for column in ("MFLOPs before", "MFLOPs after"):
        frame[column] = (frame[column] / 1e6).map("{:.2f}".format)
    frame["targets' FLOPs kept"] = frame["targets' FLOPs kept"].map("{:.3f}".format)
    frame["seconds"] = frame["seconds"].map("{:.1f}".format)
    return ["<h3>Compression</h3>",
            '<p class="note">Structured pruning of the final model (clplat compress): A_T '
            "over the seen test experiences before and after, inference FLOPs per sample, "
            "parameters, seconds of the compress step; details in RUN_DIR/compress/*/"
            "metrics.md.</p>", _table(frame)]


def _run_section(run) -> str:
    """A single run: its command, configuration, versions and hardware."""
    def flat(prefix: str, values: dict) -> list[tuple[str, str]]:
        return [(f"{prefix}{k}", ", ".join(map(str, v)) if isinstance(v, list) else str(v))
                for k, v in values.items()]
    record = run.record
    config = [item for table in ("strategy", "stream", "backbone", "train")
              for item in flat(f"{table}.", run.config[table])]
    about = [("run", run.path.name), ("status", run.status),
             ("command", record.get("command") or "(unknown)"),
             ("started", record.get("started") or ""), ("ended", record.get("ended") or ""),
             *flat("", record.get("versions") or {}),
             *flat("", record.get("hardware") or {})]
    return "\n".join([
        "<h2>Run</h2>",
        _table(pd.DataFrame(about, columns=["", "value"]), wrap=True),
        "<h3>Configuration (resolved)</h3>",
        _table(pd.DataFrame(config, columns=["setting", "value"]), wrap=True)])


def report_title(runs: RunSet) -> str:
    """The title of a report on ``runs``: the same whoever writes it (a run, ``clplat
    report``, ``clplat compare``)."""
    if len(runs.runs) == 1:
        return f"clplatform run {runs.runs[0].path.name}"
    return "clplatform comparison"


def report_html(runs: RunSet, title: str | None = None, group_by: str = "label") -> str:
    """The whole report as one HTML string."""
    title = title or report_title(runs)
    sections = [_stream_section(stream, runs, group_by)
                for stream in sorted(runs.table["stream"].unique())]
    if len(runs.runs) == 1:
        sections.insert(0, _run_section(runs.runs[0]))
    skipped = ""
    if runs.skipped:
        items = "".join(f"<li>{html.escape(str(p))}: {html.escape(s)}</li>"
                        for p, s in runs.skipped)
        skipped = f"<h2>Skipped runs</h2><ul>{items}</ul>"
    stamp = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class=\"note\">clplatform report, {stamp}. "
            f"Formulas: accuracy a[i, j]; A_T = mean_j a[T, j]; forgetting (Chaudhry et al.); "
            f"BWT = mean_j (a[T, j] - a[j, j]).</p>"
            + "\n".join(sections) + skipped + "</body></html>\n")


def write_report(runs: RunSet, path: str | Path, title: str | None = None,
                 group_by: str = "label") -> Path:
    path = Path(path)
    write_text(path, report_html(runs, title, group_by))
    return path

"""Plain-text tables of a run, for the terminal."""
from __future__ import annotations

import math

import pandas as pd

from clplatform.metrics import accuracy_matrix

# summary keys shown as percentages, in this order, with their labels
PERCENT_METRICS = {
    "final_accuracy": "final accuracy A_T",
    "final_stream_accuracy": "final stream accuracy (sample-weighted)",
    "final_task_accuracy": "final task-aware accuracy (task id given)",
    "final_task_selection_accuracy": "final task-selection accuracy",
    "average_incremental_accuracy": "average incremental accuracy",
    "forgetting": "forgetting",
    "bwt": "backward transfer (BWT)",
    "fwt": "forward transfer (FWT)",
    "plasticity": "plasticity (mean a_jj)",
}


def count(n: int, noun: str) -> str:
    """``1 run``, ``2 runs``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


COSTS = {"final_params_total": ("parameters after the last experience", 1, "{:,.0f}"),
         "params_growth_ratio": ("parameter growth ratio", 1, "{:.4f}"),
         "total_train_flops": ("training FLOPs (total, GFLOPs)", 1e-9, "{:,.1f}"),
         "inference_flops_per_sample": ("inference MFLOPs per sample", 1e-6, "{:.2f}"),
         "peak_memory_bytes": ("peak memory (MiB)", 1 / 2**20, "{:,.0f}"),
         "train_seconds": ("train seconds", 1, "{:.1f}"),
         "eval_seconds": ("eval seconds", 1, "{:.1f}"),
         "wall_seconds": ("wall seconds", 1, "{:.1f}")}
# metrics a run defines only for some strategies: left out where the run has none
ONLY_WHEN_RECORDED = ("final_task_selection_accuracy",)


def run_summary_text(run) -> str:
    """Header, summary metrics and the accuracy matrix (percent) of a stored run: one
    column of labels, one of right-aligned values."""
    cfg = run.config
    lines = [f"run        {run.path}",
             f"strategy   {cfg['strategy']['name']}   stream {cfg['stream']['name']}   "
             f"backbone {cfg['backbone']['name']}   seed {cfg['train']['seed']}   "
             f"status {run.status}", ""]
    shown = [(label, "n/a" if _missing(run.summary.get(key))
              else f"{100 * run.summary[key]:.2f} %")
             for key, label in PERCENT_METRICS.items()
             if not (key in ONLY_WHEN_RECORDED and _missing(run.summary.get(key)))]
    shown += [(label, fmt.format(run.summary[key] * scale) + "  ")
              for key, (label, scale, fmt) in COSTS.items()
              if not _missing(run.summary.get(key))]
    width = max(len(label) for label, _ in shown)
    value_width = max(len(value) for _, value in shown)
    lines += [f"  {label:<{width}}  {value:>{value_width}}".rstrip() for label, value in shown]
    if not run.accuracy.empty:
        matrix = (100 * accuracy_matrix(run.accuracy)).round(1)
        matrix.index.name, matrix.columns.name = "after exp", "test exp"
        lines += ["", "accuracy (%) on each test experience after each trained one:",
                  matrix.to_string()]
    return "\n".join(lines)


# columns of the comparison table: summary key -> (header, scale, format)
COMPARISON_COLUMNS = {
    "final_accuracy": ("A_T (%)", 100, "{:.1f}"),
    "final_task_accuracy": ("task-aware A_T (%)", 100, "{:.1f}"),
    "final_task_selection_accuracy": ("task selection (%)", 100, "{:.1f}"),
    "average_incremental_accuracy": ("avg inc acc (%)", 100, "{:.1f}"),
    "forgetting": ("forgetting (%)", 100, "{:.1f}"),
    "bwt": ("BWT (%)", 100, "{:.1f}"),
    "plasticity": ("plasticity (%)", 100, "{:.1f}"),
    "final_params_total": ("params (M)", 1e-6, "{:.3f}"),
    "params_growth_ratio": ("growth x", 1, "{:.3f}"),
    "total_train_flops": ("train TFLOPs", 1e-12, "{:.2f}"),
    "inference_flops_per_sample": ("inf MFLOPs/sample", 1e-6, "{:.1f}"),
    "train_seconds": ("train s", 1, "{:.1f}"),
}
# which value of each comparison column is the best one (bold in the LaTeX export)
BEST = {"final_accuracy": "max", "final_task_accuracy": "max",
        "final_task_selection_accuracy": "max", "average_incremental_accuracy": "max",
        "forgetting": "min", "bwt": "max", "plasticity": "max", "final_params_total": "min",
        "params_growth_ratio": "min", "total_train_flops": "min",
        "inference_flops_per_sample": "min", "train_seconds": "min"}


def _mean_std(values: pd.Series, scale: float, fmt: str) -> str:
    values = values.dropna().astype(float) * scale
    if values.empty:
        return "n/a"
    if len(values) == 1:
        return fmt.format(values.iloc[0])
    return f"{fmt.format(values.mean())} ± {fmt.format(values.std(ddof=1))}"


PUBLISHED_HEADER = "published A_T (%)"
SOURCE_HEADER = "published in"


def comparison_table(table: pd.DataFrame, group_by: str = "label") -> pd.DataFrame:
    """Groups x metrics, each cell 'mean ± std' over the runs (seeds) of the group.

    One table per stream is expected: the caller splits runs of different streams.
    """
    from .collect import is_setting
    # the settings in which these runs differ (epochs, stream options, ...), as columns
    shown = [c for c in table.columns if c != group_by and is_setting(c)
             and table[c].astype(str).nunique() > 1]
    rows = []
    for group, runs in table.groupby(group_by, sort=True):
        shown_group = group
        for c in shown if group_by == "label" else ():  # the label without the columns
            if runs[c].notna().iloc[0]:
                shown_group = shown_group.replace(f" {c}={runs[c].iloc[0]}", "")
        row = {group_by: shown_group,
               # a setting the group's strategy does not read is absent: n/a
               **{c: ", ".join(sorted(runs[c].dropna().astype(str).unique())) or "n/a"
                  for c in shown},
               "runs": len(runs),
               "seeds": ",".join(str(s) for s in sorted(runs["seed"].unique()))}
        for key, (header, scale, fmt) in COMPARISON_COLUMNS.items():
            if key in runs.columns:
                row[header] = _mean_std(runs[key], scale, fmt)
                if key == "final_accuracy" and "published_final_accuracy" in runs.columns:
                    # beside the measured value, where the setting matches a published one
                    published = runs["published_final_accuracy"].dropna()
                    row[PUBLISHED_HEADER] = (f"{100 * float(published.iloc[0]):.2f}"
                                             if len(published) else "n/a")
                    row[SOURCE_HEADER] = ", ".join(sorted(
                        runs["published_source"].dropna().astype(str).unique())) or "n/a"
        rows.append(row)
    frame = pd.DataFrame(rows)
    # a metric no run defines (e.g. task selection without prompt methods) is left out
    return frame.loc[:, [c for c in frame.columns if not (frame[c] == "n/a").all()]]


def comparison_text(table: pd.DataFrame, group_by: str = "label") -> str:
    """One block per stream: the comparison table as aligned text, and the ranking
    against a published one where the stream maps to one (:mod:`.ranking`)."""
    from .ranking import ranking_text
    blocks = []
    for stream, runs in table.groupby("stream", sort=True):
        frame = comparison_table(runs, group_by)
        ranked = ranking_text(runs, group_by)
        blocks.append(f"stream {stream} ({count(len(runs), 'run')})\n"
                      + frame.to_string(index=False) + (f"\n\n{ranked}" if ranked else ""))
    return "\n\n".join(blocks)

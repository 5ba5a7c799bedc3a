"""Plain-text tables of a run, for the terminal."""
from __future__ import annotations

import math

from clplatform.metrics import accuracy_matrix

# summary keys shown as percentages, in this order, with their labels
PERCENT_METRICS = {
    "final_accuracy": "final accuracy A_T",
    "final_stream_accuracy": "final stream accuracy (sample-weighted)",
    "average_incremental_accuracy": "average incremental accuracy",
    "forgetting": "forgetting",
    "bwt": "backward transfer (BWT)",
    "fwt": "forward transfer (FWT)",
    "plasticity": "plasticity (mean a_jj)",
}


def _fmt_percent(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:6.2f} %"


def run_summary_text(run) -> str:
    """Header, summary metrics and the accuracy matrix (percent) of a stored run."""
    cfg = run.config
    lines = [f"run        {run.path}",
             f"strategy   {cfg['strategy']['name']}   stream {cfg['stream']['name']}   "
             f"backbone {cfg['backbone']['name']}   seed {cfg['train']['seed']}   "
             f"status {run.status}", ""]
    width = max(map(len, PERCENT_METRICS.values()))
    for key, label in PERCENT_METRICS.items():
        lines.append(f"  {label:<{width}}  {_fmt_percent(run.summary.get(key))}")
    for key in ("train_seconds", "eval_seconds"):
        if run.summary.get(key) is not None:
            lines.append(f"  {key.replace('_', ' '):<{width}}  {run.summary[key]:8.1f}")
    if not run.accuracy.empty:
        matrix = (100 * accuracy_matrix(run.accuracy)).round(1)
        matrix.index.name, matrix.columns.name = "after exp", "test exp"
        lines += ["", "accuracy (%) on each test experience after each trained one:",
                  matrix.to_string()]
    return "\n".join(lines)

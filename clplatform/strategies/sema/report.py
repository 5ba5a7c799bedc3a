"""SEMA's section of the reports (the ``report`` trait): where and why it expanded, drawn
from its experience records (``sema.adapters_per_layer``, ``sema.peak_z_scores``,
``sema.expandable_blocks``, ``sema.layers_expanded``) and the threshold of each run's
configuration. Imports pandas and matplotlib only when a report is drawn."""
from __future__ import annotations

import textwrap

from clplatform.contract import ReportItem, ReportSection, StrategyRecords

COLUMNS = ("sema.adapters_per_layer", "sema.expandable_blocks")


def _numbers(text) -> list[float]:
    """``"1;2.5;nan"`` -> [1.0, 2.5, nan]; an empty record (read back as NaN) -> []."""
    if isinstance(text, float):
        return [] if text != text else [text]
    return [float(v) for v in str(text).split(";") if v != ""]


def expansion_timeline(records: StrategyRecords):
    """Per group: adapters in each expandable layer after each experience (mean over runs),
    one row per experience; the layers named by their block index."""
    import pandas as pd
    frame = records.experiences
    rows = []
    for _, record in frame.iterrows():
        counts = _numbers(record["sema.adapters_per_layer"])
        blocks = [int(b) for b in _numbers(record["sema.expandable_blocks"])]
        rows += [{"group": record[records.group_by], "run": record["run"],
                  "train_exp": int(record["train_exp"]), "block": block, "adapters": count}
                 for block, count in zip(blocks, counts)]
    table = pd.DataFrame(rows)
    return (table.groupby(["group", "train_exp", "block"])["adapters"].mean()
            .unstack("block").sort_index())


def decisions(records: StrategyRecords):
    """Per run, experience and expandable layer: the highest novelty score its scans saw, the
    run's threshold, and whether the layer expanded (experience 0 expands every layer
    without a scan: score NaN)."""
    import pandas as pd
    rows = []
    for _, record in records.experiences.iterrows():
        if "sema.peak_z_scores" not in record or pd.isna(record["sema.peak_z_scores"]):
            continue
        blocks = [int(b) for b in _numbers(record["sema.expandable_blocks"])]
        expanded = {int(b) for b in _numbers(record["sema.layers_expanded"])}
        threshold = records.configs[record["run"]]["strategy"]["threshold"]
        rows += [{"group": record[records.group_by], "run": record["run"],
                  "train_exp": int(record["train_exp"]), "block": block, "peak_z": score,
                  "threshold": threshold, "expanded": block in expanded}
                 for block, score in zip(blocks, _numbers(record["sema.peak_z_scores"]))]
    return pd.DataFrame(rows)


def _build(records: StrategyRecords) -> list[ReportItem]:
    if records.experiences.empty or not set(COLUMNS) <= set(records.experiences.columns):
        return []  # records of a SEMA version that did not write them
    import matplotlib.pyplot as plt
    import numpy as np
    timeline = expansion_timeline(records)
    groups = list(dict.fromkeys(timeline.index.get_level_values("group")))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 4), squeeze=False)
    for ax, group in zip(axes[0], groups):
        counts = timeline.loc[group]
        image = ax.imshow(counts.values, cmap="Blues", aspect="auto", vmin=0,
                          vmax=max(float(np.nanmax(timeline.values)), 1.0))
        ax.set_xticks(range(counts.shape[1]), [str(b) for b in counts.columns])
        ax.set_yticks(range(counts.shape[0]), [str(i) for i in counts.index])
        ax.set_xlabel("block (expandable layer)")
        ax.set_ylabel("after training experience i")
        ax.set_title(textwrap.fill(str(group), 45), fontsize=8)
        for (i, j), value in np.ndenumerate(counts.values):
            ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=8)
        fig.colorbar(image, ax=ax, label="adapters", fraction=0.046)
    fig.suptitle("Adapters per layer")
    fig.tight_layout()
    final = timeline.groupby(level="group").tail(1).droplevel("train_exp")
    final.columns = [f"block {b}" for b in final.columns]
    items = [ReportItem("SEMA's expansion: adapters in each expandable layer after each "
                        "experience (mean over the runs of a group); experience 0 adds one "
                        "per layer.", figure=fig),
             ReportItem("Adapters per expandable layer after the last experience (mean over "
                        "runs).", table=final.reset_index().rename(
                            columns={"group": records.group_by}).round(2))]
    scores = decisions(records)
    if not scores.empty and scores["peak_z"].notna().any():
        items.insert(1, ReportItem(
            "The decisions: the highest novelty z-score each expandable layer's scans saw on "
            "an experience's data, against the threshold (dashed); a filled marker: the "
            "layer expanded on that experience. Mean over a group's runs.",
            figure=_decision_figure(scores, records.colors)))
    return items


def _decision_figure(scores, colors):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    blocks = sorted(scores["block"].unique())
    fig, axes = plt.subplots(1, len(blocks), figsize=(4.2 * len(blocks), 4.2), squeeze=False,
                             sharey=True, layout="constrained")
    for ax, block in zip(axes[0], blocks):
        for group, rows in scores[scores["block"] == block].groupby("group", sort=True):
            mean = rows.groupby("train_exp").agg(peak_z=("peak_z", "mean"),
                                                 expanded=("expanded", "mean"),
                                                 threshold=("threshold", "first"))
            color = colors[group]
            ax.plot(mean.index, mean["peak_z"], color=color, lw=1, label=str(group))
            for exp, row in mean.iterrows():
                ax.plot([exp], [row["peak_z"]], "o", ms=5, color=color,
                        mfc=color if row["expanded"] >= 0.5 else "white")
            for threshold in rows["threshold"].unique():
                ax.axhline(threshold, color=color, ls="--", lw=0.8)
        ax.set_title(f"block {block}", fontsize=10)
        ax.set_xlabel("training experience i")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("highest novelty z-score")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", fontsize=8)
    fig.suptitle("Expansion decisions")
    return fig


SECTION = ReportSection("SEMA: expansion", _build)

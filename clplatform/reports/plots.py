"""Figures of a comparison, all drawn from the merged records (matplotlib, Agg backend).

Every figure takes the same ``colors`` mapping (group -> colour), so a strategy has the same
colour in every figure of a report. Curves are means over the runs (seeds) of a group, with
a band of ± one standard deviation where there are several runs.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from clplatform.metrics import (accuracy_matrix, forgetting_per_experience,  # noqa: E402
                                incremental_accuracies)


def group_colors(groups) -> dict[str, tuple]:
    """A stable colour per group: sorted names over the tab10 (or tab20) palette."""
    names = sorted(set(groups))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _per_run(frame: pd.DataFrame, group_by: str, fn) -> dict[str, list[pd.Series]]:
    """Apply ``fn`` to each run's records; collect the resulting series by group."""
    out: dict[str, list[pd.Series]] = {}
    for (group, _run), records in frame.groupby([group_by, "run"], sort=True):
        out.setdefault(group, []).append(fn(records))
    return out


def _band(ax, series: list[pd.Series], color, label: str, scale: float = 1.0) -> None:
    data = pd.concat(series, axis=1) * scale
    mean = data.mean(axis=1)
    ax.plot(mean.index, mean.values, marker="o", ms=3, color=color, label=label)
    if data.shape[1] > 1:
        std = data.std(axis=1, ddof=1)
        ax.fill_between(mean.index, mean - std, mean + std, color=color, alpha=0.2, lw=0)


def _legend(axes) -> None:
    """A legend on the first panel that has labelled artists (a panel may be empty)."""
    for ax in np.atleast_1d(axes):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
            return


def _finish(fig, axes, title: str):
    for ax in np.atleast_1d(axes):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def accuracy_matrices(accuracy: pd.DataFrame, group_by: str):
    """Heat map of a[i, j] (percent, mean over runs) for every group."""
    groups = sorted(accuracy[group_by].unique())
    cols = min(len(groups), 3)
    rows = int(np.ceil(len(groups) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax, group in zip(axes.flat, groups):
        mats = [accuracy_matrix(r) for _, r in
                accuracy[accuracy[group_by] == group].groupby("run")]
        mat = 100 * pd.concat(mats).groupby(level=0).mean()
        # a[i, j] for j > i: an experience not trained yet, left blank
        untrained = np.asarray(mat.columns)[None, :] > np.asarray(mat.index)[:, None]
        cmap = plt.get_cmap("viridis").with_extremes(bad="white")
        image = ax.imshow(np.ma.masked_array(mat.values, untrained | np.isnan(mat.values)),
                          vmin=0, vmax=100, cmap=cmap, aspect="auto")
        ax.set_xticks(range(mat.shape[1]), [str(c) for c in mat.columns])
        ax.set_yticks(range(mat.shape[0]), [str(i) for i in mat.index])
        ax.set_xlabel("test experience j")
        ax.set_ylabel("after training experience i")
        ax.set_title(str(group), fontsize=10)
        if mat.size <= 144:
            for (i, j), value in np.ndenumerate(mat.values):
                if untrained[i, j] or np.isnan(value):
                    continue
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if value < 60 else "black")
        fig.colorbar(image, ax=ax, label="accuracy (%)", fraction=0.046)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.suptitle("Accuracy matrix a[i, j] (%)")
    fig.tight_layout()
    return fig


def accuracy_over_experiences(accuracy: pd.DataFrame, group_by: str, colors):
    """A_i: mean accuracy over the experiences seen so far, after each experience."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for group, series in _per_run(accuracy, group_by, incremental_accuracies).items():
        _band(ax, series, colors[group], str(group), scale=100)
    ax.set_xlabel("after training experience i")
    ax.set_ylabel("mean accuracy on seen experiences A_i (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    return _finish(fig, ax, "Accuracy over experiences")


def forgetting_per_experience_plot(accuracy: pd.DataFrame, group_by: str, colors):
    """f_j after the last experience, per earlier experience j (grouped bars)."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    per_group = _per_run(accuracy, group_by, forgetting_per_experience)
    width = 0.8 / max(len(per_group), 1)
    for k, (group, series) in enumerate(per_group.items()):
        data = pd.concat(series, axis=1) * 100
        if data.empty:
            continue
        x = np.asarray(data.index, dtype=float) + (k - (len(per_group) - 1) / 2) * width
        std = data.std(axis=1, ddof=1) if data.shape[1] > 1 else None
        ax.bar(x, data.mean(axis=1), width=width, color=colors[group], label=str(group),
               yerr=std, capsize=2)
    ax.set_xlabel("experience j")
    ax.set_ylabel("forgetting f_j after the last experience (%)")
    if ax.get_legend_handles_labels()[0]:  # no bars when no experience was followed by another
        ax.legend(fontsize=8)
    return _finish(fig, ax, "Forgetting per experience")


def per_experience_panels(experiences: pd.DataFrame, group_by: str, colors, title: str,
                           xlabel: str, panels: list[tuple[str, str, float]]):
    """One panel per (column, axis label, scale) of the experience records, vs experience
    (mean over a group's runs, band of ± one standard deviation)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4))
    for ax, (column, label, scale) in zip(axes, panels):
        if column not in experiences or experiences[column].isna().all():
            ax.text(0.5, 0.5, "not recorded", ha="center", transform=ax.transAxes)
            continue
        for group, series in _per_run(
                experiences, group_by,
                lambda r, c=column: r.set_index("train_exp")[c].astype(float)).items():
            _band(ax, series, colors[group], str(group), scale=scale)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _legend(axes)
    return _finish(fig, axes, title)


def parameter_growth(experiences: pd.DataFrame, group_by: str, colors):
    """Total parameters and parameters added since the start, after each experience."""
    return per_experience_panels(
        experiences, group_by, colors, "Parameter growth", "after training experience i",
        [("params_total", "total parameters (millions)", 1e-6),
         ("params_added", "parameters added (thousands)", 1e-3)])


def compute_per_experience(experiences: pd.DataFrame, group_by: str, colors):
    """Training FLOPs and training seconds spent on each experience."""
    return per_experience_panels(
        experiences, group_by, colors, "Compute per experience", "training experience i",
        [("train_flops", "training FLOPs (GFLOPs)", 1e-9),
         ("train_seconds", "training time (s)", 1.0)])


def accuracy_with_budget(rounds: pd.DataFrame, group_by: str, colors):
    """Active strategies: target accuracy against the labels used, one panel per target
    experience (round 0 is the model before adaptation)."""
    targets = sorted(rounds["train_exp"].unique())
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.8), squeeze=False)
    for ax, target in zip(axes[0], targets):
        records = rounds[rounds["train_exp"] == target]
        for group, series in _per_run(
                records, group_by,
                lambda r: r.set_index("labels_used")["accuracy"].astype(float)).items():
            _band(ax, series, colors[group], str(group), scale=100)
        ax.set_title(f"target experience {target}", fontsize=10)
        ax.set_xlabel("labels used")
        ax.set_ylabel("accuracy on the target (%)")
    _legend(axes[0])
    return _finish(fig, axes[0], "Improvement with budget")


def _pareto(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Points not dominated: no other point has lower-or-equal cost and higher accuracy."""
    ordered = points.sort_values([x, y], ascending=[True, False])
    best, keep = -np.inf, []
    for idx, row in ordered.iterrows():
        if row[y] > best:
            keep.append(idx)
            best = row[y]
    return ordered.loc[keep]


def accuracy_vs_cost(table: pd.DataFrame, group_by: str, colors):
    """Final accuracy against the costs (Pareto front per panel): parameters after the last
    experience, total training FLOPs, and the efficiency frontier of deployment — bytes the
    strategy stores and inference FLOPs per sample (where merged adapters cost nothing and
    two-pass methods twice the backbone)."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5), layout="constrained")
    axes = axes.flatten()
    for ax, column, label, scale in (
            (axes[0], "final_params_total", "parameters after the last experience (millions)",
             1e-6),
            (axes[1], "total_train_flops", "total training FLOPs (TFLOPs)", 1e-12),
            (axes[2], "final_stored_bytes", "bytes stored after the last experience (KiB)",
             1 / 1024),
            (axes[3], "inference_flops_per_sample", "inference FLOPs per sample (MFLOPs)",
             1e-6)):
        if column not in table or table[column].isna().all():
            ax.text(0.5, 0.5, "not recorded", ha="center", transform=ax.transAxes)
            continue
        means = table.groupby(group_by)[[column, "final_accuracy"]].mean()
        means = means.assign(cost=means[column] * scale, acc=100 * means["final_accuracy"])
        for group, row in means.iterrows():
            runs = table[table[group_by] == group]
            ax.scatter(runs[column] * scale, 100 * runs["final_accuracy"], s=12, alpha=0.4,
                       color=colors[group])
            ax.scatter([row["cost"]], [row["acc"]], s=60, color=colors[group],
                       edgecolor="black", label=str(group), zorder=3)
        front = _pareto(means, "cost", "acc")
        if len(front) > 1:  # a front of one point is no front
            ax.plot(front["cost"], front["acc"], "k--", lw=1, label="Pareto front", zorder=2)
        ax.set_xlabel(label)
        ax.set_ylabel("final accuracy A_T (%)")
        ax.grid(alpha=0.3)
    legend = {}  # one entry per group (and the front), below the panels: labels are long
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(text, handle)
    if legend:
        fig.legend(legend.values(), legend.keys(), loc="outside lower center", fontsize=8,
                   ncol=2 if len(legend) > 4 else 1)
    fig.suptitle("Accuracy vs cost")
    return fig

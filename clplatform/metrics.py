"""Derived metrics: pure functions of the accuracy records (``shared/specs/metrics.md``).

Notation: a[i, j] = accuracy on test experience j after training experience i; T = the last
trained experience; b[j] = accuracy of the initial model (row ``train_exp = -1``).
Accuracy metrics take the accuracy DataFrame (columns train_exp, eval_exp, accuracy,
n_samples, ...), cost metrics the experience DataFrame; each returns a float; NaN where the records cannot define the metric (e.g.
forgetting with a single trained experience, or a joint run trained only once).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .evaluator import INITIAL


def accuracy_matrix(acc: pd.DataFrame, column: str = "accuracy") -> pd.DataFrame:
    """a[i, j] as a DataFrame (rows: trained experiences, columns: test experiences)."""
    trained = acc[acc["train_exp"] != INITIAL]
    return trained.pivot(index="train_exp", columns="eval_exp", values=column).sort_index()


def _last(acc: pd.DataFrame) -> int:
    return int(acc.loc[acc["train_exp"] != INITIAL, "train_exp"].max())


def final_accuracy(acc: pd.DataFrame, column: str = "accuracy") -> float:
    """A_T = mean over j <= T of a[T, j] (experiences weighted equally); with
    ``column="task_accuracy"`` the task-aware A_T (NaN for records without that column)."""
    if column not in acc:
        return math.nan
    a = accuracy_matrix(acc, column)
    t = _last(acc)
    return float(a.loc[t, [j for j in a.columns if j <= t]].mean())


def final_stream_accuracy(acc: pd.DataFrame) -> float:
    """Sample-weighted accuracy over all test samples of experiences j <= T after T."""
    t = _last(acc)
    rows = acc[(acc["train_exp"] == t) & (acc["eval_exp"] <= t)]
    return float((rows["accuracy"] * rows["n_samples"]).sum() / rows["n_samples"].sum())


def _complete(a: pd.DataFrame, t: int) -> bool:
    """True when every experience 0..T was trained (not so for a joint run)."""
    return list(a.index) == list(range(t + 1))


def incremental_accuracies(acc: pd.DataFrame) -> pd.Series:
    """A_i = mean over j <= i of a[i, j], for every trained i (the accuracy curve)."""
    a = accuracy_matrix(acc)
    return pd.Series({i: a.loc[i, [j for j in a.columns if j <= i]].mean() for i in a.index},
                     dtype=float)


def average_incremental_accuracy(acc: pd.DataFrame) -> float:
    """mean over i <= T of A_i, with A_i = mean over j <= i of a[i, j]."""
    a = accuracy_matrix(acc)
    if not _complete(a, _last(acc)):
        return math.nan
    return float(incremental_accuracies(acc).mean())


def _diagonal(a: pd.DataFrame, js) -> pd.Series:
    return pd.Series({j: a.loc[j, j] if j in a.index else math.nan for j in js})


def forgetting_per_experience(acc: pd.DataFrame) -> pd.Series:
    """f_j = (max over j <= i < T of a[i, j]) - a[T, j], for every j < T (Chaudhry et al.)."""
    a = accuracy_matrix(acc)
    t = _last(acc)
    values = {}
    for j in [j for j in a.columns if j < t]:
        before = a.loc[[i for i in a.index if j <= i < t], j]
        values[j] = before.max() - a.loc[t, j] if len(before) else math.nan
    return pd.Series(values, dtype=float)


def forgetting(acc: pd.DataFrame) -> float:
    """Average forgetting: mean over j < T of f_j."""
    values = forgetting_per_experience(acc)
    return float(values.mean(skipna=False)) if len(values) else math.nan


def bwt(acc: pd.DataFrame) -> float:
    """Backward transfer: mean over j < T of a[T, j] - a[j, j]."""
    a = accuracy_matrix(acc)
    t = _last(acc)
    js = [j for j in a.columns if j < t]
    if not js:
        return math.nan
    return float((a.loc[t, js] - _diagonal(a, js)).mean(skipna=False))


def fwt(acc: pd.DataFrame) -> float:
    """Forward transfer: mean over j >= 1 of a[j-1, j] - b[j]."""
    a = accuracy_matrix(acc)
    t = _last(acc)
    initial = acc[acc["train_exp"] == INITIAL].set_index("eval_exp")["accuracy"]
    js = list(range(1, t + 1))
    if not js or not _complete(a, t) or not set(js) <= set(initial.index):
        return math.nan
    return float(np.mean([a.loc[j - 1, j] - initial[j] for j in js]))


def plasticity(acc: pd.DataFrame) -> float:
    """mean over trained j of a[j, j] (how well each experience is learned when it arrives)."""
    a = accuracy_matrix(acc)
    return float(_diagonal(a, [j for j in a.columns if j <= _last(acc)]).mean(skipna=False))


def params_growth_ratio(exps: pd.DataFrame) -> float:
    """params_T / params_0: parameters after the last experience over those before training."""
    start = exps["params_total"].iloc[0] - exps["params_added"].iloc[0]
    return float(exps["params_total"].iloc[-1] / start)


def per_experience(exps: pd.DataFrame, column: str) -> float:
    """Mean growth of a cumulative column (params_added, modules_added) per trained experience."""
    return float(exps[column].iloc[-1] / len(exps))


def _numbers(exps: pd.DataFrame, column: str) -> pd.Series:
    """A column as floats; missing values (e.g. FLOPs not counted) become NaN."""
    return pd.to_numeric(exps[column], errors="coerce").astype(float)


def total(exps: pd.DataFrame, column: str) -> float:
    """Sum of a per-experience column; NaN if any experience lacks it."""
    values = _numbers(exps, column)
    return math.nan if values.isna().any() else float(values.sum())


def summarize_experiences(exps: pd.DataFrame) -> dict[str, float]:
    """Cost and expansion metrics from the experience records."""
    return {
        "params_growth_ratio": params_growth_ratio(exps),
        "params_added_per_experience": per_experience(exps, "params_added"),
        "modules_added_per_experience": per_experience(exps, "modules_added"),
        "final_params_total": float(exps["params_total"].iloc[-1]),
        "final_stored_bytes": float(exps["stored_bytes"].iloc[-1]),
        "total_train_flops": total(exps, "train_flops"),
        "inference_flops_per_sample": float(_numbers(exps, "inference_flops_per_sample")
                                            .iloc[-1]),
        "peak_memory_bytes": float(exps["peak_memory_bytes"].max()),
        "train_seconds": total(exps, "train_seconds"),
        "eval_seconds": total(exps, "eval_seconds"),
        # prompt methods: how often the right per-experience module was chosen, at the end
        "final_task_selection_accuracy": (float(_numbers(exps, "task_selection_accuracy")
                                                .iloc[-1])
                                          if "task_selection_accuracy" in exps else math.nan),
    }


def summarize(acc: pd.DataFrame, exps: pd.DataFrame | None = None) -> dict[str, float]:
    """The summary of a run: every accuracy-derived metric, and costs if ``exps`` is given."""
    costs = summarize_experiences(exps) if exps is not None and len(exps) else {}
    return {**_accuracy_summary(acc), **costs}


def _accuracy_summary(acc: pd.DataFrame) -> dict[str, float]:
    return {
        "final_accuracy": final_accuracy(acc),
        "final_stream_accuracy": final_stream_accuracy(acc),
        "final_task_accuracy": final_accuracy(acc, "task_accuracy"),
        "average_incremental_accuracy": average_incremental_accuracy(acc),
        "forgetting": forgetting(acc),
        "bwt": bwt(acc),
        "fwt": fwt(acc),
        "plasticity": plasticity(acc),
    }

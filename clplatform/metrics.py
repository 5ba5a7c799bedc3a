"""Derived metrics: pure functions of the accuracy records (``shared/specs/metrics.md``).

Notation: a[i, j] = accuracy on test experience j after training experience i; T = the last
trained experience; b[j] = accuracy of the initial model (row ``train_exp = -1``).
Every function takes the accuracy DataFrame (columns train_exp, eval_exp, accuracy,
n_samples, ...) and returns a float; NaN where the records cannot define the metric (e.g.
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


def final_accuracy(acc: pd.DataFrame) -> float:
    """A_T = mean over j <= T of a[T, j] (experiences weighted equally)."""
    a = accuracy_matrix(acc)
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


def average_incremental_accuracy(acc: pd.DataFrame) -> float:
    """mean over i <= T of A_i, with A_i = mean over j <= i of a[i, j]."""
    a = accuracy_matrix(acc)
    if not _complete(a, _last(acc)):
        return math.nan
    return float(np.mean([a.loc[i, [j for j in a.columns if j <= i]].mean() for i in a.index]))


def _diagonal(a: pd.DataFrame, js) -> pd.Series:
    return pd.Series({j: a.loc[j, j] if j in a.index else math.nan for j in js})


def forgetting(acc: pd.DataFrame) -> float:
    """mean over j < T of (max over j <= i < T of a[i, j]) - a[T, j] (Chaudhry et al.)."""
    a = accuracy_matrix(acc)
    t = _last(acc)
    values = []
    for j in [j for j in a.columns if j < t]:
        before = a.loc[[i for i in a.index if j <= i < t], j]
        values.append(before.max() - a.loc[t, j] if len(before) else math.nan)
    return float(np.mean(values)) if values else math.nan


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


def summarize(acc: pd.DataFrame) -> dict[str, float]:
    """The summary of a run: every accuracy-derived metric above."""
    return {
        "final_accuracy": final_accuracy(acc),
        "final_stream_accuracy": final_stream_accuracy(acc),
        "average_incremental_accuracy": average_incremental_accuracy(acc),
        "forgetting": forgetting(acc),
        "bwt": bwt(acc),
        "fwt": fwt(acc),
        "plasticity": plasticity(acc),
    }

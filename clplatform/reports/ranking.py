"""Measured ranking beside a published one, with Kendall's τ.

For the runs of a stream that maps to a column of SEMA's Table 1
(:func:`clplatform.reports.published.table1_column`: a paper benchmark run with the
papers' backbone, or a stream of the offline world that stands for one), each group's
(method's) mean final accuracy ± std over its runs (seeds) and its rank, beside its
published A_N and its rank among the groups that have one, and Kendall's τ-b between the
two orders over those groups (ties counted as tau-b counts them), with its p-value
(``scipy.stats.kendalltau``; scipy comes with scikit-learn).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

#: per run (runs table columns, :func:`clplatform.reports.collect.load_runs`): the title of
#: the column it is ranked in, and its strategy's published A_N there (fraction)
COLUMN = "table1_column"
COLUMN_FINAL = "table1_final_accuracy"
COLUMN_SOURCE = "table1_source"
#: marks a published value that comes from a transcription of the table, not the paper
TRANSCRIBED_MARK = "†"
MEASURED = "A_T (%)"
HEADERS = ("runs", MEASURED, "measured rank", "published A_N (%)", "published rank")


@dataclass
class Ranking:
    column: str            # the published column's title
    table: pd.DataFrame    # one row per group, best measured first
    tau: float | None      # Kendall's tau-b; None: fewer than two groups have both
    p_value: float | None
    methods: int           # the groups with a measured and a published value
    transcribed: str | None = None  # the source of the values marked TRANSCRIBED_MARK

    def summary(self) -> str:
        """One line: τ, the number of methods, the p-value (and what a mark means)."""
        line = self._tau_line()
        if self.transcribed:
            line += f" ({TRANSCRIBED_MARK} {self.transcribed})"
        return line

    def _tau_line(self) -> str:
        if self.tau is None:
            return (f"Kendall's τ: needs two methods with a published value "
                    f"({self.methods} here)")
        if math.isnan(self.tau):
            return f"Kendall's τ-b undefined over {self.methods} methods (one order is all ties)"
        p = "" if self.p_value is None or math.isnan(self.p_value) else \
            f", p = {self.p_value:.3f}"
        return f"Kendall's τ-b = {self.tau:.2f} over {self.methods} methods{p}"


def kendall_tau(measured, published) -> tuple[float, float]:
    """Kendall's tau-b between two sequences of scores (or ranks) and its two-sided
    p-value; identical orders give 1, reversed ones -1; nan where one is constant."""
    from scipy.stats import kendalltau
    result = kendalltau(list(measured), list(published))
    return float(result.statistic), float(result.pvalue)


def _ranks(values: pd.Series) -> pd.Series:
    """1 = the highest; ties share the best rank of their block ("min")."""
    return values.rank(ascending=False, method="min")


def rankings(runs: pd.DataFrame, group_by: str = "label") -> list[Ranking]:
    """The rankings of one stream's runs, one per published column they stand for (none
    when they map to no column)."""
    from .published import SEMA_TABLE1_TRANSCRIBED as transcribed
    if COLUMN not in runs.columns:
        return []
    found = []
    for column, mine in runs.dropna(subset=[COLUMN]).groupby(COLUMN, sort=True):
        accuracy = 100 * mine["final_accuracy"].astype(float)
        groups = mine.assign(_acc=accuracy).groupby(group_by, sort=True)
        frame = pd.DataFrame({
            "runs": groups.size(),
            "mean": groups["_acc"].mean(),
            "std": groups["_acc"].std(ddof=1),
            "published": groups[COLUMN_FINAL].first().astype(float) * 100,
            "source": (groups[COLUMN_SOURCE].first() if COLUMN_SOURCE in mine.columns
                       else None)})
        frame["measured rank"] = _ranks(frame["mean"])
        both = frame.dropna(subset=["published"])
        frame["published rank"] = _ranks(both["published"])
        tau = p_value = None
        if len(both) >= 2:
            tau, p_value = kendall_tau(both["mean"], both["published"])
        frame = frame.sort_values(["measured rank", "published rank"])
        marked = transcribed if (frame["source"] == transcribed).any() else None
        shown = pd.DataFrame({
            group_by: frame.index,
            "runs": frame["runs"].to_numpy(),
            MEASURED: [f"{m:.1f}" if math.isnan(s) else f"{m:.1f} ± {s:.1f}"
                       for m, s in zip(frame["mean"], frame["std"])],
            "measured rank": frame["measured rank"].astype(int).to_numpy(),
            "published A_N (%)": [
                "n/a" if math.isnan(v) else
                f"{v:.2f}" + (f" {TRANSCRIBED_MARK}" if source == transcribed else "")
                for v, source in zip(frame["published"], frame["source"])],
            "published rank": [str(int(v)) if not math.isnan(v) else "n/a"
                               for v in frame["published rank"]]})
        found.append(Ranking(str(column), shown, tau, p_value, len(both), marked))
    return found


def ranking_text(runs: pd.DataFrame, group_by: str = "label") -> str:
    """The rankings of one stream's runs as aligned text ('' when none)."""
    return "\n\n".join(f"ranking against {r.column}: {r.summary()}\n"
                       + r.table.to_string(index=False) for r in rankings(runs, group_by))

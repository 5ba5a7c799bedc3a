"""LFTL's section of the reports: accuracy against the labels used, round by round, and what
each target experience cost in labels and time. Drawn from the round records (the evaluator's,
for active strategies) and LFTL's experience records. Imports pandas and matplotlib only when
a report is drawn."""
from __future__ import annotations

from clplatform.contract import ReportItem, ReportSection, StrategyRecords


def labels_table(records: StrategyRecords):
    """Per group and target experience (mean over runs): labels queried, accuracy before
    adaptation (round 0) and after the last round (%), rounds and seconds per round."""
    import pandas as pd
    rounds = records.rounds
    first = rounds[rounds["round"] == 0].set_index(["run", "train_exp"])["accuracy"]
    last = rounds[rounds["round"] == rounds.groupby(["run", "train_exp"])["round"]
                  .transform("max")].set_index(["run", "train_exp"])["accuracy"]
    exps = records.experiences.set_index(["run", "train_exp"])
    table = pd.DataFrame({
        records.group_by: exps[records.group_by],
        "labels queried": exps["labels_queried"],
        "accuracy before (%)": 100 * first, "accuracy after (%)": 100 * last,
        "seconds per round": exps.get("lftl.seconds_per_round")}).dropna(
            subset=["accuracy before (%)"]).reset_index()
    return (table.drop(columns="run").groupby([records.group_by, "train_exp"], sort=True)
            .mean().round(2).reset_index().rename(columns={"train_exp": "target experience"}))


def _build(records: StrategyRecords) -> list[ReportItem]:
    if records.rounds is None or records.rounds.empty:
        return []
    from clplatform.reports.plots import accuracy_with_budget
    return [ReportItem("Accuracy on each target experience's test set after every "
                       "query-and-adapt round, against the labels used (0: the model before "
                       "adaptation).", figure=accuracy_with_budget(
                           records.rounds, records.group_by, records.colors)),
            ReportItem("Labels and accuracy per target experience (mean over runs).",
                       table=labels_table(records))]


SECTION = ReportSection("LFTL: accuracy against labels", _build)

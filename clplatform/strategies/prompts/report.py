"""The prompt methods' section of the reports (``prompt``, ``qprompt``, ``dualprompt``,
``l2p``, ``coda-prompt`` share it, on the same axes): how often the right prompt is chosen,
and what the prompts cost to store. Drawn from the experience records: the evaluator's
``task_selection_accuracy`` and each strategy's ``stored_bytes`` with its breakdown
(``<strategy>.<part>_bytes``). Imports pandas and matplotlib only when a report is drawn."""
from __future__ import annotations

from clplatform.contract import ReportItem, ReportSection, StrategyRecords


def storage_table(records: StrategyRecords):
    """Per group, after the last experience (mean over runs): stored KiB in all and per part
    (prompt, key, head ... as each strategy records them), and the task-selection accuracy
    (%) over all test experiences, where the strategy selects."""
    import pandas as pd
    frame = records.experiences
    last = frame[frame["train_exp"] == frame.groupby("run")["train_exp"].transform("max")]
    rows = []
    for _, record in last.iterrows():
        prefix = f"{record['strategy']}."
        row = {records.group_by: record[records.group_by],
               "stored KiB": record["stored_bytes"] / 1024}
        for column in frame.columns:
            if column.startswith(prefix) and column.endswith("_bytes") \
                    and pd.notna(record[column]):
                part = column[len(prefix):-len("_bytes")]
                row[f"{part} KiB"] = record[column] / 1024
        if "task_selection_accuracy" in record and pd.notna(record["task_selection_accuracy"]):
            row["right prompt (%)"] = 100 * record["task_selection_accuracy"]
        rows.append(row)
    return pd.DataFrame(rows).groupby(records.group_by, sort=True).mean().round(2).reset_index()


def _build(records: StrategyRecords) -> list[ReportItem]:
    if records.experiences.empty or "stored_bytes" not in records.experiences:
        return []
    from clplatform.reports.plots import per_experience_panels
    figure = per_experience_panels(
        records.experiences, records.group_by, records.colors, "Prompt selection and storage",
        "after training experience i",
        [("task_selection_accuracy", "right prompt chosen (%)", 100.0),
         ("stored_bytes", "stored (KiB)", 1 / 1024)])
    return [ReportItem("Left: after each experience, the share of the test images of the "
                       "experiences seen so far whose selected prompt (task) is their own "
                       "experience's (strategies that weight all prompts select none). Right: "
                       "bytes the strategy stores (prompts, keys, head), as it stores them "
                       "(quantized for qprompt).", figure=figure),
            ReportItem("Stored KiB by part and task-selection accuracy after the last "
                       "experience (mean over runs).", table=storage_table(records))]


SECTION = ReportSection("Prompt methods: selection and storage", _build)

"""The mergeable methods' section of the reports (the ``report`` trait, shared by
``linear-adapter``, ``lora``, ``comp-lora`` and ``consolidator``): inference cost merged
against unmerged per group, drawn from the experience records (``<strategy>.flops_ratio``,
``<strategy>.unmerged_flops_ratio``, ``<strategy>.merged``, ``<strategy>.merge_gap``,
``<strategy>.stored_factor_bytes``) and the evaluator's ``inference_flops_per_sample``.
Imports pandas and matplotlib only when a report is drawn."""
from __future__ import annotations

from clplatform.contract import ReportItem, ReportSection, StrategyRecords

FIELDS = ("merged", "flops_ratio", "unmerged_flops_ratio", "merge_gap", "stored_factor_bytes")


def cost_table(records: StrategyRecords):
    """Per group, after the last experience (mean over runs): inference FLOPs/sample as
    deployed (measured by the evaluator) and as it would be with the modules kept as side
    branches (deployed x the unmerged ratio), the ratios, the largest merge gap and the
    factor bytes that ship the adaptation apart from the backbone."""
    import pandas as pd
    rows = []
    for _, record in records.experiences.iterrows():
        name = record["strategy"]
        values = {f: record.get(f"{name}.{f}") for f in FIELDS}
        if values["flops_ratio"] is None or pd.isna(values["flops_ratio"]):
            continue
        rows.append({"group": record[records.group_by], "run": record["run"],
                     "train_exp": int(record["train_exp"]),
                     "deployed_flops": float(record["inference_flops_per_sample"]),
                     **{f: float(v) if v is not None else float("nan")
                        for f, v in values.items()}})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    last = frame[frame["train_exp"] == frame.groupby("run")["train_exp"].transform("max")]
    gap = frame.groupby("group")["merge_gap"].max()
    # the price of keeping the branches: the ratio of the last experience that trained
    unmerged = frame.dropna(subset=["unmerged_flops_ratio"]).groupby("group")[
        "unmerged_flops_ratio"].last()
    table = last.groupby("group").agg(
        merged=("merged", "mean"), deployed_flops=("deployed_flops", "mean"),
        flops_ratio=("flops_ratio", "mean"), stored_factor_bytes=("stored_factor_bytes",
                                                                  "mean"))
    table["unmerged_flops_ratio"] = unmerged
    table["unmerged_flops"] = table["deployed_flops"] / table["flops_ratio"] * unmerged
    table["max_merge_gap"] = gap
    return table.reset_index()


def _build(records: StrategyRecords) -> list[ReportItem]:
    if records.experiences.empty:
        return []
    table = cost_table(records)
    if table.empty:
        return []
    import matplotlib.pyplot as plt
    import numpy as np
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(table), 3.8), layout="constrained")
    x = np.arange(len(table))
    ax.bar(x - 0.2, table["unmerged_flops"] / 1e6, 0.4, color="#bbbbbb",
           label="modules kept as branches")
    ax.bar(x + 0.2, table["deployed_flops"] / 1e6, 0.4,
           color=[records.colors[g] for g in table["group"]], label="deployed (merged)")
    ax.set_xticks(x, [str(g) for g in table["group"]], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("inference MFLOPs per sample")
    ax.legend(fontsize=8)
    ax.set_title("Merged against unmerged inference cost")
    shown = table.rename(columns={"group": records.group_by}).round(
        {"deployed_flops": 0, "unmerged_flops": 0, "flops_ratio": 4,
         "unmerged_flops_ratio": 4})
    return [ReportItem("Inference FLOPs per sample after the last experience: as deployed "
                       "(the evaluator's count on the merged model, the backbone's exactly "
                       "when merged) and with the modules kept as side branches (the "
                       "unmerged/merged ratio measured on the last experience that trained).",
                       figure=fig),
            ReportItem("Cost per group (mean over runs): flops_ratio is deployed/backbone "
                       "(1 = zero extra cost), max_merge_gap the largest |merged - unmerged| "
                       "logit on the probe batch, stored_factor_bytes the fp16 factors that "
                       "ship the adaptation apart from the public backbone.", table=shown)]


SECTION = ReportSection("Mergeable adaptation: inference cost", _build)

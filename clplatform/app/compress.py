"""``clplat compress RUN_DIR``: structured pruning of a finished run's final model
(:mod:`clplatform.strategies.compress`), evaluated before and after on every seen test
experience and recorded as a child run ``RUN_DIR/compress/<method>-<ratio>/``.

The final model is the run's last checkpoint, kept by ``clplat run --keep-model``; it is
rebuilt exactly as ``--resume`` rebuilds a run (configuration, stream, strategy, weights).
Everything a user can get wrong is checked before anything is written, and the child run is
written into a temporary folder renamed into place when complete.
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import UserError
from ..options import build_options, options_dict

COMPRESS_DIR = "compress"
SUMMARY_FILE, STAGES_FILE, COSTS_FILE, WIDTHS_FILE = (
    "compression.json", "stages.csv", "costs.csv", "widths.csv")


def child_name(method: str, ratio: float) -> str:
    return f"{method}-{ratio:g}"


def make_options(values: Mapping[str, Any]):
    """Validated :class:`CompressOptions` from command-line strings or Python values."""
    from clplatform.strategies.compress import CompressOptions
    values = dict(values)
    if isinstance(values.get("targets"), str):
        values["targets"] = tuple(t.strip() for t in values["targets"].split(",") if t.strip())
    targets = values.pop("targets", None)
    opts = build_options(CompressOptions, values, "compress")
    if targets is not None:
        opts.targets = tuple(targets)
    opts.validate()
    return opts


def _prepare(run_dir: Path):
    """The finished run rebuilt with its final model loaded."""
    from .. import checkpoint
    from ..store import load_run
    from .runner import Prepared
    from .spec import resume_spec
    run = load_run(run_dir)
    if run.status != "complete":
        raise UserError(f"run {run_dir} is {run.status}: compress a complete run")
    if not (run_dir / checkpoint.CHECKPOINT_FILE).is_file():
        raise UserError(f"run {run_dir} has no final model: run it with --keep-model "
                        "(strategies that write checkpoints)")
    try:
        prepared = Prepared(resume_spec(run_dir), progress=False)
    except UserError as exc:
        raise UserError(f"cannot rebuild {run_dir}: {exc}") from None
    prepared.restore(run_dir)
    if prepared.start != len(prepared.benchmark.train_stream):
        raise UserError(f"the checkpoint of {run_dir} is not the final model")
    return run, prepared


def _training_data(prepared, kind: str):
    """(x, y) the compress step may use: the last experience's training data, the
    strategy's replay buffer, or every experience's (oracle). Images are held as uint8
    (:func:`~clplatform.data.experience_images`) and drawn anew at every read when the
    stream has a random training transform."""
    from clplatform.data import ExperienceImages, experience_images
    stream = list(prepared.benchmark.train_stream)
    if kind == "current":
        return experience_images(stream[-1].dataset)
    if kind == "all-seen":
        parts = [experience_images(e.dataset) for e in stream]
        return ExperienceImages.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])
    buffers = [p.storage_policy.buffer for p in prepared.strategy.plugins
               if hasattr(p, "storage_policy")]
    buffers = [b for b in buffers if len(b)]
    if not buffers:
        raise UserError(f"--data replay: strategy {prepared.config['strategy']['name']!r} "
                        "keeps no replay buffer; use --data current or all-seen")
    return experience_images(buffers[0])


def _measure(prepared, model, probe, stage: str, seen_exps: int) -> tuple[list, dict]:
    """Accuracy rows of the seen test experiences and the costs of ``model``."""
    from ..compute import inference_flops_per_sample, tensor_bytes
    from ..contract import hooks
    from ..evaluator import count_parameters, predict, scores
    ev, device = prepared.evaluator, prepared.settings.device
    logits, selected = predict(model, ev.test_x, ev.batch_size, device, ev.num_classes,
                               hooks(prepared.strategy).selected_experiences)
    rows = []
    for j, (start, end) in enumerate(ev.test_bounds[:seen_exps]):
        row = scores(logits[start:end], ev.test_y[start:end],
                     None if selected is None else selected[start:end], j)
        rows.append({"stage": stage, "train_exp": seen_exps - 1, "eval_exp": j, **row})
    params = count_parameters(model)
    costs = {"stage": stage,
             "inference_flops_per_sample": inference_flops_per_sample(model, probe, device),
             "params_total": params["params_total"],
             "params_trainable": params["params_trainable"],
             "stored_bytes": tensor_bytes(model)}
    return rows, costs


def compress_run(run_dir: str | os.PathLike, *, force: bool = False, **options: Any) -> Path:
    """Compress the final model of the finished run in ``run_dir`` (``options``: the fields
    of :class:`clplatform.strategies.compress.CompressOptions`: ``method``, ``ratio``,
    ``targets``, ``data``, ``loss``, ``steps``, ``lr``, ...); returns the child run's
    directory. ``force``: replace an existing child of the same method and ratio."""
    import pandas as pd

    from clplatform.strategies.compress import Data, compress
    from ..cache import write_text
    from ..store import (RUN_FILE, hardware, json_safe, load_run, versions, write_json,
                         write_table)
    run_dir = Path(run_dir)
    opts = make_options(options)
    load_run(run_dir)  # a clear error for a folder that is no run
    child = run_dir / COMPRESS_DIR / child_name(opts.method, opts.ratio)
    if child.exists() and not force:
        raise UserError(f"{child} exists already: pass --force to replace it")
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    run, prepared = _prepare(run_dir)
    strategy, device = prepared.strategy, prepared.settings.device
    model = strategy.model.to(device)
    stream = list(prepared.benchmark.train_stream)
    seen_exps = len(stream)
    x, y = _training_data(prepared, opts.data)
    seen = torch.zeros(prepared.info.num_classes, dtype=torch.bool)
    for experience in stream:
        seen[list(experience.classes_in_this_experience)] = True
    ev = prepared.evaluator
    last = ev.test_bounds[-1][0]
    flop_probe = ev.test_x[last:][:16].to(device)  # as the evaluator measures
    probe = ev.test_x[last:][:64].to(device)       # tokens per layer and the logit gap
    before_rows, before_costs = _measure(prepared, model, flop_probe, "before", seen_exps)
    outcome = compress(model, Data(x, y, seen), opts, probe,
                       model_flops=before_costs["inference_flops_per_sample"])
    after_rows, after_costs = _measure(prepared, model, flop_probe, "after", seen_exps)

    stages = pd.DataFrame(before_rows + after_rows)
    final = stages.groupby("stage")["accuracy"].mean()
    flops_before = before_costs["inference_flops_per_sample"]
    flops_after = after_costs["inference_flops_per_sample"]
    widths = pd.DataFrame({"layer": outcome.groups, "kind": outcome.kinds,
                           "before": outcome.widths_before, "after": outcome.widths_after})
    summary = {
        "parent": str(run_dir.resolve()), "parent_id": run.record.get("id", run_dir.name),
        "strategy": run.config["strategy"]["name"], "stream": run.config["stream"]["name"],
        **options_dict(opts), "continual": opts.data != "all-seen",
        "final_accuracy_before": float(final["before"]),
        "final_accuracy_after": float(final["after"]),
        "accuracy_kept": float(final["after"] / final["before"]) if final["before"] else None,
        "flops_before": flops_before, "flops_after": flops_after,
        "flops_ratio_requested": opts.ratio,
        "flops_ratio_achieved": flops_after / flops_before,
        "target_flops_before": outcome.target_flops_before,
        "target_flops_after": outcome.target_flops_after,
        "target_flops_ratio_achieved": outcome.target_flops_after / outcome.target_flops_before,
        "target_flops_budget": outcome.budget,
        "params_before": before_costs["params_total"], "params_after": after_costs["params_total"],
        "stored_bytes_before": before_costs["stored_bytes"],
        "stored_bytes_after": after_costs["stored_bytes"],
        "train_flops": outcome.train_flops, "train_seconds": outcome.train_seconds,
        "training_samples": len(x),
        "max_logit_gap_masked_vs_merged": outcome.logit_gap,
        "csgd_residual": outcome.residual,
        "resrep_rows_below_1e-5": outcome.rows_below, "resrep_masked": outcome.masked,
        **outcome.extras,
    }
    record = {"id": child.name, "kind": "compress", "parent": summary["parent"],
              "parent_id": summary["parent_id"], "status": "complete", "reason": None,
              "seed": opts.seed, "versions": versions(), "hardware": hardware(device),
              "started": started,
              "ended": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
              "command": " ".join(sys.argv), "host": platform.node()}

    parent = run_dir / COMPRESS_DIR
    parent.mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{child.name}-", dir=parent))
    try:
        write_table(staging / STAGES_FILE, stages)
        write_table(staging / COSTS_FILE, [before_costs, after_costs])
        write_table(staging / WIDTHS_FILE, widths)
        write_json(staging / SUMMARY_FILE, json_safe(summary))
        write_text(staging / "metrics.md", _markdown(summary, stages, widths,
                                                     [before_costs, after_costs]))
        write_json(staging / RUN_FILE, json_safe(record))
        if child.exists():  # --force
            shutil.rmtree(child)
        staging.rename(child)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return child


compress = compress_run  # clplatform.compress(RUN_DIR, method=..., ratio=...)


def _markdown(summary: dict, stages, widths, costs) -> str:
    import pandas as pd

    def table(frame: pd.DataFrame) -> str:
        cells = frame.astype(object).map(lambda v: f"{v:.4g}" if isinstance(v, float) else v)
        lines = ["| " + " | ".join(map(str, frame.columns)) + " |",
                 "|" + "---|" * len(frame.columns)]
        lines += ["| " + " | ".join(map(str, row)) + " |" for row in cells.values.tolist()]
        return "\n".join(lines)
    accuracy = stages.pivot(index="eval_exp", columns="stage", values="accuracy")
    keys = ["method", "ratio", "targets", "data", "loss", "steps", "final_accuracy_before",
            "final_accuracy_after", "flops_ratio_requested", "flops_ratio_achieved",
            "target_flops_ratio_achieved", "train_seconds", "train_flops",
            "max_logit_gap_masked_vs_merged", "csgd_residual", "resrep_rows_below_1e-5",
            "resrep_masked"]
    head = pd.DataFrame([(k, summary.get(k)) for k in keys], columns=["", "value"])
    return "\n\n".join([
        f"# Compression of {summary['parent_id']}", table(head),
        "## a_{T,j} before and after", table(accuracy.reset_index()),
        "## Costs", table(pd.DataFrame(costs)), "## Widths per layer", table(widths)]) + "\n"

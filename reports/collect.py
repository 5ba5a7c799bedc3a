"""Gathering runs for a report: find run directories, load them, merge their records."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from clplatform.errors import UserError
from clplatform.metrics import summarize
from clplatform.store import Run, find_run_dirs, load_run


@dataclass
class RunSet:
    """Runs and their merged tables (one row per run / accuracy record / experience)."""
    runs: list[Run]
    skipped: list[tuple[Path, str]]
    table: pd.DataFrame        # per run: identity, config and summary metrics
    accuracy: pd.DataFrame     # accuracy records of all runs, with run identity columns
    experiences: pd.DataFrame  # experience records of all runs, with run identity columns
    rounds: pd.DataFrame = None  # per-round records of active runs (empty if none)


IDENTITY = ["run", "strategy", "stream", "backbone", "seed"]


def _identity(run: Run) -> dict:
    cfg = run.config
    return {"run": run.path.name, "strategy": cfg["strategy"]["name"],
            "stream": cfg["stream"]["name"], "backbone": cfg["backbone"]["name"],
            "seed": cfg["train"]["seed"]}


def _label(run: Run) -> str:
    """Strategy plus the hyper-parameters that differ from the defaults, as a group label."""
    from clplatform.options import options_dict
    from clplatform.registry import STRATEGIES
    cfg = dict(run.config["strategy"])
    name = cfg.pop("name")
    try:
        defaults = options_dict(STRATEGIES.get(name).make_options({}))
    except UserError:  # a strategy this installation does not know: show all options
        defaults = {}
    changed = {k: v for k, v in cfg.items() if defaults.get(k, object()) != v}
    return name + "".join(f" {k}={v}" for k, v in sorted(changed.items()))


def load_runs(paths: list[str | os.PathLike], include_incomplete: bool = False) -> RunSet:
    """Load every run under ``paths``; runs that did not complete are skipped unless asked."""
    runs, skipped = [], []
    for path in find_run_dirs(paths):
        run = load_run(path)
        if run.status != "complete" and not include_incomplete:
            skipped.append((path, run.status))
            continue
        if run.accuracy.empty:
            skipped.append((path, "no records"))
            continue
        for frame, columns, name in ((run.accuracy, ("train_exp", "eval_exp", "accuracy"),
                                      "accuracy.csv"),
                                     (run.experiences, ("train_exp", "params_total"),
                                      "experiences.csv")):
            missing = [c for c in columns if c not in frame.columns]
            if missing:
                raise UserError(f"corrupt records file {path / name}: missing column "
                                f"{missing[0]!r}")
        runs.append(run)
    if not runs:
        detail = f" ({len(skipped)} incomplete skipped; see --include-incomplete)" \
            if skipped else ""
        raise UserError(f"no complete run to report{detail}")
    rows, accuracy, experiences, rounds = [], [], [], []
    for run in runs:
        ident = _identity(run)
        ident["label"] = _label(run)
        summary = summarize(run.accuracy, run.experiences if not run.experiences.empty
                            else None)
        summary["wall_seconds"] = run.summary.get("wall_seconds")
        rows.append({**ident, "status": run.status, **summary})
        accuracy.append(run.accuracy.assign(**ident))
        if not run.experiences.empty:
            experiences.append(run.experiences.assign(**ident))
        if run.rounds is not None and not run.rounds.empty:
            rounds.append(run.rounds.assign(**ident))

    def merged(frames):
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return RunSet(runs, skipped, pd.DataFrame(rows), merged(accuracy), merged(experiences),
                  merged(rounds))

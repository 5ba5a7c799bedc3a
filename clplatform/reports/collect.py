"""Gathering runs for a report: find run directories, load them, merge their records."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

# resolved settings that do not change a run's results: where it went, on which device, how
# its costs were counted, and what follows from the seed (the stream's seed, class order)
NO_EFFECT = ("train.seed", "train.out", "train.device", "train.device_requested",
             "train.eval_batch_size", "train.flops", "train.keep_model", "stream.name", "stream.seed",
             "stream.classes", "stream.domains")
SHORT_NAMES = {"train.epochs": "epochs", "train.batch_size": "batch_size", "train.lr": "lr",
               "backbone.name": "backbone"}


def settings(config: dict) -> dict[str, Any]:
    """The stream, backbone and training settings of a resolved configuration that can
    change results, flat (``epochs``, ``stream.experiences``, ``backbone.pretrained``...)
    and as text (a table column keeps its values as written); the strategy's own
    hyper-parameters are in the label. Training settings the strategy does not read
    (registered ``unused_train``: SEMA's own epochs, batch size and learning rate) are left
    out: they change nothing."""
    flat = {}
    unused = _unused_train(config["strategy"]["name"])
    for table in ("stream", "backbone", "train"):
        for key, value in config[table].items():
            name = f"{table}.{key}"
            if name not in NO_EFFECT and not (table == "train" and key in unused):
                flat[SHORT_NAMES.get(name, name)] = (
                    json.dumps(value) if isinstance(value, (list, dict)) else str(value))
    return flat


def _unused_train(strategy: str) -> tuple[str, ...]:
    """The training settings ``strategy`` does not read (none for one this installation
    does not know: then every setting is shown)."""
    from clplatform.registry import STRATEGIES
    try:
        return STRATEGIES.get(strategy).traits.unused_train
    except UserError:
        return ()


def is_setting(column: str) -> bool:
    """A column of the runs table that holds one of :func:`settings`."""
    return column in SHORT_NAMES.values() or column.startswith(("stream.", "backbone.",
                                                                 "train."))


def differing(values: list[dict[str, Any]]) -> list[str]:
    """The keys with more than one value among the dicts of ``values`` that hold them (a
    dict without the key, e.g. a strategy that does not read that setting, differs from
    none)."""
    keys = list(dict.fromkeys(k for v in values for k in v))
    return [k for k in keys if len({repr(v[k]) for v in values if k in v}) > 1]


def _identity(run: Run) -> dict:
    cfg = run.config
    return {"run": run.path.name, "strategy": cfg["strategy"]["name"],
            "stream": cfg["stream"]["name"], "backbone": cfg["backbone"]["name"],
            "seed": cfg["train"]["seed"]}


def _published(run: Run) -> dict[str, Any]:
    """The published final accuracy of the run's strategy in its setting, with its source
    (:mod:`clplatform.reports.published`); None where nothing was published. And the
    published column the run is ranked in (:mod:`clplatform.reports.ranking`) with its
    strategy's A_N there: its own setting's, or the benchmark's its stream stands for."""
    from .published import published_in, table1_column
    from .ranking import COLUMN, COLUMN_FINAL, COLUMN_SOURCE
    strategy = run.config["strategy"]["name"]
    column = table1_column(run.config)
    row = published_in(column, strategy) if column else None
    exact = row if column and not column.stand_in else None
    return {"published_final_accuracy": exact.final_accuracy / 100 if exact else None,
            "published_source": exact.source if exact else None,
            COLUMN: column.title if column else None,
            COLUMN_FINAL: row.final_accuracy / 100 if row else None,
            COLUMN_SOURCE: row.source if row else None}


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


def check_groups(table: pd.DataFrame, group_by: str) -> None:
    """Refuse to average runs of different streams (options, experience counts) in one row:
    possible only when ``--group-by`` is coarser than the label."""
    stream_settings = [c for c in table.columns if c.startswith("stream.")]
    for (stream, group), runs in table.groupby(["stream", group_by], sort=True):
        for column in stream_settings:
            values = runs[column].dropna().unique()
            if len(values) > 1:
                shown = ", ".join(str(v) for v in sorted(values, key=str))
                raise UserError(
                    f"runs of {group_by} {group!r} on stream {stream!r} differ in {column} "
                    f"({shown}): they cannot be averaged; use --group-by label")


def load_runs(paths: list[str | os.PathLike], include_incomplete: bool = False) -> RunSet:
    """Load every run under ``paths`` (each checked by :func:`clplatform.store.load_run`: a
    malformed one is an error naming the file); runs that did not complete are skipped
    unless asked."""
    runs, skipped = [], []
    for path in find_run_dirs(paths):
        run = load_run(path)
        if run.status != "complete" and not include_incomplete:
            skipped.append((path, run.status))
            continue
        if run.accuracy.empty:
            skipped.append((path, "no records"))
            continue
        runs.append(run)
    if not runs:
        detail = f" ({len(skipped)} incomplete skipped; see --include-incomplete)" \
            if skipped else ""
        raise UserError(f"no complete run to report{detail}")
    # runs of one stream that differ in a setting are told apart by it: the setting is a
    # column of every table and part of the label, so runs are averaged only over seeds
    configured = [settings(run.config) for run in runs]
    streams = [run.config["stream"]["name"] for run in runs]
    varying = {stream: differing([c for c, s in zip(configured, streams) if s == stream])
               for stream in sorted(set(streams))}
    columns = list(dict.fromkeys(k for keys in varying.values() for k in keys))
    rows, accuracy, experiences, rounds = [], [], [], []
    for run, setting, stream in zip(runs, configured, streams):
        ident = _identity(run)
        ident.update({k: setting.get(k) for k in columns})
        ident["label"] = _label(run) + "".join(f" {k}={setting[k]}"
                                               for k in varying[stream] if k in setting)
        summary = summarize(run.accuracy, run.experiences if not run.experiences.empty
                            else None)
        summary["wall_seconds"] = run.summary.get("wall_seconds")
        rows.append({**ident, "status": run.status, **summary, **_published(run)})
        accuracy.append(run.accuracy.assign(**ident))
        if not run.experiences.empty:
            experiences.append(run.experiences.assign(**ident))
        if run.rounds is not None and not run.rounds.empty:
            rounds.append(run.rounds.assign(**ident))

    def merged(frames):
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return RunSet(runs, skipped, pd.DataFrame(rows), merged(accuracy), merged(experiences),
                  merged(rounds))

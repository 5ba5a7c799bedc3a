"""What the files of a run directory must hold: one schema per file, checked in one place.

:func:`clplatform.store.load_run` reads every file of a run directory through
:func:`check_json` / :func:`check_table`, so reports, ``clplat runs`` and ``--resume`` see
either a well-formed run or one :class:`~clplatform.errors.UserError` naming the file and the
problem (a record edited by hand, a file cut short by a full disk, a copy gone wrong): never
a traceback, never NaN metrics computed from half a table.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import UserError

STATUSES = ("running", "complete", "interrupted", "failed")
PID_MAX = 2 ** 22  # the largest process id Linux can hand out (pid_max's ceiling)


# ---------------------------------------------------------------- JSON files
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and not (
        isinstance(value, float) and math.isinf(value))


def _check_fields(data: dict, fields: dict[str, tuple], where: str = "") -> str | None:
    """``fields``: key -> (check, what it must be, required); the first problem, or None."""
    for key, (check, what, required) in fields.items():
        if key not in data:
            if required:
                return f"missing {where}{key!r}"
            continue
        if not check(data[key]):
            return f"{where}{key!r} must be {what}, got {data[key]!r}"
    return None


def _optional(check):
    return lambda v: v is None or check(v)


def _text(v):
    return isinstance(v, str)


def _name(v):
    return isinstance(v, str) and bool(v.strip())


RUN_FIELDS = {
    "status": (lambda v: v in STATUSES, f"one of {', '.join(STATUSES)}", True),
    "reason": (_optional(_text), "text or null", False),
    "seed": (_optional(_is_int), "an integer", False),
    "pid": (_optional(lambda v: _is_int(v) and 0 < v <= PID_MAX),
            f"a process id (1 to {PID_MAX})", False),
    "host": (_optional(_text), "text", False),
    "started": (_optional(_text), "a time stamp", False),
    "ended": (_optional(_text), "a time stamp", False),
    "command": (_optional(_text), "text", False),
    "versions": (_optional(lambda v: isinstance(v, dict)
                           and all(isinstance(x, str) for x in v.values())),
                 "a table of version strings", False),
}

CONFIG_TABLES = {  # table -> its required fields
    "strategy": {"name": (_name, "a name", True)},
    "stream": {"name": (_name, "a name", True),
               "experiences_in_stream": (lambda v: _is_int(v) and v >= 1,
                                         "a positive integer", True)},
    "backbone": {"name": (_name, "a name", True)},
    "train": {"seed": (lambda v: _is_int(v) and v >= 0, "an integer >= 0", True),
              "epochs": (lambda v: _is_int(v) and v >= 0, "an integer >= 0", True),
              "batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1", True),
              "lr": (lambda v: _is_number(v) and v >= 0, "a number >= 0", True)},
}


def _config_problem(data: dict) -> str | None:
    for table, fields in CONFIG_TABLES.items():
        if table not in data:
            return f"missing table {table!r}"
        if not isinstance(data[table], dict):
            return f"{table!r} must be a table ({{...}}), got {data[table]!r}"
        problem = _check_fields(data[table], fields, f"{table}.")
        if problem:
            return problem
    return None


def _summary_problem(data: dict) -> str | None:
    for key, value in data.items():
        if not (value is None or _is_number(value)):
            return f"{key!r} must be a number or null, got {value!r}"
    return None


JSON_CHECKS = {
    "run.json": lambda data: _check_fields(data, RUN_FIELDS),
    "config.json": _config_problem,
    "summary.json": _summary_problem,
}


def check_json(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` read from ``path``, if it fits the schema of that file name."""
    check = JSON_CHECKS.get(Path(path).name)
    problem = check(data) if check else None
    if problem:
        raise UserError(f"corrupt file {path}: {problem}")
    return data


# ---------------------------------------------------------------- CSV tables
@dataclass(frozen=True)
class TableSchema:
    """Columns a records table must have (``required``), the kind of every known column,
    the columns that may be empty (NaN), the value ranges and the key (one row per key).
    Unknown columns (a strategy's ``<strategy>.<field>``) are not checked."""
    required: tuple[str, ...]
    integers: tuple[str, ...] = ()
    numbers: tuple[str, ...] = ()
    booleans: tuple[str, ...] = ()
    nullable: tuple[str, ...] = ()
    ranges: tuple[tuple[str, float, float], ...] = ()
    key: tuple[str, ...] = ()


FRACTIONS = ("accuracy", "class_mean_accuracy", "task_accuracy", "task_selection_accuracy")

TABLES = {
    "accuracy.csv": TableSchema(
        required=("train_exp", "eval_exp", "accuracy", "class_mean_accuracy", "n_samples"),
        integers=("train_exp", "eval_exp", "n_samples"), numbers=(*FRACTIONS, "loss"),
        booleans=("seen",), nullable=("loss", "task_selection_accuracy"),
        ranges=(("train_exp", -1, math.inf), ("eval_exp", 0, math.inf),
                ("n_samples", 1, math.inf), ("loss", 0, math.inf),
                *((c, 0, 1) for c in FRACTIONS)),
        key=("train_exp", "eval_exp")),
    "experiences.csv": TableSchema(
        required=("train_exp", "params_total", "params_added"),
        integers=("train_exp", "params_total", "params_trainable", "params_frozen",
                  "params_added", "modules_added", "experience_size"),
        numbers=("train_seconds", "eval_seconds", "train_flops", "inference_flops_per_sample",
                 "peak_memory_bytes", "stored_bytes", "labels_queried",
                 "task_selection_accuracy"),
        nullable=("train_flops", "inference_flops_per_sample", "peak_memory_bytes",
                  "task_selection_accuracy"),
        ranges=(("train_exp", 0, math.inf), ("params_total", 0, math.inf),
                ("train_seconds", 0, math.inf), ("eval_seconds", 0, math.inf),
                ("train_flops", 0, math.inf), ("task_selection_accuracy", 0, 1)),
        key=("train_exp",)),
    "rounds.csv": TableSchema(
        required=("train_exp", "round", "labels_used", "accuracy"),
        integers=("train_exp", "round", "labels_used"),
        numbers=("accuracy", "class_mean_accuracy"),
        ranges=(("train_exp", 0, math.inf), ("round", 0, math.inf),
                ("labels_used", 0, math.inf), ("accuracy", 0, 1),
                ("class_mean_accuracy", 0, 1)),
        key=("train_exp", "round")),
}

_BOOLEANS = {True: True, False: False, "True": True, "False": False, "true": True,
             "false": False}


def _table_problem(frame: pd.DataFrame, schema: TableSchema) -> tuple[str | None, pd.DataFrame]:
    missing = [c for c in schema.required if c not in frame.columns]
    if missing:
        return f"missing column {missing[0]!r}", frame
    frame = frame.copy()
    line = lambda i: f"line {i + 2}"  # noqa: E731  (1-based, after the header)
    for column in (c for c in frame.columns if c in
                   (*schema.integers, *schema.numbers, *schema.booleans)):
        values = frame[column]
        empty = values.isna()
        if empty.any() and column not in schema.nullable:
            return f"{line(int(empty.to_numpy().argmax()))}: no value in column {column!r}", frame
        if column in schema.booleans:
            bad = ~values.isin(list(_BOOLEANS)) & ~empty
            if bad.any():
                i = int(bad.to_numpy().argmax())
                return f"{line(i)}: {values.iloc[i]!r} in column {column!r} is not " \
                       f"True/False", frame
            frame[column] = values.map(_BOOLEANS)
            continue
        numbers = pd.to_numeric(values, errors="coerce")
        bad = numbers.isna() & ~empty
        if column in schema.integers:
            bad |= ~empty & numbers.notna() & (numbers % 1 != 0)
        if bad.any():
            i = int(bad.to_numpy().argmax())
            kind = "an integer" if column in schema.integers else "a number"
            return f"{line(i)}: {values.iloc[i]!r} in column {column!r} is not {kind}", frame
        frame[column] = numbers.astype("int64") if column in schema.integers and \
            not empty.any() else numbers
    for column, low, high in schema.ranges:
        if column in frame.columns:
            values = frame[column]
            bad = values.notna() & ((values < low) | (values > high))
            if bad.any():
                i = int(bad.to_numpy().argmax())
                return (f"{line(i)}: {values.iloc[i]!r} in column {column!r} is outside "
                        f"[{low:g}, {high:g}]"), frame
    if schema.key:
        repeated = frame.duplicated(list(schema.key))
        if repeated.any():
            i = int(repeated.to_numpy().argmax())
            what = ", ".join(f"{c}={frame[c].iloc[i]}" for c in schema.key)
            return f"{line(i)}: a second row for {what}", frame
    return None, frame


def _accuracy_matrix_problem(frame: pd.DataFrame) -> str | None:
    """Every evaluation covers the same test experiences (a table cut short does not)."""
    tested = frame.groupby("train_exp")["eval_exp"].apply(frozenset)
    full = frozenset().union(*tested) if len(tested) else frozenset()
    for train_exp, seen in tested.items():
        if seen != full:
            absent = min(full - seen)
            return (f"no row for train_exp={train_exp}, eval_exp={absent} (every evaluation "
                    f"must cover test experiences {min(full)}..{max(full)})")
    return None


def check_table(path: Path, text: str) -> pd.DataFrame:
    """The records table in ``text`` (the content of ``path``), if it fits its schema."""
    import io
    path = Path(path)
    if text and not text.endswith("\n"):  # written by pandas: a missing end is a cut
        raise UserError(f"corrupt records file {path}: truncated (the last line is "
                        f"incomplete)")
    try:
        frame = pd.read_csv(io.StringIO(text))
    except (ValueError, pd.errors.ParserError) as exc:
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise UserError(f"corrupt records file {path}: {message}") from None
    schema = TABLES.get(path.name)
    if schema is None:
        return frame
    problem, frame = _table_problem(frame, schema)
    if problem is None and path.name == "accuracy.csv":
        problem = _accuracy_matrix_problem(frame)
    if problem:
        raise UserError(f"corrupt records file {path}: {problem}")
    return frame


__all__ = ["check_json", "check_table", "TableSchema", "TABLES", "STATUSES", "PID_MAX"]

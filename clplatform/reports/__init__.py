"""Reports built only from the records of runs: terminal tables, a self-contained HTML file
with figures, and CSV/Parquet exports of the merged tables.

``build_report(paths, out)`` is what ``clplat report``/``clplat compare`` and ``clplat run``
call.
"""
from __future__ import annotations

import os
from pathlib import Path

from clplatform.errors import UserError

from .collect import RunSet, check_groups, find_run_dirs, load_runs
from .tables import comparison_table, comparison_text, run_summary_text

GROUP_BY = ("label", "strategy", "backbone", "seed")
EXPORT_FORMATS = ("csv", "parquet")


def check_export_format(fmt: str) -> None:
    """Refuse an export format that cannot be written, before anything is written."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"invalid --export-format {fmt!r}: choose from "
                        f"{', '.join(EXPORT_FORMATS)}")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserError("--export-format parquet needs pyarrow (pip install pyarrow)") \
                from None


def export_tables(runs: RunSet, folder: str | Path, fmt: str = "csv") -> list[Path]:
    """Write the merged tables (runs, accuracy, experiences, and rounds when active runs
    have them) into ``folder``."""
    from clplatform.cache import atomic_path
    check_export_format(fmt)
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create export folder {folder}: {exc.strerror}") from None
    written = []
    tables = [("runs", runs.table), ("accuracy", runs.accuracy),
              ("experiences", runs.experiences)]
    if runs.rounds is not None and not runs.rounds.empty:
        tables.append(("rounds", runs.rounds))
    for name, frame in tables:
        path = folder / f"{name}.{fmt}"
        with atomic_path(path) as tmp:
            if fmt == "csv":
                frame.to_csv(tmp, index=False)
            else:
                frame.to_parquet(tmp, index=False)
        written.append(path)
    return written


def check_export_folder(folder: str | Path) -> None:
    """Refuse an export folder that cannot be made or written, before anything is written:
    it must be a writable folder, or its nearest existing parent must be one."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot create export folder {folder}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot create export folder {folder}: {existing} is not writable")


def build_report(paths, out: str | Path, title: str | None = None,
                 group_by: str = "label", include_incomplete: bool = False) -> tuple[RunSet, Path]:
    """Load the runs under ``paths`` and write the HTML report to ``out``; ``title``
    defaults to :func:`reports.html.report_title` (a run's own report keeps its title)."""
    from .html import write_report
    if group_by not in GROUP_BY:
        raise UserError(f"invalid --group-by {group_by!r}: choose from {', '.join(GROUP_BY)}")
    runs = load_runs(list(paths), include_incomplete=include_incomplete)
    check_groups(runs.table, group_by)
    try:
        path = write_report(runs, out, title, group_by)
    except OSError as exc:
        raise UserError(f"cannot write report {out}: {exc.strerror}") from None
    return runs, path


__all__ = ["RunSet", "build_report", "check_export_folder", "check_export_format",
           "comparison_table", "comparison_text", "export_tables", "find_run_dirs", "load_runs",
           "run_summary_text", "GROUP_BY", "EXPORT_FORMATS"]

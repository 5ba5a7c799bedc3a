"""Reports built only from the records of runs: terminal tables, a self-contained HTML file
with figures, and exports (:mod:`.export`: the merged and comparison tables as CSV/Parquet,
the comparison table as LaTeX or Markdown).

``build_report(paths, out)`` is what ``clplat report``/``clplat compare`` and ``clplat run``
call.
"""
from __future__ import annotations

import os
from pathlib import Path

from clplatform.errors import UserError

from .collect import RunSet, check_groups, find_run_dirs, load_runs
from .export import EXPORT_FORMATS, check_export_format, export_tables
from .tables import comparison_table, comparison_text, run_summary_text

GROUP_BY = ("label", "strategy", "backbone", "seed")


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

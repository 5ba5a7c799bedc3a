"""Reports built from the records of runs: tables now; plots and HTML comparisons next."""
from .tables import run_summary_text

__all__ = ["run_summary_text"]

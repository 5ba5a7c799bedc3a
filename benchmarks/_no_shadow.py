"""Imported first by every benchmark script. ``python benchmarks/X.py`` puts this folder first
on ``sys.path``, where ``benchmarks/strategies.py`` would hide the ``strategies`` package."""
import sys
from pathlib import Path

_HERE = Path(__file__).parent.resolve()
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

"""Strategies: each registers a builder under a name (``@register_strategy``).

See :mod:`strategies.base` for what a builder receives and returns.
"""
from clplatform.registry import lazy_exports

from . import baselines, lftl, prompts, sema, simplecil  # noqa: F401  (registration)

__getattr__ = lazy_exports(__name__, {"StrategyContext": ".base", "TrainSettings": ".base"})

__all__ = ["StrategyContext", "TrainSettings"]

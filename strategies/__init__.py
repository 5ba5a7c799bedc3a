"""Strategies: each registers a builder under a name (``@register_strategy``).

See :mod:`strategies.base` for what a builder receives and returns.
"""
from . import baselines, lftl, prompts, sema, simplecil  # noqa: F401  (registration)
from .base import StrategyContext, TrainSettings

__all__ = ["StrategyContext", "TrainSettings"]

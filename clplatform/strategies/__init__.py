"""Strategies: each registers a builder under a name (``@register_strategy``).

A new strategy is one class deriving from :class:`Strategy` (``clplatform.Strategy``); see
:mod:`clplatform.strategies.base` and :mod:`clplatform.contract`.
"""
from clplatform.registry import lazy_exports

from . import (baselines, coda, inflora, l2p, lftl, prompts, sema,  # noqa: F401
               simplecil)  # (registration)
from . import peft, ptm, rmm  # noqa: F401  (registration)

# the context needs neither torch nor Avalanche; Strategy (Avalanche's template) loads them
__getattr__ = lazy_exports(__name__, {"Strategy": ".base",
                                      "StrategyContext": "clplatform.contract",
                                      "TrainSettings": "clplatform.contract"})

__all__ = ["Strategy", "StrategyContext", "TrainSettings"]

"""The public factories: build a stream, a backbone or a strategy from exactly what the
command line accepts, by the code a run uses.

- :func:`create_stream`: a registered name, ``avalanche:<Benchmark>``, ``file.py:function``
  or ``package.module:function``, or a benchmark object (``from_arrays(x, y)``);
- :func:`create_backbone`: a registered name or ``timm:<model-name>``;
- :func:`create_strategy`: a registered name, built on a
  :class:`clplatform.contract.StrategyContext` and checked against the strategy contract.
"""
from __future__ import annotations

from typing import Any

from ..contract import check_strategy
from ..registry import BACKBONES, STRATEGIES, Entry
from .spec import DEFAULT_SEED


def create_stream(stream: Any, **options: Any):
    """The Avalanche benchmark of ``stream`` with validated ``options``; an unset ``seed``
    is the default run seed, as in a run without ``--seed``."""
    from clplatform.streams import StreamSource
    return StreamSource(stream, options).build(DEFAULT_SEED)


def create_backbone(name: str, **options: Any):
    """Backbone ``name`` (a :class:`clplatform.backbones.Backbone`)."""
    entry, values = BACKBONES.resolve(name, options)
    return entry.builder(entry.make_options(values, f"backbone {name!r}"))


def create_strategy(name: str, context: Any, **hparams: Any):
    """Strategy ``name`` built on ``context`` (a :class:`clplatform.contract.StrategyContext`)
    with validated hyper-parameters ``hparams``."""
    entry = STRATEGIES.get(name)
    return build_strategy(entry, context, entry.make_options(hparams, f"strategy {name!r}"))


def build_strategy(entry: Entry, context: Any, hparams: Any, what: str | None = None):
    """What ``entry``'s builder returns for ``context`` and validated ``hparams``, refused
    before anything is trained when it cannot fit in memory, and checked against the
    strategy contract (:func:`clplatform.contract.check_strategy`)."""
    from ..options import build_within_memory
    built = build_within_memory(entry.builder, context, hparams,
                                what or f"strategy {entry.name!r}")
    return check_strategy(built, entry.name)


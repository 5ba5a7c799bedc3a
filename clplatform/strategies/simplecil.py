"""SimpleCIL (Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained Models", 2023).

No training: the frozen backbone embeds each new class's training images and the class
prototype (mean embedding) replaces the classifier weight; prediction is the prototype with
the highest cosine similarity. Its accuracy measures how well the backbone transfers.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from clplatform.registry import lazy_exports, register_strategy

if TYPE_CHECKING:
    from .base import StrategyContext

__getattr__ = lazy_exports(__name__, {"PrototypeHead": ".prototype_head",
                                     "SimpleCIL": ".prototype_head"})


@register_strategy("simplecil", train_defaults={"epochs": 1, "batch_size": 128},
                   unused_train=("epochs", "lr"), resumable=True,
                   help="class prototypes on frozen features, cosine classifier, no training")
def simplecil(ctx: StrategyContext, opts: None):
    from .prototype_head import SimpleCIL
    return SimpleCIL(ctx, opts)

"""SimpleCIL's pieces (see :mod:`clplatform.strategies.simplecil`): the prototype head, also
SEMA's ``head=prototype``, and the strategy whose training accumulates prototypes."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clplatform.backbones import ClassifierModel
from clplatform.evaluator import MASK_VALUE

from .base import Strategy, StrategyContext


class PrototypeHead(nn.Module):
    """Cosine similarity to per-class mean features; classes never seen are masked."""

    def __init__(self, num_features: int, num_classes: int):
        super().__init__()
        self.register_buffer("sums", torch.zeros(num_classes, num_features))
        self.register_buffer("counts", torch.zeros(num_classes))

    @torch.no_grad()
    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.sums.index_add_(0, labels, features.to(self.sums.dtype))
        self.counts.index_add_(0, labels, torch.ones_like(labels, dtype=self.counts.dtype))

    @property
    def prototypes(self) -> torch.Tensor:
        return self.sums / self.counts.clamp(min=1).unsqueeze(1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = F.normalize(features, dim=1) @ F.normalize(self.prototypes, dim=1).T
        return logits.masked_fill(self.counts == 0, MASK_VALUE)


class SimpleCIL(Strategy):
    """Frozen backbone + :class:`PrototypeHead`: 'training' is one pass over the experience
    that accumulates prototypes."""

    def __init__(self, context: StrategyContext, options: None = None):
        model = ClassifierModel(context.backbone, PrototypeHead(
            context.backbone.num_features, context.info.num_classes)).freeze_backbone()
        # the optimizer never steps; Avalanche's template requires one
        super().__init__(context, options, model=model,
                         optimizer=torch.optim.SGD(model.parameters(), lr=0.0))

    def train_dataset_adaptation(self, **kwargs):
        """The prototype pass reads the experience with the eval transform, as the official
        code (RevisitingCIL ``models/simplecil.py``: ``train_dataset_for_protonet`` is the
        training split with ``mode="test"``): deterministic, no augmentation."""
        super().train_dataset_adaptation(**kwargs)
        self.adapted_dataset = self.adapted_dataset.eval()

    def _train_exp(self, experience, eval_streams=None, **kwargs):
        self.model.eval()
        with torch.inference_mode():
            for self.mbatch in self.dataloader:
                self._unpack_minibatch()
                features = self.model.forward_features(self.mb_x)
                self.model.head.add(features, self.mb_y)

    def experience_extras(self) -> dict:
        head = self.model.head
        seen = int((head.counts > 0).sum())
        # what must be kept: one prototype (and its count) per class seen so far
        return {"stored_bytes": seen * (head.sums.shape[1] + 1) * head.sums.element_size(),
                "classes_seen": seen}

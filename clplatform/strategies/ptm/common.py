"""What APER, EASE and RanPAC's strategies share: the embedded tokens of an experience cached
once within the ``cache_gib`` budget, else recomputed when read (the patch embedding is
frozen and the experience's images are read once, so this is exact),
adapter training with a temporary cosine head, and features computed under no_grad in eval
mode (the test transform: the stream's images as they are)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from clplatform.models import tome

from ..base import Strategy, TensorBatches
from ..vit import frozen_rows, map_batches
from .config import AdapterTraining
from .model import AdapterViT, CosineClassifier


def epoch_cosine(optimizer: torch.optim.Optimizer, epochs: int,
                 steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """PyTorch's ``CosineAnnealingLR(T_max=epochs, eta_min=0)`` stepped once per epoch (as
    the official code steps it), expressed per iteration for ``Strategy.fit_tensors``: the
    learning rate of iteration i is lr * (1 + cos(pi * (i // steps) / epochs)) / 2."""
    def factor(iteration: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * (iteration // steps_per_epoch) / epochs))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class AdapterStrategy(Strategy):
    """Base of the three strategies (the model is an :class:`AdapterViT`)."""

    builds_own_optimizers = True
    opts: AdapterTraining

    def _map(self, fn, x: torch.Tensor) -> torch.Tensor:
        return map_batches(fn, x, self.device)

    @property
    def vit_model(self) -> AdapterViT:
        return self.model

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        model = self.vit_model
        model.eval()
        return frozen_rows(model.embed, x, self.device, self.context.train.cache_bytes)

    def _features(self, tokens: torch.Tensor, k: int | None) -> torch.Tensor:
        model = self.vit_model
        model.eval()
        return self._map(lambda t: model.features_from_tokens(t, k), tokens)

    def _train_adapters(self, k: int, params: list, tokens: torch.Tensor, y: torch.Tensor,
                        classes: list[int]) -> None:
        """Train adapter set ``k`` (``params``) with a new cosine head over ``classes``
        (cross-entropy on local labels), from cached tokens."""
        o, model = self.opts, self.vit_model
        if o.epochs == 0:
            return
        head = CosineClassifier(model.dim, len(classes)).to(self.device)
        local = torch.full((int(y.max()) + 1,), -1, dtype=torch.long)
        local[torch.as_tensor(classes)] = torch.arange(len(classes))
        targets = local[y].to(self.device)
        params = params + tome.pyra_to_train(model.vit, k)  # PYRA: with the first set
        optimizer = torch.optim.SGD(params + list(head.parameters()), lr=o.lr,
                                    momentum=o.momentum, weight_decay=o.weight_decay)
        steps = len(TensorBatches(tokens, targets, o.batch_size))
        scheduler = epoch_cosine(optimizer, o.epochs, steps)

        def loss(t, labels):
            return F.cross_entropy(head(model.features_from_tokens(t, k)), labels)
        model.train()
        try:
            self.fit_tensors(optimizer, tokens, targets, loss, o.epochs, o.batch_size,
                             scheduler)
        finally:
            model.eval()
            for p in params:  # frozen from now on: no stale gradients kept
                p.grad = None

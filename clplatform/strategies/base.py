"""What every strategy receives, and the pieces strategies share.

A strategy builder is registered with ``@register_strategy(name, options=Dataclass)`` and
called as ``builder(context, options)``; it returns an Avalanche training template (a
``SupervisedTemplate`` or subclass) whose ``train(experience)`` learns one experience. The
context carries the backbone, the stream's metadata, the training settings and the plugins
(the evaluator among them) that the template must be given.

Registration flags (keyword arguments of ``@register_strategy``): ``train_defaults`` (dict of
epochs/batch_size/lr used when the user sets none), ``joint=True`` (trained once on the whole
stream), ``varying_iteration_cost=True`` (iterations with the same batch shape can cost
different FLOPs, so the evaluator counts every iteration instead of one per shape),
``unused_train=("epochs", ...)`` (training settings the strategy does not read: setting them
prints a warning instead of being silently ignored), ``resumable=True`` (checkpoints are
written after every experience and ``clplat run --resume`` works: the state between
experiences is the model's state dict, the template's optimizer and clock, the Avalanche
plugins ``clplatform.checkpoint`` knows, plus, for a template that defines them,
``checkpoint_state() -> dict`` (tensors and plain values) and
``restore_checkpoint_state(state, experiences)``, called before the weights are loaded to
regrow the modules the strategy added; such a template builds its own optimizers within an
experience, so its template optimizer is not saved).

Strategy-specific record columns: a template may define ``experience_extras() -> dict``; the
evaluator calls it after each trained experience and stores the values in the experience
records, prefixed with the strategy's name (e.g. ``sema.adapters_added``).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from clplatform.backbones import Backbone
from clplatform.contract import StrategyContext, TrainSettings  # noqa: F401  (re-exported)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                         current: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the current experience's classes only (the others at -inf), as
    SEMA and the prompt methods train their linear heads."""
    return torch.nn.functional.cross_entropy(logits.masked_fill(~current, float("-inf")),
                                             labels)


@torch.no_grad()
def map_batches(fn, x: torch.Tensor, device, batch_size: int = 256) -> torch.Tensor:
    """``fn`` over ``x`` in batches on ``device``, concatenated (no gradients): for computing
    the frozen part of a network once per experience."""
    return torch.cat([fn(x[i:i + batch_size].to(device)) for i in range(0, len(x), batch_size)])


def require_vit(backbone: Backbone, strategy: str) -> nn.Module:
    """The backbone's timm VisionTransformer, or a clear error naming the strategy."""
    from clplatform.errors import UserError
    vit = backbone.model
    if not hasattr(vit, "blocks") or not hasattr(vit, "patch_embed"):
        raise UserError(f"{strategy} works on timm VisionTransformer backbones only; "
                        f"{backbone.name} is a {type(vit).__name__}")
    return vit


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[nn.Module]:
    """Batch normalisation layers normalise with the batch's own statistics, as in training,
    while the rest of the model keeps its mode; the running statistics are neither used nor
    updated (hidden for the duration: PyTorch's batch norm then uses batch statistics)."""
    from torch.nn.modules.batchnorm import _BatchNorm
    hidden = [(m, m.running_mean, m.running_var) for m in model.modules()
              if isinstance(m, _BatchNorm) and m.running_mean is not None]
    try:
        for m, _, _ in hidden:
            m.running_mean, m.running_var = None, None
        yield model
    finally:
        for m, mean, var in hidden:
            m.running_mean, m.running_var = mean, var


def batch_indices(n: int, batch_size: int, shuffle: bool) -> list[torch.Tensor]:
    """Index tensors of the mini-batches over ``n`` samples (a fresh permutation if shuffled)."""
    order = torch.randperm(n) if shuffle else torch.arange(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def fit_on_tensors(strategy, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
                   labels: torch.Tensor | None, loss_fn, epochs: int, batch_size: int,
                   scheduler=None) -> None:
    """Mini-batch training on in-memory tensors through an Avalanche template's plugin hooks.

    For strategies that train from cached tensors (frozen parts of the network computed
    once): every iteration still runs ``before/after_training_iteration`` and every epoch
    ``before/after_training_epoch``, so the evaluator measures their time and FLOPs.
    ``loss_fn(x, y)`` returns the loss of a batch; ``scheduler`` steps once per iteration.
    Sets ``strategy.optimizer`` (rebuilt by the caller whenever modules were added).
    """
    strategy.optimizer = optimizer
    no_task = torch.zeros(0, dtype=torch.long)
    for _epoch in range(epochs):
        strategy._before_training_epoch()
        for idx in batch_indices(len(inputs), batch_size, shuffle=True):
            x = inputs[idx].to(strategy.device)
            y = labels[idx].to(strategy.device) if labels is not None else no_task
            strategy.mbatch = [x, y, no_task]
            strategy._before_training_iteration()
            optimizer.zero_grad(set_to_none=True)
            strategy.loss = loss_fn(x, y)
            strategy.loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            strategy._after_training_iteration()
        strategy._after_training_epoch()

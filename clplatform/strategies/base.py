"""The base class of the built-in strategies, and the pieces strategies share.

A strategy is registered with ``@register_strategy(name, options=Dataclass, **traits)`` on a
builder called as ``builder(context, options)`` (or on a class, called the same way); it
returns an Avalanche training template whose ``train(experience)`` learns one experience.
The context (:class:`~clplatform.contract.StrategyContext`) carries the backbone, the
stream's metadata, the training settings, the plugins the template must be given (the
evaluator among them) and ``report_round``; the traits are listed in
:class:`~clplatform.contract.StrategyTraits`.

A new strategy is one class deriving from :class:`Strategy`: Avalanche's
``SupervisedTemplate`` with the platform's optional hooks
(:class:`~clplatform.contract.StrategyHooks`: records per experience, checkpoint state,
iteration kind, task/prompt selection; the label oracle of an active strategy comes as the
``oracle`` keyword of ``_train_exp``). Strategies that train from cached tensors (the frozen
part of a network computed once) train through :meth:`Strategy.fit_tensors`, the template's
own epoch loop, so every Avalanche plugin hook fires.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from clplatform.contract import StrategyContext, StrategyHooks, TrainSettings  # noqa: F401
from clplatform.errors import UserError


#: Avalanche plugins that run a model on the training mini-batch's inputs (``mb_x``): in
#: :meth:`Strategy.fit_tensors` those are cached tensors (tokens, indices), not images
RAW_INPUT_PLUGINS = ("LwFPlugin", "LFLPlugin", "FeatureDistillationPlugin", "BiCPlugin",
                     "GSS_greedyPlugin", "RARPlugin")


class TensorBatches:
    """A data loader over in-memory tensors: each pass yields the mini-batches
    ``[inputs[idx], labels[idx], task labels (empty)]`` of one fresh ``torch.randperm(n)``
    (drawn when the pass starts), or in order when ``shuffle`` is false. ``labels=None``:
    empty label tensors (the loss function needs none). ``drop_last``: the last incomplete
    batch of a pass is left out (as ``DataLoader(drop_last=True)``; a pass over fewer than
    ``batch_size`` samples then yields nothing)."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor | None, batch_size: int,
                 shuffle: bool = True, drop_last: bool = False):
        self.inputs, self.labels = inputs, labels
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.inputs) // self.batch_size
        return math.ceil(len(self.inputs) / self.batch_size)

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        n = len(self.inputs)
        order = torch.randperm(n) if self.shuffle else torch.arange(n)
        none = torch.zeros(0, dtype=torch.long)
        for i in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[i:i + self.batch_size]
            yield [self.inputs[idx], self.labels[idx] if self.labels is not None else none,
                   none]


class Strategy(StrategyHooks, SupervisedTemplate):
    """An Avalanche ``SupervisedTemplate`` built from the platform's context, with the
    platform's optional hooks (:class:`~clplatform.contract.StrategyHooks`).

    ``Strategy(context, options, model=..., optimizer=..., criterion=None, **overrides)``
    (``optimizer`` None: a placeholder, for a strategy that ``builds_own_optimizers``):
    the template's keyword arguments come from ``context.template_kwargs()`` (batch sizes,
    epochs, device, plugins, evaluator), ``overrides`` replace any of them; ``criterion``
    defaults to cross-entropy. Keeps ``self.context`` and the options as ``self.opts``.
    A registered subclass whose constructor takes ``(context, options)`` is its own builder.
    """

    def __init__(self, context: StrategyContext, options: Any, *, model: nn.Module,
                 optimizer: torch.optim.Optimizer | None = None,
                 criterion: nn.Module | None = None, **overrides: Any):
        if optimizer is None:  # a strategy that builds its own: a placeholder, never stepped
            if not self.builds_own_optimizers:
                raise TypeError(f"{type(self).__name__} needs an optimizer (or "
                                "builds_own_optimizers = True)")
            optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(0))], lr=0.0)
        kwargs = {**context.template_kwargs(), **overrides}
        if criterion is not None:
            kwargs["criterion"] = criterion
        super().__init__(model=model, optimizer=optimizer, **kwargs)
        self.context = context
        self.opts = options
        self._tensor_fit: tuple[Callable, Any] | None = None

    def make_optimizer(self, **kwargs: Any) -> None:
        """Avalanche regroups the template's optimizer over the model's parameters before
        every experience. A strategy that ``builds_own_optimizers`` hands the template a
        placeholder it never steps: regrouping it is skipped (it failed on models whose new
        parameters sit beside frozen ones, e.g. ``linear-adapter merge=false``)."""
        if not self.builds_own_optimizers:
            super().make_optimizer(**kwargs)

    # ------------------------------------------------------------ training from tensors
    def fit_tensors(self, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
                    labels: torch.Tensor | None, loss_fn: Callable, epochs: int,
                    batch_size: int, scheduler: Any = None, drop_last: bool = False) -> None:
        """Mini-batch training on in-memory tensors through the template's own epoch loop.

        The template's data loader becomes a :class:`TensorBatches` over ``inputs`` (cached
        tokens, features or sample indices) and ``labels``, and Avalanche's
        ``training_epoch`` runs ``epochs`` times, so every plugin hook fires (epoch,
        iteration, forward, backward, update) and the penalties plugins add to
        ``self.loss`` in ``before_backward`` (EWC, SI, ...) are trained. In this loop
        ``forward()`` is ``loss_fn(mb_x, mb_y)``, the batch's loss, and so is
        ``mb_output``; ``scheduler`` steps once per iteration, after the optimizer;
        ``drop_last``: each pass leaves out its last incomplete batch.
        Sets ``self.optimizer`` (rebuilt by the caller whenever modules were added).

        Plugins that run a model on ``mb_x`` (:data:`RAW_INPUT_PLUGINS`, e.g. LwF) cannot
        work on cached inputs: attaching one is an error.
        """
        for plugin in self.plugins:
            names = {c.__name__ for c in type(plugin).__mro__}
            if names & set(RAW_INPUT_PLUGINS):
                raise UserError(
                    f"{type(plugin).__name__} cannot be used with {type(self).__name__}: it "
                    "runs a model on the training batch's inputs, and this strategy trains "
                    "from cached tensors (the frozen part of the network computed once), "
                    "not images")
        self.optimizer = optimizer
        saved = getattr(self, "dataloader", None)
        self.dataloader = TensorBatches(inputs, labels, batch_size, drop_last=drop_last)
        self._tensor_fit = (loss_fn, scheduler)
        try:
            for _epoch in range(epochs):
                if self._stop_training:  # a plugin asked to stop (as Avalanche's loop does)
                    self._stop_training = False
                    break
                self._before_training_epoch()
                self.training_epoch()
                self._after_training_epoch()
        finally:
            self._tensor_fit = None
            self.dataloader = saved

    def forward(self):
        if self._tensor_fit is not None:
            return self._tensor_fit[0](self.mb_x, self.mb_y)
        return super().forward()

    def criterion(self):
        if self._tensor_fit is not None:
            return self.mb_output
        return super().criterion()

    def optimizer_step(self) -> None:
        super().optimizer_step()
        if self._tensor_fit is not None and self._tensor_fit[1] is not None:
            self._tensor_fit[1].step()


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def experience_classes(labels: torch.Tensor, seen: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The sorted classes of an experience's ``labels`` and the mask of them over all
    classes (``current``, for :func:`masked_cross_entropy`); marks them in ``seen`` (the
    model's mask of the classes seen so far, updated in place)."""
    classes = torch.tensor(sorted(set(labels.tolist())), dtype=torch.long)
    current = torch.zeros_like(seen)
    current[classes] = True
    seen[classes] = True
    return classes, current


def cosine_factor(epoch: int, epochs: int, schedule: str = "code") -> float:
    """The learning-rate factor of an epoch (0-based) of the ``CosineSchedule`` that
    CODA-Prompt and InfLoRA share: cos(99 pi e' / (200 (E - 1))), ending at ~1.6 % of lr.

    ``code``: e' = max(e - 1, 0) — the official schedule leaves ``last_epoch`` at -1 after
    its constructor sets the first lr, and the first ``step()`` after epoch 0 sets factor
    cos(0) again, so epochs 0 and 1 both run at lr. ``formula``: e' = e. ``constant``: 1.
    One epoch: 1 (the code divides by zero)."""
    if schedule == "constant" or epochs <= 1:
        return 1.0
    step = max(epoch - 1, 0) if schedule == "code" else epoch
    return math.cos(99 * math.pi * step / (200 * (epochs - 1)))


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                         current: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the current experience's classes only (the others at -inf), as
    SEMA and the prompt methods train their linear heads."""
    return torch.nn.functional.cross_entropy(logits.masked_fill(~current, float("-inf")),
                                             labels)


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

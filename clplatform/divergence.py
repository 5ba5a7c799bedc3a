"""Failing a run whose training diverges, instead of recording what a broken model predicts.

The runner gives every strategy :func:`divergence_check`, an Avalanche plugin that looks at
the training loss after every iteration and at the trained parameters after every epoch. A
loss or a parameter that is not finite, or that grew past ``EXPLOSION_FACTOR`` times its reference
(the experience's first loss; the parameters' largest magnitude when the experience started;
both at least 1), raises :class:`TrainingDiverged` naming what, the experience and the
iteration. The run is then recorded ``failed`` with that reason; the records of the
experiences finished before stay, the diverged experience's are never written.

Cost: one scalar read per iteration, one pass over the trained parameters per epoch (frozen
ones cannot change in an epoch: SEMA's 500 short descriptor epochs per run on ``vit-mini``
spent 10 s reading its 4 M frozen backbone values).
"""
from __future__ import annotations

import math

import torch

from .errors import UserError

# a cross-entropy of 1e4 needs logits 1e4 apart; parameters 1e4 times larger than the
# network started with are no longer a trained network
EXPLOSION_FACTOR = 1e4


class TrainingDiverged(UserError):
    """The loss or the parameters became non-finite or exploded (learning rate or penalty
    weight too large for the problem): the user can fix it."""


def largest_magnitude(parameters) -> float:
    """max |p| over all parameters (NaN if any is NaN), with one device synchronisation."""
    values = [p.detach().abs().max() for p in parameters if p.numel()]
    return float(torch.stack([v.float() for v in values]).max()) if values else 0.0


def divergence_check():
    """The plugin (built on demand: importing this module must not import Avalanche)."""
    from avalanche.core import SupervisedPlugin

    class DivergenceCheck(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.experience = self.iteration = 0
            self.first_loss: float | None = None
            self.start_magnitude = 1.0

        def before_training_exp(self, strategy, **kwargs):
            experience = getattr(strategy, "experience", None)
            self.experience = getattr(experience, "current_experience",
                                      strategy.clock.train_exp_counter)
            self.iteration, self.first_loss = 0, None
            self.start_magnitude = largest_magnitude(strategy.model.parameters())
            if not math.isfinite(self.start_magnitude):
                self._fail("a parameter is not finite", "before its first iteration")

        def after_training_iteration(self, strategy, **kwargs):
            loss = getattr(strategy, "loss", None)
            if isinstance(loss, torch.Tensor) and loss.numel() == 1:
                value = float(loss.detach())
                if not math.isfinite(value):
                    self._fail(f"the training loss is {value}", self._current())
                if self.first_loss is None:
                    self.first_loss = value
                reference = max(abs(self.first_loss), 1.0)
                if abs(value) > EXPLOSION_FACTOR * reference:
                    self._fail(f"the training loss exploded to {value:.3g} (it started the "
                               f"experience at {self.first_loss:.3g})", self._current())
            self.iteration += 1

        def after_training_epoch(self, strategy, **kwargs):
            magnitude = largest_magnitude(p for p in strategy.model.parameters()
                                          if p.requires_grad)
            if not math.isfinite(magnitude):
                self._fail("a parameter is not finite", self._epoch_end())
            if magnitude > EXPLOSION_FACTOR * max(self.start_magnitude, 1.0):
                self._fail(f"the parameters exploded: largest |value| {magnitude:.3g} "
                           f"(it was {self.start_magnitude:.3g} before the experience)",
                           self._epoch_end())

        def _current(self) -> str:
            return f"at iteration {self.iteration + 1}"

        def _epoch_end(self) -> str:
            return f"after iteration {self.iteration} (end of an epoch)"

        def _fail(self, what: str, when: str):
            raise TrainingDiverged(
                f"training diverged in experience {self.experience} {when}: {what}; "
                "lower the learning rate (--lr) or the strategy's loss weights (--set)")

    return DivergenceCheck()

"""Avalanche plugins as the baselines use them (``ewc``, ``si``, ``replay``), each fixing what
Avalanche 0.6 gets wrong for this platform. Imported by the builders in
:mod:`clplatform.strategies.baselines` when a strategy is built (this module imports
Avalanche)."""
from __future__ import annotations

from avalanche.training.plugins import EWCPlugin, ReplayPlugin, SynapticIntelligencePlugin

from .base import batch_statistics


class TrainingFisherEWCPlugin(EWCPlugin):
    """Avalanche 0.6's EWC with the importances (squared gradients) of the loss the penalty
    is added to: the training-mode network. Avalanche computes them in eval mode, where batch
    normalisation uses its frozen running statistics; in training the statistics follow the
    weights, so the loss does not change when a normalised layer's output is shifted or
    scaled. In eval mode it does, and through the pixels of a uniform background the squared
    gradient of the convolution before the first batch norm of ``vit-glyphs`` reached 1.1e4
    (0.6 in training mode, every other parameter below 100): the penalty's curvature
    2 x lambda x F then exceeds what SGD can follow (lr x curvature > 2 (1 + momentum)), and
    training diverged within an experience even at ewc_lambda = 0.5 and lr 0.003 (every
    prediction one class). Dropout and the like stay off, as in Avalanche (see
    ``batch_statistics``)."""

    def compute_importances(self, model, *args, **kwargs):
        with batch_statistics(model):
            return super().compute_importances(model, *args, **kwargs)


class SIPlugin(SynapticIntelligencePlugin):
    """Avalanche 0.6's SI with its parameter snapshots copied. It stores snapshots as
    ``param.detach().cpu().flatten()``, which on a CPU is the live parameter itself: the
    snapshot taken before an optimizer step moves with the step, every trajectory is 0,
    every importance is 0 and the penalty does nothing. Copies restore the algorithm."""

    def before_training_exp(self, strategy, **kwargs):
        super().before_training_exp(strategy, **kwargs)
        _own_copies(self.ewc_data[0])          # parameters at the experience's start

    def before_training_iteration(self, strategy, **kwargs):
        super().before_training_iteration(strategy, **kwargs)
        _own_copies(self.syn_data["old_theta"])  # parameters before this step


def _own_copies(params: dict) -> None:
    for data in params.values():
        data.data = data.data.clone()


class Replay(ReplayPlugin):
    """Avalanche's ``Replay`` (its ReplayPlugin on the supervised template), minus the
    deprecated ``storage_policy.update`` call: Avalanche's ``@deprecated`` calls
    ``warnings.simplefilter("once", DeprecationWarning)`` first, so no filter silences it.
    The same buffer update through ``post_adapt``, as ``update`` does itself."""

    def after_training_exp(self, strategy, **kwargs):
        self.storage_policy.post_adapt(strategy, strategy.experience)

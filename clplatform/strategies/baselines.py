"""Classic baselines from Avalanche, with their hyper-parameters as typed dataclasses.

All train the whole network (backbone + growing head) with SGD (momentum 0.9) and plain
cross-entropy, except ``linear-probe`` (frozen backbone, only the head learns). ``joint`` is
the offline upper bound: it trains once on the concatenation of all experiences.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from clplatform.options import opt
from clplatform.registry import register_strategy

if TYPE_CHECKING:
    from .base import StrategyContext


def _common(ctx: StrategyContext, freeze_backbone: bool = False) -> dict:
    from torch.nn import CrossEntropyLoss

    from .base import trainable_parameters
    model = ctx.classifier(freeze_backbone=freeze_backbone)
    return {"model": model, "optimizer": ctx.sgd(trainable_parameters(model)),
            "criterion": CrossEntropyLoss(), **ctx.template_kwargs()}


@register_strategy("naive", resumable=True,
                   help="fine-tunes the whole network on each experience (lower bound)")
def naive(ctx: StrategyContext, opts: None):
    from avalanche.training import Naive
    return Naive(**_common(ctx))


@dataclass
class EWCOptions:
    ewc_lambda: float = opt(1.0, "weight of the quadratic penalty on important weights "
                                 "(no universal paper value)", min=0)
    mode: str = opt("separate", "one penalty per past experience, or one running penalty",
                    choices=("separate", "online"))
    decay_factor: Optional[float] = opt(None, "decay of old importances (mode=online only)",
                                        min=0, max=1)

    def validate(self) -> None:
        from clplatform.errors import UserError
        if self.mode == "online" and self.decay_factor is None:
            raise UserError("ewc mode=online needs decay_factor (e.g. --set decay_factor=0.9)")


@register_strategy("ewc", resumable=True, options=EWCOptions,
                   help="elastic weight consolidation (Kirkpatrick et al. 2017)")
def ewc(ctx: StrategyContext, opts: EWCOptions):
    from avalanche.training.templates import SupervisedTemplate
    common = _common(ctx)
    common["plugins"].append(_ewc_plugin(opts))
    return SupervisedTemplate(**common)


def _ewc_plugin(opts: EWCOptions):
    from avalanche.training.plugins import EWCPlugin

    from .base import batch_statistics

    class TrainingFisherEWCPlugin(EWCPlugin):
        """Avalanche 0.6's EWC with the importances (squared gradients) of the loss the
        penalty is added to: the training-mode network. Avalanche computes them in eval mode,
        where batch normalisation uses its frozen running statistics; in training the
        statistics follow the weights, so the loss does not change when a normalised
        layer's output is shifted or scaled. In eval mode it does, and through the pixels of
        a uniform background the squared gradient of the convolution before the first batch
        norm of ``vit-glyphs`` reached 1.1e4 (0.6 in training mode, every other parameter
        below 100): the penalty's curvature 2 x lambda x F then exceeds what SGD can follow
        (lr x curvature > 2 (1 + momentum)), and training diverged within an experience even
        at ewc_lambda = 0.5 and lr 0.003 (every prediction one class). Dropout and the like
        stay off, as in Avalanche (see ``batch_statistics``)."""

        def compute_importances(self, model, *args, **kwargs):
            with batch_statistics(model):
                return super().compute_importances(model, *args, **kwargs)

    return TrainingFisherEWCPlugin(
        ewc_lambda=opts.ewc_lambda, mode=opts.mode,
        decay_factor=opts.decay_factor if opts.mode == "online" else None)


@dataclass
class LwFOptions:
    alpha: float = opt(1.0, "weight of the distillation loss (lambda_o in Li & Hoiem)", min=0)
    temperature: float = opt(2.0, "softmax temperature of the distillation", min=0.01)


@register_strategy("lwf", resumable=True, options=LwFOptions,
                   help="learning without forgetting (Li & Hoiem 2016)")
def lwf(ctx: StrategyContext, opts: LwFOptions):
    from avalanche.training import LwF
    return LwF(alpha=opts.alpha, temperature=opts.temperature, **_common(ctx))


@dataclass
class SIOptions:
    si_lambda: float = opt(1.0, "weight of the surrogate-loss penalty (c in Zenke et al.)",
                           min=0)
    eps: float = opt(0.1, "damping term (xi in Zenke et al.)", min=0)


def _si_plugin(si_lambda: float, eps: float):
    from avalanche.training.plugins import SynapticIntelligencePlugin

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

    return SIPlugin(si_lambda=si_lambda, eps=eps)


def _own_copies(params: dict) -> None:
    for data in params.values():
        data.data = data.data.clone()


@register_strategy("si", resumable=True, options=SIOptions,
                   help="synaptic intelligence (Zenke et al. 2017)")
def si(ctx: StrategyContext, opts: SIOptions):
    from avalanche.training.templates import SupervisedTemplate
    common = _common(ctx)
    common["plugins"].append(_si_plugin(opts.si_lambda, opts.eps))
    return SupervisedTemplate(**common)


@dataclass
class ReplayOptions:
    mem_size: int = opt(200, "samples kept in the rehearsal buffer (balanced across experiences)", min=1)


@register_strategy("replay", resumable=True, options=ReplayOptions,
                   help="experience replay with a fixed-size buffer (Avalanche's Replay)")
def replay(ctx: StrategyContext, opts: ReplayOptions):
    from avalanche.training.plugins import ReplayPlugin
    from avalanche.training.templates import SupervisedTemplate

    class Replay(ReplayPlugin):
        """Avalanche's ``Replay`` (its ReplayPlugin on the supervised template), minus the
        deprecated ``storage_policy.update`` call: Avalanche's ``@deprecated`` calls
        ``warnings.simplefilter("once", DeprecationWarning)`` first, so no filter silences
        it. The same buffer update through ``post_adapt``, as ``update`` does itself."""

        def after_training_exp(self, strategy, **kwargs):
            self.storage_policy.post_adapt(strategy, strategy.experience)
    common = _common(ctx)
    common["plugins"].append(Replay(opts.mem_size))
    return SupervisedTemplate(**common)


@dataclass
class AGEMOptions:
    patterns_per_exp: int = opt(50, "samples stored per experience", min=1)
    sample_size: int = opt(64, "memory samples drawn to compute the reference gradient", min=1)


@register_strategy("agem", resumable=True, options=AGEMOptions,
                   varying_iteration_cost=True,
                   help="averaged gradient episodic memory (Chaudhry et al. 2019)")
def agem(ctx: StrategyContext, opts: AGEMOptions):
    from avalanche.training import AGEM
    return AGEM(patterns_per_exp=opts.patterns_per_exp, sample_size=opts.sample_size,
                **_common(ctx))


@register_strategy("cumulative", resumable=True,
                   help="re-trains on all data seen so far at each experience")
def cumulative(ctx: StrategyContext, opts: None):
    from avalanche.training import Cumulative
    return Cumulative(**_common(ctx))


@register_strategy("joint", joint=True,
                   help="offline upper bound: one training on all experiences together")
def joint(ctx: StrategyContext, opts: None):
    from avalanche.training import JointTraining
    return JointTraining(**_common(ctx))


@register_strategy("linear-probe", train_defaults={"lr": 0.05}, resumable=True,
                   help="frozen backbone, only the growing linear head is trained")
def linear_probe(ctx: StrategyContext, opts: None):
    from avalanche.training import Naive
    return Naive(**_common(ctx, freeze_backbone=True))

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
    from .plugins import TrainingFisherEWCPlugin
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


@register_strategy("si", resumable=True, options=SIOptions,
                   help="synaptic intelligence (Zenke et al. 2017)")
def si(ctx: StrategyContext, opts: SIOptions):
    from avalanche.training.templates import SupervisedTemplate
    common = _common(ctx)
    from .plugins import SIPlugin
    common["plugins"].append(SIPlugin(si_lambda=opts.si_lambda, eps=opts.eps))
    return SupervisedTemplate(**common)


@dataclass
class ReplayOptions:
    mem_size: int = opt(200, "samples kept in the rehearsal buffer (balanced across experiences)", min=1)


@register_strategy("replay", resumable=True, options=ReplayOptions,
                   help="experience replay with a fixed-size buffer (Avalanche's Replay)")
def replay(ctx: StrategyContext, opts: ReplayOptions):
    from avalanche.training.templates import SupervisedTemplate

    from .plugins import Replay
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

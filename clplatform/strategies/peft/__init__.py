"""Mergeable parameter-efficient adaptation in class-incremental learning
(``shared/specs/low-rank-and-mergeable.md``): ``linear-adapter`` (ZeroI2V), ``lora``,
``comp-lora``, ``consolidator``. ``config.py`` (hyper-parameters), ``layers.py`` (the modules,
each a :class:`~clplatform.strategies.reparam.ReparamLinear`), ``base.py`` (the shared
continual-learning form: ``adapt=first``/``every``, merging, records, resume), ``methods.py``
(the strategies). Merging is :mod:`clplatform.strategies.reparam`, shared with InfLoRA."""
from clplatform.registry import lazy_exports, register_strategy

from .config import CompLoRAOptions, ConsolidatorOptions, LinearAdapterOptions, LoRAOptions
from .report import SECTION

__getattr__ = lazy_exports(__name__, {
    "MergeableStrategy": ".base", "MergeableViT": ".base",
    **dict.fromkeys(("LinearAdapterStrategy", "LoRAStrategy", "CompLoRAStrategy",
                     "ConsolidatorStrategy"), ".methods"),
    **dict.fromkeys(("LinearAdapter", "AdaptedLinear", "ProjectedBranch", "GroupedBranch",
                     "ConsolidatorLinear"), ".layers")})

_UNUSED = ("lr",)


@register_strategy("linear-adapter", options=LinearAdapterOptions, unused_train=_UNUSED,
                   resumable=True, report=SECTION,
                   help="ZeroI2V's linear adapters (dense placement) merged into the frozen "
                        "weights: zero extra inference cost (Li et al. 2023)")
def linear_adapter(ctx, opts: LinearAdapterOptions):
    from .methods import LinearAdapterStrategy
    return LinearAdapterStrategy(ctx, opts)


@register_strategy("lora", options=LoRAOptions, unused_train=_UNUSED, resumable=True,
                   report=SECTION,
                   help="LoRA on the fused qkv, merged after training (Hu et al. 2021; the "
                        "LoRA baseline of Consolidator)")
def lora(ctx, opts: LoRAOptions):
    from .methods import LoRAStrategy
    return LoRAStrategy(ctx, opts)


@register_strategy("comp-lora", options=CompLoRAOptions, unused_train=_UNUSED, resumable=True,
                   report=SECTION,
                   help="LoRA confined to the complement of the pre-trained weight's "
                        "principal subspace (Wang et al. 2025; our reading of the abstract)")
def comp_lora(ctx, opts: CompLoRAOptions):
    from .methods import CompLoRAStrategy
    return CompLoRAStrategy(ctx, opts)


@register_strategy("consolidator", options=ConsolidatorOptions, unused_train=_UNUSED,
                   resumable=True, report=SECTION,
                   help="Consolidator's grouped, channel-shuffled branches, consolidated and "
                        "merged (Hao et al. 2023)")
def consolidator(ctx, opts: ConsolidatorOptions):
    from .methods import ConsolidatorStrategy
    return ConsolidatorStrategy(ctx, opts)


__all__ = ["LinearAdapterOptions", "LoRAOptions", "CompLoRAOptions", "ConsolidatorOptions"]

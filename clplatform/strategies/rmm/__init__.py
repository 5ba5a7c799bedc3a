"""RMM: reversible merging of per-experience LoRAs into a compact basis (Alipour & Amiri,
arXiv 2510.14163; ``shared/specs/low-rank-and-mergeable.md`` section 4): ``config.py``
(hyper-parameters), ``basis.py`` (the closed-form basis on bare tensors), ``model.py`` (LoRA
on a timm ViT's fused qkv through the shared :mod:`clplatform.strategies.lora`, heads,
prototype routing, two-pass inference), ``strategy.py`` (training as an Avalanche
template)."""
from clplatform.registry import lazy_exports, register_strategy

from .config import RMMOptions

__getattr__ = lazy_exports(__name__, {"RMM": ".strategy", "RMMModel": ".model"})

# no official code: Adam at 1e-3 for the LoRA and head (ours); epochs and batch size are the
# platform's
RMM_TRAIN_DEFAULTS = {"lr": 1e-3}


@register_strategy("rmm", options=RMMOptions, train_defaults=RMM_TRAIN_DEFAULTS,
                   resumable=True,
                   help="RMM: a LoRA per experience on the frozen qkv, merged reversibly into "
                        "a closed-form basis; prototype task id, two passes at inference "
                        "(Alipour & Amiri 2025)")
def rmm(ctx, opts: RMMOptions):
    from .strategy import RMM
    return RMM(ctx, opts)


__all__ = ["RMM", "RMMOptions", "RMMModel"]

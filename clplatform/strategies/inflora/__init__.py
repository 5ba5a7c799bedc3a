"""InfLoRA: interference-free low-rank adaptation (Liang & Li, CVPR 2024;
``shared/specs/ptm-comparators.md``): ``config.py`` (hyper-parameters, the official code's
defaults), ``memory.py`` (subspace design and DualGPM memory on tensors), ``model.py`` (k/v
branches on a timm ViT's fused qkv through the shared :mod:`clplatform.strategies.lora`, a
head per experience), ``strategy.py`` (training as an Avalanche template)."""
from clplatform.registry import lazy_exports, register_strategy

from .config import InfLoRAOptions

__getattr__ = lazy_exports(__name__, {"InfLoRA": ".strategy", "InfLoRAModel": ".model",
                                      "cosine_factor": ".strategy"})

# liangyanshuo/InfLoRA configs/cifar100_inflora.json: Adam 5e-4, batch 128, 20 epochs
# (ImageNet-R: 50)
INFLORA_TRAIN_DEFAULTS = {"epochs": 20, "batch_size": 128, "lr": 5e-4}


@register_strategy("inflora", options=InfLoRAOptions, train_defaults=INFLORA_TRAIN_DEFAULTS,
                   resumable=True,
                   help="InfLoRA: per-experience low-rank k/v branches whose down-projection "
                        "is designed outside the old input subspace (DualGPM), a head per "
                        "experience (Liang & Li 2024)")
def inflora(ctx, opts: InfLoRAOptions):
    from .strategy import InfLoRA
    return InfLoRA(ctx, opts)


__all__ = ["InfLoRA", "InfLoRAOptions", "InfLoRAModel", "cosine_factor"]

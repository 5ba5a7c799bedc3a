"""Prompt-based continual learning (``shared/specs/qprompt.md``,
``shared/specs/prompt-comparators.md``): ``dualprompt`` (DualPrompt as its official code),
``prompt`` (the same implementation with simpler defaults: fresh E-prompts, no clipping, fp16
storage, torch head init), ``qprompt`` (quantization-aware prompt training) and ``rlp``
(re-parameterised low-rank prompts, ``rlp.py``).
``config.py`` (hyper-parameters), ``quantizer.py`` (the quantizer), ``layer.py`` (prefix
attention, prompt tensors), ``model.py`` (injection into a timm ViT), ``strategy.py``
(training as an Avalanche template)."""
from clplatform.registry import lazy_exports, register_strategy

from .config import DualPromptOptions, PromptOptions, QPromptOptions, RLPOptions
from .report import SECTION

__getattr__ = lazy_exports(__name__, {
    "PrefixAttention": ".layer", "PromptTensor": ".layer", "PromptModel": ".model",
    "PromptStrategy": ".strategy", "RLPModel": ".rlp", "RLPStrategy": ".rlp",
    "FactoredPrompt": ".rlp",
    "TensorQuantizer": ".quantizer", "kmeans_1d": ".quantizer", "stored_bits": ".quantizer"})

# Adam at 0.03 x batch / 256 (the spec's rule) with the default batch of 32; 5 epochs
PROMPT_TRAIN_DEFAULTS = {"epochs": 5, "batch_size": 32, "lr": 0.03 * 32 / 256}
# the DualPrompt port's CIFAR-100 recipe (configs/cifar100_dualprompt.py): batch 24, 5 epochs,
# Adam (0.9, 0.999), constant lr 0.03 scaled by batch / 256 (ImageNet-R: 0.005 x 24 / 256,
# 50 epochs, e_length 20: set them with --lr, --epochs, --set e_length=20)
DUALPROMPT_TRAIN_DEFAULTS = {"epochs": 5, "batch_size": 24, "lr": 0.03 * 24 / 256}


def _build(ctx, opts):
    from .strategy import PromptStrategy
    return PromptStrategy(ctx, opts)


@register_strategy("prompt", trains_pyra=True,
                   options=PromptOptions, train_defaults=PROMPT_TRAIN_DEFAULTS,
                   resumable=True, report=SECTION,
                   help="DualPrompt-style prefix tuning: shared G-prompt, per-experience "
                        "E-prompts chosen by key matching (full precision)")
def prompt(ctx, opts: PromptOptions):
    return _build(ctx, opts)


@register_strategy("dualprompt", trains_pyra=True,
                   options=DualPromptOptions,
                   train_defaults=DUALPROMPT_TRAIN_DEFAULTS, resumable=True, report=SECTION,
                   help="DualPrompt (Wang et al. 2022) as its official code: G-prompt in blocks "
                        "0-1, per-experience E-prompts (copied from the previous one) in 2-4 "
                        "chosen by key, gradient clipping, [0, 1] inputs")
def dualprompt(ctx, opts: DualPromptOptions):
    return _build(ctx, opts)


@register_strategy("qprompt", trains_pyra=True,
                   options=QPromptOptions, train_defaults=PROMPT_TRAIN_DEFAULTS,
                   resumable=True, report=SECTION,
                   help="prompt with quantization-aware prompt training: k-means codebooks, "
                        "straight-through gradient, constrained adaptive re-clustering "
                        "(QPrompt, Hao et al. 2024)")
def qprompt(ctx, opts: QPromptOptions):
    return _build(ctx, opts)


@register_strategy("rlp", trains_pyra=True,
                   options=RLPOptions, train_defaults=PROMPT_TRAIN_DEFAULTS,
                   resumable=True, report=SECTION,
                   help="prompt with re-parameterised low-rank prompts: each prefix tensor "
                        "trained and stored as rank-r factors A.B, multiplied out for "
                        "inference (RLP, Hao et al. 2023)")
def rlp(ctx, opts: RLPOptions):
    from .rlp import RLPStrategy
    return RLPStrategy(ctx, opts)


__all__ = ["DualPromptOptions", "PromptOptions", "QPromptOptions", "RLPOptions",
           "RLPModel", "RLPStrategy", "FactoredPrompt", "PromptModel", "PromptStrategy",
           "PrefixAttention", "PromptTensor", "TensorQuantizer", "kmeans_1d", "stored_bits"]

"""Prompt-based continual learning (``shared/specs/qprompt.md``): ``prompt`` (DualPrompt-style
prefix tuning, full precision) and ``qprompt`` (quantization-aware prompt training).
``config.py`` (hyper-parameters), ``quantizer.py`` (the quantizer), ``layer.py`` (prefix
attention, prompt tensors), ``model.py`` (injection into a timm ViT), ``strategy.py``
(training as an Avalanche template)."""
from clplatform.registry import lazy_exports, register_strategy

from .config import PromptOptions, QPromptOptions

__getattr__ = lazy_exports(__name__, {
    "PrefixAttention": ".layer", "PromptTensor": ".layer", "PromptModel": ".model",
    "PromptStrategy": ".strategy",
    "TensorQuantizer": ".quantizer", "kmeans_1d": ".quantizer", "stored_bits": ".quantizer"})

# Adam at 0.03 x batch / 256 (the spec's rule) with the default batch of 32; 5 epochs
PROMPT_TRAIN_DEFAULTS = {"epochs": 5, "batch_size": 32, "lr": 0.03 * 32 / 256}


def _build(ctx, opts):
    from .strategy import PromptStrategy
    return PromptStrategy(ctx, opts)


@register_strategy("prompt", options=PromptOptions, train_defaults=PROMPT_TRAIN_DEFAULTS,
                   resumable=True,
                   help="DualPrompt-style prefix tuning: shared G-prompt, per-experience "
                        "E-prompts chosen by key matching (full precision)")
def prompt(ctx, opts: PromptOptions):
    return _build(ctx, opts)


@register_strategy("qprompt", options=QPromptOptions, train_defaults=PROMPT_TRAIN_DEFAULTS,
                   resumable=True,
                   help="prompt with quantization-aware prompt training: k-means codebooks, "
                        "straight-through gradient, constrained adaptive re-clustering "
                        "(QPrompt, Hao et al. 2024)")
def qprompt(ctx, opts: QPromptOptions):
    return _build(ctx, opts)


__all__ = ["PromptOptions", "QPromptOptions", "PromptModel", "PromptStrategy", "PrefixAttention",
           "PromptTensor", "TensorQuantizer", "kmeans_1d", "stored_bits"]

"""CODA-Prompt (Smith et al., CVPR 2023; ``shared/specs/prompt-comparators.md``):
``config.py`` (hyper-parameters, the official code's defaults), ``model.py`` (components,
keys, attention vectors on the prompt model's prefix blocks), ``strategy.py`` (training as an
Avalanche template)."""
from clplatform.registry import lazy_exports, register_strategy

from clplatform.strategies.prompts.report import SECTION as PROMPT_SECTION

from .config import CODAOptions

__getattr__ = lazy_exports(__name__, {
    "CODAPrompt": ".strategy", "CODAModel": ".model", "Components": ".model",
    "orthogonal_rows": ".model", "ortho_penalty": ".model", "cosine_factor": ".strategy"})

# GT-RIPL/CODA-Prompt configs/cifar-100_prompt.yaml (= imnet-r): Adam 1e-3, batch 128,
# 20 epochs (50 on ImageNet-R)
CODA_TRAIN_DEFAULTS = {"epochs": 20, "batch_size": 128, "lr": 1e-3}


@register_strategy("coda-prompt", trains_pyra=True,
                   options=CODAOptions, train_defaults=CODA_TRAIN_DEFAULTS,
                   resumable=True, report=PROMPT_SECTION,
                   help="CODA-Prompt: attention-weighted prompt components in blocks 0-4, "
                        "new orthogonal components per experience, old ones frozen "
                        "(Smith et al. 2023)")
def coda_prompt(ctx, opts: CODAOptions):
    from .strategy import CODAPrompt
    return CODAPrompt(ctx, opts)


__all__ = ["CODAOptions", "CODAPrompt", "CODAModel", "Components", "orthogonal_rows",
           "ortho_penalty", "cosine_factor"]

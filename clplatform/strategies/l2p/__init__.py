"""L2P: learning to prompt with a shared prompt pool (Wang et al., CVPR 2022), from
``shared/specs/prompt-comparators.md``: ``config.py`` (hyper-parameters), ``model.py``
(prompt tuning at the input of a timm ViT), ``strategy.py`` (training as an Avalanche
template)."""
from clplatform.registry import lazy_exports, register_strategy

from clplatform.strategies.prompts.report import SECTION as PROMPT_SECTION

from .config import L2POptions

__getattr__ = lazy_exports(__name__, {"L2P": ".strategy", "L2PModel": ".model"})

# the port's CIFAR-100 recipe: batch 16, 5 epochs, Adam (0.9, 0.999) at a constant
# 0.03 x 16 / 256 = 1.875e-3, re-created per experience
L2P_TRAIN_DEFAULTS = {"epochs": 5, "batch_size": 16, "lr": 0.03 * 16 / 256}


@register_strategy("l2p", trains_pyra=True,
                   options=L2POptions, train_defaults=L2P_TRAIN_DEFAULTS,
                   resumable=True, report=PROMPT_SECTION,
                   help="L2P: a shared pool of input prompts, top-N chosen per sample by key "
                        "(Wang et al. 2022)")
def l2p(ctx, opts: L2POptions):
    from .strategy import L2P
    return L2P(ctx, opts)


__all__ = ["L2P", "L2PModel", "L2POptions"]

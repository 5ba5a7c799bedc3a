"""LFTL: source-free active domain adaptation (Lyu et al., ECCV 2024), from
``shared/specs/lftl.md``: ``config.py`` (hyper-parameters), ``sampling.py`` (query scores),
``model.py`` (backbone + bottleneck + weight-normalised classifier), ``strategy.py`` (source
training, query-and-adapt rounds). The oracle and label masking are the platform's
(``clplatform/active.py``)."""
from clplatform.registry import lazy_exports, register_strategy

from .config import LFTLOptions
from .report import SECTION

__getattr__ = lazy_exports(__name__, {"LFTL": ".strategy", "LFTLModel": ".model"})


@register_strategy("lftl", resumable=True, options=LFTLOptions, active=True, report=SECTION,
                   unused_train=("epochs", "batch_size", "lr"),
                   help="source-free active domain adaptation: contrastive active sampling "
                        "and visual persistence (Lyu et al. 2024); experience 0 is the "
                        "labelled source, later ones unlabelled targets with a label oracle")
def lftl(ctx, opts: LFTLOptions):
    from .strategy import LFTL
    return LFTL(ctx, opts)


__all__ = ["LFTL", "LFTLOptions", "LFTLModel"]

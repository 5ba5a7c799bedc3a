"""SEMA: self-expanding mixture of adapters (Wang et al., CVPR 2025), from
``shared/specs/sema.md``: ``config.py`` (hyper-parameters), ``layer.py`` (adapters,
descriptors, router, block), ``model.py`` (injection into a timm ViT), ``strategy.py``
(expansion and training as an Avalanche template)."""
from clplatform.registry import lazy_exports, register_strategy

from .config import SEMAOptions
from .report import SECTION

__getattr__ = lazy_exports(__name__, {
    "SEMA": ".strategy", "SEMAModel": ".model", **dict.fromkeys(
        ("Adapter", "LossStatistics", "RepresentationDescriptor", "SEMABlock", "SoftRouter"),
        ".layer")})


@register_strategy("sema", trains_pyra=True,
                   options=SEMAOptions, unused_train=("epochs", "batch_size", "lr"),
                   resumable=True, report=SECTION,
                   help="self-expanding mixture of adapters with representation descriptors "
                        "(Wang et al. 2025)")
def sema(ctx, opts: SEMAOptions):
    from .strategy import SEMA
    return SEMA(ctx, opts)


__all__ = ["SEMA", "SEMAOptions", "SEMAModel", "SEMABlock", "Adapter", "RepresentationDescriptor",
           "LossStatistics", "SoftRouter"]

"""Pre-trained-model comparators with adapters (``shared/specs/ptm-comparators.md``): APER
with adapters, EASE and RanPAC. ``config.py`` (hyper-parameters), ``model.py`` (adapter sets
in a timm ViT, the cosine training head), ``common.py`` (adapter training from cached tokens),
``aper.py``, ``ease.py``, ``ranpac.py`` (the strategies)."""
from clplatform.registry import lazy_exports, register_strategy

from .config import APEROptions, EASEOptions, RanPACOptions

__getattr__ = lazy_exports(__name__, {
    "APER": ".aper", "APERModel": ".aper", "EASE": ".ease", "EASEModel": ".ease",
    "RanPAC": ".ranpac", "RanPACModel": ".ranpac", "AdapterViT": ".model",
    "AdapterBlock": ".model", "CosineClassifier": ".model"})

_UNUSED = ("epochs", "batch_size", "lr")


@register_strategy("aper", trains_pyra=True,
                   options=APEROptions, unused_train=_UNUSED, resumable=True,
                   help="APER with adapters: adapters trained on the first experience, then "
                        "prototypes of [pre-trained || adapted] features (Zhou et al. 2023)")
def aper(ctx, opts: APEROptions):
    from .aper import APER
    return APER(ctx, opts)


@register_strategy("ranpac", trains_pyra=True,
                   options=RanPACOptions, unused_train=_UNUSED, resumable=True,
                   help="RanPAC: adapters trained on the first experience, ReLU random "
                        "projection and a ridge-regression head from accumulated statistics "
                        "(McDonnell et al. 2023)")
def ranpac(ctx, opts: RanPACOptions):
    from .ranpac import RanPAC
    return RanPAC(ctx, opts)


@register_strategy("ease", trains_pyra=True,
                   options=EASEOptions, unused_train=_UNUSED, resumable=True,
                   help="EASE: one adapter set per experience, prototypes per subspace with "
                        "a semantic-guided complement for old classes (Zhou et al. 2024)")
def ease(ctx, opts: EASEOptions):
    from .ease import EASE
    return EASE(ctx, opts)


__all__ = ["APER", "APEROptions", "EASE", "EASEOptions", "RanPAC", "RanPACOptions",
           "AdapterViT", "AdapterBlock", "CosineClassifier"]

"""Hyper-parameters of APER (with adapters), EASE and RanPAC, defaults from the official code
(``shared/specs/ptm-comparators.md``): the CIFAR-100 configurations of
zhoudw-zdw/RevisitingCIL ``exps/aper_adapter/cifar224_5_5_vit-b_adapter.json``,
sun-hailong/CVPR24-Ease ``exps/ease_cifar.json`` and RanPAC/RanPAC
``args/cifar224_publish.csv`` (row 7: adapter + RP, M = 10000).

The adapter bottleneck is r = 64 for ViT-B (d = 768); on other widths r = d / 12 (at least
2), as SEMA scales its bottleneck.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from clplatform.options import opt


def bottleneck(r: Optional[int], width: int) -> int:
    """The adapter bottleneck: ``r`` when set, else d / 12 (64 for d = 768), at least 2."""
    return r or max(2, round(width / 12))


def adapter_parameters(width: int, r: int, depth: int) -> int:
    """Parameters of one adapter set (an adapter in every block)."""
    return depth * (2 * width * r + r + width)


@dataclass
class AdapterTraining:
    """What the three methods share: AdaptFormer adapters in every block (scale 0.1, dropout
    0.1), trained with a cosine head (learnable scale) and cross-entropy, SGD momentum 0.9,
    learning rate cosine-annealed once per epoch to 0."""
    r: Optional[int] = opt(None, "adapter bottleneck (default: d / 12, i.e. 64 on ViT-B)",
                           min=1)
    scale: float = opt(0.1, "adapter output scale (AdaptFormer; 1 with dropout 0: SEMA's "
                            "adapter)", min=0)
    dropout: float = opt(0.1, "dropout inside the adapter, training only", min=0, max=1)
    epochs: int = opt(20, "epochs of adapter training", min=0)
    lr: float = opt(0.01, "SGD learning rate (cosine to 0, stepped once per epoch)", min=0)
    batch_size: int = opt(48, "mini-batch size", min=1)
    weight_decay: float = opt(5e-4, "SGD weight decay", min=0)
    momentum: float = opt(0.9, "SGD momentum", min=0, max=1)

    def _adapters(self, width: int, depth: int) -> int:
        return adapter_parameters(width, bottleneck(self.r, width), depth)


@dataclass
class APEROptions(AdapterTraining):
    embedding: str = opt("concat", "prototype features: concat ([pre-trained || adapted], "
                         "APER), ptm (pre-trained only: SimpleCIL) or adapted (adapted only)",
                         choices=("concat", "ptm", "adapted"))

    def parameters_added(self, width: int, depth: int, classes: int) -> int:
        return self._adapters(width, depth) + 2 * width * classes


@dataclass
class RanPACOptions(AdapterTraining):
    M: Optional[int] = opt(None, "random projection width (default: 10000 x d / 768, i.e. "
                                 "the official 10000 on ViT-B, 1250 on vit-glyphs; 0: no "
                                 "projection, ridge on the features)", min=0)
    phase1: bool = opt(True, "train the petl modules on the first experience (phase 1); "
                             "false: the pre-trained backbone as it is")
    lambda_search: str = opt("primal", "ridge search over 10^-8..10^8 on the current "
                             "experience (80/20): primal (the official 17 M x M float32 "
                             "solves) or dual (the same ridge solutions through the n x n "
                             "kernel in float64: fast when n << M, e.g. M=10000 on a CPU)",
                             choices=("primal", "dual"))
    ridge: Optional[float] = opt(None, "fixed ridge lambda (default: searched every "
                                       "experience)", min=0)
    petl: str = opt("adapter", "what phase 1 trains: adapter (AdaptFormer in every block: "
                    "the code's CIFAR-100 choice) or ssf (scale-and-shift of every block's "
                    "norms and linear outputs, the patch embedding and the final norm: its "
                    "ImageNet-R choice)", choices=("adapter", "ssf"))
    head: str = opt("ridge", "ridge (random projection and the ridge head, RanPAC) or ncm "
                    "(no projection: cosine to the class means of the features, the code's "
                    "use_RP false; with phase1 false: its 'ncm' baseline)",
                    choices=("ridge", "ncm"))

    def projection(self, width: int) -> int:
        """M: as set, else 10000 x d / 768 (the official 10000 on ViT-B); 0 for the NCM
        head (no projection)."""
        if self.head == "ncm":
            return 0
        return self.M if self.M is not None else round(10000 * width / 768)

    def parameters_added(self, width: int, depth: int, classes: int) -> int:
        from ..ssf import scale_shift_parameters
        phase1 = 0 if not self.phase1 else scale_shift_parameters(width, depth) \
            if self.petl == "ssf" else self._adapters(width, depth)
        if self.head == "ncm":
            return phase1 + width * classes
        m = self.projection(width) or width
        return phase1 + m * m + 2 * m * classes


@dataclass
class EASEOptions(AdapterTraining):
    lr: float = opt(0.025, "SGD learning rate (cosine to 0, stepped once per epoch)", min=0)
    alpha: float = opt(0.1, "weight of the other subspaces' cosines (divided by t)", min=0)
    reweight: bool = opt(True, "weight 1 for a class's own subspace and alpha / t for the "
                               "others; false: one cosine over the whole concatenated "
                               "feature (the code's use_reweight false)")
    complement: str = opt("semantic", "prototypes of old classes in newer subspaces: "
                          "semantic (similarity-weighted new-class prototypes, EASE) or zeros",
                          choices=("semantic", "zeros"))
    use_init_ptm: bool = opt(False, "a pre-trained-only subspace in front of the adapter "
                                    "subspaces (one more ViT pass; real prototypes for every "
                                    "class, its cosine weighted by beta). Code: off for "
                                    "CIFAR, IN-R, IN-A, ObjectNet, VTAB; on for CUB, "
                                    "OmniBenchmark")
    beta: float = opt(1.0, "weight of the pre-trained subspace's cosine when use_init_ptm "
                           "(the configs that turn it on set 1)", min=0)
    adapter_num: Optional[int] = opt(None, "cap on adapter sets: only the first N "
                                           "experiences train one (the code's moni_adam "
                                           "mode: it also turns use_init_ptm on and scores "
                                           "a class by one cosine over the whole "
                                           "concatenated feature, alpha and beta unused; 1: "
                                           "APER with adapters); default: a set per "
                                           "experience", min=1)

    def parameters_added(self, width: int, depth: int, classes: int) -> int:
        subspaces = 1 + bool(self.use_init_ptm or self.adapter_num)
        return self._adapters(width, depth) + subspaces * width * classes

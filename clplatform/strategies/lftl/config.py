"""LFTL's hyper-parameters (``shared/specs/lftl.md``; the released code's values unless noted).

Defaults are for ``glyphs-domains`` on a 2-core CPU: R = 10 rounds of 1% of the target each
(10% in total), as the issue asks; a round adapts for ``round_epochs`` epochs (the paper uses
10-15 on GPUs) and only the last ``tune_blocks`` transformer blocks are fine-tuned, so the
frozen part is computed once per experience. ``tune_blocks=-1`` fine-tunes the whole backbone.
"""
from __future__ import annotations

from dataclasses import dataclass

from clplatform.options import opt

SAMPLERS = ("lftl", "random", "entropy", "margin", "least-confidence")


@dataclass
class LFTLOptions:
    sampler: str = opt("lftl", "query strategy: lftl (contrastive active sampling) or a "
                       "baseline under the same oracle and adaptation", choices=SAMPLERS)
    adapt: str = opt("full", "full: query and adapt on every target experience; none: the "
                     "source model only (no queries, no adaptation)", choices=("full", "none"))
    rounds: int = opt(10, "query-and-adapt rounds R per target experience", min=1)
    budget_per_round: float = opt(0.01, "labels queried per round, as a fraction of the target "
                                        "experience", min=0, max=1)
    alpha: float = opt(0.03, "contrast of the current softmax against the previous round's",
                       min=0)
    kappa: int = opt(100, "most-confident samples that set the class-transferability weights "
                          "(100 small domains, 500 large)", min=1)
    class_weight: float = opt(0.1, "lambda: weight of the class-transferability term", min=0)
    im_weight: float = opt(0.9, "beta_im: weight of information maximisation", min=0)
    vpa_weight: float = opt(1.0, "beta_vpa: weight of visual persistence (1 small, 10 large "
                                 "domains)", min=0)
    memory_momentum: float = opt(0.9, "anchor refresh M <- m f + (1 - m) M", min=0, max=1)
    mixup: bool = opt(True, "labelled-only mixup pass after each epoch (released code)")
    mixup_alpha: float = opt(0.75, "Beta(a, a) of the mixup coefficient", min=0)
    round_epochs: int = opt(1, "adaptation epochs per round (paper: 10-15)", min=0)
    batch_size: int = opt(64, "labelled and unlabelled batch size (each)", min=1)
    lr: float = opt(1e-3, "adaptation learning rate of bottleneck and classifier (backbone: "
                          "0.1x)", min=0)
    source_epochs: int = opt(10, "source training epochs (experience 0)", min=1)
    source_lr: float = opt(1e-2, "source learning rate of bottleneck and classifier "
                                 "(backbone: 0.1x)", min=0)
    label_smoothing: float = opt(0.1, "label smoothing of the source cross-entropy", min=0,
                                 max=1)
    source_model: str = opt("best", "source model kept: best: the epoch with the best "
                            "accuracy on the source experience's test set, the stream's "
                            "hold-out (paper, spec); last: the last epoch (what the released "
                            "code saves: its 'best' state_dict() copies alias the live "
                            "weights)", choices=("best", "last"))
    bottleneck: int = opt(256, "bottleneck width", min=1)
    tune_blocks: int = opt(1, "last transformer blocks fine-tuned with the head (-1: the "
                              "whole backbone)", min=-1)

    def parameters_added(self, width: int, depth: int, classes: int) -> int:
        """Parameters of the bottleneck (Linear + BatchNorm) and classifier: the runner checks
        them against the memory available (``build_within_memory``)."""
        return self.bottleneck * (width + 1 + 2) + classes * (2 * self.bottleneck + 2)

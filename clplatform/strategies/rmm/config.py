"""RMM's hyper-parameters (``shared/specs/low-rank-and-mergeable.md`` section 4). No official
code exists; the defaults are the spec's (rank 8 and alpha 8 as the ``lora`` reference on the
fused qkv, basis 2 as the abstract's "two or more models", uncentred layer coefficients) and
every continual-learning choice (refit, task-id routing, merge) is a flag."""
from __future__ import annotations

from dataclasses import dataclass

from clplatform.options import opt


@dataclass
class RMMOptions:
    rank: int = opt(8, "rank r of each experience's LoRA on the fused qkv (spec: 8)", min=1)
    alpha: float = opt(8.0, "LoRA scale alpha: the update is (alpha / r) B A (spec: 8)",
                       min=0)
    basis: int = opt(2, "basis size: at most k = min(basis, t) columns after t experiences "
                        "(spec: 2, 'an equivalent of two models')", min=1)
    coeff: str = opt("layer", "coefficients per layer factor (a task keeps k numbers per "
                     "factor; exact at k = n) or per position (a row of B, a column of A: "
                     "exact at k >= min(r, n))", choices=("layer", "position"))
    refit: str = opt("reconstructed", "refit input for earlier tasks: reconstructed (their "
                     "originals are dropped; errors may compound) or originals (analysis "
                     "only: keeps every LoRA)", choices=("reconstructed", "originals"))
    center: bool = opt(False, "subtract the task mean before the SVD (the mean is stored)")
    merge: str = opt("rmm", "inference: rmm (prototype task id -> W_0 + rebuilt delta of "
                     "that task, its head) or mean (one pass with W_0 + the mean of the "
                     "rebuilt deltas, all heads: task arithmetic)", choices=("rmm", "mean"))
    weight_decay: float = opt(0.0, "Adam weight decay while training an experience's LoRA "
                                   "and head (ours)", min=0)

    def lora_params(self, width: int, depth: int) -> int:
        """One experience's LoRA values: r (d + 3d) per block."""
        return depth * self.rank * (width + 3 * width)

    def parameters_added(self, width: int, depth: int, classes: int) -> int:
        """Parameters created in the first experience (its LoRA, a head)."""
        return self.lora_params(width, depth) + (width + 1) * classes

"""Low-rank branches on a frozen Linear layer: THE LoRA piece of the ViT strategies.

:class:`LowRankBranch` is one branch ``x -> scale * up(down(x))`` (``down``: r x in,
``up``: out x r, no biases) adding ``scale * up @ down`` to a slice of a Linear's outputs.
:class:`LoRALinear` wraps a Linear (e.g. timm's fused ``qkv`` of an attention block: outputs
``[q | k | v]``) and adds any number of branches, each on a contiguous slice of the outputs
(``(d, 3d)``: keys and values, as InfLoRA; ``(0, d)`` and ``(2d, 3d)``: queries and values, as
plain LoRA); :meth:`LoRALinear.merge` folds branches into the wrapped weight (zero inference
cost afterwards) through the shared re-parameterisation (:mod:`.reparam`; ``LoRALinear`` is a
:class:`~.reparam.ReparamLinear`, so ``fold_in``/``fold_out`` and ``deploy`` work on it too).
The wrapper replaces the Linear in place, so it works with timm's fused attention and any
code that calls ``attn.qkv(x)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .reparam import Delta, LinearUpdate, ReparamLinear, merge_linear


class LowRankBranch(nn.Module):
    """``x -> scale * (x @ down.T) @ up.T``: ``down`` (rank x in) Kaiming-uniform
    (a = sqrt 5, as a Linear), ``up`` (out x rank) zero, so a new branch is an exact no-op."""

    def __init__(self, in_features: int, out_features: int, rank: int, scale: float = 1.0):
        super().__init__()
        self.down = nn.Parameter(torch.empty(rank, in_features))
        self.up = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))
        self.scale = scale

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(F.linear(x, self.down), self.up)
        return out if self.scale == 1.0 else out * self.scale

    def delta_weight(self) -> torch.Tensor:
        """The dense update ``scale * up @ down`` (out x in)."""
        return self.scale * (self.up @ self.down)


class LoRALinear(ReparamLinear):
    """A Linear plus low-rank branches on slices of its output features.

    ``base`` keeps the wrapped Linear (its parameters untouched unless :meth:`merge` is
    called); ``branches`` the live branches, ``slices[i]`` the output slice ``(start, end)``
    of branch ``i``. ``forward(x) = base(x)`` with each branch's output added to its slice.
    """

    def __init__(self, base: nn.Linear):
        super().__init__(base)
        self.branches = nn.ModuleList()
        self.slices: list[tuple[int, int]] = []

    def add_branch(self, start: int, end: int, rank: int, scale: float = 1.0) -> LowRankBranch:
        """A new branch on outputs ``start:end`` (on the base weight's device and dtype)."""
        if not 0 <= start < end <= self.out_features:
            raise ValueError(f"slice {start}:{end} outside the {self.out_features} outputs")
        branch = LowRankBranch(self.in_features, end - start, rank, scale).to(
            self.base.weight.device, self.base.weight.dtype)
        self.branches.append(branch)
        self.slices.append((start, end))
        return branch

    def update(self, count: int | None = None) -> LinearUpdate:
        """The first ``count`` branches (all: None) as weight deltas on their slices."""
        pairs = list(zip(self.branches, self.slices))[:count]
        return LinearUpdate(deltas=[Delta(branch.delta_weight(), None, start)
                                    for branch, (start, _end) in pairs])

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if not self.branches:
            return out
        pieces, pos = [], 0
        for (start, end), group in self._grouped():
            delta = sum(branch(x) for branch in group)
            pieces += [out[..., pos:start], out[..., start:end] + delta]
            pos = end
        pieces.append(out[..., pos:])
        return torch.cat(pieces, dim=-1)

    def _grouped(self) -> list[tuple[tuple[int, int], list[LowRankBranch]]]:
        """Branches grouped by slice, slices in order (they must not overlap partially)."""
        groups: dict[tuple[int, int], list[LowRankBranch]] = {}
        for sl, branch in zip(self.slices, self.branches):
            groups.setdefault(sl, []).append(branch)
        ordered = sorted(groups.items())
        keys = [key for key, _ in ordered]
        for (a, b), (c, e) in zip(keys, keys[1:]):
            if c < b:
                raise ValueError(f"branch slices {a}:{b} and {c}:{e} overlap")
        return ordered

    @torch.no_grad()
    def merge(self, count: int | None = None) -> None:
        """Fold the first ``count`` branches (all: None) into the base weight and drop them."""
        count = len(self.branches) if count is None else count
        if self.merged:
            raise RuntimeError("fold_out() before merging branches away")
        # one branch after the other, in the weight's dtype (as adding them in place)
        merge_linear(self.base, self.update(count), keep_original=False)
        self.branches = nn.ModuleList(list(self.branches)[count:])
        self.slices = self.slices[count:]


def wrap_fused_qkv(blocks, dim: int, strategy: str) -> list[LoRALinear]:
    """Wrap the fused ``attn.qkv`` Linear (d -> 3d) of each of ``blocks`` in a
    :class:`LoRALinear`, in place; the wrappers, in block order."""
    wrapped = []
    for block in blocks:
        qkv = block.attn.qkv
        if not isinstance(qkv, nn.Linear) or qkv.out_features != 3 * dim:
            raise ValueError(f"{strategy} needs a fused qkv Linear (d -> 3d) in every block")
        block.attn.qkv = LoRALinear(qkv)
        wrapped.append(block.attn.qkv)
    return wrapped

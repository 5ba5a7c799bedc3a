"""The modules the mergeable methods put on a frozen Linear, each a
:class:`~clplatform.strategies.reparam.ReparamLinear` that says what it adds
(:meth:`update`), so that merging, undoing and deploying are the shared operation's.

- :class:`LinearAdapter` / :class:`AdaptedLinear`: ZeroI2V's linear adapter
  ``x + s * up(dropout(down(x)))`` (no non-linearity: an affine map) before or after a Linear.
- :class:`ProjectedBranch`: Comp-LoRA's low-rank branch, its ``up`` (and/or ``down``) projected
  off protected singular directions in the forward (a parametrisation, not a penalty); on a
  :class:`~clplatform.strategies.lora.LoRALinear` like plain LoRA's branch.
- :class:`GroupedBranch` / :class:`ConsolidatorLinear`: Consolidator's channel-shuffled grouped
  linear branches with DropPath, in parallel to the Linear.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..lora import LowRankBranch
from ..reparam import Affine, Delta, LinearUpdate, ReparamLinear


# ---------------------------------------------------------------------- ZeroI2V
class LinearAdapter(nn.Module):
    """``x + scale * up(dropout(down(x)))``; down: trunc-normal sigma 0.02, bias 0; up: zero
    (weight and bias), so a new adapter is an exact no-op (ZeroI2V ``LinearAdapter``)."""

    def __init__(self, dim: int, hidden: int, scale: float = 0.5, dropout: float = 0.1):
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(hidden, dim)
        self.scale = scale
        nn.init.trunc_normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.dropout(self.down(x))) * self.scale

    def affine(self) -> Affine:
        """The eval-mode map as ``x -> M x + c``: M = I + s Up Down, c = s (Up b_down + b_up)."""
        up, down = self.up, self.down
        eye = torch.eye(down.in_features, dtype=torch.float64, device=up.weight.device)
        m = eye + self.scale * (up.weight.double() @ down.weight.double())
        c = self.scale * (up.weight.double() @ down.bias.double() + up.bias.double())
        return Affine(m, c)


class AdaptedLinear(ReparamLinear):
    """A Linear with a linear adapter before it (``pre``) and/or after it (``post``)."""

    def __init__(self, base: nn.Linear, pre: LinearAdapter | None = None,
                 post: LinearAdapter | None = None):
        super().__init__(base)
        self.pre, self.post = pre, post

    def update(self) -> LinearUpdate:
        return LinearUpdate(pre=self.pre.affine() if self.pre is not None else None,
                            post=self.post.affine() if self.post is not None else None)

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre is not None:
            x = self.pre(x)
        y = self.base(x)
        return self.post(y) if self.post is not None else y


# ---------------------------------------------------------------------- Comp-LoRA
class ProjectedBranch(LowRankBranch):
    """A LoRA branch whose update is ``scale * (I - U U^T) up @ down (I - V V^T)``:
    ``left`` (out x k, orthonormal columns) and ``right`` (in x k) are the protected
    directions (None: that side is not projected). The projection is applied in the forward
    and in :meth:`delta_weight`, so the update never has a component along them."""

    def __init__(self, in_features: int, out_features: int, rank: int, scale: float,
                 left: torch.Tensor | None, right: torch.Tensor | None):
        super().__init__(in_features, out_features, rank, scale)
        self.register_buffer("left", left)
        self.register_buffer("right", right)

    def projected_up(self) -> torch.Tensor:
        u = self.left
        if u is None or u.shape[1] == 0:
            return self.up
        return self.up - u.to(self.up.dtype) @ (u.to(self.up.dtype).T @ self.up)

    def projected_down(self) -> torch.Tensor:
        v = self.right
        if v is None or v.shape[1] == 0:
            return self.down
        return self.down - (self.down @ v.to(self.down.dtype)) @ v.to(self.down.dtype).T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(F.linear(x, self.projected_down()), self.projected_up())
        return out if self.scale == 1.0 else out * self.scale

    def delta_weight(self) -> torch.Tensor:
        return self.scale * (self.projected_up() @ self.projected_down())


def protected_directions(weight: torch.Tensor, fraction: float, side: str, minor: bool = False
                         ) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
    """SVD of ``weight`` (float64): the top-k (``minor``: bottom-k) left and right singular
    vectors with k = round(fraction x min(out, in)), as (U_k or None, V_k or None, k)."""
    k = int(round(fraction * min(weight.shape)))
    u, _s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    pick = slice(u.shape[1] - k, u.shape[1]) if minor else slice(0, k)
    left = u[:, pick].to(weight.dtype).contiguous() if side in ("left", "both") else None
    right = vh[pick].T.to(weight.dtype).contiguous() if side in ("right", "both") else None
    return left, right, k


def orthonormal_union(basis: torch.Tensor | None, columns: torch.Tensor,
                      tol: float = 1e-6) -> torch.Tensor:
    """Orthonormal columns spanning ``basis`` (None: nothing) and the column space of
    ``columns`` (float64 SVD; directions below ``tol`` x the largest singular value are
    left out), in ``columns``' dtype."""
    parts = [columns.detach().double()]
    if basis is not None and basis.shape[1]:
        parts.insert(0, basis.detach().double())
    u, s, _vh = torch.linalg.svd(torch.cat(parts, dim=1), full_matrices=False)
    keep = s > tol * s.max() if s.numel() and s.max() > 0 else s > 0
    return u[:, keep].to(columns.dtype).contiguous()


# ---------------------------------------------------------------------- Consolidator
def shuffle_permutation(channels: int, groups: int) -> torch.Tensor:
    """Consolidator's ``ChannelShuffle1d(groups)`` as an index: shuffled = x[..., perm]
    (channels viewed as (groups, channels / groups), transposed, flattened)."""
    return torch.arange(channels).view(groups, channels // groups).T.reshape(-1)


class GroupedBranch(nn.Module):
    """Channel shuffle (optional) -> grouped linear (``groups`` blocks of in/g -> out/g, with
    bias) -> DropPath (per sample, training only), as Consolidator's branch. Weights and
    bias uniform(-1e-3, 1e-3) (``REP_BRANCH_INIT_STD``): not an exact no-op."""

    def __init__(self, in_features: int, out_features: int, groups: int, drop: float,
                 shuffle: bool, init: float = 1e-3):
        super().__init__()
        if in_features % groups or out_features % groups:
            raise ValueError(f"{groups} groups do not divide {in_features} -> {out_features}")
        self.groups, self.drop, self.in_features, self.out_features = (
            groups, drop, in_features, out_features)
        self.weight = nn.Parameter(torch.empty(groups, out_features // groups,
                                               in_features // groups).uniform_(-init, init))
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-init, init))
        self.register_buffer("perm", shuffle_permutation(in_features, groups) if shuffle
                             else torch.arange(in_features), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = x[..., self.perm].unflatten(-1, (self.groups, -1))          # (..., g, in/g)
        out = torch.einsum("...gi,goi->...go", xs, self.weight).flatten(-2) + self.bias
        if self.training and self.drop > 0:
            keep = 1.0 - self.drop
            shape = (x.shape[0],) + (1,) * (x.dim() - 1)
            mask = x.new_empty(shape).bernoulli_(keep)
            out = out * mask / keep
        return out

    def dense_weight(self) -> torch.Tensor:
        """The block-diagonal weight with its columns un-shuffled (out x in):
        ``branch(x) = dense @ x + bias`` in eval mode."""
        block = torch.block_diag(*self.weight.unbind(0))                  # on shuffled inputs
        dense = torch.zeros_like(block)
        dense[:, self.perm] = block
        return dense

    def support(self) -> torch.Tensor:
        """Boolean mask (out x in) of the entries the branch can change."""
        ones = torch.ones_like(self.weight, dtype=torch.bool)
        block = torch.block_diag(*ones.unbind(0))
        mask = torch.zeros_like(block)
        mask[:, self.perm] = block
        return mask


class ConsolidatorLinear(ReparamLinear):
    """A Linear with parallel :class:`GroupedBranch` es (one per group count)."""

    def __init__(self, base: nn.Linear, groups: list[int], drop: float, shuffle: bool):
        super().__init__(base)
        device, dtype = base.weight.device, base.weight.dtype
        self.branches = nn.ModuleList(
            GroupedBranch(base.in_features, base.out_features, g, drop, shuffle)
            .to(device, dtype) for g in groups)

    def update(self) -> LinearUpdate:
        weight, bias = self.consolidated()
        return LinearUpdate(deltas=[Delta(weight, bias)])

    def consolidated(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1 (adaptation -> storage): all branches as one matrix (columns
        un-shuffled) and one summed bias."""
        weight = sum(b.dense_weight() for b in self.branches)
        bias = sum(b.bias for b in self.branches)
        return weight, bias

    def union_support(self) -> torch.Tensor:
        mask = torch.zeros_like(self.base.weight, dtype=torch.bool)
        for b in self.branches:
            mask |= b.support()
        return mask

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + sum(b(x) for b in self.branches)


def lora_scale(alpha: float, rank: int) -> float:
    return alpha / rank if rank else 1.0


__all__ = ["LinearAdapter", "AdaptedLinear", "ProjectedBranch", "protected_directions",
           "orthonormal_union",
           "GroupedBranch", "ConsolidatorLinear", "shuffle_permutation", "lora_scale"]

"""A frozen timm ViT with sets of AdaptFormer adapters (one adapter per block per set), and
the cosine classifier the three methods train their adapters with.

The adapter is SEMA's :class:`~clplatform.strategies.sema.layer.Adapter` with AdaptFormer's
scale and dropout; it sits where SEMA's does: on ``x_mid = x + attn(norm1(x))``, in parallel
to the MLP (RevisitingCIL/CVPR24-Ease ``ffn_option = parallel``). One set is active per pass
(``use(k)``; ``None``: the pre-trained network).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from clplatform.backbones import Backbone
from clplatform.models import tome

from ..sema.layer import Adapter
from ..vit import ViTPieces, require_vit
from .config import AdapterTraining, bottleneck


class AdapterBlock(nn.Module):
    """A timm ViT block; ``adapters[k]`` is the block's adapter of set k, ``active`` the set
    used by the next forward (None: the plain block)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block
        self.adapters = nn.ModuleList()
        self.active: int | None = None

    def forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        b = self.block
        x_mid = tome.attention_residual(b, x, attn_mask, is_causal)  # merged if it merges
        out = x_mid + b.drop_path2(b.ls2(b.mlp(b.norm2(x_mid))))
        if self.active is None:
            return out
        return out + self.adapters[self.active](x_mid)


class AdapterViT(ViTPieces):
    """The backbone (frozen, eval mode) with :class:`AdapterBlock` s; adapters follow the
    model's mode (their dropout trains)."""

    def __init__(self, backbone: Backbone, opts: AdapterTraining, strategy: str):
        vit = require_vit(backbone, strategy)
        super().__init__(backbone)
        backbone.requires_grad_(False)
        self.dim = backbone.num_features
        self.r = bottleneck(opts.r, self.dim)
        self.adapter_scale, self.adapter_dropout = opts.scale, opts.dropout
        vit.blocks = nn.Sequential(*[AdapterBlock(b) for b in vit.blocks])
        self.frozen_blocks = len(vit.blocks)

    @property
    def num_sets(self) -> int:
        return len(self.blocks[0].adapters)

    def add_adapter_set(self) -> list[nn.Parameter]:
        """A new (no-op) adapter in every block; returns its parameters."""
        device = next(self.backbone.parameters()).device
        params = []
        for block in self.blocks:
            adapter = Adapter(self.dim, self.r, self.adapter_scale, self.adapter_dropout)
            block.adapters.append(adapter.to(device))
            params += list(block.adapters[-1].parameters())
        return params

    def adapter_set(self, k: int) -> list[nn.Module]:
        return [block.adapters[k] for block in self.blocks]

    def freeze_adapters(self) -> None:
        for block in self.blocks:
            block.adapters.requires_grad_(False)

    def adapter_params(self) -> int:
        return sum(p.numel() for b in self.blocks for p in b.adapters.parameters())

    def use(self, k: int | None) -> None:
        for block in self.blocks:
            block.active = k

    def train(self, mode: bool = True) -> "AdapterViT":
        super().train(mode)
        for block in self.blocks:
            block.adapters.train(mode)
        return self

    def features_from_tokens(self, tokens: torch.Tensor, k: int | None) -> torch.Tensor:
        """Pooled features (CLS after the final norm) of adapter set k (None: the PTM),
        from the embedded tokens."""
        self.use(k)
        try:
            return self.pool(self.run_blocks(tokens))
        finally:
            self.use(None)


class CosineClassifier(nn.Module):
    """``sigma * cos(feature, w_c)``; weights uniform(+-1/sqrt(d)), sigma learnable from 1
    (RevisitingCIL/CVPR24-Ease/RanPAC ``CosineLinear``). Trains the adapters; discarded
    afterwards."""

    def __init__(self, dim: int, classes: int):
        super().__init__()
        bound = 1.0 / math.sqrt(dim)
        self.weight = nn.Parameter(torch.empty(classes, dim).uniform_(-bound, bound))
        self.sigma = nn.Parameter(torch.ones(1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.sigma * F.linear(F.normalize(features, dim=1),
                                     F.normalize(self.weight, dim=1))

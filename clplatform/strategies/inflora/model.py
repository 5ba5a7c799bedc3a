"""InfLoRA's network: a frozen timm ViT whose attention ``qkv`` Linears carry a low-rank branch
per experience on their key/value outputs, and one linear head per experience."""
from __future__ import annotations

import torch
from torch import nn

from clplatform.backbones import Backbone
from clplatform.evaluator import MASK_VALUE

from ..lora import LoRALinear, LowRankBranch, wrap_fused_qkv
from ..vit import ViTPieces, require_vit
from .config import InfLoRAOptions


class InfLoRAModel(ViTPieces):
    """``forward(x)``: one ViT pass (old branches merged into W_k, W_v, or run), the heads of
    all experiences concatenated over their classes; classes of no head are masked."""

    def __init__(self, backbone: Backbone, num_classes: int, opts: InfLoRAOptions):
        vit = require_vit(backbone, "inflora")
        super().__init__(backbone)
        backbone.requires_grad_(False)
        self.dim = backbone.num_features
        self.rank = opts.resolved_rank(self.dim)
        self.num_classes = num_classes
        depth = len(vit.blocks)
        self.adapted = min(opts.blocks or depth, depth)
        wrap_fused_qkv(list(vit.blocks)[:self.adapted], self.dim, "inflora")
        self.heads = nn.ModuleList()
        self.head_classes: list[list[int]] = []
        self.frozen_blocks = depth  # the network is in eval mode while training (code)

    @property
    def wrappers(self) -> list[LoRALinear]:
        return [block.attn.qkv for block in self.blocks[:self.adapted]]

    def add_experience(self, classes: list[int]) -> list[LowRankBranch]:
        """A zero-up k/v branch in every adapted block and a head over ``classes`` (local
        labels: ``classes[i]`` is output i)."""
        branches = [w.add_branch(self.dim, 3 * self.dim, self.rank) for w in self.wrappers]
        for branch in branches:
            branch.down.requires_grad_(False)  # designed, never trained
        device = next(self.backbone.parameters()).device
        self.heads.append(nn.Linear(self.dim, len(classes)).to(device))
        self.head_classes.append(list(classes))
        return branches

    def finish_experience(self, merge: bool) -> None:
        """Freeze the experience's branch and head; fold the branches into W_k, W_v."""
        for w in self.wrappers:
            w.branches.requires_grad_(False)
            if merge:
                w.merge()
        self.heads.requires_grad_(False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit_features(x)

    def current_logits(self, features: torch.Tensor) -> torch.Tensor:
        """The newest head's logits (local labels)."""
        return self.heads[-1](features)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        out = features.new_full((len(features), self.num_classes), MASK_VALUE)
        if not self.heads:
            return out
        index = torch.tensor([c for cls in self.head_classes for c in cls],
                             device=features.device)
        return out.index_copy(1, index, torch.cat([h(features) for h in self.heads], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(x))

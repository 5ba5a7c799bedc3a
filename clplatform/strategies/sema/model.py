"""Injecting SEMA blocks into a timm VisionTransformer instance, and running it in pieces so
the strategy can cache what is frozen."""
from __future__ import annotations

import torch
from torch import nn

from clplatform.backbones import Backbone
from clplatform.errors import UserError
from clplatform.evaluator import MASK_VALUE

from ..prototype_head import PrototypeHead
from ..vit import ViTPieces, require_vit
from .config import SEMAOptions
from .layer import SEMABlock


class SEMAModel(ViTPieces):
    """Frozen ViT with SEMA blocks + a linear head over the classes seen so far.

    ``forward(x)`` is the single inference pass (all adapters, soft routers). The pieces
    ``embed``, ``run_blocks`` and ``pool`` (:class:`~clplatform.strategies.vit.ViTPieces`)
    let the strategy start from cached tokens.
    """

    def __init__(self, backbone: Backbone, num_classes: int, opts: SEMAOptions):
        vit = require_vit(backbone, "sema")
        super().__init__(backbone)
        backbone.requires_grad_(False)
        dim = backbone.num_features
        depth = len(vit.blocks)
        if opts.expandable_layers > depth:
            raise UserError(f"expandable_layers={opts.expandable_layers} but the backbone has "
                            f"{depth} blocks")
        bottleneck = opts.bottleneck or max(2, round(16 * dim / 768))
        rd_hidden = opts.rd_hidden or max(4, round(128 * dim / 768))
        self.first_expandable = depth - opts.expandable_layers
        vit.blocks = nn.Sequential(*[
            SEMABlock(block, dim, bottleneck, i >= self.first_expandable, rd_hidden,
                      opts.buffer_size, running_stats=opts.statistics == "running",
                      token_router=opts.router == "token")
            for i, block in enumerate(vit.blocks)])
        self.head = nn.Linear(dim, num_classes)  # weight: Kaiming-uniform (a = sqrt 5)
        if opts.head_bias == "zero":  # released code; drawn first, so the RNG stream is as before
            nn.init.zeros_(self.head.bias)
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))
        # variant: predict with class prototypes of the final features (SimpleCIL's head)
        self.prototypes = PrototypeHead(dim, num_classes) if opts.head == "prototype" else None
        self.frozen_blocks = depth  # frozen backbone: no dropout, no statistics updates

    @property
    def expandable(self) -> list[SEMABlock]:
        """The SEMA blocks that can grow adapters (``blocks``: all of them)."""
        return self.blocks[self.first_expandable:]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Prediction logits: classes not seen yet are masked out."""
        features = self.features(x)
        if self.prototypes is not None:
            return self.prototypes(features)
        return self.logits(features).masked_fill(~self.seen, MASK_VALUE)

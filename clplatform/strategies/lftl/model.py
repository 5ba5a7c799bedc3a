"""Backbone -> bottleneck (Linear + BatchNorm1d) -> weight-normalised linear classifier.

For a timm ViT the network is split where fine-tuning starts (``tune_blocks``): ``frozen``
maps images to the tokens entering the first fine-tuned block (computed once per experience
by the strategy), ``features`` maps those to bottleneck features. With ``tune_blocks=-1`` (or
a backbone that is not a ViT) nothing is frozen and ``frozen`` is the identity on images.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from clplatform.backbones import Backbone
from clplatform.errors import UserError

from ..vit import ViTPieces, is_vit
from .config import LFTLOptions


class WeightNormLinear(nn.Module):
    """Linear layer with weight w = g v / ||v|| per output row (Salimans & Kingma), written
    out: torch's parametrized weight_norm fails under ``inference_mode``."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        linear = nn.Linear(in_features, out_features)
        self.direction = nn.Parameter(linear.weight.detach().clone())
        self.scale = nn.Parameter(linear.weight.detach().norm(dim=1, keepdim=True))
        self.bias = nn.Parameter(linear.bias.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        return self.scale * self.direction / self.direction.norm(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class BottleneckNorm(nn.BatchNorm1d):
    """The bottleneck's BatchNorm1d; a training batch of one sample (``batch_size=1``, the
    single label of a small budget's first round, a last batch of one) has no variance to
    normalise with, so it is normalised with the running statistics, as in evaluation, and
    leaves them unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight,
                                self.bias, False, 0.0, self.eps)
        return super().forward(x)


class LFTLModel(ViTPieces):
    def __init__(self, backbone: Backbone, num_classes: int, opts: LFTLOptions):
        super().__init__(backbone)
        vit = backbone.model
        if opts.tune_blocks >= 0 and not is_vit(backbone):
            raise UserError(f"tune_blocks={opts.tune_blocks} needs a timm VisionTransformer "
                            f"backbone; use tune_blocks=-1 with {backbone.name}")
        depth = len(vit.blocks) if is_vit(backbone) else 0
        if opts.tune_blocks > depth:
            raise UserError(f"tune_blocks={opts.tune_blocks} but the backbone has {depth} "
                            "blocks")
        self.split = None if opts.tune_blocks < 0 else depth - opts.tune_blocks
        self.frozen_blocks = self.split  # the frozen part keeps its statistics
        if self.split is not None:
            backbone.requires_grad_(False)
            for block in list(vit.blocks)[self.split:]:
                block.requires_grad_(True)
            vit.norm.requires_grad_(True)
        self.bottleneck = nn.Sequential(nn.Linear(backbone.num_features, opts.bottleneck),
                                        BottleneckNorm(opts.bottleneck))
        self.classifier = WeightNormLinear(opts.bottleneck, num_classes)

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.bottleneck.parameters()) + list(self.classifier.parameters())

    @torch.no_grad()
    def frozen(self, x: torch.Tensor) -> torch.Tensor:
        if self.split is None:
            return x
        return self.run_blocks(self.embed(x), 0, self.split)

    def features(self, frozen: torch.Tensor) -> torch.Tensor:
        """Bottleneck features from the output of ``frozen``."""
        if self.split is None:
            pooled = self.backbone(frozen)
        else:
            pooled = self.pool(self.run_blocks(frozen, self.split))
        return self.bottleneck(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.frozen(x)))

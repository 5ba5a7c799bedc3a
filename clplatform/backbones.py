"""Backbones (timm models) and the classifier model every strategy trains; the architecture
of the backbone ``vit-glyphs`` and loading of local weights files.

The backbones themselves (``vit-glyphs``, ``timm:<model-name>``) are registered by the
component package :mod:`clplatform.models` (``vit-glyphs`` is pre-trained on a stream).

A :class:`Backbone` maps stream images (float tensors in [0, 1], any channel count and size)
to feature vectors: it adapts channels and size to the model's input and normalises with the
model's mean/std, unless built with ``normalize=False`` (the backbone option
``normalize=false``): then the [0, 1] pixels reach the model as they are, as the official
PILOT/RevisitingCIL/SEMA codes feed their ViTs. That option is the one place deciding it: a
strategy's ``input_norm=unit`` (prompt methods) can only turn normalisation off, and its
``input_norm=backbone`` follows the backbone.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError


class Backbone(nn.Module):
    """Stream images -> features, around a timm model built with ``num_classes=0``."""

    def __init__(self, model: nn.Module, *, name: str, in_chans: int, img_size: int,
                 mean: tuple[float, ...], std: tuple[float, ...], normalize: bool = True):
        super().__init__()
        self.model = model
        self.name = name
        self.in_chans = in_chans
        self.img_size = img_size
        self.num_features = int(model.num_features)
        #: False: inputs stay in [0, 1] (no mean/std normalisation), whatever a caller asks
        self.normalize = normalize
        # oneDNN's CPU convolutions (a conv stem, a patch embedding) run faster on
        # channels-last inputs (measured: +6 % per training step of vit-glyphs). Weights stay
        # contiguous: code that flattens gradients with .view(-1) (Avalanche's A-GEM, GSS,
        # many plugins) fails on channels-last parameters.
        self.channels_last = any(isinstance(m, nn.Conv2d) for m in model.modules())
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def prepare(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Match channels and size of the model's input, then normalise with the model's
        mean/std when both ``normalize`` and the backbone's own :attr:`normalize` say so
        (``normalize=False``: keep the stream's [0, 1] pixels, as the official prompt-method
        codes feed them; a backbone built with ``normalize=False`` never normalises)."""
        if x.shape[1] != self.in_chans:
            if x.shape[1] == 1:
                x = x.expand(-1, self.in_chans, -1, -1)
            elif self.in_chans == 1:
                x = x.mean(dim=1, keepdim=True)
            else:
                raise UserError(f"backbone {self.name} takes {self.in_chans} channels, "
                                f"the stream has {x.shape[1]}")
        if x.shape[-2:] != (self.img_size, self.img_size):
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear",
                              align_corners=False, antialias=x.shape[-1] > self.img_size)
        if normalize and self.normalize:
            x = (x - self.mean) / self.std
        if self.channels_last and x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.prepare(x))


class ClassifierModel(nn.Module):
    """``head(backbone(x))``; the head is usually Avalanche's ``IncrementalClassifier``.

    ``freeze_backbone()`` stops gradients into the backbone and keeps it in eval mode even
    when the strategy calls ``model.train()`` (so normalisation statistics stay frozen too).
    """

    def __init__(self, backbone: Backbone, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.backbone_frozen = False

    def freeze_backbone(self) -> "ClassifierModel":
        self.backbone_frozen = True
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        return self

    def train(self, mode: bool = True) -> "ClassifierModel":
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


# --------------------------------------------------------------------------- vit-glyphs
@dataclass(frozen=True)
class GlyphViTArch:
    """Architecture of ``vit-glyphs``; part of the cache key of its weights."""
    img_size: int = 32
    in_chans: int = 1
    embed_dim: int = 96
    depth: int = 6
    num_heads: int = 3
    mlp_ratio: float = 4.0
    stem_channels: tuple[int, ...] = (32, 64, 96)
    patch_size: int = 2  # on the stem's feature map (stride 4): 32x32 image -> 4x4 tokens


@dataclass(frozen=True)
class MiniViTArch(GlyphViTArch):
    """Architecture of ``vit-mini``: ``vit-glyphs``' layout, wider and deeper, and a conv stem
    with GroupNorm and GELU instead of BatchNorm and ReLU (no running statistics that can
    lag fine-tuned weights). Width and depth measured against its budgets (README)."""
    embed_dim: int = 192
    depth: int = 8
    num_heads: int = 3
    stem_channels: tuple[int, ...] = (32, 64, 192)
    stem_groups: int = 8  # GroupNorm groups of every stem convolution


def conv_stem(in_chans: int, channels: tuple[int, ...],
              norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
              act_layer: Callable[[], nn.Module] = partial(nn.ReLU, inplace=True)
              ) -> nn.Sequential:
    """3x3 convolutions, each followed by ``norm_layer(channels)`` and ``act_layer()``;
    every one after the first has stride 2 (default: BatchNorm and ReLU, ``vit-glyphs``)."""
    layers: list[nn.Module] = []
    for i, out in enumerate(channels):
        layers += [nn.Conv2d(in_chans, out, 3, stride=1 if i == 0 else 2, padding=1,
                             bias=False), norm_layer(out), act_layer()]
        in_chans = out
    return nn.Sequential(*layers)


def build_glyph_vit(arch: GlyphViTArch = GlyphViTArch(), num_classes: int = 0) -> nn.Module:
    """The ViT of ``arch``: a conv stem (timm's ``HybridEmbed``) and timm's
    ``VisionTransformer``; a :class:`MiniViTArch` gets a GroupNorm/GELU stem."""
    from timm.layers import HybridEmbed
    from timm.models.vision_transformer import VisionTransformer
    if isinstance(arch, MiniViTArch):
        stem = conv_stem(arch.in_chans, arch.stem_channels,
                         partial(nn.GroupNorm, arch.stem_groups), nn.GELU)
    else:
        stem = conv_stem(arch.in_chans, arch.stem_channels)
    return VisionTransformer(
        img_size=arch.img_size, patch_size=arch.patch_size, in_chans=arch.in_chans,
        embed_dim=arch.embed_dim, depth=arch.depth, num_heads=arch.num_heads,
        mlp_ratio=arch.mlp_ratio, num_classes=num_classes,
        embed_layer=partial(HybridEmbed, backbone=stem))


def _load_state(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"backbone weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or not a weights file
        raise UserError(f"cannot read backbone weights {path}: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"backbone weights {path} hold no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a local state dict into a timm model built with ``num_classes=0``.

    Classifier-head entries of the file (``head.*``) are ignored; every other key must match.
    """
    state = {k: v for k, v in _load_state(path).items() if not k.startswith("head.")}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = (f"missing {missing[:3]}" if missing else
                  f"unexpected {unexpected[:3]}" if unexpected else
                  f"shape mismatch at {wrong[:3]}")
        raise UserError(f"backbone weights {path} do not fit the model: {detail}")
    model.load_state_dict(state)

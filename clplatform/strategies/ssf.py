"""SSF: scaling and shifting features (Lian et al., NeurIPS 2022), THE SSF piece of the ViT
strategies (RanPAC's ImageNet-R phase 1).

:class:`ScaleShift` is ``x * scale + shift`` over the last dimension; :func:`add_scale_shift`
puts one after every site where RanPAC's SSF ViT has one (RanPAC/RanPAC
``petl/vision_transformer_ssf.py``): the patch embedding's projection, and in every block
the outputs of ``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``,
and the final ``norm``. Each site's module is wrapped in place (:class:`WithScaleShift`), so
timm's own forward (fused attention included) and any code that calls the module work
unchanged. Initialisation as the code: scale ~ N(1, 0.02), shift ~ N(0, 0.02) (a near
identity; ``init_std=0``: the exact identity).
"""
from __future__ import annotations

import torch
from torch import nn

#: the sub-modules of a timm ViT block followed by a scale-and-shift (the code's order)
BLOCK_SITES = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")


class ScaleShift(nn.Module):
    """``x * scale + shift`` over the last dimension of ``x``."""

    def __init__(self, dim: int, init_std: float = 0.02):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim))
        if init_std:
            nn.init.normal_(self.scale, mean=1.0, std=init_std)
            nn.init.normal_(self.shift, std=init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class WithScaleShift(nn.Module):
    """``module`` followed by a :class:`ScaleShift` of its output; other attributes are the
    wrapped module's (timm reads e.g. ``patch_embed.grid_size``)."""

    def __init__(self, module: nn.Module, dim: int, init_std: float = 0.02):
        super().__init__()
        self.module = module
        self.ssf = ScaleShift(dim, init_std)

    def forward(self, *args, **kwargs):
        return self.ssf(self.module(*args, **kwargs))

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["module"], name)


def _output_width(module: nn.Module, dim: int) -> int:
    return module.out_features if isinstance(module, nn.Linear) else dim


def add_scale_shift(vit: nn.Module, init_std: float = 0.02) -> list[ScaleShift]:
    """Wrap every SSF site of the timm VisionTransformer ``vit`` in place; returns the new
    :class:`ScaleShift` modules (trainable; everything else is left as it is)."""
    dim = vit.num_features
    added = []

    def wrap(parent: nn.Module, name: str) -> None:
        module = getattr(parent, name)
        wrapped = WithScaleShift(module, _output_width(module, dim), init_std)
        setattr(parent, name, wrapped.to(next(module.parameters(), torch.empty(0)).device))
        added.append(wrapped.ssf)
    wrap(vit, "patch_embed")
    for block in vit.blocks:
        block = getattr(block, "block", block)  # a block wrapped by a strategy
        for site in BLOCK_SITES:
            owner, _, name = site.rpartition(".")
            wrap(block.get_submodule(owner) if owner else block, name)
    wrap(vit, "norm")
    return added


def scale_shift_parameters(width: int, depth: int, mlp_ratio: float = 4.0) -> int:
    """Parameters :func:`add_scale_shift` adds to a ViT of ``width`` and ``depth``:
    2 x (patch + depth x (norm1 + 3 qkv + proj + norm2 + hidden + fc2) + norm) widths
    (205,824 on ViT-B/16)."""
    hidden = int(width * mlp_ratio)
    return 2 * (2 * width + depth * (7 * width + hidden))

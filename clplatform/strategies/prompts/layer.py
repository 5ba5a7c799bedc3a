"""Prefix injection into a timm ViT's attention, and one trainable prompt tensor.

``PrefixAttention`` wraps the ``attn`` module of a timm block instance: it reuses that
module's own projections and norms and only concatenates prefix keys/values in front of the
sequence's (DualPrompt's prefix tuning); without a prefix it calls the wrapped module as is.
``PromptTensor`` is one (prompt, layer) tensor: its full-precision latent, its quantizer and,
once stored, the b-bit form that inference uses.
"""
from __future__ import annotations

import torch
from torch import nn

from clplatform.errors import UserError
from clplatform.models import tome

from .quantizer import StoredTensor, TensorQuantizer


class PrefixAttention(nn.Module):
    """timm ``Attention`` + prefix keys/values set in ``self.prefix`` ([B or 1, 2, L, d])."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        missing = [a for a in ("qkv", "num_heads", "head_dim", "proj") if not hasattr(attn, a)]
        if missing or getattr(attn, "gate", None) is not None:
            raise UserError(f"prompts need timm's standard ViT attention; "
                            f"{type(attn).__name__} is not supported")
        self.attn = attn
        self.prefix: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        if self.prefix is None:
            return self.attn(x, attn_mask=attn_mask, is_causal=is_causal)
        if attn_mask is not None or is_causal:
            raise RuntimeError("prefix attention does not take attention masks")
        return tome.attention(self.attn, x, None, prefix=self.prefix)[0]

    def merged(self, x: torch.Tensor, size: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention step of a token-merging block (:func:`tome.attend`): proportional
        attention over the tokens' sizes, the prefix counting size 1 and never merged; the
        merge metric is the keys of ``x`` only."""
        return tome.attention(self.attn, x, size, prefix=self.prefix)


class PromptTensor(nn.Module):
    """One prompt (or key) tensor: latent parameter, optional quantizer, stored form.

    ``forward()`` gives the tensor the network uses: in training, the latent (plus Gaussian
    noise if asked) through the quantizer when quantization-aware; otherwise — and always once
    frozen — exactly the stored tensor.
    """

    def __init__(self, shape: tuple[int, ...], quantizer: TensorQuantizer | None,
                 qat: bool = True, noise: float = 0.0, full: bool = False,
                 init: torch.Tensor | None = None):
        super().__init__()
        # uniform(-1, 1), or the given initial value (rlp's factors: no random draw)
        self.latent = nn.Parameter(torch.empty(shape).uniform_(-1, 1) if init is None
                                   else init.detach().clone().float().reshape(shape))
        self.quantizer = quantizer
        self.qat, self.noise = qat, noise
        self.full = full  # not quantized: stored in fp32 (default fp16)
        self.stored: StoredTensor | None = None

    @property
    def frozen(self) -> bool:
        return not self.latent.requires_grad

    def forward(self) -> torch.Tensor:
        if self.stored is not None and (self.frozen or not self.training):
            return self.stored.dequantize()
        w = self.latent
        if self.training and self.noise > 0:
            w = w + self.noise * torch.randn_like(w)
        if self.quantizer is not None and self.qat:
            w = self.quantizer(w)
        return w

    @torch.no_grad()
    def store(self) -> None:
        """Keep the stored form of the current latent (b-bit or fp16)."""
        if self.quantizer is None:
            self.stored = StoredTensor(self.latent, full=self.full)
        else:
            self.stored = self.quantizer.freeze(self.latent)

    def freeze(self) -> None:
        self.store()
        self.latent.requires_grad_(False)

    def trainable(self) -> list[nn.Parameter]:
        """The parameters an optimizer trains for this tensor."""
        return [self.latent]

    @property
    def values(self) -> int:
        """Number of trained (and stored) values."""
        return self.latent.numel()

    @torch.no_grad()
    def copy_from(self, other: "PromptTensor") -> None:
        """Start from another tensor's latent (``e_init="copy"``)."""
        self.latent.copy_(other.latent)

    @property
    def stored_bits(self) -> int:
        return self.stored.stored_bits if self.stored is not None else 0


class HeadRows(nn.Module):
    """The head rows of one experience's classes, quantized as one tensor (``quantize_head``).

    While the experience trains, ``apply`` swaps those rows of the head's weight for their
    quantized value (straight-through); ``freeze`` writes the stored form into the head.
    """

    def __init__(self, classes: torch.Tensor, quantizer: TensorQuantizer, qat: bool = True):
        super().__init__()
        self.register_buffer("classes", classes.clone())
        self.quantizer, self.qat = quantizer, qat
        self.stored: StoredTensor | None = None

    def apply(self, weight: torch.Tensor) -> torch.Tensor:
        if self.stored is not None or not self.qat:
            return weight
        return weight.index_copy(0, self.classes, self.quantizer(weight[self.classes]))

    @torch.no_grad()
    def freeze(self, weight: torch.Tensor) -> None:
        self.stored = self.quantizer.freeze(weight[self.classes])
        weight[self.classes] = self.stored.dequantize()

    @property
    def stored_bits(self) -> int:
        return self.stored.stored_bits if self.stored is not None else 0

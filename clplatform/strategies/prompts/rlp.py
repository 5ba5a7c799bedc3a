"""``rlp``: re-parameterised low-rank prompts (``shared/specs/low-rank-and-mergeable.md``,
section 5; RLP, Hao et al., arXiv 2312.10813, known from its abstract).

``prompt`` with every prefix tensor (one block's key and value prefix, each L x d) factorised
P = A.B at rank r — A [L, r], B [r, d] — for the E-prompts and (``factor_g``) the G-prompt.
The factors are what trains and what is stored; after the experience the prompt is multiplied
out once (fp16, or fp32 with ``precision=fp32``) and inference uses that ordinary prompt, so
inference costs exactly ``prompt``'s FLOPs. ``init=svd``: the baseline's uniform(-1, 1) draw
(the same random numbers ``prompt`` draws) truncated to rank r by SVD and split evenly,
A = U_r S_r^1/2, B = S_r^1/2 V_r^T; at r = L the product is ``prompt``'s init. With a
quantizer (the qprompt machinery) each factor is quantized as a tensor of its own: k-means
codebook, straight-through gradient, b-bit indices stored.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from clplatform.errors import UserError

from .config import RLPOptions
from .layer import PromptTensor
from .model import PromptModel
from .quantizer import StoredTensor
from .strategy import PromptStrategy


def factor_init(dense: torch.Tensor, rank: int, how: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors A [..., L, r] and B [..., r, d] of ``dense`` [..., L, d] (batched over the
    leading dimensions): ``svd`` splits the rank-r truncated SVD evenly (float64); ``random``
    draws A uniform(-1, 1) and B uniform(-1, 1)·sqrt(3 / r), so that A.B has the entries'
    variance of a uniform(-1, 1) draw (1/3)."""
    if how == "svd":
        u, s, vh = torch.linalg.svd(dense.double(), full_matrices=False)
        root = s[..., :rank].sqrt()
        a = u[..., :rank] * root[..., None, :]
        b = root[..., :, None] * vh[..., :rank, :]
        return a.float().contiguous(), b.float().contiguous()
    if how == "random":
        *lead, length, dim = dense.shape
        a = torch.empty(*lead, length, rank).uniform_(-1, 1)
        b = torch.empty(*lead, rank, dim).uniform_(-1, 1) * (3 / rank) ** 0.5
        return a, b
    raise ValueError(f"unknown factor init {how!r}")


class FactoredPrompt(nn.Module):
    """One prefix tensor [2, L, d] (key and value) as P = A.B, A [2, L, r], B [2, r, d], each
    factor a :class:`PromptTensor` (its own quantizer, stored form). The same interface as
    ``PromptTensor``: ``forward()`` is the live product in training, and — once stored and
    frozen, or in eval mode — the multiplied-out stored prompt ``dense``."""

    def __init__(self, shape: tuple[int, int, int], rank: int, init: str,
                 make_factor: Callable[[tuple[int, ...], torch.Tensor], PromptTensor],
                 full: bool = False):
        super().__init__()
        dense = torch.empty(shape).uniform_(-1, 1)  # prompt's draw: same random numbers
        a, b = factor_init(dense, rank, init)
        self.rank, self.shape, self.full = rank, tuple(shape), full
        self.a = make_factor(tuple(a.shape), a)
        self.b = make_factor(tuple(b.shape), b)
        self.dense: StoredTensor | None = None

    @property
    def frozen(self) -> bool:
        return not self.a.latent.requires_grad

    def forward(self) -> torch.Tensor:
        if self.dense is not None and (self.frozen or not self.training):
            return self.dense.dequantize()
        return self.a() @ self.b()

    @torch.no_grad()
    def store(self) -> None:
        """Store the factors (fp16 or b-bit) and multiply the stored factors out into the
        prompt inference uses (fp16, fp32 with ``full``)."""
        self.a.store()
        self.b.store()
        self.dense = StoredTensor(self.a.stored.dequantize() @ self.b.stored.dequantize(),
                                  full=self.full)

    def freeze(self) -> None:
        self.store()
        self.a.latent.requires_grad_(False)
        self.b.latent.requires_grad_(False)

    def trainable(self) -> list[nn.Parameter]:
        return [self.a.latent, self.b.latent]

    @property
    def values(self) -> int:
        return self.a.values + self.b.values

    @torch.no_grad()
    def copy_from(self, other: "FactoredPrompt") -> None:
        self.a.copy_from(other.a)
        self.b.copy_from(other.b)

    @property
    def stored_bits(self) -> int:
        """What is stored: the two factors."""
        return self.a.stored_bits + self.b.stored_bits

    @property
    def dense_bits(self) -> int:
        """The multiplied-out prompt (what inference holds, and what ``prompt`` stores)."""
        return self.dense.stored_bits if self.dense is not None else 0


def factoring_saves(rank: int, length: int, dim: int) -> bool:
    """r.(L + d) < L.d, i.e. r < L.d / (L + d)."""
    return rank * (length + dim) < length * dim


class RLPModel(PromptModel):
    """``PromptModel`` whose prefix tensors are :class:`FactoredPrompt` (the G-prompt's only
    with ``factor_g``); keys and head stay dense."""

    opts: RLPOptions

    def __init__(self, backbone, num_classes: int, opts: RLPOptions):
        lengths = {"e_length": opts.e_length}
        if opts.factor_g and opts.g_layers:
            lengths["g_length"] = opts.g_length
        for name, length in lengths.items():
            if opts.rank > length:
                raise UserError(f"rlp: rank {opts.rank} exceeds {name} {length} (valid: 1 .. "
                                f"{length}; r = L is the un-compressed control)")
        super().__init__(backbone, num_classes, opts)

    def _prompt_tensor(self, shape, kind: str):
        o = self.opts
        if kind == "g" and not o.factor_g:
            return super()._prompt_tensor(shape, kind)

        def make_factor(factor_shape, init):
            return PromptTensor(factor_shape, self._quantizer(o.quantizer),
                                qat=o.schedule == "qat", noise=o.noise,
                                full=o.precision == "fp32", init=init)
        return FactoredPrompt(shape, o.rank, o.init, make_factor,
                              full=o.precision == "fp32").to(self._device())


class RLPStrategy(PromptStrategy):
    """``prompt``'s training and selection on an :class:`RLPModel`; records the rank and
    what the factors save against the dense prompts."""

    model_class = RLPModel
    opts: RLPOptions

    def experience_extras(self) -> dict:
        extras = super().experience_extras()
        model, o = self.prompts, self.opts
        tensors = [*model.g_prompts, *(t for e in model.e_prompts for t in e)]
        value_bits = 32 if o.precision == "fp32" else 16
        dense_bits = sum(value_bits * t.shape[0] * t.shape[1] * t.shape[2]
                         if isinstance(t, FactoredPrompt) else t.stored_bits for t in tensors)
        last = model.e_prompts[-1] if len(model.e_prompts) else []
        e_bits = sum(t.stored_bits for t in last)
        e_values = sum(t.values for t in last)
        extras.update({
            "rank": o.rank,
            "factor_g": bool(o.factor_g),
            "factoring_saves": factoring_saves(o.rank, o.e_length, model.dim),
            "rank_limit": o.e_length * model.dim / (o.e_length + model.dim),
            # the last experience's E-prompt: 2.e_layers.r.(L + d) stored values
            "e_prompt_values": e_values,
            "e_prompt_stored_bytes_per_experience": e_bits / 8,
            # every prompt stored dense, at the same value precision (prompt's storage)
            "prompt_bytes_if_dense": dense_bits / 8,
            "prompt_compression": dense_bits / max(1, sum(t.stored_bits for t in tensors)),
            # inference holds the multiplied-out prompts (the factors "merged" into an
            # ordinary prompt), no factors: 0 extra parameters against prompt
            "merged": True,
            "inference_extra_params": 0,
        })
        return extras

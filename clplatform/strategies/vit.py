"""A timm VisionTransformer in pieces, for the strategies that cache what is frozen.

One toolkit for every ViT strategy (SEMA, the prompt methods, LFTL): :func:`require_vit`
checks the backbone; :class:`ViTPieces` is the base of their models and runs the network in
pieces as timm's ``forward`` does (:meth:`~ViTPieces.embed`: patch embedding, class/position
tokens, ``norm_pre``; :meth:`~ViTPieces.run_blocks` from block i to j;
:meth:`~ViTPieces.pool`: ``norm``, pooling and ``fc_norm``), keeps the frozen part of the
backbone in eval mode whatever the model's mode, and :func:`map_batches` computes the frozen
part once per experience; :func:`frozen_rows` does it within a memory budget (the training
setting ``cache_gib``), beyond which the rows are recomputed whenever they are read.

Caching is exact: the strategies read an experience's images once
(:func:`~clplatform.data.experience_images`, uint8), and the cached part is frozen and in eval
mode, so a recomputed row equals the cached one. On a stream with a random training
transform (``transform=pilot``) the images draw a new augmentation at every read: then
:func:`frozen_rows` never caches (a :class:`FrozenRows`: a new draw per epoch, as the
official codes' data loaders), and :func:`map_batches` (computing something once:
prototypes, closed-form heads) reads the images through the eval transform.
"""
from __future__ import annotations

import torch
from torch import nn

from clplatform.backbones import Backbone
from clplatform.data import ExperienceImages, rows_on
from clplatform.errors import UserError
from clplatform.models.tome import pack, state_of, unpack


def require_vit(backbone: Backbone, strategy: str) -> nn.Module:
    """The backbone's timm VisionTransformer, or a clear error naming the strategy."""
    vit = backbone.model
    if not is_vit(backbone):
        raise UserError(f"{strategy} works on timm VisionTransformer backbones only; "
                        f"{backbone.name} is a {type(vit).__name__}")
    return vit


def is_vit(backbone: Backbone) -> bool:
    return hasattr(backbone.model, "blocks") and hasattr(backbone.model, "patch_embed")


@torch.no_grad()
def map_batches(fn, x: torch.Tensor, device, batch_size: int = 256,
                draw: bool = False) -> torch.Tensor:
    """``fn`` over ``x`` in batches on ``device``, concatenated (no gradients): for computing
    the frozen part of a network once per experience. Images with a random transform
    (:class:`~clplatform.data.ExperienceImages`, directly or under a :class:`FrozenRows`)
    are read through their eval view: what is computed once never depends on one draw.
    ``draw``: read them as one training pass does instead (each image's next random draw),
    for statistics the official code takes over its training loader."""
    if not draw:
        x = eval_view(x)
    return torch.cat([fn(rows_on(x, slice(i, i + batch_size), device))
                      for i in range(0, len(x), batch_size)])


def training_rows(fn, x, device) -> "torch.Tensor | FrozenRows":
    """``fn`` over ``x`` for a training loop: computed once (:func:`map_batches`), or, when
    reading ``x`` draws a random augmentation, recomputed at every read (a new draw per
    epoch: :class:`FrozenRows`)."""
    return FrozenRows(fn, x, device) if is_random(x) else map_batches(fn, x, device)


def is_random(x) -> bool:
    """Whether reading ``x`` draws a random augmentation (then nothing read may be cached)."""
    return isinstance(x, FrozenRows) and is_random(x.x) or getattr(x, "random", False)


def eval_view(x):
    """``x`` read without its random transform (itself when it has none)."""
    if isinstance(x, ExperienceImages):
        return x.eval_view()
    if isinstance(x, FrozenRows) and is_random(x.x):
        return FrozenRows(x.fn, eval_view(x.x), x.device)
    return x


class FrozenRows:
    """``fn`` over the rows of ``x``, computed when read: stands in for the tensor
    ``map_batches(fn, x, device)`` where a strategy indexes it (``rows[idx]`` with an index
    tensor or a slice, ``len(rows)``: :class:`~clplatform.strategies.base.TensorBatches`,
    :func:`map_batches`). ``fn`` must be frozen and deterministic (no dropout, no
    augmentation of its own; ``x`` may draw one per read: :class:`~clplatform.data.
    ExperienceImages`). ``x`` is pinned on CUDA, so the copies are asynchronous."""

    def __init__(self, fn, x: torch.Tensor, device):
        self.fn, self.device = fn, torch.device(device)
        self.x = x.pin_memory() if self.device.type == "cuda" and not x.is_pinned() else x

    @property
    def random(self) -> bool:
        return is_random(self.x)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx) -> torch.Tensor:
        if torch.is_tensor(idx):
            idx = idx.cpu()
        with torch.no_grad():
            return self.fn(rows_on(self.x, idx, self.device))


def frozen_rows(fn, x: torch.Tensor, device, budget_bytes: int,
                batch_size: int = 256) -> "torch.Tensor | FrozenRows":
    """``map_batches(fn, x, device)`` when the result fits in ``budget_bytes`` (judged on
    the first batch), else a :class:`FrozenRows` recomputing the rows when read (same
    values); always a :class:`FrozenRows` when reading ``x`` draws a random augmentation
    (a cache would freeze one draw)."""
    if is_random(x):
        return FrozenRows(fn, x, device)
    if len(x) == 0:
        return map_batches(fn, x, device, batch_size)
    with torch.no_grad():
        first = fn(rows_on(x, slice(0, batch_size), device))
    row_bytes = first[0].numel() * first.element_size()
    if len(x) * row_bytes > budget_bytes:
        return FrozenRows(fn, x, device)
    if len(x) <= batch_size:
        return first
    with torch.no_grad():
        rest = [fn(rows_on(x, slice(i, i + batch_size), device))
                for i in range(batch_size, len(x), batch_size)]
    return torch.cat([first, *rest])


class ViTPieces(nn.Module):
    """Base of a model around a (partly) frozen timm ViT backbone.

    ``frozen_blocks``: the backbone stays in eval mode (no dropout, no statistics updates)
    except its blocks from this index on, which follow the model's mode; ``None`` (the
    default): the whole backbone follows the model's mode, as any module.
    """

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone
        self.frozen_blocks: int | None = None
        #: False: :meth:`embed` feeds the stream's [0, 1] pixels without the backbone's
        #: mean/std normalisation (the official L2P/DualPrompt codes' input)
        self.normalize_input = True

    @property
    def vit(self) -> nn.Module:
        return self.backbone.model

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.vit.blocks)

    def train(self, mode: bool = True) -> "ViTPieces":
        super().train(mode)
        if self.frozen_blocks is not None:
            self.backbone.eval()
            for block in self.blocks[self.frozen_blocks:]:
                block.train(mode)
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the tokens entering the first block (timm's ``forward_features`` up to
        the blocks)."""
        vit = self.vit
        tokens = vit.patch_embed(self.backbone.prepare(x, self.normalize_input))
        return vit.norm_pre(vit.patch_drop(vit._pos_embed(tokens)))

    def run_blocks(self, tokens: torch.Tensor, start: int = 0,
                   end: int | None = None) -> torch.Tensor:
        """Tokens through blocks ``start`` to ``end`` (exclusive; None: the last).

        With token merging (:mod:`clplatform.models.tome`) a run that stops before the last
        block returns the tokens with their sizes as one more channel, and a run given such
        tokens continues from those sizes: cached tokens keep their sizes."""
        state = state_of(self.vit)
        if state is not None and start == 0:
            state.reset()  # a new pass (even one that runs no block: sizes all 1)
        if state is not None and tokens.shape[-1] == self.vit.embed_dim + 1:
            tokens = unpack(tokens, state)
        for block in self.blocks[start:end]:
            tokens = block(tokens)
        if state is not None and end is not None and end < len(self.vit.blocks):
            return pack(tokens, state)
        return tokens

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens after the last block -> the pooled feature (``norm``, pool, ``fc_norm``)."""
        return self.vit.forward_head(self.vit.norm(tokens), pre_logits=True)

    def vit_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> pooled features: the whole network."""
        return self.pool(self.run_blocks(self.embed(x)))

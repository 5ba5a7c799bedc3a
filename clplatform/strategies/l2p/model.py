"""A frozen timm ViT with L2P's shared prompt pool inserted at the input.

Sequence (the port's): ``[CLS, N x L prompt tokens, patches]``; every prompt token carries
the position embedding of [CLS]. The query is the final-norm [CLS] of an un-prompted pass of
the same frozen ViT; each sample selects the ``top_k`` prompts whose keys are most
cosine-similar to it. The head reads the mean of the prompt tokens' outputs after the final
norm (``head_type=prompt``) or the [CLS] feature (``token``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clplatform.backbones import Backbone
from clplatform.errors import UserError
from clplatform.evaluator import MASK_VALUE
from clplatform.models import tome

from ..prompts.model import init_head, majority_ids
from ..vit import ViTPieces, require_vit
from .config import L2POptions


class L2PModel(ViTPieces):
    """``forward(x)``: the query pass and the prompted pass (both counted at inference);
    logits of classes not seen yet are masked. ``last_selection`` keeps the prompt ids of the
    last forward ([B, top_k])."""

    def __init__(self, backbone: Backbone, num_classes: int, opts: L2POptions):
        vit = require_vit(backbone, "l2p")
        if getattr(vit, "cls_token", None) is None:
            raise UserError("l2p needs a ViT with a class token (prompts sit after [CLS] and "
                            "carry its position embedding)")
        if opts.top_k > opts.pool_size:
            raise UserError(f"l2p: top_k = {opts.top_k} prompts cannot be selected from a pool "
                            f"of {opts.pool_size}")
        super().__init__(backbone)
        backbone.requires_grad_(False)
        self.frozen_blocks = len(vit.blocks)
        self.normalize_input = opts.input_norm == "backbone"
        self.opts = opts
        self.dim = dim = backbone.num_features
        device = next(backbone.parameters()).device
        self.prompts = nn.Parameter(torch.empty(opts.pool_size, opts.length, dim,
                                                device=device).uniform_(-1, 1))
        self.keys = nn.Parameter(torch.empty(opts.pool_size, dim, device=device).uniform_(-1, 1))
        self.head = nn.Linear(dim, num_classes, device=device)
        init_head(self.head, opts.head_init)
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool, device=device))
        self.last_selection: torch.Tensor | None = None

    # ------------------------------------------------------------------ frozen part
    @torch.no_grad()
    def frozen_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> [CLS] + patch tokens with their position embeddings (before
        ``norm_pre``): what the prompts are inserted into; frozen, so cacheable."""
        vit = self.vit
        return vit.patch_drop(vit._pos_embed(vit.patch_embed(
            self.backbone.prepare(x, self.normalize_input))))

    @torch.no_grad()
    def query(self, tokens: torch.Tensor) -> torch.Tensor:
        """The un-prompted pass's pooled (final-norm [CLS]) feature."""
        return self.pool(self.run_blocks(self.vit.norm_pre(tokens)))

    # ------------------------------------------------------------------ selection
    def similarity(self, queries: torch.Tensor) -> torch.Tensor:
        return F.normalize(queries, dim=1) @ F.normalize(self.keys, dim=1).T

    def select(self, queries: torch.Tensor, batchwise: bool = False) -> torch.Tensor:
        """[B, top_k] prompt ids: per sample the keys most cosine-similar to its query;
        ``batchwise``: the top_k ids most often chosen in the batch, for every sample."""
        k = self.opts.top_k
        idx = self.similarity(queries).topk(k, dim=1).indices
        if batchwise and k:
            idx = majority_ids(idx, k, self.opts.pool_size)[None].expand(len(idx), k)
        return idx

    def pull(self, queries: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Sum over the selected keys of cos(query, key), averaged over the batch."""
        sims = self.similarity(queries).gather(1, idx)
        return sims.sum() / len(queries)

    # ------------------------------------------------------------------ prompted pass
    def sequence(self, tokens: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``[CLS, prompts[idx] (+ [CLS]'s position embedding), patches]``."""
        batch = len(tokens)
        prompts = self.prompts[idx].reshape(batch, idx.shape[1] * self.opts.length, self.dim)
        vit = self.vit
        if getattr(vit, "no_embed_class", False) or vit.pos_embed is None:
            cls_pos = prompts.new_zeros(())
        else:
            cls_pos = vit.pos_embed[:, :1]
        return torch.cat([tokens[:, :1], prompts + cls_pos, tokens[:, 1:]], dim=1)

    def features(self, sequence: torch.Tensor) -> torch.Tensor:
        """The head's input from a prompted sequence."""
        n = self.opts.top_k * self.opts.length
        with tome.protected_tokens(self.vit, n):  # token merging never merges the prompts
            out = self.run_blocks(self.vit.norm_pre(sequence))
        if self.opts.head_type == "token" or not self.opts.top_k:
            return self.pool(out)
        return self.vit.norm(out)[:, 1:1 + n].mean(dim=1)

    def prompted(self, tokens: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return self.features(self.sequence(tokens, idx))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.frozen_tokens(x)
        idx = self.select(self.query(tokens), batchwise=self.opts.batchwise_prompt == "both"
                          or (self.training and self.opts.batchwise_prompt == "train"))
        self.last_selection = idx
        logits = self.head(self.prompted(tokens, idx))
        return logits.masked_fill(~self.seen, MASK_VALUE)

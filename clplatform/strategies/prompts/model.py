"""A frozen timm ViT with DualPrompt-style G- and E-prompts, task keys and a linear head."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clplatform.backbones import Backbone
from clplatform.errors import UserError
from clplatform.evaluator import MASK_VALUE

from ..vit import ViTPieces, require_vit
from .config import PromptOptions
from .layer import HeadRows, PrefixAttention, PromptTensor
from .quantizer import TensorQuantizer


def init_head(head: nn.Linear, how: str) -> None:
    """A linear head's initialisation: ``torch`` (PyTorch's default, left as built),
    ``trunc_normal`` (std 0.02, zero bias: the L2P/DualPrompt ports) or ``zeros`` (JAX)."""
    if how == "trunc_normal":
        nn.init.trunc_normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)
    elif how == "zeros":
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)


class PromptModel(ViTPieces):
    """``forward(x)``: query from an un-prompted pass, the E-prompt whose key is closest to
    the query (cosine) among the experiences seen, then the prompted pass; logits of classes
    not seen yet are masked. ``selected_experience`` keeps the last choice per sample (the
    strategy hands it to the evaluator, for task-selection accuracy)."""

    def __init__(self, backbone: Backbone, num_classes: int, opts: PromptOptions):
        vit = require_vit(backbone, "prompt")
        depth = len(vit.blocks)
        if opts.g_layers + opts.e_layers > depth:
            raise UserError(f"g_layers + e_layers = {opts.g_layers + opts.e_layers} but the "
                            f"backbone has {depth} blocks")
        super().__init__(backbone)
        backbone.requires_grad_(False)
        self.frozen_blocks = depth  # frozen backbone: no dropout, no statistics updates
        self.opts = opts
        self.dim = dim = backbone.num_features
        self.attentions = []
        for block in list(vit.blocks)[:opts.g_layers + opts.e_layers]:
            block.attn = PrefixAttention(block.attn)
            self.attentions.append(block.attn)
        self.g_prompts = nn.ModuleList(
            self._prompt_tensor((2, opts.g_length, dim), "g") for _ in range(opts.g_layers))
        self.e_prompts = nn.ModuleList()  # one ModuleList of e_layers tensors per experience
        self.keys = nn.ModuleList()
        self.head = nn.Linear(dim, num_classes)
        init_head(self.head, opts.head_init)
        self.normalize_input = opts.input_norm == "backbone"
        self.head_rows = nn.ModuleList()  # quantize_head: one HeadRows per experience
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))
        self.selected_experience: torch.Tensor | None = None

    def _quantizer(self, method: str) -> TensorQuantizer | None:
        o = self.opts
        return None if method == "none" else TensorQuantizer(
            o.bits, method, o.standardize, o.refit, o.min_interval, o.kl_threshold)

    def _tensor(self, shape, method: str) -> PromptTensor:
        return PromptTensor(shape, self._quantizer(method), qat=self.opts.schedule == "qat",
                            noise=self.opts.noise, full=self.opts.precision == "fp32"
                            ).to(self._device())

    def _prompt_tensor(self, shape, kind: str) -> PromptTensor:
        """One prefix tensor (k and v of one block) of a G- (``kind="g"``) or E-prompt."""
        return self._tensor(shape, self.opts.quantizer)

    def _device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    # ------------------------------------------------------------------ growth
    def add_experience(self) -> list[nn.Parameter]:
        """A new E-prompt and key; returns the parameters to train in this experience.
        ``e_init="copy"``: the E-prompt starts as a copy of the previous one (its latent,
        full precision), the key does not."""
        o = self.opts
        self.e_prompts.append(nn.ModuleList(
            self._prompt_tensor((2, o.e_length, self.dim), "e") for _ in range(o.e_layers)))
        if o.e_init == "copy" and len(self.e_prompts) > 1:
            for new, old in zip(self.e_prompts[-1], self.e_prompts[-2]):
                new.copy_from(old)
        self.keys.append(self._tensor((self.dim,), o.quantizer if o.quantize_keys else "none"))
        params = [p for t in self.e_prompts[-1] for p in t.trainable()] + [self.keys[-1].latent]
        return params + [p for t in self.g_prompts for p in t.trainable()] + \
            list(self.head.parameters())

    def start_head_rows(self, classes: torch.Tensor) -> None:
        """quantize_head: the head rows of this experience's classes become one tensor."""
        if self.opts.quantize_head and self.opts.quantizer != "none":
            self.head_rows.append(HeadRows(classes.to(self._device()),
                                           self._quantizer(self.opts.quantizer),
                                           qat=self.opts.schedule == "qat"))

    def head_weight(self) -> torch.Tensor:
        """The head's weight, the training experience's rows quantized (quantize_head)."""
        weight = self.head.weight
        return self.head_rows[-1].apply(weight) if len(self.head_rows) else weight

    @torch.no_grad()
    def finish_experience(self) -> None:
        """Freeze this experience's E-prompt and key to their stored form; store the G-prompt
        (it keeps training later; inference uses the stored copy) and the head rows."""
        for tensor in [*self.e_prompts[-1], self.keys[-1]]:
            tensor.freeze()
        for tensor in self.g_prompts:
            tensor.store()
        if len(self.head_rows):
            self.head_rows[-1].freeze(self.head.weight)

    # ------------------------------------------------------------------ forward pieces
    def _pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.pool(self.run_blocks(tokens))

    @torch.no_grad()
    def query(self, tokens: torch.Tensor) -> torch.Tensor:
        """[CLS]/pooled feature of the un-prompted pass."""
        for attn in self.attentions:
            attn.prefix = None
        return self._pool(tokens)

    def prompted(self, tokens: torch.Tensor, e_prompts: list[torch.Tensor]) -> torch.Tensor:
        """Features of the prompted pass; ``e_prompts[l]``: [B or 1, 2, L, d] per E-layer."""
        g = [t()[None] for t in self.g_prompts]
        for attn, prefix in zip(self.attentions, g + list(e_prompts)):
            attn.prefix = prefix
        try:
            return self._pool(tokens)
        finally:
            for attn in self.attentions:
                attn.prefix = None

    def current_e_prompts(self) -> list[torch.Tensor]:
        return [t()[None] for t in self.e_prompts[-1]]

    def key_matrix(self) -> torch.Tensor:
        return torch.stack([k() for k in self.keys])

    def select(self, queries: torch.Tensor) -> torch.Tensor:
        """Index of the experience whose key is most cosine-similar to each query;
        ``batchwise_prompt`` at test: the index most samples of the batch chose."""
        sims = F.normalize(queries, dim=1) @ F.normalize(self.key_matrix(), dim=1).T
        chosen = sims.argmax(dim=1)
        if self.opts.batchwise_prompt and not self.training:
            chosen = majority_ids(chosen[:, None], 1, len(self.keys)).expand(len(chosen))
        return chosen

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features, self.head_weight(), self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x)
        if not len(self.keys):
            features = self.query(tokens)
            self.selected_experience = None
        else:
            chosen = self.select(self.query(tokens))
            self.selected_experience = chosen
            per_layer = [torch.stack([e[layer]() for e in self.e_prompts])[chosen]
                         for layer in range(self.opts.e_layers)]
            features = self.prompted(tokens, per_layer)
        return self.logits(features).masked_fill(~self.seen, MASK_VALUE)


def majority_ids(ids: torch.Tensor, n: int, pool: int) -> torch.Tensor:
    """The ``n`` ids occurring most often in ``ids`` (any shape, values in ``[0, pool)``),
    most frequent first, ties to the lower id: the ports' ``batchwise_prompt`` vote."""
    counts = torch.bincount(ids.flatten(), minlength=pool)
    # stable sort on -count keeps ascending ids among equal counts
    return torch.sort(-counts, stable=True).indices[:n]

"""Token merging (ToMe, Bolya et al. 2023) with PYRA's learned modulation (Xiong et al. 2024)
for timm VisionTransformer backbones: ``--backbone-opt merge_tokens=R``
(``shared/specs/compute-reduction.md`` A).

:func:`apply_token_merging` patches a timm ``VisionTransformer`` instance in place: each
standard block becomes a :class:`MergingBlock` (same weights, same attribute names, so every
strategy that reaches into ``block.attn``/``block.mlp`` keeps working) whose forward runs
attention on the current tokens (proportional attention: ``+ log s_j`` on every logit of key
``j``), then merges ``r_l`` tokens by bipartite soft matching after the residual add and before
the MLP. ``r = 0`` everywhere leaves the model untouched (the unpatched timm path).

The per-forward state (token sizes, tokens per block, merge indices) is a
:class:`MergeState` shared by the model and its blocks; the first block of a pass resets it.
Strategies that run a block's pieces themselves (SEMA's block, the adapter methods'
``AdapterBlock``) call the same step, :func:`attention_residual` (:func:`attend` then
:func:`merge`), and take token means with :func:`token_mean` (size-weighted); prompt prefixes
attend through ``PrefixAttention.merged`` (size 1, outside the metric); prompt tokens a
strategy puts into the sequence are protected with :func:`protected_tokens`. A strategy that
caches the tokens after some blocks gets them with their sizes as one extra channel
(:func:`pack`/:func:`unpack`, done by ``ViTPieces.run_blocks``). PYRA's parameters
(:class:`PYRAModulation`, ``block.pyra``) are backbone parameters; strategies that train
adapters or prompts add :func:`pyra_to_train` to what they train.

Where ToMe's code and this differ: the kept A tokens are always put back in position order
(ToMe sorts them only with a class token); protected tokens (CLS, distillation/register
tokens, a strategy's prompt tokens) keep their places in front; ``merge_match=random`` picks
the r sources at random among set A, each merging into its most similar B token.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from clplatform.errors import UserError

from . import TokenMergingOptions


def schedule(settings: TokenMergingOptions, depth: int) -> list[int]:
    """Tokens to merge per block: a per-block list (padded with 0), or a constant r; the
    decreasing schedule is ToMe's inflection -1 (``tome/utils.py parse_r``): r falls
    linearly from 2r in the first block to 0 in the last, truncated to integers."""
    r = settings.merge_tokens
    if len(r) > 1:
        if len(r) > depth:
            raise UserError(f"merge_tokens lists {len(r)} blocks but the backbone has {depth}")
        return list(r) + [0] * (depth - len(r))
    r = r[0] if r else 0
    if settings.merge_schedule == "constant":
        return [r] * depth
    if depth == 1:
        return [2 * r]
    step = -2 * r / (depth - 1)
    return [int(2 * r + step * i) for i in range(depth)]


class MergeState:
    """What one forward pass carries between blocks: token sizes [B, N, 1] (None: all 1) and
    the tokens entering each block; ``extra_protected`` tokens after the model's prefix tokens
    (prompt tokens a strategy puts into the sequence) are never merged."""

    def __init__(self, settings: TokenMergingOptions, prefix_tokens: int):
        self.settings = settings
        self.prefix_tokens = prefix_tokens
        self.extra_protected = 0
        self.size: torch.Tensor | None = None
        self.tokens_per_block: list[int] = []
        self.sources: list[torch.Tensor] = []  # merge indices per block (last pass)

    @property
    def protected(self) -> int:
        return self.prefix_tokens + self.extra_protected

    def reset(self) -> None:
        self.size = None
        self.tokens_per_block = []
        self.sources = []


class PYRAModulation(nn.Module):
    """PYRA's learned modulation of one merging block (``model/adaptive_merge.py``): ``a``
    [r, 1] (Kaiming-uniform, a = sqrt 5), ``b`` [1, d] (zeros: at init PYRA is exactly ToMe),
    a LayerNorm(d); r + 3d parameters."""

    def __init__(self, r: int, dim: int):
        super().__init__()
        self.a = nn.Parameter(torch.empty(r, 1))
        nn.init.kaiming_uniform_(self.a, a=math.sqrt(5))
        self.b = nn.Parameter(torch.zeros(1, dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        """Modulated size-weighted sources S' = S (1 + w_t w_c) from S and their matched
        destinations T ([B, r, d] each); if the cap cut r, the first slots of ``a`` are used."""
        pairs = self.norm(src + dst)
        channel = 2 * torch.sigmoid(self.a[:src.shape[1]].transpose(0, 1) @ pairs)  # [B,1,d]
        token = 2 * torch.sigmoid(pairs @ self.b.transpose(0, 1)) - 1                # [B,r,1]
        return src + src * channel * token


def state_of(module: nn.Module) -> MergeState | None:
    """The merge state of a patched model or block; None when merging is off."""
    return getattr(module, "merge_state", None)


# ----------------------------------------------------------------------------- steps
def attention(attn: nn.Module, x: torch.Tensor, size: torch.Tensor | None,
              prefix: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A timm ``Attention`` on ``x`` [B, N, d] computed explicitly, with proportional
    attention (``log size`` added to the logits of each key; None: plain attention) and
    optional prefix keys/values ``prefix`` [B or 1, 2, L, d] (size 1, never merged); returns
    the output and the keys of ``x`` averaged over heads (ToMe's metric, [B, N, d/H])."""
    batch, tokens, _ = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    q, k, v = attn.qkv(x).reshape(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(q), attn.k_norm(k)
    metric = k.mean(1)
    bias = None
    if size is not None:
        bias = size.log()[:, None, None, :, 0].to(q.dtype)                  # [B, 1, 1, N]
    if prefix is not None:
        prefix = prefix.expand(batch, -1, -1, -1)
        length = prefix.shape[2]
        pk, pv = (prefix[:, i].reshape(batch, length, heads, head_dim).transpose(1, 2)
                  for i in (0, 1))
        k = torch.cat([attn.k_norm(pk), k], dim=2)
        v = torch.cat([pv, v], dim=2)
        if bias is not None:
            bias = torch.cat([bias.new_zeros(batch, 1, 1, length), bias], dim=-1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                         dropout_p=attn.attn_drop.p if attn.training else 0.0)
    out = attn.norm(out.transpose(1, 2).reshape(batch, tokens, heads * head_dim))
    return attn.proj_drop(attn.proj(out)), metric


def attend(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention step of a merging block on ``x`` (before ``norm1``): the first block of a
    pass resets the state; an attention module with a ``merged(x, size)`` method (prompt
    prefixes) computes itself. Returns (attention output, merge metric)."""
    state = block.merge_state
    if block.merge_index == 0:
        state.reset()
    state.tokens_per_block.append(x.shape[1])
    size = state.size if state.settings.prop_attn else None
    h = block.norm1(x)
    own = getattr(block.attn, "merged", None)
    out, metric = own(h, size) if own is not None else attention(block.attn, h, size)
    return out, (metric if state.settings.merge_metric == "keys" else x)


def attention_residual(block: nn.Module, x: torch.Tensor, attn_mask=None,
                       is_causal: bool = False) -> torch.Tensor:
    """``x + attn(norm1(x))`` of a timm block (``x_mid``), and when the block merges tokens,
    computed by :func:`attend` and merged right after (:func:`merge`): the step every block
    wrapper that calls a block's pieces itself (SEMA, the adapter methods) shares."""
    if state_of(block) is None:
        return x + block.drop_path1(block.ls1(block.attn(
            block.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
    if attn_mask is not None or is_causal:
        raise RuntimeError("token merging does not take attention masks")
    out, metric = attend(block, x)
    return merge(block, x + block.drop_path1(block.ls1(out)), metric)


def _match(metric: torch.Tensor, r: int, protected: int, random: bool
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bipartite soft matching (``tome/merge.py``): even positions are sources (set A), odd
    ones destinations (B); each A token's most similar B token; the r A tokens with the
    highest similarity merge (sorted stably, so equal tokens give the same indices every
    time). The first ``protected`` tokens are never merged nor destinations.
    ``random``: the r sources are drawn at random among the A tokens (ablation).
    Returns (kept A indices in A, merged A indices in A, their B indices), each [B, ·, 1]."""
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = metric[..., ::2, :], metric[..., 1::2, :]
        scores = a @ b.transpose(-1, -2)
        a_protected, b_protected = (protected + 1) // 2, protected // 2
        scores[..., :a_protected, :] = -math.inf
        scores[..., :, :b_protected] = -math.inf
        node_max, node_idx = scores.max(dim=-1)
        if random:
            node_max = torch.rand(node_max.shape, device=node_max.device)
            node_max[..., :a_protected] = -math.inf
        edge_idx = node_max.argsort(dim=-1, descending=True, stable=True)[..., None]
        unmerged = edge_idx[..., r:, :].sort(dim=1)[0]  # position order: protected first
        src = edge_idx[..., :r, :]
        dst = node_idx[..., None].gather(dim=-2, index=src)
    return unmerged, src, dst


def merge(block: nn.Module, x: torch.Tensor, metric: torch.Tensor) -> torch.Tensor:
    """The merge step of a merging block, after the residual add: ``r`` (capped at
    ⌊(n − protected)/2⌋) tokens are merged into their matches by size-weighted mean (or
    dropped, ``merge_op=drop``); sizes add. New order: protected tokens, the kept A tokens
    in position order, then the B tokens."""
    state = block.merge_state
    settings = state.settings
    n = x.shape[1]
    protected = state.protected
    r = min(block.merge_r, (n - protected) // 2)
    if r <= 0:
        return x
    unmerged, src_idx, dst_idx = _match(metric, r, protected,
                                        settings.merge_match == "random")
    size = state.size if state.size is not None else x.new_ones(x.shape[0], n, 1)
    state.sources.append(src_idx[..., 0])

    def combine(t: torch.Tensor, pyra: nn.Module | None = None, drop: bool = False):
        a, b = t[..., ::2, :], t[..., 1::2, :]
        batch, _, c = a.shape
        kept = a.gather(dim=-2, index=unmerged.expand(batch, unmerged.shape[1], c))
        if not drop:
            src = a.gather(dim=-2, index=src_idx.expand(batch, r, c))
            if pyra is not None:
                src = pyra(src, b.gather(dim=-2, index=dst_idx.expand(batch, r, c)))
            b = b.scatter_reduce(-2, dst_idx.expand(batch, r, c), src, reduce="sum")
        a_protected, b_protected = (protected + 1) // 2, protected // 2
        front = kept[:, :a_protected]
        if b_protected:  # protected tokens alternate A, B from position 0: keep that order
            front = torch.stack([front[:, :b_protected], b[:, :b_protected]], dim=2
                                ).flatten(1, 2)
            if a_protected > b_protected:
                front = torch.cat([front, kept[:, b_protected:a_protected]], dim=1)
        return torch.cat([front, kept[:, a_protected:], b[:, b_protected:]], dim=1)

    drop = settings.merge_op == "drop"
    merged = combine(x * size, block.pyra, drop)
    state.size = combine(size, None, drop)
    return merged / state.size


@contextmanager
def protected_tokens(vit: nn.Module, count: int):
    """Inside: the ``count`` tokens after the model's prefix tokens (prompt tokens a
    VPT-style strategy puts into the sequence, as L2P after [CLS]) are never merged, stay in
    front, keep size 1 and count as destinations of nothing. No-op without merging."""
    state = state_of(vit)
    if state is None:
        yield
        return
    before, state.extra_protected = state.extra_protected, count
    try:
        yield
    finally:
        state.extra_protected = before


def token_mean(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Mean over tokens [B, N, d] -> [B, d]: size-weighted when ``module`` (a model or block)
    merges tokens, the plain mean otherwise."""
    state = state_of(module)
    if state is None or state.size is None:
        return x.mean(dim=1)
    return (x * state.size).sum(dim=1) / state.size.sum(dim=1)


def pack(tokens: torch.Tensor, state: MergeState) -> torch.Tensor:
    """Tokens [B, N, d] with their sizes as one more channel [B, N, d + 1] (to cache them)."""
    size = state.size if state.size is not None else tokens.new_ones(*tokens.shape[:2], 1)
    return torch.cat([tokens, size.to(tokens.dtype)], dim=-1)


def unpack(packed: torch.Tensor, state: MergeState) -> torch.Tensor:
    """Inverse of :func:`pack`: the tokens, sizes put into ``state``."""
    state.size = packed[..., -1:]
    return packed[..., :-1]


# ----------------------------------------------------------------------------- patching
def _block_class():
    from timm.models.vision_transformer import Block

    class MergingBlock(Block):
        """A timm ``Block`` that merges ``merge_r`` tokens between attention and MLP."""

        def forward(self, x, attn_mask=None, is_causal=False):
            x = attention_residual(self, x, attn_mask, is_causal)
            return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
    return MergingBlock


def _vit_class():
    from timm.models.vision_transformer import VisionTransformer

    class MergingVisionTransformer(VisionTransformer):
        """Mean pooling over merged tokens is size-weighted."""

        def pool(self, x, pool_type=None):
            pool_type = self.global_pool if pool_type is None else pool_type
            state = self.merge_state
            if self.attn_pool is not None or pool_type != "avg" or state.size is None:
                return super().pool(x, pool_type)
            start = 0 if self.pool_include_prefix else self.num_prefix_tokens
            size = state.size[:, start:]
            return (x[:, start:] * size).sum(dim=1) / size.sum(dim=1)
    return MergingVisionTransformer


_CLASSES: dict[str, type] = {}


def merging_classes() -> tuple[type, type]:
    """(MergingBlock, MergingVisionTransformer), module-level once created (picklable)."""
    if not _CLASSES:
        _CLASSES["block"] = _block_class()
        _CLASSES["vit"] = _vit_class()
        for cls in _CLASSES.values():
            cls.__module__ = __name__
            globals()[cls.__name__] = cls
    return _CLASSES["block"], _CLASSES["vit"]


def apply_token_merging(vit: nn.Module, settings: TokenMergingOptions, name: str = "backbone"
                        ) -> nn.Module:
    """Patch timm VisionTransformer ``vit`` in place for ``settings``; nothing changes when
    no block merges. PYRA (``settings.pyra``) adds a :class:`PYRAModulation` to every block
    that merges, as ``block.pyra`` (backbone parameters)."""
    if not any(settings.merge_tokens):
        return vit
    from timm.models.vision_transformer import Attention, Block, VisionTransformer
    if type(vit) is not VisionTransformer:
        raise UserError(f"token merging works on timm VisionTransformer backbones only; "
                        f"{name} is a {type(vit).__name__}")
    blocks = list(vit.blocks)
    odd = [type(b).__name__ for b in blocks if type(b) is not Block
           or type(b.attn) is not Attention or b.attn.gate is not None]
    if odd:
        raise UserError(f"token merging needs timm's standard ViT blocks; {name} has "
                        f"{odd[0]}")
    per_block = schedule(settings, len(blocks))
    block_class, vit_class = merging_classes()
    state = MergeState(settings, int(vit.num_prefix_tokens))
    vit.__class__ = vit_class
    vit.merge_state = state
    dim = int(vit.embed_dim)
    for i, (block, r) in enumerate(zip(blocks, per_block)):
        block.__class__ = block_class
        block.merge_state, block.merge_index, block.merge_r = state, i, r
        block.pyra = PYRAModulation(r, dim) if settings.pyra and r > 0 else None
    return vit


def pyra_parameters(*modules: nn.Module) -> list[nn.Parameter]:
    """The PYRA parameters inside ``modules`` (a patched model, some of its blocks)."""
    return [p for module in modules for m in module.modules() if isinstance(m, PYRAModulation)
            for p in m.parameters()]


def pyra_to_train(vit: nn.Module, experience: int, *within: nn.Module) -> list[nn.Parameter]:
    """The PYRA parameters a strategy trains in ``experience`` (0-based): in the first one,
    or in every one with ``pyra_train=all``; those inside ``within`` (default: the whole
    model; a strategy that starts from cached tokens names the blocks it runs) become
    trainable, every other PYRA parameter is frozen. Empty when PYRA is off."""
    state = state_of(vit)
    for p in pyra_parameters(vit):
        p.requires_grad_(False)
    if state is None or not (experience == 0 or state.settings.pyra_train == "all"):
        return []
    params = pyra_parameters(*(within or (vit,)))
    for p in params:
        p.requires_grad_(True)
    return params


__all__ = ["MergeState", "PYRAModulation", "apply_token_merging", "attend",
           "attention", "attention_residual", "merge", "pack", "protected_tokens",
           "pyra_parameters", "pyra_to_train", "schedule", "state_of", "token_mean", "unpack"]

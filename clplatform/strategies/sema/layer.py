"""SEMA's modules (``shared/specs/sema.md``): functional adapters, representation descriptors
with their loss statistics, the expandable soft router, and the block that mixes them.

Nothing here trains or decides; the strategy does. These are plain ``nn.Module`` pieces that
wrap a timm ViT block instance without copying timm's code.
"""
from __future__ import annotations

import math
from collections import deque

import torch
import torch.nn.functional as F
from torch import nn

from clplatform.models import tome


class Adapter(nn.Module):
    """Linear(d->r) -> ReLU -> [dropout] -> Linear(r->d) [x scale]; a new adapter is an exact
    no-op.

    Down weight Kaiming-uniform (a = sqrt 5, timm/PyTorch's Linear default), up weight and
    both biases zero. ``scale`` and ``dropout`` (training only) are AdaptFormer's, as APER,
    EASE and RanPAC use them (0.1 and 0.1); the defaults (1, 0: SEMA's adapter) skip both
    operations, so SEMA computes exactly what it computed before they existed.
    """

    def __init__(self, dim: int, bottleneck: int, scale: float = 1.0, dropout: float = 0.0):
        super().__init__()
        self.scale, self.dropout = scale, dropout
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(self.down(x))
        if self.dropout:
            hidden = F.dropout(hidden, p=self.dropout, training=self.training)
        out = self.up(hidden)
        return out * self.scale if self.scale != 1.0 else out


class LossStatistics(nn.Module):
    """Per-sample reconstruction losses of one descriptor seen while it trains.

    ``window`` (the released code): a FIFO buffer of the last ``size`` losses. ``running``
    (the paper): count, sum and sum of squares over every loss. Kept as buffers (saved with
    the model's state); frozen once the descriptor is frozen.
    """

    def __init__(self, size: int = 500, running: bool = False):
        super().__init__()
        self.size, self.running = size, running
        self.register_buffer("values", torch.zeros(0))
        self.register_buffer("moments", torch.zeros(3, dtype=torch.float64))  # n, sum, sum sq
        self.frozen = False

    @torch.no_grad()
    def add(self, losses: torch.Tensor) -> None:
        if self.frozen:
            return
        losses = losses.detach().flatten()
        if self.running:
            l64 = losses.double()
            self.moments += torch.stack([l64.new_tensor(len(l64)), l64.sum(), l64.pow(2).sum()])
        else:
            self.values = torch.cat([self.values, losses.float()])[-self.size:]

    @property
    def count(self) -> int:
        return int(self.moments[0]) if self.running else len(self.values)

    @property
    def numel(self) -> int:
        """Numbers stored for the statistics."""
        return self.moments.numel() if self.running else self.values.numel()

    @property
    def mean(self) -> float:
        if self.running:
            n, total, _ = self.moments.tolist()
            return total / n if n else 0.0
        return float(self.values.mean()) if len(self.values) else 0.0

    @property
    def std(self) -> float:
        """Unbiased standard deviation."""
        if self.running:
            n, total, squares = self.moments.tolist()
            return math.sqrt(max(squares - total * total / n, 0.0) / (n - 1)) if n > 1 else 0.0
        return float(self.values.std(unbiased=True)) if len(self.values) > 1 else 0.0

    def z_scores(self, losses: torch.Tensor, signed: bool = False) -> torch.Tensor:
        """(loss - mu) / sigma per sample (absolute unless ``signed``); 0 while the
        statistics hold 2 values or fewer."""
        if self.count <= 2:
            return torch.zeros_like(losses)
        z = (losses - self.mean) / max(self.std, 1e-12)
        return z if signed else z.abs()


class RepresentationDescriptor(nn.Module):
    """A linear autoencoder d -> h -> d on the token mean of the block's residual stream."""

    def __init__(self, dim: int, hidden: int, buffer_size: int = 500,
                 running_stats: bool = False):
        super().__init__()
        self.encode = nn.Linear(dim, hidden)
        self.decode = nn.Linear(hidden, dim)
        self.stats = LossStatistics(buffer_size, running_stats)

    def losses(self, x_mean: torch.Tensor) -> torch.Tensor:
        """Per-sample mean squared reconstruction error."""
        return (self.decode(self.encode(x_mean)) - x_mean).pow(2).mean(dim=1)


class SoftRouter(nn.Module):
    """Softmax over K adapters from the token mean; one weight vector per image.

    Every adapter gets a logit column (Linear d -> 1, default init) when it is added. Frozen
    columns live in ``frozen`` (Linear d -> k); the newest column is a separate trainable
    Linear(d -> 1) until ``merge()`` folds it in. With one adapter the weight is identically
    1 (its column receives no gradient, as in the released code).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.frozen: nn.Linear | None = None
        self.new: nn.Linear | None = None

    @property
    def num_columns(self) -> int:
        return (self.frozen.out_features if self.frozen is not None else 0) + \
            (1 if self.new is not None else 0)

    def add_column(self) -> nn.Linear:
        """A trainable logit column for a new adapter (earlier columns are merged, frozen)."""
        self.merge()
        self.new = nn.Linear(self.dim, 1).to(self._device())
        return self.new

    def _device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the trained new column into the frozen ones."""
        if self.new is None:
            return
        if self.frozen is None:
            merged = nn.Linear(self.dim, 1).to(self.new.weight.device)
            merged.weight.copy_(self.new.weight)
            merged.bias.copy_(self.new.bias)
        else:
            merged = nn.Linear(self.dim, self.frozen.out_features + 1).to(self.new.weight.device)
            merged.weight.copy_(torch.cat([self.frozen.weight, self.new.weight]))
            merged.bias.copy_(torch.cat([self.frozen.bias, self.new.bias]))
        merged.requires_grad_(False)
        self.frozen, self.new = merged, None

    def forward(self, x: torch.Tensor, num_adapters: int) -> torch.Tensor:
        """Weights [..., K] for ``num_adapters`` adapters from ``x`` [..., d] (the token mean
        [B, d], or the tokens [B, N, d] for the per-token variant); K = 1: all ones."""
        if num_adapters == 1:
            return x.new_ones(*x.shape[:-1], 1)
        logits = torch.cat([m(x) for m in (self.frozen, self.new) if m is not None], dim=-1)
        if logits.shape[-1] != num_adapters:
            raise RuntimeError(f"router has {logits.shape[-1]} columns for {num_adapters} "
                               "adapters")
        return logits.softmax(dim=-1)


class SEMABlock(nn.Module):
    """A timm ViT block with SEMA's adapters in parallel to its MLP.

    ``x_mid = x + attn(norm1(x))``; output ``x_mid + mlp(norm2(x_mid)) + sum_k w_k f_k(x_mid)``.
    In an expandable block the weights come from the soft router (on the token mean, or per
    token in the paper's variant) and every adapter has a
    representation descriptor; otherwise the block holds exactly one adapter (weight 1).
    ``self.last_mean`` keeps the token mean of ``x_mid`` of the last forward (for the RDs).
    With token merging the block merges right after ``x_mid`` (:func:`tome.merge`) and the
    token mean is size-weighted.
    """

    def __init__(self, block: nn.Module, dim: int, bottleneck: int, expandable: bool,
                 rd_hidden: int, buffer_size: int, running_stats: bool = False,
                 token_router: bool = False):
        super().__init__()
        self.block = block
        self.dim, self.bottleneck = dim, bottleneck
        self.expandable = expandable
        self.rd_hidden, self.buffer_size = rd_hidden, buffer_size
        self.running_stats, self.token_router = running_stats, token_router
        self.adapters = nn.ModuleList()
        self.descriptors = nn.ModuleList()
        self.router = SoftRouter(dim) if expandable else None
        self.last_mean: torch.Tensor | None = None

    def add_adapter(self) -> list[nn.Parameter]:
        """Add adapter (+ descriptor and router column); returns its functional parameters."""
        if self.adapters and not self.expandable:
            raise RuntimeError("a block that cannot expand holds exactly one adapter")
        device = next(self.block.parameters()).device
        adapter = Adapter(self.dim, self.bottleneck).to(device)
        self.adapters.append(adapter)
        params = list(adapter.parameters())
        if self.expandable:
            self.descriptors.append(RepresentationDescriptor(
                self.dim, self.rd_hidden, self.buffer_size, self.running_stats).to(device))
            column = self.router.add_column()
            if len(self.adapters) > 1:  # a single adapter's weight is 1: nothing to learn
                params += list(column.parameters())
        return params

    def forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        b = self.block
        x_mid = tome.attention_residual(b, x, attn_mask, is_causal)  # merged if it merges
        out = x_mid + b.drop_path2(b.ls2(b.mlp(b.norm2(x_mid))))
        if not self.adapters:
            return out
        mean = tome.token_mean(x_mid, b)  # size-weighted when tokens are merged
        self.last_mean = mean
        if len(self.adapters) == 1:
            return out + self.adapters[0](x_mid)
        if self.token_router:                                            # [B, N, K]
            weights = self.router(x_mid, len(self.adapters))
        else:                                                            # [B, 1, K]
            weights = self.router(mean, len(self.adapters))[:, None]
        mixed = torch.stack([a(x_mid) for a in self.adapters], -1)       # [B, N, d, K]
        return out + (mixed * weights[:, :, None, :]).sum(-1)

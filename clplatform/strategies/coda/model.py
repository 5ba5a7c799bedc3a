"""CODA-Prompt on a frozen timm ViT: per prompted block, components P (M x L x d), keys K and
attention vectors A (M x d); the prompt of a sample is sum_m alpha_m P_m with
alpha_m = cos(q * A_m, K_m) (no softmax), its first L/2 rows prefix keys, the last L/2 prefix
values (GT-RIPL/CODA-Prompt ``models/zoo.py``, ``CodaPrompt.forward``).

The query pass, the prefix plumbing (``PrefixAttention`` in the prompted blocks) and the
linear head are the prompt model's (:class:`~clplatform.strategies.prompts.PromptModel`, with
no G-prompt and ``layers`` prefix blocks); this model adds the components.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clplatform.backbones import Backbone
from clplatform.errors import UserError
from clplatform.evaluator import MASK_VALUE

from ..prompts.config import PromptOptions
from ..prompts.model import PromptModel
from ..vit import require_vit
from .config import CODAOptions

#: residual norm (relative to the draw's) below which no orthogonal direction is left
EXHAUSTED = 1e-6


def orthogonal_rows(old: torch.Tensor, count: int, mode: str = "span"
                    ) -> tuple[torch.Tensor, int]:
    """``count`` new unit rows, Gram-Schmidt-orthogonalised against the rows of ``old``
    ([n, D]) and each other, from Gaussian draws (``torch.randn``, one row at a time, as the
    code's ``gram_schmidt``). Returns the rows and how many found no orthogonal direction
    left (the earlier rows span the space: n + i >= D); those are the normalised draw.

    ``span``: projected out of the span of the earlier rows (an orthonormal basis of them,
    twice for float accuracy) — exactly orthogonal even once old rows have trained and are
    no longer orthonormal. ``code``: the code's ``v - sum_j (v.u_j / u_j.u_j) u_j`` over each
    earlier row u_j (exact only while the earlier rows are orthogonal).
    """
    dim = old.shape[1]
    prior = old.detach().double().cpu()
    rows, exhausted = [], 0
    if mode == "span":
        basis = torch.linalg.qr(prior.T)[0] if len(prior) else prior.new_zeros(dim, 0)
        for _ in range(count):
            v = torch.randn(dim).double()
            r = v - basis @ (basis.T @ v)
            r = r - basis @ (basis.T @ r)
            if r.norm() < EXHAUSTED * v.norm():  # the basis spans the space already
                rows.append(v / v.norm())
                exhausted += 1
                continue
            u = r / r.norm()
            rows.append(u)
            basis = torch.cat([basis, u[:, None]], dim=1)
    elif mode == "code":
        earlier = prior
        for _ in range(count):
            v = torch.randn(dim).double()
            if len(earlier):
                coef = (earlier @ v) / (earlier * earlier).sum(1)
                r = v - coef @ earlier
            else:
                r = v
            if r.norm() < EXHAUSTED * v.norm():  # spanned already (the code would loop
                rows.append(v)                    # forever on the next row's projection)
                exhausted += 1
                continue
            rows.append(r)
            earlier = torch.cat([earlier, r[None]])
        rows = [r / r.norm() for r in rows]
    else:
        raise ValueError(f"unknown orthogonalisation {mode!r}")
    new = torch.stack(rows) if rows else prior.new_zeros(0, dim)
    return new.to(old.dtype), exhausted


def ortho_penalty(rows: torch.Tensor) -> torch.Tensor:
    """mean((X X^T - I)^2) of the rows of X ([n, D]): the code's ``ortho_penalty``."""
    gram = rows @ rows.T
    return ((gram - torch.eye(len(rows), device=rows.device)) ** 2).mean()


class Components(nn.Module):
    """The components one experience adds, for every prompted block: ``p`` [layers, m, L, d],
    keys ``k`` and attention vectors ``a`` [layers, m, d]."""

    def __init__(self, layers: int, count: int, length: int, dim: int):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(layers, count, length, dim))
        self.k = nn.Parameter(torch.zeros(layers, count, dim))
        self.a = nn.Parameter(torch.zeros(layers, count, dim))

    @property
    def count(self) -> int:
        return self.k.shape[1]


class CODAModel(PromptModel):
    """``forward(x)``: query q from the un-prompted pass (no gradient), the composed prompt of
    every prompted block from all components so far, the prompted pass, the linear head;
    classes not seen yet are masked. Components of finished experiences are frozen
    (``requires_grad`` off: the code's ``detach``). ``selected_experience``: per sample of the
    last forward, the experience whose components got the largest mean |alpha| (over blocks
    and its components) — a diagnostic: CODA-Prompt selects nothing, it weighs everything."""

    def __init__(self, backbone: Backbone, num_classes: int, opts: CODAOptions):
        depth = len(require_vit(backbone, "coda-prompt").blocks)
        if opts.length % 2:
            raise UserError(f"coda-prompt: length must be even (half keys, half values), got "
                            f"{opts.length}")
        layers = min(opts.layers, depth)
        super().__init__(backbone, num_classes,
                         PromptOptions(g_layers=0, e_layers=layers, e_length=opts.length // 2))
        self.coda = opts
        self.layers = layers
        self.components = nn.ModuleList()
        self.exhausted = 0  # rows that found no orthogonal direction left (last experience)
        self.selected_experience: torch.Tensor | None = None

    # ------------------------------------------------------------------ growth
    def grow(self, count: int) -> Components:
        """Room for ``count`` new components (zeros; :meth:`add_experience` initialises)."""
        if self.coda.init == "orthogonal-start":
            self._reserve()
        chunk = Components(self.layers, count, self.coda.length, self.dim).to(self._device())
        self.components.append(chunk)
        return chunk

    def _reserve(self) -> None:
        """orthogonal-start: buffers for all M rows (filled by the first experience)."""
        if hasattr(self, "reserve_k"):
            return
        o, d, device = self.coda, self.dim, self._device()
        self.register_buffer("reserve_p", torch.zeros(self.layers, o.components, o.length, d,
                                                      device=device))
        self.register_buffer("reserve_k", torch.zeros(self.layers, o.components, d,
                                                      device=device))
        self.register_buffer("reserve_a", torch.zeros(self.layers, o.components, d,
                                                      device=device))

    @torch.no_grad()
    def add_experience(self, count: int) -> list[nn.Parameter]:
        """The experience's new components, initialised; returns what trains in this
        experience (them and the head)."""
        start = self.component_count
        if start + count > self.coda.components:
            raise UserError(f"coda-prompt: {start} + {count} components exceed the pool of "
                            f"{self.coda.components} (components / components_per_experience)")
        first = not len(self.components)
        chunk = self.grow(count)
        if self.coda.init == "orthogonal-start":
            if first:  # the beta release: nn.init.orthogonal_ on all M rows at the start
                for buf in (self.reserve_p, self.reserve_k, self.reserve_a):
                    for layer in range(self.layers):
                        nn.init.orthogonal_(buf[layer].view(self.coda.components, -1))
            for name in ("p", "k", "a"):
                getattr(chunk, name).copy_(getattr(self, f"reserve_{name}")[:, start:start
                                                                               + count])
        else:  # per experience, per block, K then A then P (the code's order)
            self.exhausted = 0
            for layer in range(self.layers):
                for name in ("k", "a", "p"):
                    old = self.rows(name, layer)[:start]  # not the new (zero) rows
                    new, exhausted = orthogonal_rows(old.flatten(1), count,
                                                     self.coda.orthogonalise)
                    getattr(chunk, name)[layer] = new.view_as(getattr(chunk, name)[layer])
                    self.exhausted += exhausted
        return list(chunk.parameters()) + list(self.head.parameters())

    def finish_experience(self) -> None:
        """Freeze the experience's components."""
        if len(self.components):
            self.components[-1].requires_grad_(False)

    @property
    def component_count(self) -> int:
        return sum(c.count for c in self.components)

    def rows(self, name: str, layer: int | None = None) -> torch.Tensor:
        """All components so far of one kind (``p``, ``k``, ``a``), one block or every one."""
        if not len(self.components):
            shape = {"p": (self.layers, 0, self.coda.length, self.dim)}.get(
                name, (self.layers, 0, self.dim))
            rows = torch.zeros(shape, device=self._device())
        else:
            rows = torch.cat([getattr(c, name) for c in self.components], dim=1)
        return rows if layer is None else rows[layer]

    # ------------------------------------------------------------------ composition
    def alphas(self, queries: torch.Tensor) -> torch.Tensor:
        """alpha [layers, B, M]: cos(q * A_m, K_m) = sum_d q_d A_md Kn_md / |q * A_m|
        (computed without the [B, M, d] product; ``attention`` off: cos(q, K_m))."""
        keys = F.normalize(self.rows("k"), dim=-1)                       # [l, M, d]
        if not self.coda.attention:
            return torch.einsum("bd,lmd->lbm", F.normalize(queries, dim=-1), keys)
        att = self.rows("a")
        dots = torch.einsum("bd,lmd->lbm", queries, att * keys)
        norms = torch.einsum("bd,lmd->lbm", queries ** 2, att ** 2).clamp_min(0).sqrt()
        return dots / norms.clamp_min(1e-12)

    def compose(self, queries: torch.Tensor, alphas: torch.Tensor | None = None
                ) -> list[torch.Tensor]:
        """The prefix of every prompted block, [B, 2, L/2, d]: keys then values."""
        alphas = self.alphas(queries) if alphas is None else alphas
        prompts = torch.einsum("lbm,lmkd->lbkd", alphas, self.rows("p"))
        half = self.coda.length // 2
        return [p.reshape(len(queries), 2, half, self.dim) for p in prompts]

    def ortho_loss(self) -> torch.Tensor:
        """Sum over the prompted blocks of the penalties of K, A and P (flattened)."""
        total = 0.0
        for layer in range(self.layers):
            for name in ("k", "a", "p"):
                rows = self.rows(name, layer)
                total = total + ortho_penalty(rows.flatten(1))
        return total

    @torch.no_grad()
    def experience_weights(self, alphas: torch.Tensor) -> torch.Tensor:
        """[B, experiences]: mean |alpha| over the blocks and each experience's components."""
        per_component = alphas.abs().mean(dim=0)                        # [B, M]
        return torch.stack([part.mean(dim=1) for part in per_component.split(
            [c.count for c in self.components], dim=1)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x)
        queries = self.query(tokens)
        if not len(self.components):
            features = queries  # nothing to prompt with: the un-prompted pass
            self.selected_experience = None
        else:
            alphas = self.alphas(queries)
            self.selected_experience = self.experience_weights(alphas).argmax(dim=1)
            features = self.prompted(tokens, self.compose(queries, alphas))
        return self.logits(features).masked_fill(~self.seen, MASK_VALUE)

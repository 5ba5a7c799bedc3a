"""RanPAC (McDonnell et al., NeurIPS 2023; RanPAC/RanPAC ``RanPAC.py``, ``inc_net.py``).

Phase 1 (experience 1 only): adapters in every block train with a cosine head, then the
backbone is frozen. Phase 2 (every experience, no SGD): h = ReLU(f W) with W ~ N(0, 1) of
d x M drawn once (after phase 1, as the code draws it), G += H^T H, Q += H^T Y (Y one-hot,
uncentred; Q is the class sums of h: the prototype head's ``sums``); the ridge lambda is
searched over 10^-8..10^8 on the current experience (first 80 % of a shuffled order fit,
last 20 % scored by mean squared error); the head is ((G + lambda I)^-1 Q)^T, a float32
``linalg.solve``. ``forward`` runs the ViT, the projection and the head.

``petl=ssf``: phase 1 trains SSF scale-and-shift parameters (:mod:`..ssf`) instead of
adapters, the code's ImageNet-R choice; the frozen patch projection is still computed once
per experience (its SSF runs with the blocks). ``head=ncm``: no projection, no ridge; the
prototype head (cosine to the class means of the features) as the code does with
``use_RP`` false.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clplatform.backbones import Backbone
from clplatform.data import experience_images
from clplatform.evaluator import MASK_VALUE

from ..base import StrategyContext
from ..prototype_head import PrototypeHead
from ..ssf import add_scale_shift
from .common import AdapterStrategy
from .config import RanPACOptions
from .model import AdapterViT

#: the ridge grid of the official code: 10^-8 ... 10^8
RIDGES = tuple(10.0 ** e for e in range(-8, 9))


def ridge_solve(G: torch.Tensor, Q: torch.Tensor, ridge: float) -> torch.Tensor:
    """``((G + ridge I)^-1 Q)^T`` by ``linalg.solve`` (not an inverse), in G's dtype."""
    eye = torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
    return torch.linalg.solve(G + ridge * eye, Q).T


def search_ridge(H: torch.Tensor, Y: torch.Tensor, method: str = "dual",
                 ridges=RIDGES) -> tuple[float, list[float]]:
    """The official search: fit on the first 80 % of the rows of (H, Y), score the mean
    squared error of the last 20 % over every column of Y, return the ridge of the smallest
    error (the first one on ties) and the errors.

    ``primal`` solves the M x M systems as the code does (in H's dtype); ``dual`` computes the
    same ridge solutions through the n x n kernel, H_t^T (H_t H_t^T + lambda I)^-1 Y_t, from one
    eigendecomposition, in float64 (exact, and cheap when n << M)."""
    n = int(H.shape[0] * 0.8)
    Ht, Hv, Yt, Yv = H[:n], H[n:], Y[:n], Y[n:]
    losses = []
    if method == "primal":
        G, Q = Ht.T @ Ht, Ht.T @ Yt
        for ridge in ridges:
            losses.append(float(F.mse_loss(Hv @ ridge_solve(G, Q, ridge).T, Yv)))
    else:
        Ht64, Hv64, Yt64, Yv64 = (a.double() for a in (Ht, Hv, Yt, Yv))
        evals, U = torch.linalg.eigh(Ht64 @ Ht64.T)
        cross = (Hv64 @ Ht64.T) @ U                   # [n_val, n]
        UtY = U.T @ Yt64                              # [n, C]
        for ridge in ridges:
            pred = cross @ (UtY / (evals.clamp(min=0) + ridge)[:, None])
            losses.append(float(F.mse_loss(pred, Yv64)))
    best = min(range(len(ridges)), key=lambda i: (losses[i], i))
    return ridges[best], losses


class RanPACModel(AdapterViT):
    """``forward(x)``: adapted ViT features, ReLU random projection, the ridge head; classes
    not seen yet are masked."""

    def __init__(self, backbone: Backbone, num_classes: int, opts: RanPACOptions):
        super().__init__(backbone, opts, "ranpac")
        self.ncm = opts.head == "ncm"
        self.ssf = nn.ModuleList()
        if opts.phase1 and opts.petl == "adapter":
            self.add_adapter_set()
        elif opts.phase1:
            self.ssf.extend(add_scale_shift(self.vit))
        self.M = opts.projection(self.dim)
        width = self.M or self.dim
        self.register_buffer("W", torch.zeros(self.dim, self.M))
        # ncm: the prototype head is the head, there is no ridge
        self.register_buffer("G", torch.zeros((0, 0) if self.ncm else (width, width)))
        self.stats = PrototypeHead(width, num_classes)  # sums = Q^T, counts: classes seen
        self.register_buffer("weight", torch.zeros(0 if self.ncm else num_classes, width))

    def phase1_parameters(self) -> list[nn.Parameter]:
        return [p for b in self.blocks for p in b.adapters.parameters()] + \
            list(self.ssf.parameters())

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """With SSF: the patch projection only (frozen, cacheable); the rest of the
        embedding runs in :meth:`features_from_tokens`."""
        if not len(self.ssf):
            return super().embed(x)
        return self.vit.patch_embed.module(self.backbone.prepare(x, self.normalize_input))

    def features_from_tokens(self, tokens: torch.Tensor, k: int | None) -> torch.Tensor:
        if len(self.ssf):
            vit = self.vit
            tokens = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed.ssf(tokens))))
        return super().features_from_tokens(tokens, k)

    def backbone_features(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.features_from_tokens(tokens, 0 if self.num_sets else None)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return F.relu(features @ self.W) if self.M else features

    @torch.no_grad()
    def accumulate(self, H: torch.Tensor, labels: torch.Tensor) -> None:
        """G += H^T H; Q += H^T Y (the class sums of H)."""
        self.G += H.T @ H
        self.stats.add(H, labels)

    @torch.no_grad()
    def solve(self, ridge: float) -> None:
        """The head from the accumulated statistics: ((G + ridge I)^-1 Q)^T."""
        self.weight.copy_(ridge_solve(self.G, self.stats.sums.T, ridge))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.project(self.backbone_features(self.embed(x)))
        if self.ncm:
            return self.stats(h)
        return (h @ self.weight.T).masked_fill(self.stats.counts == 0, MASK_VALUE)


class RanPAC(AdapterStrategy):
    opts: RanPACOptions

    def __init__(self, context: StrategyContext, opts: RanPACOptions):
        model = RanPACModel(context.backbone, context.info.num_classes, opts)
        super().__init__(context, opts, model=model)
        self.experiences_seen = 0
        self._record: dict = {}

    @property
    def ranpac(self) -> RanPACModel:
        return self.model

    def _train_exp(self, experience, eval_streams=None, **kwargs):
        model, o = self.ranpac, self.opts
        x, y = experience_images(experience.dataset)
        tokens = self._tokens(x)
        trained = 0
        if self.experiences_seen == 0:
            if o.phase1:
                params = model.phase1_parameters()
                self._train_adapters(0 if model.num_sets else None, params, tokens, y,
                                     sorted(set(y.tolist())))
                trained = sum(p.numel() for p in params)
            model.requires_grad_(False)
            if model.M:  # drawn once, after phase 1 (as the code draws it), fixed forever
                model.W.copy_(torch.randn(model.dim, model.M).to(model.W))
        model.eval()
        features = self._map(model.backbone_features, tokens)
        # the code accumulates over a shuffled loader: the 80/20 split follows that order
        order = torch.randperm(len(features))
        H = torch.cat([model.project(features[i:i + 256])
                       for i in range(0, len(features), 256)])[order.to(features.device)]
        labels = y.to(self.device)[order.to(self.device)]
        self.experiences_seen += 1
        self._record = {"trained_params": trained}
        if model.ncm:  # class means of the features, nothing to solve
            model.stats.add(H, labels)
            return
        Y = F.one_hot(labels, model.weight.shape[0]).to(H.dtype)
        model.accumulate(H, labels)
        ridge = o.ridge if o.ridge is not None else search_ridge(H, Y, o.lambda_search)[0]
        model.solve(ridge)
        self._record["ridge"] = ridge

    def checkpoint_state(self) -> dict:
        return {"experiences_seen": self.experiences_seen}

    def restore_checkpoint_state(self, state: dict, experiences: list) -> None:
        self.experiences_seen = state["experiences_seen"]
        if self.experiences_seen:
            self.ranpac.requires_grad_(False)

    def experience_extras(self) -> dict:
        model = self.ranpac
        seen = int((model.stats.counts > 0).sum())
        width = model.stats.sums.shape[1]
        adapters = model.adapter_params()
        ssf = sum(p.numel() for p in model.ssf.parameters())
        head = seen * width
        # kept: adapters or SSF, W (regenerable from a seed, counted), G, Q and the head
        # rows (ncm: the class means)
        stored = adapters + ssf + model.W.numel() + model.G.numel() + \
            (head if model.ncm else 2 * head)
        return {"params_added": adapters + ssf + head, "stored_bytes": 4 * stored,
                "projection_width": model.M, "adapter_params": adapters, "ssf_params": ssf,
                **self._record}

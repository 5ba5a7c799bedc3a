"""APER with adapters ("ADAM", Zhou et al. 2023; RevisitingCIL ``models/aper_adapter.py``).

Experience 1: adapters in every block and a cosine head (learnable sigma) train with
cross-entropy over its classes; then everything is frozen forever. Every experience (the
first included) writes, for its own classes only, the mean of the concatenated features
[pre-trained || adapted] of its training images into a prototype head; prediction is the
highest cosine over the classes seen. Inference is two ViT passes, both in ``forward``.
"""
from __future__ import annotations

import torch

from clplatform.backbones import Backbone
from clplatform.data import experience_images

from ..base import StrategyContext
from ..prototype_head import PrototypeHead
from .common import AdapterStrategy
from .config import APEROptions
from .model import AdapterViT


class APERModel(AdapterViT):
    """``forward(x)``: the pre-trained pass and the adapted pass from one embedding,
    concatenated (pre-trained first), cosine to the class prototypes."""

    def __init__(self, backbone: Backbone, num_classes: int, opts: APEROptions):
        super().__init__(backbone, opts, "aper")
        self.embedding = opts.embedding
        self.add_adapter_set()
        width = self.dim * (2 if opts.embedding == "concat" else 1)
        self.head = PrototypeHead(width, num_classes)

    def features_of_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.embedding in ("concat", "ptm"):
            parts.append(self.features_from_tokens(tokens, None))
        if self.embedding in ("concat", "adapted"):
            parts.append(self.features_from_tokens(tokens, 0))
        return torch.cat(parts, dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_of_tokens(self.embed(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class APER(AdapterStrategy):
    opts: APEROptions

    def __init__(self, context: StrategyContext, opts: APEROptions):
        model = APERModel(context.backbone, context.info.num_classes, opts)
        params = [p for b in model.blocks for p in b.adapters.parameters()]
        super().__init__(context, opts, model=model,
                         optimizer=torch.optim.SGD(params, lr=opts.lr))
        self.experiences_seen = 0
        self._trained = 0

    @property
    def aper(self) -> APERModel:
        return self.model

    def _train_exp(self, experience, eval_streams=None, **kwargs):
        model = self.aper
        x, y = experience_images(experience.dataset)
        tokens = self._tokens(x)
        self._trained = 0
        if self.experiences_seen == 0 and model.embedding != "ptm":
            params = [p for b in model.blocks for p in b.adapters.parameters()]
            self._train_adapters(0, params, tokens, y, sorted(set(y.tolist())))
            self._trained = sum(p.numel() for p in params)
        model.freeze_adapters()
        model.eval()
        features = self._map(model.features_of_tokens, tokens)
        model.head.add(features, y.to(self.device))
        self.experiences_seen += 1

    def checkpoint_state(self) -> dict:
        return {"experiences_seen": self.experiences_seen}

    def restore_checkpoint_state(self, state: dict, experiences: list) -> None:
        self.experiences_seen = state["experiences_seen"]
        if self.experiences_seen:
            self.aper.freeze_adapters()

    def experience_extras(self) -> dict:
        model = self.aper
        head = model.head
        seen = int((head.counts > 0).sum())
        adapters = model.adapter_params() if model.embedding != "ptm" else 0
        rows = seen * head.sums.shape[1]
        return {"params_added": adapters + rows,
                "stored_bytes": 4 * (adapters + rows + seen),
                "trained_params": self._trained,
                "feature_dim": head.sums.shape[1],
                "adapter_params": adapters,
                "backbone_passes": 2 if model.embedding == "concat" else 1}

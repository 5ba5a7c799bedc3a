"""EASE (Zhou et al., CVPR 2024; sun-hailong/CVPR24-Ease ``models/ease.py``,
``backbone/vit_ease.py``, ``backbone/linears.py``).

Every experience t adds a set of adapters (one per block), trained with a temporary cosine
head over the experience's classes; then frozen. Test: t+1 ViT passes from one embedding (one
per adapter set), CLS after the final norm. Head: one prototype block per subspace (adapter
set). Current classes get real prototypes in every subspace; an old class of experience i in a
newer subspace j gets the semantic-guided complement (softmax over cosines, in subspace i, to
the classes learned in experiences j..t, weighting their prototypes in subspace j), recomputed
for every (i, j) each experience. Logit of a class of experience i: sum over subspaces of the
cosine, weight 1 in subspace i and alpha / t elsewhere.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clplatform.backbones import Backbone
from clplatform.data import dataset_tensors
from clplatform.evaluator import MASK_VALUE

from ..base import StrategyContext
from ..prototype_head import PrototypeHead
from .common import AdapterStrategy
from .config import EASEOptions
from .model import AdapterViT


def semantic_complement(a_hat: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Prototypes of old classes in a newer subspace: ``softmax(cos(a_hat, a), dim=1) @ b``.

    ``a_hat``: the old classes' prototypes in their own subspace [n_old, d]; ``a``: the newer
    classes' prototypes in that subspace [n_new, d]; ``b``: the newer classes' prototypes in
    the target subspace [n_new, d]. Softmax without temperature, as the code."""
    sim = F.normalize(a_hat, dim=1) @ F.normalize(a, dim=1).T
    return sim.softmax(dim=1) @ b


class EASEModel(AdapterViT):
    """``forward(x)``: one ViT pass per adapter set, the reweighted prototype logits."""

    def __init__(self, backbone: Backbone, num_classes: int, opts: EASEOptions):
        super().__init__(backbone, opts, "ease")
        self.num_classes = num_classes
        self.alpha, self.reweight, self.complement = opts.alpha, opts.reweight, opts.complement
        self.subspaces = nn.ModuleList()  # real prototypes (sums, counts) per adapter set
        self.register_buffer("class_exp", torch.full((num_classes,), -1, dtype=torch.long))
        self.register_buffer("protos", torch.zeros(num_classes, 0, self.dim))

    def grow(self) -> list[nn.Parameter]:
        """A new adapter set and its (empty) prototype subspace."""
        params = self.add_adapter_set()
        self.subspaces.append(PrototypeHead(self.dim, self.num_classes).to(self.protos.device))
        self.protos = torch.zeros(self.num_classes, self.num_sets, self.dim,
                                  device=self.protos.device)
        return params

    @torch.no_grad()
    def rebuild_prototypes(self) -> None:
        """Real prototypes where they exist, the complement where they do not."""
        T = self.num_sets
        protos = torch.zeros(self.num_classes, T, self.dim, device=self.protos.device)
        for j, space in enumerate(self.subspaces):
            real = space.counts > 0
            protos[real, j] = space.prototypes[real]
        if self.complement == "semantic":
            for i in range(T):
                old = (self.class_exp == i).nonzero().squeeze(1)
                for j in range(i + 1, T):
                    newer = (self.class_exp >= j).nonzero().squeeze(1)
                    protos[old, j] = semantic_complement(protos[old, i], protos[newer, i],
                                                         protos[newer, j])
        self.protos = protos

    def subspace_weights(self) -> torch.Tensor:
        """[C, T]: 1 in a class's own subspace, alpha / t in the others (t = T - 1)."""
        T = self.num_sets
        own = F.one_hot(self.class_exp.clamp(min=0), T).bool() if T else \
            torch.zeros(self.num_classes, 0, dtype=torch.bool)
        if not self.reweight or T == 1:
            return torch.ones(self.num_classes, T, device=self.protos.device)
        other = self.alpha / (T - 1)
        return torch.where(own.to(self.protos.device), 1.0, other)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """``features``: [B, T, d] (one block per subspace) -> [B, C]."""
        cos = torch.einsum("btd,ctd->bct", F.normalize(features, dim=2),
                           F.normalize(self.protos, dim=2))
        logits = (cos * self.subspace_weights()[None]).sum(-1)
        return logits.masked_fill(self.class_exp < 0, MASK_VALUE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.num_sets:
            return x.new_full((len(x), self.num_classes), MASK_VALUE)
        tokens = self.embed(x)
        features = torch.stack([self.features_from_tokens(tokens, k)
                                for k in range(self.num_sets)], dim=1)
        return self.logits(features)


class EASE(AdapterStrategy):
    opts: EASEOptions

    def __init__(self, context: StrategyContext, opts: EASEOptions):
        model = EASEModel(context.backbone, context.info.num_classes, opts)
        super().__init__(context, opts, model=model)
        self._trained = 0

    @property
    def ease(self) -> EASEModel:
        return self.model

    def _train_exp(self, experience, eval_streams=None, **kwargs):
        model = self.ease
        x, y = dataset_tensors(experience.dataset)
        classes = sorted(set(y.tolist()))
        tokens = self._tokens(x)
        params = model.grow()
        k = model.num_sets - 1
        self._train_adapters(k, params, tokens, y, classes)
        self._trained = sum(p.numel() for p in params)
        model.freeze_adapters()
        model.eval()
        labels = y.to(self.device)
        for j in range(model.num_sets):  # real prototypes of the new classes, every subspace
            model.subspaces[j].add(self._features(tokens, j), labels)
        model.class_exp[torch.as_tensor(classes, device=model.class_exp.device)] = k
        model.rebuild_prototypes()

    def checkpoint_state(self) -> dict:
        return {"adapter_sets": self.ease.num_sets}

    def restore_checkpoint_state(self, state: dict, experiences: list) -> None:
        for _ in range(state["adapter_sets"]):
            self.ease.grow()
        self.ease.freeze_adapters()

    def experience_extras(self) -> dict:
        model = self.ease
        seen = int((model.class_exp >= 0).sum())
        adapters = model.adapter_params()
        prototypes = seen * model.num_sets * model.dim
        return {"modules_added": model.num_sets,
                "params_added": adapters + prototypes,
                "stored_bytes": 4 * (adapters + prototypes),
                "adapter_sets": model.num_sets, "adapter_params": adapters,
                "trained_params": self._trained, "backbone_passes": model.num_sets,
                "feature_dim": model.num_sets * model.dim}

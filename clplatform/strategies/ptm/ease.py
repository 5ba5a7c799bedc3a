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

Options of the code (``models/ease.py``, ``backbone/linears.py`` ``forward_reweight``):
``use_init_ptm`` puts a subspace of the pre-trained network (no adapter) in front: real
prototypes for every class, never complemented, its cosine weighted by beta in every class's
logit (one more ViT pass). ``adapter_num`` (the code's ``moni_adam``): only the first N
experiences add and train an adapter set; it turns ``use_init_ptm`` on and scores a class by
one cosine between the concatenated feature and the concatenated prototypes (alpha, beta
unused), as ``reweight=false`` does; the complement stays within the N adapter subspaces.
With N = 1 this is APER with adapters. The code still runs a pass for every untrained
(no-op) set it appends after the N-th, each giving the pre-trained feature again: that
scales all of a sample's logits by one factor (same prediction); here those passes are not
run, nor counted.
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
    """``forward(x)``: one ViT pass per subspace (the pre-trained network first when
    ``use_init_ptm``, then one per adapter set), the reweighted prototype logits.

    Subspace s of ``protos[:, s]`` is the pass ``passes[s]`` (None: the pre-trained
    network, k: adapter set k)."""

    def __init__(self, backbone: Backbone, num_classes: int, opts: EASEOptions):
        super().__init__(backbone, opts, "ease")
        self.num_classes = num_classes
        self.alpha, self.beta, self.complement = opts.alpha, opts.beta, opts.complement
        self.adapter_num = opts.adapter_num
        # the code's moni_adam (adapter_num set): the pre-trained subspace and one cosine over
        # the concatenation; use_reweight false: that cosine too
        self.use_init_ptm = opts.use_init_ptm or opts.adapter_num is not None
        self.plain_cosine = not opts.reweight or opts.adapter_num is not None
        self.ptm_space = PrototypeHead(self.dim, num_classes) if self.use_init_ptm else None
        self.subspaces = nn.ModuleList()  # real prototypes (sums, counts) per adapter set
        self.register_buffer("class_exp", torch.full((num_classes,), -1, dtype=torch.long))
        self.register_buffer("protos", torch.zeros(num_classes, self.offset, self.dim))

    @property
    def offset(self) -> int:
        """Index of adapter set 0's subspace (1 behind the pre-trained one)."""
        return int(self.use_init_ptm)

    @property
    def passes(self) -> list[int | None]:
        return [None] * self.offset + list(range(self.num_sets))

    @property
    def spaces(self) -> list[PrototypeHead]:
        return [self.ptm_space] * self.offset + list(self.subspaces)

    def can_grow(self) -> bool:
        return self.adapter_num is None or self.num_sets < self.adapter_num

    def grow(self) -> list[nn.Parameter]:
        """A new adapter set and its (empty) prototype subspace."""
        params = self.add_adapter_set()
        self.subspaces.append(PrototypeHead(self.dim, self.num_classes).to(self.protos.device))
        self.protos = torch.zeros(self.num_classes, len(self.passes), self.dim,
                                  device=self.protos.device)
        return params

    @torch.no_grad()
    def rebuild_prototypes(self) -> None:
        """Real prototypes where they exist, the complement where they do not (adapter
        subspaces only: the pre-trained one has every class's real prototype)."""
        T, o = self.num_sets, self.offset
        protos = torch.zeros(self.num_classes, o + T, self.dim, device=self.protos.device)
        for s, space in enumerate(self.spaces):
            real = space.counts > 0
            protos[real, s] = space.prototypes[real]
        if self.complement == "semantic":
            for i in range(T):
                old = (self.class_exp == i).nonzero().squeeze(1)
                for j in range(i + 1, T):
                    newer = (self.class_exp >= j).nonzero().squeeze(1)
                    protos[old, o + j] = semantic_complement(
                        protos[old, o + i], protos[newer, o + i], protos[newer, o + j])
        self.protos = protos

    def subspace_weights(self) -> torch.Tensor:
        """[C, S]: beta for the pre-trained subspace; among the adapter subspaces 1 for a
        class's own and alpha / t for the others (t = the experience index: the code
        divides by its ``_cur_task``; every weight 1 at t = 0)."""
        T, device = self.num_sets, self.protos.device
        own = F.one_hot(self.class_exp.clamp(min=0), T).bool().to(device)
        t = int(self.class_exp.max())
        weights = torch.where(own, 1.0, self.alpha / t) if t > 0 else \
            torch.ones(self.num_classes, T, device=device)
        if self.use_init_ptm:
            weights = torch.cat([torch.full((self.num_classes, 1), self.beta, device=device),
                                 weights], dim=1)
        return weights

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """``features``: [B, S, d] (one block per subspace) -> [B, C]: the weighted sum of
        the per-subspace cosines, or (``plain_cosine``) one cosine over the concatenation."""
        if self.plain_cosine:
            logits = F.normalize(features.flatten(1), dim=1) @ \
                F.normalize(self.protos.flatten(1), dim=1).T
        else:
            cos = torch.einsum("btd,ctd->bct", F.normalize(features, dim=2),
                               F.normalize(self.protos, dim=2))
            logits = (cos * self.subspace_weights()[None]).sum(-1)
        return logits.masked_fill(self.class_exp < 0, MASK_VALUE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.num_sets:
            return x.new_full((len(x), self.num_classes), MASK_VALUE)
        tokens = self.embed(x)
        features = torch.stack([self.features_from_tokens(tokens, k) for k in self.passes],
                               dim=1)
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
        x, y = experience_images(experience.dataset)
        classes = sorted(set(y.tolist()))
        tokens = self._tokens(x)
        self._trained = 0
        if model.can_grow():  # past adapter_num: no new set, no training (the code)
            params = model.grow()
            self._train_adapters(model.num_sets - 1, params, tokens, y, classes)
            self._trained = sum(p.numel() for p in params)
        model.freeze_adapters()
        model.eval()
        labels = y.to(self.device)
        for space, k in zip(model.spaces, model.passes):  # the new classes, every subspace
            space.add(self._features(tokens, k), labels)
        model.class_exp[torch.as_tensor(classes, device=model.class_exp.device)] = \
            int(model.class_exp.max()) + 1
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
        subspaces = len(model.passes)
        prototypes = seen * subspaces * model.dim
        return {"modules_added": model.num_sets,
                "params_added": adapters + prototypes,
                "stored_bytes": 4 * (adapters + prototypes),
                "adapter_sets": model.num_sets, "adapter_params": adapters,
                "trained_params": self._trained, "backbone_passes": subspaces,
                "feature_dim": subspaces * model.dim}

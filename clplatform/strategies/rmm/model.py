"""RMM's network: a frozen timm ViT whose fused ``qkv`` Linears (W_0) carry, while an
experience trains, one fresh rank-r LoRA branch (the shared :mod:`clplatform.strategies.lora`
piece); afterwards the experience's factors enter the RMM basis (:mod:`.basis`) and the
branch is dropped. A linear head per experience over its classes; SimpleCIL's prototype head
on the un-adapted (W_0) features routes a test sample to an experience.

``forward(x)`` (``merge=rmm``): pass 1 on W_0 -> [CLS] feature -> nearest class prototype ->
experience tau; per tau present in the batch: rebuild delta_tau from the basis, W_0 +
delta_tau in every qkv (merged: no side branch), pass 2 on that group, head_tau over tau's
classes. Two backbone passes (the evaluator counts both). ``merge=mean``: one pass on
W_0 + the mean of the rebuilt deltas, every head.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from clplatform.backbones import Backbone
from clplatform.evaluator import MASK_VALUE

from ..lora import LoRALinear, LowRankBranch, wrap_fused_qkv
from ..prototype_head import PrototypeHead
from ..reparam import Delta, LinearUpdate, merge_linear, unmerge_linear
from ..vit import ViTPieces, require_vit
from . import basis as rb
from .config import RMMOptions


class RMMModel(ViTPieces):
    """The ViT with a :class:`LoRALinear` on every block's qkv, the experience heads, the
    prototype head and the RMM bases (one :class:`~.basis.FactorBasis` per block and factor:
    ``bases[layer] = (up, down)``)."""

    def __init__(self, backbone: Backbone, num_classes: int, opts: RMMOptions):
        vit = require_vit(backbone, "rmm")
        super().__init__(backbone)
        backbone.requires_grad_(False)
        self.opts = opts
        self.dim = backbone.num_features
        self.num_classes = num_classes
        wrap_fused_qkv(vit.blocks, self.dim, "rmm")
        self.heads = nn.ModuleList()
        self.head_classes: list[list[int]] = []
        self.prototypes = PrototypeHead(self.dim, num_classes)
        self.register_buffer("class_task", torch.full((num_classes,), -1, dtype=torch.long))
        self.bases: list[tuple[rb.FactorBasis, rb.FactorBasis]] = []
        self.frozen_blocks = len(vit.blocks)  # backbone in eval mode, also while training
        #: the experience each sample of the last forward was routed to
        self.last_selected: torch.Tensor | None = None

    @property
    def wrappers(self) -> list[LoRALinear]:
        return [block.attn.qkv for block in self.blocks]

    @property
    def scale(self) -> float:
        return self.opts.alpha / self.opts.rank

    @property
    def tasks(self) -> int:
        return len(self.heads)

    # ------------------------------------------------------------ experiences
    def add_experience(self, classes: list[int]) -> list[LowRankBranch]:
        """A fresh LoRA (zero up, Kaiming-uniform down) on every qkv from W_0 and a head
        over ``classes`` (local labels)."""
        branches = [w.add_branch(0, w.out_features, self.opts.rank, self.scale)
                    for w in self.wrappers]
        device = next(self.backbone.parameters()).device
        self.heads.append(nn.Linear(self.dim, len(classes)).to(device))
        self.head_classes.append(list(classes))
        self.class_task[torch.tensor(classes, device=self.class_task.device)] = len(self.heads) - 1
        return branches

    def take_branches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The live branches' factors (up, down) per block, detached; the branches are
        dropped (the frozen W_0 stays as it is) and the heads frozen."""
        factors = []
        for w in self.wrappers:
            (branch,) = w.branches
            factors.append((branch.up.detach().clone(), branch.down.detach().clone()))
            w.branches, w.slices = nn.ModuleList(), []
        self.heads.requires_grad_(False)
        return factors

    # ------------------------------------------------------------ the basis
    def task_factors(self, task: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Task ``task``'s (up, down) per block rebuilt from the basis (float64)."""
        return [(up.reconstruct(task), down.reconstruct(task).T) for up, down in self.bases]

    def task_deltas(self, task: int) -> list[torch.Tensor]:
        """Rebuilt dense updates ``scale * up @ down`` per block, in the weights' dtype."""
        dtype = self.wrappers[0].base.weight.dtype
        device = self.wrappers[0].base.weight.device
        return [(self.scale * up @ down).to(device, dtype)
                for up, down in self.task_factors(task)]

    @contextmanager
    def merged(self, deltas: list[torch.Tensor] | None) -> Iterator[None]:
        """Every qkv computes with W_0 + delta (one dense weight: no side branch) inside,
        through the shared merge (:func:`~clplatform.strategies.reparam.merge_linear`); W_0
        is restored exactly on exit (the kept copy, nothing subtracted). None: W_0."""
        if deltas is None:
            yield
            return
        done = []
        try:
            for w, delta in zip(self.wrappers, deltas):
                merge_linear(w.base, LinearUpdate(deltas=[Delta(delta)]))
                done.append(w)
            yield
        finally:
            for w in done:
                unmerge_linear(w.base)

    # ------------------------------------------------------------ forward
    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.pool(self.run_blocks(tokens))

    def route(self, features: torch.Tensor) -> torch.Tensor:
        """The experience of each sample's nearest class prototype (W_0 features)."""
        return self.class_task[self.prototypes(features).argmax(1)]

    def head_logits(self, features: torch.Tensor, task: int) -> torch.Tensor:
        out = features.new_full((len(features), self.num_classes), MASK_VALUE)
        index = torch.tensor(self.head_classes[task], device=features.device)
        return out.index_copy(1, index, self.heads[task](features))

    def forward(self, x: torch.Tensor, tasks: torch.Tensor | None = None) -> torch.Tensor:
        """Logits over all classes. ``tasks``: the experience of each sample given (the
        oracle, tests only) instead of the prototype routing."""
        tokens = self.embed(x)
        if not self.bases:
            self.last_selected = None
            return tokens.new_full((len(x), self.num_classes), MASK_VALUE)
        if self.opts.merge == "mean":
            self.last_selected = None
            deltas = [self.task_deltas(t) for t in range(self.tasks)]
            mean = [sum(d) / len(d) for d in zip(*deltas)]
            with self.merged(mean):
                features = self.features(tokens)
            out = features.new_full((len(x), self.num_classes), MASK_VALUE)
            index = torch.tensor([c for cls in self.head_classes for c in cls],
                                 device=features.device)
            return out.index_copy(1, index, torch.cat([h(features) for h in self.heads], 1))
        if tasks is None:
            tasks = self.route(self.features(tokens))                # pass 1 on W_0
        tasks = tasks.to(tokens.device)
        self.last_selected = tasks
        out = tokens.new_full((len(x), self.num_classes), MASK_VALUE)
        for task in tasks.unique().tolist():                         # pass 2, per group
            rows = (tasks == task).nonzero().squeeze(1)
            with self.merged(self.task_deltas(task)):
                features = self.features(tokens[rows])
            out[rows] = self.head_logits(features, task)
        return out

"""SEMA as an Avalanche template: expansion scan, functional phase, descriptor phase.

Everything the spec calls frozen is frozen, and the frozen part of the network is cached
inside an experience (no augmentation here, so caching is exact): the tokens entering the
first expandable block are computed once per experience (the blocks before it do not change
after the first experience) and every scan, functional phase, descriptor phase and head-only
phase starts from them; the descriptor phase runs from the functional phase's tokens only up
to the last block it describes, and trains on the token means it reconstructs. The training iterations go
through Avalanche's plugin hooks, so the evaluator counts their FLOPs and time.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from clplatform.data import experience_images, rows_on
from clplatform.models import tome

from ..base import (Strategy, StrategyContext, TensorBatches, experience_classes,
                    masked_cross_entropy)
from ..vit import frozen_rows, map_batches, training_rows
from .config import SEMAOptions
from .model import SEMAModel


class EveryNSteps:
    """A scheduler stepped once every ``n`` calls of :meth:`step`: with ``n`` = mini-batches
    per epoch, :meth:`Strategy.fit_tensors` (which steps after every iteration) steps it
    once per epoch, after the epoch's last iteration."""

    def __init__(self, scheduler, n: int):
        self.scheduler, self.n, self.calls = scheduler, n, 0

    def step(self) -> None:
        self.calls += 1
        if self.calls % self.n == 0:
            self.scheduler.step()


class SEMA(Strategy):
    """SEMA on a :class:`SEMAModel` built from the context's backbone."""

    builds_own_optimizers = True
    opts: SEMAOptions

    def __init__(self, context: StrategyContext, opts: SEMAOptions):
        model = SEMAModel(context.backbone, context.info.num_classes, opts)
        super().__init__(context, opts, model=model,
                         optimizer=torch.optim.SGD(model.head.parameters(), lr=opts.lr))
        self.experiences_seen = 0
        self.adapters_added = 0
        self._record: dict = {}
        self._peak_scores: dict[int, float] = {}

    # ----------------------------------------------------------------- helpers
    @property
    def sema(self) -> SEMAModel:
        return self.model

    def _map(self, fn, x: torch.Tensor) -> torch.Tensor:
        return map_batches(fn, x, self.device)

    def _fit(self, params: list[nn.Parameter], inputs: torch.Tensor,
             labels: torch.Tensor | None, loss_fn: Callable, epochs: int, lr: float):
        """SGD + cosine schedule to 0 over (inputs, labels), optimizer rebuilt for
        exactly ``params``; the schedule steps once per epoch (``lr_schedule=epoch``, the
        released code: T_max = epochs) or once per mini-batch (``iteration``)."""
        if epochs == 0 or not params:
            return
        optimizer = torch.optim.SGD(params, lr=lr, momentum=self.opts.momentum,
                                    weight_decay=self.opts.weight_decay)
        steps = len(TensorBatches(inputs, labels, self.opts.batch_size))
        if self.opts.lr_schedule == "epoch":
            schedule = EveryNSteps(torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=epochs), steps)
        else:
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer,
                                                                  T_max=epochs * steps)
        self.fit_tensors(optimizer, inputs, labels, loss_fn, epochs, self.opts.batch_size,
                         schedule)

    # ----------------------------------------------------------------- phases
    def _tokens_before(self, start: int, prefix, at: int):
        """The tokens entering block ``start`` (>= ``at``), from ``prefix``: the tokens
        entering block ``at``, cached (or a :class:`FrozenRows`)."""
        if start == at:
            return prefix
        model = self.sema
        return frozen_rows(lambda t: model.run_blocks(t, at, start), prefix, self.device,
                           self.context.train.cache_bytes)

    def _functional_phase(self, params: list[nn.Parameter], start: int,
                          tokens, y: torch.Tensor, current: torch.Tensor):
        """Train new adapters/router columns + head from ``tokens``: the (cached) tokens
        entering block ``start``."""
        model = self.sema
        # PYRA (token merging): its modulations in the blocks that run, per pyra_train
        params = params + tome.pyra_to_train(model.vit, self.experiences_seen,
                                             *model.blocks[start:])

        def loss(t, labels):
            logits = model.logits(model.pool(model.run_blocks(t, start)))
            return masked_cross_entropy(logits, labels, current)
        self._fit(params + list(model.head.parameters()), tokens, y, loss,
                  self.opts.functional_epochs, self.opts.lr)

    def _pooled_from(self, at: int) -> Callable:
        """Tokens entering block ``at`` -> the pooled features (the rest of the network)."""
        model = self.sema
        return lambda tokens: model.pool(model.run_blocks(tokens, at))

    def _head_phase(self, prefix, at: int, y: torch.Tensor, current: torch.Tensor):
        model = self.sema
        features = training_rows(self._pooled_from(at), prefix, self.device)
        self._fit(list(model.head.parameters()), features, y,
                  lambda f, labels: masked_cross_entropy(model.logits(f), labels, current),
                  self.opts.functional_epochs, self.opts.lr)

    def _descriptor_phase(self, blocks: list, tokens, start: int):
        """Train the newest descriptor of each block in ``blocks`` (jointly) on cached
        token means (``tokens``: those entering block ``start``, which precedes them all);
        their loss statistics fill while they train."""
        model = self.sema
        if not blocks:
            return
        order = [model.blocks.index(b) for b in blocks]

        def means(batch):
            model.run_blocks(batch, start, max(order) + 1)
            return torch.cat([model.blocks[i].last_mean for i in order], dim=1)
        cached = training_rows(means, tokens, self.device)
        dim = blocks[0].dim
        descriptors = [b.descriptors[-1] for b in blocks]
        params = [p for d in descriptors for p in d.encode.parameters()] + \
                 [p for d in descriptors for p in d.decode.parameters()]

        def loss(m, _labels):
            total = 0.0
            for k, d in enumerate(descriptors):
                per_sample = d.losses(m[:, k * dim:(k + 1) * dim])
                d.stats.add(per_sample)
                total = total + per_sample.mean()
            return total
        self._fit(params, cached, None, loss, self.opts.rd_epochs, self.opts.rd_lr)

    def _freeze_all(self):
        for block in self.sema.blocks:
            block.adapters.requires_grad_(False)
            block.descriptors.requires_grad_(False)
            for d in block.descriptors:
                d.stats.frozen = True
            if block.router is not None:
                block.router.merge()

    def _expand(self, blocks: list, prefix, at: int, y, current):
        """Add an adapter at each block, train it (functional, then descriptor phase)."""
        model = self.sema
        params = [p for b in blocks for p in b.add_adapter()]
        self.adapters_added += len(blocks)
        start = min(model.blocks.index(b) for b in blocks)
        tokens = self._tokens_before(start, prefix, at)
        self._functional_phase(params, start, tokens, y, current)
        self._descriptor_phase([b for b in blocks if b.expandable], tokens, start)
        self._freeze_all()

    @torch.no_grad()
    def _scan(self, tokens, expanded: set[int], at: int) -> tuple[int, float] | None:
        """One forward-only pass over ``tokens`` (those entering block ``at``, no block
        before which expands: the experience's prefix) in batches in a fresh random order
        unless ``scan_order`` is sequential; the first (shallowest) block whose every
        descriptor finds a batch novel, with the deciding score; None if no block does."""
        model = self.sema
        model.eval()
        size = self.opts.scan_batch_size
        # released code: a shuffled DataLoader, drawn anew for every scan pass
        order = torch.randperm(len(tokens)) if self.opts.scan_order == "shuffled" else None
        for start in range(0, len(tokens), size):
            batch = rows_on(tokens, slice(start, start + size) if order is None
                            else order[start:start + size], self.device)
            for i in range(at, len(model.blocks)):
                block = model.blocks[i]
                batch = model.run_blocks(batch, i, i + 1)
                if not block.expandable or i in expanded or not block.descriptors:
                    continue
                score = min(self._novelty(d, block.last_mean) for d in block.descriptors)
                self._peak_scores[i] = max(self._peak_scores.get(i, score), score)
                if score > self.opts.threshold:
                    return i, score
        return None

    def _novelty(self, descriptor, mean: torch.Tensor) -> float:
        z = descriptor.stats.z_scores(descriptor.losses(mean),
                                      signed=self.opts.z_mode == "signed")
        return float(z.mean())

    # ----------------------------------------------------------------- Avalanche
    def _train_exp(self, experience, eval_streams=None, **kwargs):
        model = self.sema
        x, y = experience_images(experience.dataset)
        _, current = experience_classes(y, model.seen)
        expanded, scores = [], []
        self._peak_scores: dict[int, float] = {}  # block -> highest batch score of its scans
        # the blocks before the first expandable one are fixed after experience 0: the
        # tokens entering it are computed once here (in experience 0 every block trains)
        at = 0 if self.experiences_seen == 0 else model.first_expandable
        model.eval()
        prefix = frozen_rows(lambda b: model.run_blocks(model.embed(b), 0, at), x,
                             self.device, self.context.train.cache_bytes)
        if self.experiences_seen == 0:
            self._expand(model.blocks, prefix, at, y, current)
            expanded = list(range(len(model.blocks)))
        elif self.opts.expand == "every":
            self._expand(model.expandable, prefix, at, y, current)
            expanded = [model.blocks.index(b) for b in model.expandable]
        elif self.opts.expand == "auto":
            # scan, expand where a layer triggers, scan again: until a full pass adds nothing
            while (hit := self._scan(prefix, set(expanded), at)) is not None:
                layer, score = hit
                self._expand([model.blocks[layer]], prefix, at, y, current)
                expanded.append(layer)
                scores.append(round(score, 4))
        if self.experiences_seen > 0 and not expanded:
            self._head_phase(prefix, at, y, current)
        if model.prototypes is not None:  # variant: prototypes of the final features
            model.eval()
            model.prototypes.add(self._map(self._pooled_from(at), prefix), y.to(self.device))
        model.train()
        self.experiences_seen += 1
        indices = [model.blocks.index(b) for b in model.expandable]
        self._record = {"layers_expanded": ";".join(map(str, sorted(expanded))),
                        "z_scores": ";".join(map(str, scores)),
                        "expandable_blocks": ";".join(map(str, indices)),
                        # per expandable layer: the highest score its scans saw, the one the
                        # threshold decided on ("nan": not scanned, e.g. experience 0)
                        "peak_z_scores": ";".join(
                            str(round(self._peak_scores.get(i, float("nan")), 4))
                            for i in indices)}

    # ----------------------------------------------------------------- checkpoints
    def checkpoint_state(self) -> dict:
        return {"experiences_seen": self.experiences_seen,
                "adapters_added": self.adapters_added,
                "adapters": [len(b.adapters) for b in self.sema.blocks]}

    def restore_checkpoint_state(self, state: dict, experiences: list) -> None:
        """The adapters, descriptors and router columns a finished experience leaves
        (merged, frozen); their weights and statistics come with the model's state."""
        for block, count in zip(self.sema.blocks, state["adapters"]):
            for _ in range(count):
                block.add_adapter()
        self._freeze_all()
        self.experiences_seen = state["experiences_seen"]
        self.adapters_added = state["adapters_added"]

    def experience_extras(self) -> dict:
        model = self.sema
        adapters = sum(p.numel() for b in model.blocks for p in b.adapters.parameters())
        descriptors = sum(p.numel() for b in model.blocks
                          for p in b.descriptors.parameters())
        routers = sum(p.numel() for b in model.expandable for p in b.router.parameters())
        seen = int(model.seen.sum())
        head = seen * (model.head.in_features + 1)
        stats = sum(d.stats.numel for b in model.expandable for d in b.descriptors)
        return {
            "modules_added": self.adapters_added,
            "params_added": adapters + head,
            "stored_bytes": 4 * (adapters + head + descriptors + routers + stats),
            "adapters_per_layer": ";".join(str(len(b.adapters)) for b in model.expandable),
            "adapter_params": adapters, "head_params": head,
            "descriptor_params": descriptors, "router_params": routers,
            **self._record,
        }


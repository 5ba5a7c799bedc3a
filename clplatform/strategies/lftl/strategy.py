"""LFTL as an Avalanche template: source training on experience 0, then R query-and-adapt
rounds on every target experience, labels only through the oracle the runner hands over.
The source model is picked on the source experience's test set (the stream's hold-out, e.g.
``source_val``), which the runner hands over as ``eval_streams``: no second split here.

The frozen part of the network is computed once per experience (exact: eval mode, no
augmentation). Every training iteration runs through Avalanche's plugin hooks; after each
round ``context.report_round`` (the evaluator) records the accuracy on the target's test set
against the labels used.
"""
from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn.functional as F

from clplatform.active import Oracle
from clplatform.data import experience_images

from ..base import Strategy, StrategyContext
from ..vit import frozen_rows, map_batches
from . import sampling
from .config import LFTLOptions
from .model import LFTLModel


def information_maximisation(logits: torch.Tensor) -> torch.Tensor:
    """Mean per-sample entropy minus the entropy of the batch-mean prediction."""
    p = logits.softmax(dim=1)
    per_sample = -(p * p.clamp_min(1e-12).log()).sum(dim=1).mean()
    mean = p.mean(dim=0)
    return per_sample + (mean * mean.clamp_min(1e-12).log()).sum()


def visual_persistence(features: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """Mean entropy of the softmax over cosine similarities to the (detached) anchors."""
    sims = F.normalize(features, dim=1) @ F.normalize(memory.detach(), dim=1).T
    a = sims.softmax(dim=1)
    return -(a * a.clamp_min(1e-12).log()).sum(dim=1).mean()


def refresh_memory(memory: torch.Tensor, features: torch.Tensor,
                   momentum: float = 0.9) -> torch.Tensor:
    """M_i <- m f_i + (1 - m) M_i for every anchor (new anchors start from zero)."""
    grown = torch.cat([memory, memory.new_zeros(len(features) - len(memory), memory.shape[1])])
    return momentum * features.detach() + (1 - momentum) * grown


def poly_schedule(optimizer: torch.optim.Optimizer, total_steps: int):
    """lr0 (1 + 10 p)^-0.75, p = step / total steps."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (1 + 10 * step / max(total_steps, 1)) ** -0.75)


class LFTL(Strategy):
    """LFTL on an :class:`LFTLModel` built from the context's backbone. A target
    experience comes with its label oracle: ``train(experience, oracle=oracle)``."""

    builds_own_optimizers = True
    opts: LFTLOptions

    def __init__(self, context: StrategyContext, opts: LFTLOptions):
        model = LFTLModel(context.backbone, context.info.num_classes, opts)
        super().__init__(context, opts, model=model,
                         optimizer=torch.optim.SGD(model.head_parameters(), lr=opts.lr))
        self.experiences_seen = 0
        self.labels_queried = 0  # over all target experiences
        self.generator = torch.Generator().manual_seed(torch.initial_seed() % 2 ** 63)
        self._record: dict = {}

    @property
    def lftl(self) -> LFTLModel:
        return self.model

    def _map(self, fn, x: torch.Tensor) -> torch.Tensor:
        return map_batches(fn, x, self.device)

    def _sgd(self, lr: float) -> torch.optim.Optimizer:
        groups = [{"params": self.lftl.head_parameters(), "lr": lr}]
        if self.lftl.backbone_parameters():
            groups.insert(0, {"params": self.lftl.backbone_parameters(), "lr": 0.1 * lr})
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True,
                               weight_decay=1e-3)

    def _report_round(self, round_: int, labels_used: int) -> None:
        """The evaluator records the accuracy after each round (round 0: before any)."""
        if self.context.report_round is not None:
            self.context.report_round(self, round=round_, labels_used=labels_used)

    # ------------------------------------------------------------ source
    def _train_source(self, x: torch.Tensor, y: torch.Tensor,
                      held: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """Source training on every image of ``x``; ``held``: the source experience's test
        set (the stream's hold-out, SHOT's ``trte=val`` 10 %), on which the best epoch is
        picked (ties: the later epoch, as SHOT's ``>=``; ``source_model=last``: the last);
        None: the last epoch is kept. Recorded: the kept model's accuracy on ``held``."""
        model, o = self.lftl, self.opts
        tokens = frozen_rows(model.frozen, x, self.device, self.context.train.cache_bytes)
        y = y.to(self.device)
        if held is not None:
            held_tokens = frozen_rows(model.frozen, held[0], self.device,
                                      self.context.train.cache_bytes)
            held_y = held[1].to(self.device)
        optimizer = self._sgd(o.source_lr)
        steps = o.source_epochs * math.ceil(len(x) / self.opts.batch_size)
        schedule = poly_schedule(optimizer, steps)
        best, best_state = float("nan"), None

        def loss(idx, labels):
            logits = model.classifier(model.features(tokens[idx.cpu()]))
            return F.cross_entropy(logits, labels, label_smoothing=o.label_smoothing)
        for _epoch in range(o.source_epochs):
            model.train()
            self.fit_tensors(optimizer, torch.arange(len(x)), y, loss, 1, o.batch_size,
                             schedule)
            if held is None:
                continue
            model.eval()
            with torch.no_grad():
                predicted = self._map(lambda t: model.classifier(model.features(t)),
                                      held_tokens).argmax(1)
            accuracy = float((predicted == held_y).float().mean())
            if best_state is None or accuracy >= best or o.source_model == "last":
                best, best_state = accuracy, copy.deepcopy(model.state_dict())
        if best_state is not None:
            model.load_state_dict(best_state)
        self._record = {"source_holdout_accuracy": best}

    @staticmethod
    def _source_holdout(experience, eval_streams) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(x, y) of the first experience of ``eval_streams`` (streams or experiences) that
        is not ``experience`` itself: the runner hands the source experience's test set."""
        for item in eval_streams or ():
            for candidate in ([item] if hasattr(item, "dataset") else item):
                if candidate is not experience:
                    return experience_images(candidate.dataset)
        return None

    # ------------------------------------------------------------ target
    def _scores(self, p: torch.Tensor, p_prev: torch.Tensor | None) -> torch.Tensor:
        o = self.opts
        if o.sampler == "lftl":
            return sampling.contrastive_scores(p, p_prev, o.alpha, o.kappa, o.class_weight)
        if o.sampler == "random":
            return sampling.random_scores(p, self.generator)
        return {"entropy": sampling.entropy_scores, "margin": sampling.margin_scores,
                "least-confidence": sampling.least_confidence_scores}[o.sampler](p)

    def _adapt(self, x: torch.Tensor, oracle: Oracle) -> None:
        model, o = self.lftl, self.opts
        tokens = frozen_rows(model.frozen, x, self.device, self.context.train.cache_bytes)
        labelled = torch.zeros(0, dtype=torch.long)
        labels = torch.zeros(0, dtype=torch.long, device=self.device)
        memory = torch.zeros(0, o.bottleneck, device=self.device)
        p_prev: torch.Tensor | None = None
        sampling_seconds, round_seconds = 0.0, []
        self._report_round(0, 0)
        for round_ in range(1, o.rounds + 1):
            started = time.perf_counter()
            oracle.start_round()
            unlabelled = torch.ones(len(x), dtype=torch.bool)
            unlabelled[labelled] = False
            pool = unlabelled.nonzero().flatten()
            model.eval()
            p = self._map(lambda t: model.classifier(model.features(t)).softmax(1),
                          tokens[pool]).cpu()
            chosen = sampling.select(self._scores(p, p_prev), oracle.per_round)
            keep = torch.ones(len(pool), dtype=torch.bool)
            keep[chosen] = False
            p_prev = p[keep]
            new = pool[chosen]
            labels = torch.cat([labels, oracle.query(new).to(self.device)])
            labelled = torch.cat([labelled, new])
            sampling_seconds += time.perf_counter() - started
            memory = self._adapt_round(tokens, pool[keep], labelled, labels, memory)
            round_seconds.append(time.perf_counter() - started)
            self._report_round(round_, oracle.labels_used)
        self._record = {"rounds": o.rounds, "sampling_seconds": sampling_seconds,
                        "seconds_per_round": sum(round_seconds) / len(round_seconds)}

    def _adapt_round(self, tokens, unlabelled, labelled, labels, memory) -> torch.Tensor:
        model, o = self.lftl, self.opts
        bs = o.batch_size
        optimizer = self._sgd(o.lr)
        per_epoch = math.ceil(len(unlabelled) / bs) + \
            (math.ceil(len(labelled) / bs) if o.mixup else 0)
        schedule = poly_schedule(optimizer, o.round_epochs * per_epoch)
        labelled_batch = min(bs, len(labelled))
        cursor = {"order": torch.randperm(len(labelled)), "at": 0}

        def next_labelled() -> torch.Tensor:  # labelled batches cycled
            if cursor["at"] + labelled_batch > len(labelled):
                cursor["order"], cursor["at"] = torch.randperm(len(labelled)), 0
            idx = cursor["order"][cursor["at"]:cursor["at"] + labelled_batch]
            cursor["at"] += labelled_batch
            return idx

        def adaptation_loss(idx, _labels):
            lab = next_labelled()
            ce = F.cross_entropy(model.classifier(model.features(tokens[labelled[lab]])),
                                 labels[lab])
            features = model.features(tokens[unlabelled[idx.cpu()]])
            loss = ce + o.im_weight * information_maximisation(model.classifier(features))
            if o.vpa_weight:
                loss = loss + o.vpa_weight * visual_persistence(features, memory)
            return loss

        def mixup_loss(idx, _labels):
            idx = idx.cpu()
            lam = float(torch.distributions.Beta(o.mixup_alpha, o.mixup_alpha).sample())
            lam = max(lam, 1 - lam)
            partner = idx[torch.randperm(len(idx))]
            mixed = lam * tokens[labelled[idx]] + (1 - lam) * tokens[labelled[partner]]
            logp = model.classifier(model.features(mixed)).log_softmax(1)
            return -(lam * logp.gather(1, labels[idx, None]) +
                     (1 - lam) * logp.gather(1, labels[partner, None])).mean()

        for _epoch in range(o.round_epochs):
            model.eval()
            current = self._map(model.features, tokens[labelled])
            memory = refresh_memory(memory, current, o.memory_momentum)
            model.train()
            self.iteration_kind = ("adapt", labelled_batch, len(memory))
            self.fit_tensors(optimizer, torch.arange(len(unlabelled)), None, adaptation_loss,
                             1, bs, schedule)
            if o.mixup and len(labelled) > 1:
                self.iteration_kind = ("mixup",)
                self.fit_tensors(optimizer, torch.arange(len(labelled)), None, mixup_loss, 1,
                                 bs, schedule)
        self.iteration_kind = None
        return memory

    # ------------------------------------------------------------ Avalanche
    def _train_exp(self, experience, eval_streams=None, oracle: Oracle | None = None,
                   **kwargs):
        x, y = experience_images(experience.dataset)
        self._record = {}
        if self.experiences_seen == 0:
            self._train_source(x, y, self._source_holdout(experience, eval_streams))
        elif self.opts.adapt == "full":
            if oracle is None:
                raise RuntimeError("lftl needs the label oracle of a target experience: "
                                   "train(experience, oracle=oracle)")
            self._adapt(x, oracle)
            self.labels_queried += oracle.labels_used
        self.lftl.eval()
        self.experiences_seen += 1

    def checkpoint_state(self) -> dict:
        """Between experiences: counters and the sampling generator (the oracle, the
        anchor memory and the caches live within one experience)."""
        return {"experiences_seen": self.experiences_seen,
                "labels_queried": self.labels_queried,
                "generator": self.generator.get_state()}

    def restore_checkpoint_state(self, state: dict, experiences: list) -> None:
        self.experiences_seen = state["experiences_seen"]
        self.labels_queried = state["labels_queried"]
        self.generator.set_state(state["generator"])

    def experience_extras(self) -> dict:
        return {"labels_queried": self.labels_queried, **self._record}


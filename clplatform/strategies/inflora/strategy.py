"""InfLoRA as an Avalanche template (liangyanshuo/InfLoRA ``methods/inflora.py``).

Per experience t: a k/v branch U_t D_t in every adapted block's ``qkv`` and a linear head over
the experience's classes. Before training, D_t is designed from the input covariance of each
block's attention (token average of x x^T over the experience's training data, current model)
with the old input subspace projected away (DualGPM memory), times 1/sqrt 3, and frozen; U_t
starts at zero. Adam trains the U_t and the head on cross-entropy over the current head
(local labels), with the code's per-epoch cosine factor; the network stays in eval mode.
After training the covariance is taken again (trained branch in place) and the memory
updated with eps_t; the branches are folded into W_k, W_v (``merge``).

``classifier_alignment`` (InfLoRA+CA, ``methods/inflora_ca.py``): after each experience the
mean and covariance (+1e-4 I) of each new class's features are kept; from the second
experience on, every head is retrained for ``ca_epochs`` epochs of SGD (0.01, momentum 0.9,
wd 5e-4, cosine per epoch to 0) on ``ca_samples`` Gaussian samples per seen class, drawn
afresh each epoch, an older experience's mean scaled by 0.9 + 0.1 (i + 1) / (t + 1); logits
divided by their mean per-head norm and by ``ca_logit_norm``.

The frozen patch/position embedding of every training sample is computed once per
experience when the stream has no random transform (else recomputed at every read, a new
draw per epoch); the covariance passes run without gradients and read the training view
(the code iterates its training loader for both); the class statistics read the eval view
(the code's ``mode='test'``). Training iterations go through Avalanche's plugin hooks (the
evaluator times them and counts their FLOPs).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from clplatform.data import experience_images
from clplatform.errors import UserError

from ..base import Strategy, StrategyContext, TensorBatches, cosine_factor
from ..ptm.common import epoch_cosine
from ..vit import frozen_rows, map_batches
from . import memory as gpm
from .config import InfLoRAOptions
from .model import InfLoRAModel


def aligned_logits(outs: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """The heads' logits concatenated, divided by the mean over heads of each head's logit
    norm (+1e-7) and by ``temperature`` (0: as they are) — the code's ``logit_norm``."""
    logits = torch.cat(outs, dim=1)
    if not temperature:
        return logits
    norms = torch.cat([out.norm(dim=-1, keepdim=True) + 1e-7 for out in outs], dim=-1)
    return logits / norms.mean(dim=-1, keepdim=True) / temperature


class InfLoRA(Strategy):
    """``inflora`` on an :class:`InfLoRAModel`; trained with the context's training settings
    (epochs, batch size, lr: the code's 20, 128, 5e-4 by default)."""

    builds_own_optimizers = True
    opts: InfLoRAOptions

    def __init__(self, context: StrategyContext, opts: InfLoRAOptions):
        model = InfLoRAModel(context.backbone, context.info.num_classes, opts)
        super().__init__(context, opts, model=model)
        self.settings = context.train
        self.experiences_seen = 0
        self.memory: list[gpm.LayerMemory | None] = [None] * model.adapted
        self.trained_params = 0
        self.designed_params = 0
        self._record: dict = {}
        #: classifier alignment: per class seen, its feature mean (float64) and covariance
        self.class_stats: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def inflora(self) -> InfLoRAModel:
        return self.model

    # ----------------------------------------------------------------- pieces
    @torch.no_grad()
    def covariances(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Per adapted block: mean of x x^T over all tokens of all samples, x = the input of
        its ``qkv`` (the LN1 output), float64, the model as it is. The samples are read as a
        training pass reads them (with a random transform: each image's next draw), as the
        code takes both covariances over its training loader."""
        model = self.inflora
        sums = [torch.zeros(model.dim, model.dim, dtype=torch.float64, device=self.device)
                for _ in model.wrappers]
        count = [0]

        def hook(i):
            def accumulate(_module, args):
                flat = args[0].reshape(-1, model.dim).double()
                sums[i].add_(flat.T @ flat)
                if i == 0:
                    count[0] += len(flat)
            return accumulate
        handles = [w.register_forward_pre_hook(hook(i)) for i, w in enumerate(model.wrappers)]
        try:
            model.eval()
            map_batches(lambda t: model.run_blocks(t, 0, model.adapted)[:, :1], tokens,
                        self.device, draw=True)
        finally:
            for h in handles:
                h.remove()
        return [s.cpu() / count[0] for s in sums]

    def _design(self, branches, tokens: torch.Tensor) -> None:
        o = self.opts
        if o.design == "random":
            return  # the branch's Kaiming-uniform down-projection stays
        covs = self.covariances(tokens)
        for i, (branch, cov) in enumerate(zip(branches, covs)):
            mem = self.memory[i] if o.design == "projected" else None
            down = gpm.design_down(cov, mem, branch.rank, o.down_scale)
            with torch.no_grad():
                branch.down.copy_(down.to(branch.down))

    @torch.no_grad()
    def store_class_statistics(self, tokens: torch.Tensor, y: torch.Tensor) -> None:
        """Mean and covariance + 1e-4 I (``torch.cov``, float64) of each class's features,
        the model as trained (the code's ``_compute_class_mean``)."""
        model = self.inflora
        model.eval()
        features = map_batches(lambda t: model.pool(model.run_blocks(t)), tokens,
                               self.device).double().cpu()
        for c in sorted(set(y.tolist())):
            f = features[y == c]
            cov = torch.cov(f.T) + 1e-4 * torch.eye(f.shape[1], dtype=torch.float64)
            self.class_stats[c] = (f.mean(0), cov.float())

    def align_classifiers(self) -> None:
        """Every head retrained on Gaussian samples of the classes seen (the code's
        ``_stage2_compact_classifier``), through the template's epoch loop."""
        model, o = self.inflora, self.opts
        order = [c for cls in model.head_classes for c in cls]   # the heads' output order
        experience = [i for i, cls in enumerate(model.head_classes) for _ in cls]
        t = len(model.head_classes) - 1
        normals = []
        for c, i in zip(order, experience):
            mean, cov = self.class_stats[c]
            mean = (mean * (0.9 + (i + 1) / (t + 1) * 0.1)).float()
            jitter = torch.zeros_like(cov)
            while torch.linalg.cholesky_ex(cov + jitter).info != 0:  # the code's IN-A fix
                jitter += 1e-4 * torch.eye(len(cov))
            normals.append(torch.distributions.MultivariateNormal(mean, cov + jitter))
        params = list(model.heads.parameters())
        model.heads.requires_grad_(True)
        optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
        scheduler = epoch_cosine(optimizer, o.ca_epochs, len(order))
        targets = torch.arange(len(order)).repeat_interleave(o.ca_samples).to(self.device)

        def loss(x, target):
            return F.cross_entropy(
                aligned_logits([head(x) for head in model.heads], o.ca_logit_norm), target)
        model.eval()
        try:
            for _ in range(o.ca_epochs):  # fresh samples every epoch
                samples = torch.cat([n.sample((o.ca_samples,)) for n in normals])
                self.fit_tensors(optimizer, samples.to(self.device), targets, loss, 1,
                                 o.ca_samples, scheduler)
        finally:
            model.heads.requires_grad_(False)
            for p in params:
                p.grad = None

    # ----------------------------------------------------------------- Avalanche
    def _train_exp(self, experience, eval_streams=None, **kwargs):
        model, o, settings = self.inflora, self.opts, self.settings
        stream = getattr(experience, "origin_stream", None)
        if stream is None:
            raise UserError("inflora: the experience does not know its stream (the eps_t "
                            "schedule needs the number of experiences)")
        x, y = experience_images(experience.dataset)
        classes = sorted(set(y.tolist()))
        repeated = sorted(set(classes) & {c for cls in model.head_classes for c in cls})
        if repeated:
            raise UserError(f"inflora learns new classes in every experience (a head per "
                            f"experience); this experience repeats class {repeated[0]} "
                            "(a domain-incremental stream?)")
        local = torch.full((model.num_classes,), -1, dtype=torch.long)
        local[classes] = torch.arange(len(classes))
        labels = local[y].to(self.device)
        branches = model.add_experience(classes)
        model.eval()
        tokens = frozen_rows(model.embed, x, self.device, self.context.train.cache_bytes)
        self._design(branches, tokens)

        params = [b.up for b in branches] + list(model.heads[-1].parameters())

        def loss(t, target):
            return F.cross_entropy(model.current_logits(model.pool(model.run_blocks(t))),
                                   target)
        optimizer = torch.optim.Adam(params, lr=settings.lr, betas=(0.9, 0.999),
                                     weight_decay=o.weight_decay)
        steps = len(TensorBatches(tokens, labels, settings.batch_size))
        epochs = settings.epochs
        scheduler = torch.optim.lr_scheduler.LambdaLR(  # per iteration, constant per epoch
            optimizer, lambda it: cosine_factor(it // max(steps, 1), epochs, o.lr_schedule))
        model.train()  # the backbone stays in eval mode (frozen_blocks)
        self.fit_tensors(optimizer, tokens, labels, loss, epochs, settings.batch_size,
                         scheduler)
        eps = gpm.threshold(self.experiences_seen, len(stream), o.eps_base, o.eps_end)
        if o.design == "projected":
            covs = self.covariances(tokens)
            dual = o.resolved_memory() == "dualgpm"
            self.memory = [gpm.update(c, m, eps, dual) for c, m in zip(covs, self.memory)]
        self.trained_params += sum(b.up.numel() for b in branches)
        self.designed_params += sum(b.down.numel() for b in branches)
        model.finish_experience(o.merge)
        model.eval()
        if o.classifier_alignment:
            self.store_class_statistics(tokens, y)
            if self.experiences_seen > 0:
                self.align_classifiers()
        self.experiences_seen += 1
        self._record = {"eps": round(eps, 6)}

    # ----------------------------------------------------------------- records
    def experience_extras(self) -> dict:
        model = self.inflora
        heads = sum(p.numel() for p in model.heads.parameters())
        live = sum(p.numel() for w in model.wrappers for p in w.branches.parameters())
        memory = sum(m.basis.numel() for m in self.memory if m is not None)
        branches = self.trained_params + self.designed_params
        # classifier alignment: a mean (float64) and a covariance per class seen
        stats = sum(2 * m.numel() + c.numel() for m, c in self.class_stats.values())
        return {
            "params_added": branches + heads,
            # branches (merged or not: they rebuild the merged weights), heads, the DualGPM
            # bases the next experience needs and the class statistics
            "stored_bytes": 4 * (branches + heads + memory + stats),
            "rank": model.rank,
            "trained_params": self.trained_params, "designed_params": self.designed_params,
            "head_params": heads, "live_branch_params": live, "memory_floats": memory,
            "subspace_dims": ";".join("" if m is None else str(m.dim) for m in self.memory),
            "memory_stored": ";".join("" if m is None else m.kind for m in self.memory),
            **self._record,
        }

    # ----------------------------------------------------------------- checkpoints
    def checkpoint_state(self) -> dict:
        return {"experiences_seen": self.experiences_seen,
                "head_classes": [list(c) for c in self.inflora.head_classes],
                "live_branches": [len(w.branches) for w in self.inflora.wrappers],
                "memory": [None if m is None else {"basis": m.basis, "kind": m.kind}
                           for m in self.memory],
                "trained_params": self.trained_params,
                "designed_params": self.designed_params,
                "class_stats": {c: list(v) for c, v in self.class_stats.items()}}

    def restore_checkpoint_state(self, state: dict, experiences: list) -> None:
        """Heads and live (unmerged) branches of the finished experiences, frozen; their
        weights and the merged W_k, W_v come with the model's state."""
        model = self.inflora
        for classes in state["head_classes"]:
            device = next(model.backbone.parameters()).device
            model.heads.append(nn.Linear(model.dim, len(classes)).to(device))
            model.head_classes.append(list(classes))
        for w, count in zip(model.wrappers, state["live_branches"]):
            for _ in range(count):
                w.add_branch(model.dim, 3 * model.dim, model.rank)
        model.finish_experience(merge=False)
        self.memory = [None if m is None else gpm.LayerMemory(m["basis"], m["kind"])
                       for m in state["memory"]]
        self.experiences_seen = state["experiences_seen"]
        self.trained_params = state["trained_params"]
        self.designed_params = state["designed_params"]
        self.class_stats = {int(c): tuple(v) for c, v in state.get("class_stats", {}).items()}

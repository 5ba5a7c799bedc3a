"""RMM as an Avalanche template (spec section 4; no official code).

Per experience t: a fresh rank-r LoRA on every block's fused qkv from the frozen W_0 (never
merged into shared weights) and a linear head over the experience's classes, trained with
cross-entropy over its own classes (local labels, Adam); the W_0 features of its training
images become the class prototypes that route test samples. After training, the branch's
factors enter the RMM basis: per block and factor the closed-form fit (:mod:`.basis`) over
the t tasks so far with k = min(basis, t), earlier tasks entering as their reconstructions
(``refit=reconstructed``) or their originals (``refit=originals``).

The frozen patch/position embedding of every training sample is computed once per experience
(exact: frozen, no augmentation); the LoRA sits in every block, so nothing later is cached.
Training iterations go through Avalanche's plugin hooks.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from clplatform.data import experience_images
from clplatform.errors import UserError

from ..base import Strategy, StrategyContext
from ..vit import frozen_rows, map_batches
from . import basis as rb
from .config import RMMOptions
from .model import RMMModel

FLOAT_BYTES = 4  # what is kept: float32 values (fp16 would halve every byte count)
#: training samples of the experience on which the merged and unmerged logits are compared
PROBE = 16


class RMM(Strategy):
    builds_own_optimizers = True
    opts: RMMOptions

    def __init__(self, context: StrategyContext, opts: RMMOptions):
        model = RMMModel(context.backbone, context.info.num_classes, opts)
        super().__init__(context, opts, model=model)
        self.settings = context.train
        #: the trained factors of every task (float64): the refit input with
        #: ``refit=originals``, and the reference of the recorded reconstruction errors
        #: (analysis: not counted as stored with ``refit=reconstructed``)
        self.originals: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        self.trained_params = 0
        self._record: dict = {}

    @property
    def rmm(self) -> RMMModel:
        return self.model

    def selected_experiences(self) -> torch.Tensor | None:
        return self.rmm.last_selected

    # ----------------------------------------------------------------- Avalanche
    def _train_exp(self, experience, eval_streams=None, **kwargs):
        model, o, settings = self.rmm, self.opts, self.settings
        x, y = experience_images(experience.dataset)
        classes = sorted(set(y.tolist()))
        repeated = sorted(set(classes) & {c for cls in model.head_classes for c in cls})
        if repeated:
            raise UserError(f"rmm learns new classes in every experience (a head and a task "
                            f"id per experience); this experience repeats class "
                            f"{repeated[0]} (a domain-incremental stream?)")
        model.eval()
        tokens = frozen_rows(model.embed, x, self.device, self.context.train.cache_bytes)
        with torch.no_grad():   # W_0 features -> prototypes (the routing)
            features = map_batches(model.features, tokens, self.device)
            model.prototypes.add(features, y.to(self.device))
        local = torch.full((model.num_classes,), -1, dtype=torch.long)
        local[classes] = torch.arange(len(classes))
        labels = local[y].to(self.device)
        branches = model.add_experience(classes)
        head = model.heads[-1]
        params = [p for b in branches for p in b.parameters()] + list(head.parameters())

        def loss(t, target):
            return F.cross_entropy(head(model.features(t)), target)
        optimizer = torch.optim.Adam(params, lr=settings.lr, weight_decay=o.weight_decay)
        model.train()  # the backbone stays in eval mode (frozen_blocks)
        self.fit_tensors(optimizer, tokens, labels, loss, settings.epochs,
                         settings.batch_size)
        model.eval()
        self.trained_params = sum(p.numel() for p in params)
        probe = tokens[:PROBE]
        with torch.no_grad():
            unmerged = head(model.features(probe))       # W_0 with the trained LoRA branch
        factors = model.take_branches()
        self.originals.append([(u.double().cpu(), d.double().cpu()) for u, d in factors])
        self._refit()
        with torch.no_grad(), model.merged(model.task_deltas(model.tasks - 1)):
            merged = head(model.features(probe))         # W_0 + the rebuilt delta, merged
        self._record["logit_gap"] = float((merged - unmerged).abs().max())

    def _refit(self) -> None:
        """The closed-form basis over all tasks so far, per block and factor."""
        model, o = self.rmm, self.opts
        n = len(self.originals)
        k = min(o.basis, n)
        bases, discarded2, total2 = [], 0.0, 0.0
        for layer in range(len(model.wrappers)):
            ups = [task[layer][0] for task in self.originals]
            downs = [task[layer][1].T for task in self.originals]
            if o.refit == "reconstructed" and model.bases:
                old_up, old_down = model.bases[layer]
                ups[:-1] = list(old_up.reconstruct_all())
                downs[:-1] = list(old_down.reconstruct_all())
            fitted = []
            for stack in (torch.stack(ups), torch.stack(downs)):
                fb = rb.fit(stack, k, o.coeff, o.center)
                discarded2 += fb.discarded ** 2
                total2 += float(stack.pow(2).sum())
                fitted.append(fb)
            bases.append(tuple(fitted))
        model.bases = bases
        errors = [self.task_error(t) for t in range(n)]
        self._record = {
            "refit_error": round(math.sqrt(discarded2 / total2) if total2 else 0.0, 8),
            "task_errors": ";".join(f"{e:.6g}" for e in errors),
            "mean_task_error": round(sum(errors) / n, 8),
            "max_task_error": round(max(errors), 8),
        }

    def task_error(self, task: int) -> float:
        """``||delta_hat - delta|| / ||delta||`` of task ``task`` over all blocks (against
        its trained factors)."""
        diff2 = norm2 = 0.0
        for (up, down), (up_hat, down_hat) in zip(self.originals[task],
                                                  self.rmm.task_factors(task)):
            delta = up @ down
            diff2 += float((up_hat @ down_hat - delta).pow(2).sum())
            norm2 += float(delta.pow(2).sum())
        return math.sqrt(diff2 / norm2) if norm2 else 0.0

    # ----------------------------------------------------------------- records
    def storage(self) -> dict:
        """Values kept for inference: basis (and means), coefficients, heads, prototypes;
        and what keeping every task's LoRA instead would take."""
        model, o = self.rmm, self.opts
        n = model.tasks
        basis = sum(fb.basis.numel() + (fb.mean.numel() if fb.mean is not None else 0)
                    for pair in model.bases for fb in pair)
        coeffs = sum(fb.coeffs.numel() for pair in model.bases for fb in pair)
        heads = sum(p.numel() for p in model.heads.parameters())
        seen = int((model.prototypes.counts > 0).sum())
        prototypes = seen * (model.dim + 1)
        lora = o.lora_params(model.dim, len(model.wrappers))
        kept_loras = n * lora if o.refit == "originals" else 0
        return {"basis_values": basis, "coeff_values": coeffs, "head_params": heads,
                "prototype_values": prototypes, "lora_params": lora,
                "stored_values": basis + coeffs + heads + prototypes + kept_loras,
                "every_lora_values": n * lora + heads + prototypes}

    def experience_extras(self) -> dict:
        model, o = self.rmm, self.opts
        s = self.storage()
        k = model.bases[0][0].size if model.bases else 0
        return {
            "params_added": s["basis_values"] + s["coeff_values"] + s["head_params"],
            "stored_bytes": FLOAT_BYTES * s["stored_values"],
            "every_lora_bytes": FLOAT_BYTES * s["every_lora_values"],
            "stored_ratio": round(s["stored_values"] / s["every_lora_values"], 6),
            "rank": o.rank, "basis_size": k, "tasks": model.tasks, "coeff": o.coeff,
            "refit": o.refit, "merge": o.merge, "merged": 1,
            "trained_params": self.trained_params,
            # needed at inference besides the backbone: the basis, coefficients, prototypes
            "inference_extra_params": (s["basis_values"] + s["coeff_values"]
                                       + (s["prototype_values"] if o.merge == "rmm" else 0)),
            "backbone_passes": 2 if o.merge == "rmm" else 1,
            **{key: s[key] for key in ("basis_values", "coeff_values", "head_params",
                                       "prototype_values", "lora_params")},
            **self._record,
        }

    # ----------------------------------------------------------------- checkpoints
    def checkpoint_state(self) -> dict:
        model = self.rmm
        return {"head_classes": [list(c) for c in model.head_classes],
                "bases": [[fb.state() for fb in pair] for pair in model.bases],
                "originals": [[[u, d] for u, d in task] for task in self.originals],
                "trained_params": self.trained_params, "record": dict(self._record)}

    def restore_checkpoint_state(self, state: dict, experiences: list) -> None:
        """Heads of the finished experiences (weights, prototypes and the class -> task map
        come with the model's state), the bases and the trained factors."""
        model = self.rmm
        device = next(model.backbone.parameters()).device
        for classes in state["head_classes"]:
            model.heads.append(nn.Linear(model.dim, len(classes)).to(device))
            model.head_classes.append(list(classes))
        model.heads.requires_grad_(False)
        model.bases = [tuple(rb.FactorBasis.from_state(s) for s in pair)
                       for pair in state["bases"]]
        self.originals = [[(u, d) for u, d in task] for task in state["originals"]]
        self.trained_params = state["trained_params"]
        self._record = dict(state["record"])

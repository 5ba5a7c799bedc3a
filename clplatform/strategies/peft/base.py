"""The continual-learning form the mergeable methods share (the spec's "Setting and the
shared contract"), as one base class each method parametrises by what it installs on the ViT.

- ``adapt=first`` (default): experience 1 trains fresh modules with a temporary linear head
  over its classes (plain cross-entropy: the masked CE over the current classes is exactly
  that), the modules are merged into the frozen weights, and every experience (the first
  included) writes its classes' mean features of the merged network into SimpleCIL's
  prototype head (:class:`~clplatform.strategies.prototype_head.PrototypeHead`).
- ``adapt=every``: a fresh module set per experience on the current (merged) weights, trained
  with SEMA's linear head and masked cross-entropy, merged after the experience.

Merging is the shared re-parameterisation (:mod:`clplatform.strategies.reparam`): the
wrappers are folded and replaced by plain ``nn.Linear`` s in place (``deploy``), so the model
the evaluator runs has the backbone's structure and FLOPs exactly. The patch embedding is
frozen and the streams have no augmentation, so the embedded tokens are computed once per
experience (exact); the blocks hold the modules and run at every step.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from clplatform.backbones import Backbone
from clplatform.compute import FlopCount
from clplatform.data import experience_images
from clplatform.evaluator import MASK_VALUE

from ..base import Strategy, StrategyContext, experience_classes, masked_cross_entropy
from ..prototype_head import PrototypeHead
from ..reparam import ReparamLinear, deploy, ensure_bias, replace_module, wrappers
from ..vit import ViTPieces, frozen_rows, map_batches, require_vit
from .config import MergeableOptions

PROBE = 16  # samples of the fixed probe batch (merge gap)


class MergeableViT(ViTPieces):
    """The frozen backbone (eval mode), a linear head (SEMA's; in ``adapt=first`` the
    temporary head of experience 1) and a prototype head; ``head_kind`` says which predicts.
    Modules installed in the blocks follow the model's mode (dropout, drop-path)."""

    def __init__(self, backbone: Backbone, num_classes: int, strategy: str):
        require_vit(backbone, strategy)
        super().__init__(backbone)
        backbone.requires_grad_(False)
        self.dim = backbone.num_features
        self.frozen_blocks = len(self.vit.blocks)
        self.linear = nn.Linear(self.dim, num_classes)   # Kaiming-uniform weight, zero bias
        nn.init.zeros_(self.linear.bias)
        self.linear.requires_grad_(False)                # trainable only while adapting
        self.prototypes = PrototypeHead(self.dim, num_classes)
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))
        self.head_kind = "linear"

    def train(self, mode: bool = True) -> "MergeableViT":
        super().train(mode)
        for _name, wrapper in wrappers(self.vit):
            wrapper.train(mode)
        return self

    def features_of_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.pool(self.run_blocks(tokens))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        if self.head_kind == "prototype":
            return self.prototypes(features)
        return self.linear(features).masked_fill(~self.seen, MASK_VALUE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.vit_features(x))


def warmup_cosine(optimizer: torch.optim.Optimizer, total: int, warmup: float,
                  start: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Per iteration: linear warm-up from ``start`` x lr over ``warmup`` x ``total``
    iterations, then cosine to 0 (ZeroI2V's LinearLR + CosineAnnealingLR, Consolidator's
    warm-up + cosine), expressed over iterations."""
    warm = int(round(warmup * total))

    def factor(i: int) -> float:
        if i < warm:
            return start + (1.0 - start) * i / warm
        rest = max(total - warm, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(i - warm, rest) / rest))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def forward_flops(fn, x: torch.Tensor) -> int:
    """FLOPs of ``fn(x)`` by the evaluator's counter (fused attention included)."""
    with torch.no_grad(), FlopCount() as counter:
        fn(x)
    return counter.total


class MergeableStrategy(Strategy):
    """Base of ``linear-adapter``, ``lora``, ``comp-lora`` and ``consolidator``.

    A method supplies :meth:`install` (wrap the targets of every block with fresh modules,
    returning the wrappers), optionally :meth:`extra_trainable` (e.g. the final norm),
    :meth:`before_merge` (records that need the unmerged modules) and
    :meth:`method_extras`; ``merge_modules`` false keeps the wrappers (an ablation)."""

    builds_own_optimizers = True
    opts: MergeableOptions
    merge_modules = True

    def __init__(self, context: StrategyContext, opts: MergeableOptions, name: str):
        opts.validate()
        model = MergeableViT(context.backbone, context.info.num_classes, name)
        super().__init__(context, opts, model=model)
        self.name = name
        self.experiences_seen = 0
        self.factor_params_total = 0     # every experience's module parameters
        self.biased: list[str] = []      # Linears that merging gave a bias
        self.last: dict = {}             # records of the experience just trained

    @property
    def mvit(self) -> MergeableViT:
        return self.model

    # -------------------------------------------------------------- what a method supplies
    def install(self) -> list[ReparamLinear]:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_trainable(self) -> list[nn.Parameter]:
        return []

    def before_merge(self, installed: list[ReparamLinear]) -> dict:
        return {}

    def method_extras(self) -> dict:
        return {}

    # -------------------------------------------------------------- shared machinery
    def targets(self, paths: tuple[str, ...]) -> list[tuple[str, nn.Linear]]:
        """(name in the ViT, Linear) for each block and each path such as ``attn.qkv``."""
        out = []
        for i, block in enumerate(self.mvit.blocks):
            for path in paths:
                out.append((f"blocks.{i}.{path}", block.get_submodule(path)))
        return out

    def wrap(self, name: str, wrapper: ReparamLinear) -> ReparamLinear:
        replace_module(self.mvit.vit, name, wrapper)
        return wrapper

    def _train_exp(self, experience, eval_streams=None, **kwargs):
        model, o = self.mvit, self.opts
        x, y = experience_images(experience.dataset)
        _classes, current = experience_classes(y, model.seen)
        self.last = {}
        model.eval()
        tokens = frozen_rows(model.embed, x, self.device, self.context.train.cache_bytes)
        if o.adapt == "every" or self.experiences_seen == 0:
            self._adapt(tokens, y.to(self.device), current.to(self.device))
        if o.adapt == "first":
            model.head_kind = "prototype"
            model.eval()
            features = map_batches(model.features_of_tokens, tokens, self.device)
            model.prototypes.add(features, y.to(self.device))
        self.experiences_seen += 1

    def _adapt(self, tokens: torch.Tensor, y: torch.Tensor, current: torch.Tensor) -> None:
        model, o = self.mvit, self.opts
        installed = self.install()
        module_params = [p for w in installed for n, p in w.named_parameters()
                         if not n.startswith("base.") and p.requires_grad]
        extra = self.extra_trainable()
        for p in extra:
            p.requires_grad_(True)
        model.linear.requires_grad_(True)
        groups = [{"params": module_params, "weight_decay": o.weight_decay},
                  {"params": extra + list(model.linear.parameters()), "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=o.lr)
        epochs, batch = self.context.train.epochs, self.context.train.batch_size
        steps = math.ceil(len(tokens) / batch) * epochs
        scheduler = warmup_cosine(optimizer, steps, o.warmup, o.warmup_start)

        def loss(t, labels):
            return masked_cross_entropy(model.linear(model.features_of_tokens(t)), labels,
                                        current)
        model.train()
        try:
            self.fit_tensors(optimizer, tokens, y, loss, epochs, batch, scheduler)
        finally:
            model.eval()
            for p in module_params + extra + list(model.linear.parameters()):
                p.requires_grad_(False)
                p.grad = None
        n_module = sum(p.numel() for p in module_params)
        self.last = {"modules": len(installed), "module_params": n_module,
                     "trained_params": n_module + sum(p.numel() for p in extra)
                     + model.linear.weight.numel() + model.linear.bias.numel(),
                     "stored_params": n_module, **self.before_merge(installed)}
        # what must be stored to ship this experience's adaptation (consolidator: the
        # union support, not the branches)
        self.factor_params_total += self.last["stored_params"]
        probe = tokens[:PROBE]
        with torch.no_grad():
            unmerged = model.linear(model.features_of_tokens(probe))
        self.last["flops_ratio_unmerged"] = self._flops_ratio(probe[:1])
        if self.merge_modules:
            self._merge(installed)
            with torch.no_grad():
                merged = model.linear(model.features_of_tokens(probe))
            self.last["merge_gap"] = float((merged - unmerged).abs().max())

    def _merge(self, installed: list[ReparamLinear]) -> None:
        """Fold every wrapper into its Linear and put the plain Linear back (in place)."""
        for name, wrapper in wrappers(self.mvit.vit):
            had_bias = wrapper.base.bias is not None
            wrapper.fold_in()
            if not had_bias and wrapper.base.bias is not None:
                self.biased.append(name)
        deploy(self.mvit.vit, inplace=True)

    def _flops_ratio(self, probe_tokens: torch.Tensor) -> float:
        """FLOPs of the blocks and pooling as they are, over those of the deployed (merged)
        blocks: 1 exactly once merged."""
        model = self.mvit
        was = model.training
        model.eval()
        try:
            now = forward_flops(model.features_of_tokens, probe_tokens)
            return now / forward_flops(deploy(model).features_of_tokens, probe_tokens)
        finally:
            model.train(was)

    # -------------------------------------------------------------- records and resume
    def inference_extra_params(self) -> int:
        return sum(w.extra_parameters() for _n, w in wrappers(self.mvit.vit))

    def experience_extras(self) -> dict:
        model = self.mvit
        seen = int(model.seen.sum())
        head_params = seen * (self.mvit.dim + 1)
        factor_bytes = 2 * self.factor_params_total           # fp16 factors, all experiences
        flops_ratio = 1.0 if not wrappers(model.vit) else self.last.get(
            "flops_ratio_unmerged", float("nan"))
        return {"adapt": self.opts.adapt,
                "merged": int(not wrappers(model.vit)),
                "modules": self.last.get("modules", 0),
                "module_params": self.last.get("module_params", 0),
                "trained_params": self.last.get("trained_params", 0),
                "factor_params_total": self.factor_params_total,
                "stored_factor_bytes": factor_bytes,
                "inference_extra_params": self.inference_extra_params(),
                "flops_ratio": flops_ratio,
                # what the modules would cost if kept as side branches (the merge's saving)
                "unmerged_flops_ratio": self.last.get("flops_ratio_unmerged", float("nan")),
                "merge_gap": self.last.get("merge_gap", float("nan")),
                "params_added": self.factor_params_total + head_params,
                # what ships apart from the public backbone: the factors (fp16) and the head
                "stored_bytes": factor_bytes + 4 * head_params,
                **self.method_extras()}

    def method_state(self) -> dict:
        """A method's own state for a resume (tensors and plain values)."""
        return {}

    def restore_method_state(self, state: dict) -> None:
        """Restore :meth:`method_state`."""

    def checkpoint_state(self) -> dict:
        return {"experiences_seen": self.experiences_seen, "head_kind": self.mvit.head_kind,
                "factor_params_total": self.factor_params_total, "biased": list(self.biased),
                "method": self.method_state()}

    def restore_checkpoint_state(self, state: dict, experiences: list) -> None:
        self.experiences_seen = state["experiences_seen"]
        self.mvit.head_kind = state["head_kind"]
        self.factor_params_total = state["factor_params_total"]
        self.biased = list(state["biased"])
        self.restore_method_state(state.get("method", {}))
        for name in self.biased:
            ensure_bias(self.mvit.vit.get_submodule(name))
        if not self.merge_modules and self.experiences_seen:
            for wrapper in self.install():   # regrow the kept side modules
                wrapper.requires_grad_(False)

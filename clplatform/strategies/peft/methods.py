"""The four mergeable strategies: each says what it installs on the ViT (the continual-learning
form, merging, records and resume are :class:`~.base.MergeableStrategy`'s)."""
from __future__ import annotations

import torch
from torch import nn

from clplatform.errors import UserError

from ..base import StrategyContext
from ..lora import LoRALinear
from ..reparam import ReparamLinear
from .base import MergeableStrategy
from .config import (LORA_TARGETS, CompLoRAOptions, ConsolidatorOptions,
                     LinearAdapterOptions, LoRAOptions)
from .layers import (AdaptedLinear, ConsolidatorLinear, LinearAdapter, ProjectedBranch,
                     lora_scale, orthonormal_union, protected_directions)

CONSOLIDATOR_PATHS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
#: where each ZeroI2V adapter sits: (Linear of the block, before or after it)
PLACES = {"qkv_in": ("attn.qkv", "pre"), "proj_out": ("attn.proj", "post"),
          "fc1_in": ("mlp.fc1", "pre"), "fc2_out": ("mlp.fc2", "post")}


class LinearAdapterStrategy(MergeableStrategy):
    """ZeroI2V: linear adapters (dense placement) merged into the frozen weights."""
    opts: LinearAdapterOptions

    def __init__(self, context: StrategyContext, opts: LinearAdapterOptions):
        super().__init__(context, opts, "linear-adapter")
        self.merge_modules = opts.merge
        self.hidden = max(1, int(self.mvit.dim * opts.ratio))

    def install(self) -> list[ReparamLinear]:
        o, installed = self.opts, []
        device = self.mvit.linear.weight.device
        by_target: dict[str, dict[str, LinearAdapter]] = {}
        for place in o.place_list():
            path, side = PLACES[place]
            by_target.setdefault(path, {})[side] = None
        for path, sides in by_target.items():
            for name, linear in self.targets((path,)):
                dim = linear.in_features if "pre" in sides else linear.out_features
                adapters = {side: LinearAdapter(dim, self.hidden, o.scale, o.dropout)
                            .to(device) for side in sides}
                installed.append(self.wrap(name, AdaptedLinear(linear, adapters.get("pre"),
                                                               adapters.get("post"))))
        return installed

    def extra_trainable(self) -> list[nn.Parameter]:
        return list(self.mvit.vit.norm.parameters()) if self.opts.train_norm else []

    def before_merge(self, installed) -> dict:
        norm = sum(p.numel() for p in self.extra_trainable())
        return {"stored_params": self.last_module_params(installed) + norm}

    @staticmethod
    def last_module_params(installed) -> int:
        return sum(w.extra_parameters() for w in installed)

    def method_extras(self) -> dict:
        return {"hidden": self.hidden, "places": len(self.opts.place_list())}


class LoRAStrategy(MergeableStrategy):
    """LoRA (r = 8 on the fused qkv, as Consolidator's LoRA baseline), merged."""
    opts: LoRAOptions

    def __init__(self, context: StrategyContext, opts: LoRAOptions, name: str = "lora"):
        super().__init__(context, opts, name)

    def make_branch(self, name: str, linear: nn.Linear):
        o = self.opts
        wrapper = LoRALinear(linear)
        wrapper.add_branch(0, linear.out_features, o.rank, lora_scale(o.alpha, o.rank))
        return wrapper

    def install(self) -> list[ReparamLinear]:
        return [self.wrap(name, self.make_branch(name, linear))
                for name, linear in self.targets(LORA_TARGETS[self.opts.targets])]

    def method_extras(self) -> dict:
        return {"rank": self.opts.rank}


class CompLoRAStrategy(LoRAStrategy):
    """Comp-LoRA [reading]: the LoRA update confined to the complement of the top-k singular
    subspace of the pre-trained weight (by parametrisation)."""
    opts: CompLoRAOptions

    def __init__(self, context: StrategyContext, opts: CompLoRAOptions):
        super().__init__(context, opts, "comp-lora")
        self.pretrained: dict[str, tuple] = {}
        #: accumulate: per target, orthonormal columns spanning earlier experiences' updates
        self.accumulated: dict[str, torch.Tensor] = {}
        if opts.subspace in ("pretrained", "accumulate"):  # once, before any experience
            for name, linear in self.targets(LORA_TARGETS[opts.targets]):
                self.pretrained[name] = protected_directions(
                    linear.weight, opts.protect, opts.side, opts.protect_minor)

    def make_branch(self, name: str, linear: nn.Linear):
        o = self.opts
        left, right, _k = self.pretrained[name] if name in self.pretrained else \
            protected_directions(linear.weight, o.protect, o.side, o.protect_minor)
        if o.subspace == "accumulate" and name in self.accumulated:
            left = orthonormal_union(left, self.accumulated[name])
        wrapper = LoRALinear(linear)
        branch = ProjectedBranch(linear.in_features, linear.out_features, o.rank,
                                 lora_scale(o.alpha, o.rank), left, right).to(
            linear.weight.device, linear.weight.dtype)
        wrapper.branches.append(branch)
        wrapper.slices.append((0, linear.out_features))
        return wrapper

    def before_merge(self, installed) -> dict:
        leaks, right_leaks, protected = [], [], 0
        with torch.no_grad():
            for wrapper in installed:
                branch = wrapper.branches[0]
                delta = branch.delta_weight().double()
                norm = float(delta.norm())
                if branch.left is not None:
                    protected += branch.left.shape[1]
                    leaks.append(float((branch.left.double().T @ delta).norm()) / norm
                                 if norm else 0.0)
                if branch.right is not None:
                    right_leaks.append(float((delta @ branch.right.double()).norm()) / norm
                                       if norm else 0.0)
                    if branch.left is None:
                        protected += branch.right.shape[1]
        if self.opts.subspace == "accumulate":
            names = [name for name, _ in self.targets(LORA_TARGETS[self.opts.targets])]
            for name, wrapper in zip(names, installed):
                delta = wrapper.branches[0].delta_weight().detach()
                self.accumulated[name] = orthonormal_union(self.accumulated.get(name), delta)
        return {"leak": max(leaks) if leaks else float("nan"),
                "right_leak": max(right_leaks) if right_leaks else float("nan"),
                "protected": protected}

    def method_state(self) -> dict:
        return {"accumulated": dict(self.accumulated)}

    def restore_method_state(self, state: dict) -> None:
        self.accumulated = dict(state.get("accumulated", {}))

    def method_extras(self) -> dict:
        return {"rank": self.opts.rank, "protected": self.last.get("protected", 0),
                "leak": self.last.get("leak", float("nan")),
                "right_leak": self.last.get("right_leak", float("nan"))}


class ConsolidatorStrategy(MergeableStrategy):
    """Consolidator: grouped, channel-shuffled branches on every Linear of every block,
    consolidated (union support) and merged."""
    opts: ConsolidatorOptions

    def __init__(self, context: StrategyContext, opts: ConsolidatorOptions):
        super().__init__(context, opts, "consolidator")
        dim = self.mvit.dim
        self.groups = [dim // d for d in opts.divisors()]
        widths = {lin.in_features for _n, lin in self.targets(CONSOLIDATOR_PATHS)} | {
            lin.out_features for _n, lin in self.targets(CONSOLIDATOR_PATHS)}
        bad = [d for d, g in zip(opts.divisors(), self.groups)
               if dim % d or any(w % g for w in widths)]
        if bad:
            raise UserError(f"consolidator: group_divisor {bad[0]} gives groups that do not "
                            f"divide the layer widths {sorted(widths)} (d = {dim})")

    def install(self) -> list[ReparamLinear]:
        o = self.opts
        return [self.wrap(name, ConsolidatorLinear(linear, self.groups, o.drop, o.shuffle))
                for name, linear in self.targets(CONSOLIDATOR_PATHS)]

    def before_merge(self, installed) -> dict:
        union = sum(int(w.union_support().sum()) for w in installed)
        biases = sum(w.out_features for w in installed)
        return {"union_nonzeros": union, "stored_params": union + biases}

    def method_extras(self) -> dict:
        return {"groups": ",".join(map(str, self.groups)),
                "union_nonzeros": self.last.get("union_nonzeros", 0)}

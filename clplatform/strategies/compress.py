"""Structured pruning of a trained ViT model (``shared/specs/compute-reduction.md`` C):
ResRep (compactors under a penalty gradient, global masks, folded into narrower layers),
C-SGD (k-means clusters pulled together, merged) and magnitude pruning (one-shot, the floor).

The prunable structures (``--targets``) are *channel groups*: units that are rows of an
input linear and columns of the output linear that follows it —
- ``mlp``: hidden units of a timm ``Mlp`` (rows of fc1 with its bias, columns of fc2);
- ``adapters``: the bottleneck of the one adapter module (:class:`..sema.layer.Adapter`:
  rows of down, columns of up);
- ``heads``: whole attention heads of a timm ``Attention`` (the head's q, k and v rows of
  qkv, its columns of proj; head_dim and the scale stay, timm needs equal head widths).
The residual width is never pruned. Nothing here reads files or knows about runs: the
application (``clplatform.app.compress``) loads the model and the data and writes records.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from clplatform.compute import FlopCount
from clplatform.data import ExperienceImages, rows_on
from clplatform.errors import UserError
from clplatform.evaluator import MASK_VALUE
from clplatform.options import opt

METHODS = ("resrep", "csgd", "magnitude")
TARGETS = ("mlp", "adapters", "heads")
CONVERSION_EPSILON = 1e-5  # ResRep's resrep_train.CONVERSION_EPSILON: rows below are dropped


@dataclass
class CompressOptions:
    """Hyper-parameters of ``clplat compress`` (defaults: the official code, see each)."""
    method: str = opt("resrep", "resrep, csgd or magnitude (one-shot norm pruning)",
                      choices=METHODS)
    ratio: float = opt(0.6, "kept fraction: of the targets' FLOPs (resrep, global widths); "
                            "of each target layer's width (csgd, magnitude)", min=0, max=1)
    ratio_of: str = opt("targets", "resrep's ratio counts the FLOPs of the targeted "
                        "structures (targets) or of the whole model (model, the spec's "
                        "reading; unreachable when the targets hold too few FLOPs)",
                        choices=("targets", "model"))
    targets: tuple = opt(("mlp", "adapters"), "structures to prune: mlp, adapters, heads")
    data: str = opt("current", "training data: current (the last experience's), replay "
                    "(the strategy's buffer) or all-seen (an oracle, not continual learning)",
                    choices=("current", "replay", "all-seen"))
    loss: str = opt("kd", "kd (KL divergence to the uncompressed model's logits over the "
                    "seen classes) or ce (cross-entropy on the labels, seen classes)",
                    choices=("kd", "ce"))
    train: str = opt("compactors", "parameters trained: compactors (ResRep's compactors, "
                     "C-SGD's clustered rows; the platform's default: measured, training "
                     "everything on the last experience's few samples destroys the old "
                     "classes) or all (the official recipes, trained on all of ImageNet)",
                     choices=("all", "compactors"))
    steps: int = opt(500, "training steps (mini-batches); 0: merge at once", min=0)
    lr: float = opt(0.01, "learning rate (ResRep: 0.01, ResNet-50 recipe)", min=0)
    batch_size: int = opt(32, "mini-batch size", min=1)
    momentum: float = opt(0.9, "SGD momentum of the model's weights", min=0, max=1)
    weight_decay: float = opt(1e-4, "weight decay eta (both papers' recipes)", min=0)
    temperature: float = opt(1.0, "softmax temperature of --loss kd", min=1e-3)
    # ResRep (rr/exp_resrep.py)
    lasso: float = opt(1e-4, "ResRep: penalty strength lambda", min=0)
    compactor_momentum: float = opt(0.99, "ResRep: momentum of the compactors (no decay)",
                                    min=0, max=1)
    mask_interval: int = opt(200, "ResRep: steps between two mask updates", min=1)
    mask_after: int = opt(-1, "ResRep: steps before the first mask update (-1: 5 epochs "
                               "of the data, as the official before_mask_iters)", min=-1)
    mask_step: int = opt(4, "ResRep: at most this many more channels masked per update "
                            "(begin_granularity)", min=1)
    min_units: int = opt(1, "units kept per layer at least (num_at_least)", min=1)
    merge: str = opt("mask", "ResRep merge: mask (drop the masked channels, their rows "
                     "zeroed first; the platform's choice for short budgets) or threshold "
                     "(drop rows with norm < 1e-5, the official conversion)",
                     choices=("mask", "threshold"))
    # C-SGD (csgd/ddp_csgd_train.py)
    centripetal: float = opt(0.05, "C-SGD: centripetal strength epsilon (ResNet-50: 0.05)",
                             min=0)
    seed: int = opt(0, "seed of the batches and of k-means", min=0)

    def validate(self) -> None:
        if not 0 < self.ratio < 1:
            raise UserError(f"--ratio must lie strictly between 0 and 1, got {self.ratio}")
        targets = tuple(self.targets)
        if not targets:
            raise UserError("--targets is empty: name mlp, adapters and/or heads")
        for target in targets:
            if target not in TARGETS:
                raise UserError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")


# ----------------------------------------------------------------------------- channel groups
@dataclass
class ChannelGroup:
    """``units`` prunable units of one layer pair: unit u is the rows ``rows[u]`` ([parts,
    size]) of ``owner.<inp>`` and the columns ``cols[u]`` ([size]) of ``owner.<out>``."""
    name: str
    kind: str
    owner: nn.Module
    inp: str
    out: str
    rows: torch.Tensor
    cols: torch.Tensor
    tokens: int = 0          # tokens a unit sees per sample (measured on a probe)
    dim: int = 0             # residual width

    @property
    def units(self) -> int:
        return len(self.rows)

    @property
    def in_linear(self) -> nn.Linear:
        return getattr(self.owner, self.inp)

    @property
    def out_linear(self) -> nn.Linear:
        return getattr(self.owner, self.out)

    @property
    def unit_flops(self) -> int:
        """Inference FLOPs per sample of one unit (2 per multiply-add): its rows and columns,
        and for a head its share of QK^T and AV."""
        n, d = self.tokens, self.dim
        macs = n * d * (self.rows[0].numel() + self.cols[0].numel())
        if self.kind == "heads":
            macs += 2 * n * n * self.cols.shape[1]
        return 2 * macs

    def unit_view(self, tensor: torch.Tensor) -> torch.Tensor:
        """The in-linear's weight (or bias) as one flat vector per unit: [units, -1]."""
        return tensor[self.rows.flatten()].reshape(self.units, -1)

    def set_unit_view(self, tensor: torch.Tensor, value: torch.Tensor) -> None:
        tensor[self.rows.flatten()] = value.reshape(-1, *tensor.shape[1:])


def _vit_classes():
    from timm.layers import Attention, Mlp
    from timm.models.vision_transformer import VisionTransformer
    return VisionTransformer, Mlp, Attention


def find_groups(model: nn.Module, targets: tuple) -> list[ChannelGroup]:
    """The channel groups of ``targets`` in ``model`` (a timm ViT inside), in module order;
    an unsupported architecture is a one-line error."""
    from .sema.layer import Adapter
    vit_cls, mlp_cls, attn_cls = _vit_classes()
    if not any(isinstance(m, vit_cls) for m in model.modules()):
        raise UserError(f"cannot compress a {type(model).__name__}: structured pruning needs "
                        "a timm VisionTransformer backbone (its Mlp, Attention and adapters)")
    groups: list[ChannelGroup] = []
    for name, module in model.named_modules():
        if "mlp" in targets and type(module) is mlp_cls and isinstance(module.norm, nn.Identity):
            hidden = module.fc1.out_features
            groups.append(ChannelGroup(name, "mlp", module, "fc1", "fc2",
                                       torch.arange(hidden).view(hidden, 1, 1),
                                       torch.arange(hidden).view(hidden, 1),
                                       dim=module.fc1.in_features))
        elif "adapters" in targets and isinstance(module, Adapter):
            r = module.down.out_features
            groups.append(ChannelGroup(name, "adapters", module, "down", "up",
                                       torch.arange(r).view(r, 1, 1),
                                       torch.arange(r).view(r, 1), dim=module.down.in_features))
        elif "heads" in targets and type(module) is attn_cls:
            if module.gate is not None or not isinstance(module.norm, nn.Identity):
                continue
            h, hd = module.num_heads, module.head_dim
            head = torch.arange(h * hd).view(h, hd)
            rows = torch.stack([head, head + h * hd, head + 2 * h * hd], 1)  # q, k, v
            groups.append(ChannelGroup(name, "heads", module, "qkv", "proj", rows, head,
                                       dim=module.qkv.in_features))
    if not groups:
        raise UserError(f"nothing to prune: no {', '.join(targets)} in the model")
    return groups


@torch.no_grad()
def measure_tokens(model: nn.Module, groups: list[ChannelGroup], probe: torch.Tensor) -> None:
    """Each group's tokens per sample, from one forward pass over ``probe``."""
    handles = [g.owner.register_forward_hook(
        lambda m, args, out, g=g: setattr(g, "tokens", args[0].shape[-2])) for g in groups]
    was_training = model.training
    model.eval()
    try:
        model(probe)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()


def flops_per_sample(model: nn.Module, x: torch.Tensor) -> float:
    """Inference FLOPs per sample (the evaluator's FlopCount)."""
    from clplatform.compute import inference_flops_per_sample
    return inference_flops_per_sample(model, x, x.device)


# ----------------------------------------------------------------------------- narrowing
@torch.no_grad()
def narrow(group: ChannelGroup, keep: torch.Tensor, in_weight: torch.Tensor,
           in_bias: torch.Tensor | None, out_weight: torch.Tensor) -> None:
    """Replace the group's two linears by narrower ones: units ``keep`` of the (already
    transformed) ``in_weight``/``in_bias`` rows; ``out_weight`` has one column block per kept
    unit, in order. Attention gets the new head count (head_dim and scale unchanged)."""
    keep = keep.cpu()
    rows = group.rows[keep].permute(1, 0, 2).flatten()  # q of kept heads, then k, then v
    old_in, old_out = group.in_linear, group.out_linear
    new_in = nn.Linear(old_in.in_features, len(rows), bias=in_bias is not None,
                       device=old_in.weight.device, dtype=old_in.weight.dtype)
    new_in.weight.copy_(in_weight[rows])
    if in_bias is not None:
        new_in.bias.copy_(in_bias[rows])
    new_out = nn.Linear(out_weight.shape[1], old_out.out_features, bias=old_out.bias is not None,
                        device=old_out.weight.device, dtype=old_out.weight.dtype)
    new_out.weight.copy_(out_weight)
    if old_out.bias is not None:
        new_out.bias.copy_(old_out.bias)
    new_in.requires_grad_(old_in.weight.requires_grad)
    new_out.requires_grad_(old_out.weight.requires_grad)
    setattr(group.owner, group.inp, new_in)
    setattr(group.owner, group.out, new_out)
    if group.kind == "heads":
        group.owner.num_heads = len(keep)
        group.owner.attn_dim = len(keep) * group.owner.head_dim
    parts, size = group.rows.shape[1:]
    group.rows = torch.arange(len(rows)).view(parts, len(keep), size).permute(1, 0, 2)
    group.cols = torch.arange(out_weight.shape[1]).view(len(keep), -1)


def out_columns(group: ChannelGroup, units: torch.Tensor) -> torch.Tensor:
    """The out-linear's columns of ``units``, in order ([out, len(units) * size])."""
    return group.out_linear.weight[:, group.cols[units].flatten()]


def prune_units(group: ChannelGroup, keep: torch.Tensor) -> None:
    """Keep ``keep`` units as they are (magnitude pruning, exact for zeroed units)."""
    keep = keep.sort().values
    inp = group.in_linear
    narrow(group, keep, inp.weight, inp.bias, out_columns(group, keep))


def widths(groups: list[ChannelGroup]) -> list[int]:
    return [g.units for g in groups]


def target_flops(groups: list[ChannelGroup], units: list[int] | None = None) -> int:
    units = widths(groups) if units is None else units
    return sum(u * g.unit_flops for g, u in zip(groups, units))


# ----------------------------------------------------------------------------- magnitude
def magnitude_keep(group: ChannelGroup, width: int) -> torch.Tensor:
    """The ``width`` units with the largest L2 norm of their input rows (bias included)."""
    with torch.no_grad():
        norms = unit_norms(group)
    return norms.argsort(descending=True)[:width].cpu()


def unit_norms(group: ChannelGroup) -> torch.Tensor:
    inp = group.in_linear
    norms = group.unit_view(inp.weight).pow(2).sum(1)
    if inp.bias is not None:
        norms = norms + group.unit_view(inp.bias).pow(2).sum(1)
    return norms.sqrt()


def uniform_widths(groups: list[ChannelGroup], ratio: float, min_units: int) -> list[int]:
    """Kept width per layer: floor(ratio x width), at least ``min_units`` (C-SGD, magnitude)."""
    return [min(g.units, max(min_units, math.floor(ratio * g.units))) for g in groups]


# ----------------------------------------------------------------------------- ResRep
class Compactors(nn.Module):
    """ResRep's compactors on the model's channel groups, applied through hooks: a square,
    bias-free map initialised to the identity after each group's input linear (before the
    nonlinearity) — for heads a diagonal one (a gain per head on its output before proj:
    mixing heads could not be merged)."""

    def __init__(self, groups: list[ChannelGroup]):
        super().__init__()
        self.groups = groups
        self.weights = nn.ParameterList()
        self.masks: list[torch.Tensor] = []
        self._handles = []
        for g in groups:
            device = g.in_linear.weight.device
            if g.kind == "heads":
                q = nn.Parameter(torch.ones(g.units, 1, device=device))
                hd = g.cols.shape[1]
                hook = g.out_linear.register_forward_pre_hook(
                    lambda m, args, q=q, hd=hd: (args[0] * q[:, 0].repeat_interleave(hd),))
            else:
                q = nn.Parameter(torch.eye(g.units, device=device))
                hook = g.in_linear.register_forward_hook(
                    lambda m, args, out, q=q: out @ q.t())
            self.weights.append(q)
            self.masks.append(torch.ones(g.units, dtype=torch.bool, device=device))
            self._handles.append(hook)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @torch.no_grad()
    def norms(self) -> list[torch.Tensor]:
        return [q.norm(dim=1) for q in self.weights]

    @torch.no_grad()
    def penalise(self, lasso: float) -> None:
        """G = m * dL/dQ + lambda Q_i / ||Q_i||, row by row (rr/resrep_train.train_one_step)."""
        for q, mask in zip(self.weights, self.masks):
            if q.grad is None:
                q.grad = torch.zeros_like(q)
            q.grad.mul_(mask[:, None].to(q.dtype))
            q.grad.add_(q / q.norm(dim=1, keepdim=True).clamp_min(1e-12), alpha=lasso)

    @property
    def masked(self) -> int:
        return sum(int((~m).sum()) for m in self.masks)

    def update_masks(self, budget: float, step: int | None, min_units: int) -> None:
        """Recompute the masks from scratch (rr/resrep_util.resrep_mask_model): sort every
        channel by its compactor row norm and mask the lowest until the targets' FLOPs of the
        implied widths are at most ``budget``; while the current masks are above budget, at
        most ``step`` more channels than now are masked (None: no limit); every layer keeps
        ``min_units``."""
        norms = self.norms()
        costs = [g.unit_flops for g in self.groups]
        current = sum(int(m.sum()) * c for m, c in zip(self.masks, costs))
        limit = (self.masked + step) if (step is not None and current > budget) else None
        order = sorted(((float(v), gi, u) for gi, n in enumerate(norms)
                        for u, v in enumerate(n.tolist())))
        kept = [g.units for g in self.groups]
        flops = sum(k * c for k, c in zip(kept, costs))
        new = [torch.ones_like(m) for m in self.masks]
        count = 0
        for _, gi, u in order:
            if flops <= budget or (limit is not None and count >= limit):
                break
            if kept[gi] <= min_units:
                continue
            kept[gi] -= 1
            flops -= costs[gi]
            new[gi][u] = False
            count += 1
        self.masks = new

    @torch.no_grad()
    def zero_masked(self) -> None:
        """The masked wide model: masked compactor rows set to zero."""
        for q, mask in zip(self.weights, self.masks):
            q[~mask] = 0

    @torch.no_grad()
    def merge(self, rule: str) -> list[int]:
        """Fold each compactor into its layers and drop its dead rows: W1' = (Q W1)[kept],
        b1' = (Q b1)[kept], W2' = W2[:, kept] (a head's gain goes into its proj columns).
        ``rule``: mask (drop masked rows) or threshold (rows with norm < 1e-5). Removes the
        hooks; returns the rows below 1e-5 per group."""
        self.remove()
        below = []
        for g, q, mask in zip(self.groups, self.weights, self.masks):
            norms = q.norm(dim=1)
            below.append(int((norms < CONVERSION_EPSILON).sum()))
            dead = ~mask if rule == "mask" else norms < CONVERSION_EPSILON
            if bool(dead.all()):  # keep at least one (as rr/resrep_convert.fold_conv)
                dead[norms.argmax()] = False
            keep = (~dead).nonzero().flatten().cpu()
            inp = g.in_linear
            if g.kind == "heads":
                gain = q[keep.to(q.device), 0].repeat_interleave(g.cols.shape[1])
                out = out_columns(g, keep) * gain
                narrow(g, keep, inp.weight, inp.bias, out)
            else:
                weight, bias = q @ inp.weight, (q @ inp.bias if inp.bias is not None else None)
                narrow(g, keep, weight, bias, out_columns(g, keep))
        return below


# ----------------------------------------------------------------------------- C-SGD
def kmeans_clusters(vectors: torch.Tensor, k: int, seed: int) -> list[list[int]]:
    """Clusters of the rows of ``vectors`` (scikit-learn's k-means++, as Centripetal-SGD's
    ``cluster_by_kmeans``), each sorted; k = rows: one cluster per row."""
    if k >= len(vectors):
        return [[i] for i in range(len(vectors))]
    import numpy as np
    from sklearn.cluster import KMeans
    labels = KMeans(n_clusters=k, n_init="auto", random_state=seed).fit_predict(
        vectors.detach().double().cpu().numpy())
    clusters = [sorted(np.flatnonzero(labels == c).tolist()) for c in range(k)]
    return sorted((c for c in clusters if c), key=lambda c: c[0])


def centripetal_matrices(units: int, clusters: list[list[int]], decay: float,
                         strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """M (1/|c| within a cluster) and D (decay + strength on the diagonal, -strength/|c|
    within the cluster): csgd generate_merge_matrix / generate_decay_matrix."""
    merge = torch.zeros(units, units)
    decay_matrix = torch.zeros(units, units)
    for cluster in clusters:
        idx = torch.tensor(cluster)
        merge[idx[:, None], idx] = 1.0 / len(cluster)
        decay_matrix[idx, idx] = decay + strength
        decay_matrix[idx[:, None], idx] -= strength / len(cluster)
    return merge, decay_matrix


class Centripetal:
    """C-SGD on the channel groups: G = M dL/dW + D W for each group's input rows (biases:
    0.1 epsilon), the optimizer's own decay off for them."""

    def __init__(self, groups: list[ChannelGroup], kept: list[int], decay: float,
                 strength: float, seed: int):
        self.groups = groups
        self.clusters = []
        self.matrices = []
        for g, k in zip(groups, kept):
            with torch.no_grad():
                clusters = kmeans_clusters(g.unit_view(g.in_linear.weight), k, seed)
            self.clusters.append(clusters)
            device = g.in_linear.weight.device
            weight = [m.to(device) for m in centripetal_matrices(g.units, clusters, decay,
                                                                 strength)]
            bias = [m.to(device) for m in centripetal_matrices(g.units, clusters, decay,
                                                               0.1 * strength)]
            self.matrices.append((weight, bias))

    def parameters(self) -> list[nn.Parameter]:
        out = []
        for g in self.groups:
            out.append(g.in_linear.weight)
            if g.in_linear.bias is not None:
                out.append(g.in_linear.bias)
        return out

    @torch.no_grad()
    def transform_gradients(self) -> None:
        for g, ((m_w, d_w), (m_b, d_b)) in zip(self.groups, self.matrices):
            for param, merge, decay in ((g.in_linear.weight, m_w, d_w),
                                        (g.in_linear.bias, m_b, d_b)):
                if param is None:
                    continue
                grad = param.grad if param.grad is not None else torch.zeros_like(param)
                new = merge @ g.unit_view(grad) + decay @ g.unit_view(param)
                g.set_unit_view(grad, new)
                param.grad = grad

    @torch.no_grad()
    def residual(self) -> float:
        """Largest distance of a unit's input row (bias included) from its cluster mean."""
        worst = 0.0
        for g, clusters in zip(self.groups, self.clusters):
            rows = g.unit_view(g.in_linear.weight)
            if g.in_linear.bias is not None:
                rows = torch.cat([rows, g.unit_view(g.in_linear.bias)], 1)
            for cluster in clusters:
                members = rows[cluster]
                worst = max(worst, float((members - members.mean(0)).norm(dim=1).max()))
        return worst

    @torch.no_grad()
    def merge(self) -> None:
        """Keep one unit per cluster; the next layer's columns of a cluster are summed
        (csgd_prune: exact once the rows are identical)."""
        for g, clusters in zip(self.groups, self.clusters):
            keep = torch.tensor([c[0] for c in clusters])
            out = torch.cat([out_columns(g, torch.tensor(c)).reshape(
                g.out_linear.out_features, len(c), -1).sum(1) for c in clusters], 1)
            narrow(g, keep, g.in_linear.weight, g.in_linear.bias, out)


# ----------------------------------------------------------------------------- training
@dataclass
class Data:
    """What the compress step may train on: inputs (a tensor, or an experience's
    :class:`~clplatform.data.ExperienceImages`), labels, the seen classes."""
    x: torch.Tensor | ExperienceImages
    y: torch.Tensor
    seen: torch.Tensor   # bool [num_classes]


def batches(n: int, batch_size: int, steps: int, generator: torch.Generator):
    """``steps`` index batches of equal size (shuffled epochs, the last partial one
    dropped), so every step costs the same FLOPs."""
    size = min(batch_size, n)
    done = 0
    while done < steps:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - size + 1, size):
            if done == steps:
                return
            yield order[start:start + size]
            done += 1


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, seen: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """KL(teacher || student) over the seen classes, times T^2."""
    t = temperature
    log_p = F.log_softmax(student[:, seen] / t, dim=1)
    q = F.log_softmax(teacher[:, seen] / t, dim=1)
    return F.kl_div(log_p, q, log_target=True, reduction="batchmean") * t * t


def seen_cross_entropy(logits: torch.Tensor, y: torch.Tensor, seen: torch.Tensor):
    return F.cross_entropy(logits.masked_fill(~seen, MASK_VALUE), y)


@dataclass
class Outcome:
    """What a compression did (the application records it)."""
    widths_before: list[int]
    widths_after: list[int]
    groups: list[str]
    kinds: list[str]
    train_seconds: float = 0.0
    train_flops: int = 0
    masked: int | None = None          # ResRep
    rows_below: int | None = None      # ResRep: compactor rows with norm < 1e-5
    residual: float | None = None      # C-SGD: largest distance from a cluster mean
    logit_gap: float = 0.0             # masked wide vs merged narrow, seen classes
    target_flops_before: int = 0
    target_flops_after: int = 0
    budget: float = 0.0                # the targets' FLOPs allowed
    extras: dict = field(default_factory=dict)


def compress(model: nn.Module, data: Data, opts: CompressOptions, probe: torch.Tensor,
             model_flops: float | None = None,
             train_step_hook: Callable[[int], None] | None = None) -> Outcome:
    """Prune ``model`` in place into a genuinely narrower one; ``probe``: a fixed batch of
    inputs (tokens per layer, the logit gap). ``model_flops``: the whole model's FLOPs per
    sample (``ratio_of=model``)."""
    opts.validate()
    groups = find_groups(model, tuple(opts.targets))
    device = probe.device
    measure_tokens(model, groups, probe)
    before = widths(groups)
    total = target_flops(groups)
    if opts.ratio_of == "model":
        if model_flops is None:
            model_flops = flops_per_sample(model, probe)
        budget = total - (1 - opts.ratio) * model_flops
        if budget < sum(opts.min_units * g.unit_flops for g in groups):
            raise UserError(f"--ratio {opts.ratio} of the whole model's FLOPs is out of reach: "
                            f"the targets hold {total / model_flops:.1%} of them")
    else:
        budget = opts.ratio * total
    outcome = Outcome(before, before, [g.name for g in groups], [g.kind for g in groups],
                      target_flops_before=total, budget=budget)
    teacher = copy.deepcopy(model).eval()
    teacher.requires_grad_(False)
    seen = data.seen.to(device)

    method_state = None
    if opts.method == "resrep":
        method_state = Compactors(groups)
    elif opts.method == "csgd":
        kept = uniform_widths(groups, opts.ratio, opts.min_units)
        method_state = Centripetal(groups, kept, opts.weight_decay, opts.centripetal, opts.seed)

    if opts.method != "magnitude" and opts.steps > 0:
        _train(model, teacher, data, opts, groups, method_state, seen, budget, outcome,
               train_step_hook)

    # the masked wide model on the probe, then the merge
    model.eval()
    if opts.method == "resrep":
        method_state.update_masks(budget, None, opts.min_units)  # final: no step limit
        outcome.masked = method_state.masked
        outcome.rows_below = sum(int((n < CONVERSION_EPSILON).sum())
                                 for n in method_state.norms())
        if opts.merge == "mask":
            method_state.zero_masked()
        with torch.no_grad():
            wide = model(probe)
        method_state.merge(opts.merge)
    elif opts.method == "csgd":
        outcome.residual = method_state.residual()
        with torch.no_grad():
            wide = model(probe)
        method_state.merge()
    else:
        kept = uniform_widths(groups, opts.ratio, opts.min_units)
        keeps = [magnitude_keep(g, k) for g, k in zip(groups, kept)]
        with torch.no_grad():  # the masked wide model: pruned units' rows zeroed
            saved = [(g.in_linear.weight.clone(),
                      None if g.in_linear.bias is None else g.in_linear.bias.clone())
                     for g in groups]
            for g, keep in zip(groups, keeps):
                dead = torch.ones(g.units, dtype=torch.bool)
                dead[keep] = False
                rows = g.rows[dead].flatten()
                g.in_linear.weight[rows] = 0
                if g.in_linear.bias is not None:
                    g.in_linear.bias[rows] = 0
            wide = model(probe)
            for g, (w, b) in zip(groups, saved):
                g.in_linear.weight.copy_(w)
                if b is not None:
                    g.in_linear.bias.copy_(b)
        for g, keep in zip(groups, keeps):
            prune_units(g, keep)
    with torch.no_grad():
        narrow_logits = model(probe)
    outcome.logit_gap = float((wide[:, seen] - narrow_logits[:, seen]).abs().max())
    outcome.widths_after = widths(groups)
    outcome.target_flops_after = target_flops(groups)
    return outcome


def _train(model, teacher, data: Data, opts: CompressOptions, groups, state, seen, budget,
           outcome: Outcome, step_hook) -> None:
    device = next(model.parameters()).device
    model.eval()  # no dropout, no statistics updates: the merge must see the trained model
    flags = {id(p): p.requires_grad for p in model.parameters()}
    special = state.parameters() if isinstance(state, Centripetal) else []
    special_ids = {id(p) for p in special}
    for p in special:
        p.requires_grad_(True)
    if opts.train == "all":
        weights = [p for p in model.parameters() if id(p) not in special_ids]
        for p in weights:
            p.requires_grad_(True)
    else:
        weights = []
    param_groups = []
    if weights:
        param_groups.append({"params": weights, "momentum": opts.momentum,
                             "weight_decay": opts.weight_decay})
    if special:  # C-SGD: decay is in D
        param_groups.append({"params": special, "momentum": opts.momentum, "weight_decay": 0.0})
    if isinstance(state, Compactors):
        param_groups.append({"params": list(state.weights),
                             "momentum": opts.compactor_momentum, "weight_decay": 0.0})
    if not param_groups:
        return
    optimizer = torch.optim.SGD(param_groups, lr=opts.lr)
    generator = torch.Generator().manual_seed(opts.seed)
    mask_after = opts.mask_after
    if mask_after < 0:  # 5 epochs of the data (before_mask_iters)
        mask_after = 5 * max(1, len(data.x) // min(opts.batch_size, len(data.x)))

    def step(idx: torch.Tensor) -> None:
        x = rows_on(data.x, idx, device)
        logits = model(x)
        if opts.loss == "kd":
            with torch.no_grad():
                target = teacher(x)
            loss = distillation_loss(logits, target, seen, opts.temperature)
        else:
            loss = seen_cross_entropy(logits, data.y[idx].to(device), seen)
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        if isinstance(state, Compactors):
            state.penalise(opts.lasso)
        elif isinstance(state, Centripetal):
            state.transform_gradients()
        optimizer.step()

    started = time.perf_counter()
    for i, idx in enumerate(batches(len(data.x), opts.batch_size, opts.steps, generator)):
        if i == 0:  # every step has the same shape: count one, multiply
            with FlopCount() as counter:
                step(idx)
            outcome.train_flops = counter.total * opts.steps
        else:
            step(idx)
        if isinstance(state, Compactors):
            since = i + 1 - mask_after
            if since > 0 and since % opts.mask_interval == 0:
                state.update_masks(budget, opts.mask_step, opts.min_units)
        if step_hook is not None:
            step_hook(i)
    outcome.train_seconds = time.perf_counter() - started
    if isinstance(state, Compactors):
        outcome.extras["masked_during_training"] = state.masked
    for p in model.parameters():
        p.requires_grad_(flags[id(p)])

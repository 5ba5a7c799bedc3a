"""Structural re-parameterisation: THE one merge/undo operation of the ViT strategies.

Everything that sits on a frozen ``nn.Linear`` (W, b) and is linear in its input folds into
one Linear (W', b'): an affine pre-map ``x -> M x + c`` (a linear adapter before the layer),
additive weight/bias deltas (LoRA, Comp-LoRA, Consolidator's branches) and an affine post-map
``y -> N y + e`` (a linear adapter after the layer). With :class:`LinearUpdate` holding them,
the adapted layer is

    y = N ((W + dW_1 + ... + dW_n) (M x + c) + b + db_1 + ... + db_n) + e

and :func:`fold` returns its (W', b'). :func:`merge_linear` writes them into the Linear (a
bias-less Linear gets a bias when the update has one), keeping a copy of the original
tensors; :func:`unmerge_linear` puts that copy back (exact: nothing is subtracted), the
created bias is removed. :class:`ReparamLinear` is the base of every wrapper (a Linear plus
modules that say what they add, through :meth:`ReparamLinear.update`); :func:`deploy` turns a
model's wrappers into plain ``nn.Linear`` s with the folded weights (the ``merge_and_unload``
of PEFT), so the deployed model has the backbone's structure and FLOPs exactly.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import torch
from torch import nn


class Affine(NamedTuple):
    """``x -> matrix @ x + shift`` on the last dimension (``shift`` None: no shift)."""
    matrix: torch.Tensor
    shift: torch.Tensor | None = None


class Delta(NamedTuple):
    """An additive update of the weight (``weight``: out x in, or rows ``start:start+len``)
    and of the bias (same rows); either may be None."""
    weight: torch.Tensor | None
    bias: torch.Tensor | None = None
    start: int = 0


@dataclass
class LinearUpdate:
    """What a wrapper adds to its Linear: see the module docstring for the order."""
    pre: Affine | None = None
    deltas: Sequence[Delta] = field(default_factory=list)
    post: Affine | None = None

    @property
    def has_bias(self) -> bool:
        """Whether the folded layer has a bias term even if the Linear has none."""
        return (any(d.bias is not None for d in self.deltas)
                or (self.pre is not None and self.pre.shift is not None)
                or (self.post is not None and self.post.shift is not None))


@torch.no_grad()
def fold(weight: torch.Tensor, bias: torch.Tensor | None, update: LinearUpdate
         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W', b') of the Linear (``weight``, ``bias``) with ``update`` folded in, in the
    weight's dtype. Deltas alone are added one after the other in that dtype (``W + dW_1``,
    then ``+ dW_2``: as adding them in place); affine maps are composed in float64."""
    dtype = weight.dtype
    w = weight.detach().clone()
    b = None if bias is None else bias.detach().clone()
    if b is None and update.has_bias:
        b = torch.zeros(weight.shape[0], dtype=dtype, device=weight.device)
    for delta in update.deltas:
        if delta.weight is not None:
            rows = slice(delta.start, delta.start + delta.weight.shape[0])
            w[rows] += delta.weight.to(dtype)
        if delta.bias is not None:
            rows = slice(delta.start, delta.start + delta.bias.shape[0])
            b[rows] += delta.bias.to(dtype)
    if update.pre is None and update.post is None:
        return w, b
    w64 = w.double()
    b64 = None if b is None else b.double()
    if update.pre is not None:       # W (M x + c) + b = (W M) x + (W c + b)
        m, c = update.pre
        if c is not None:
            b64 = b64 + w64 @ c.double()
        w64 = w64 @ m.double()
    if update.post is not None:      # N (W x + b) + e = (N W) x + (N b + e)
        n, e = update.post
        w64 = n.double() @ w64
        if b64 is not None:
            b64 = n.double() @ b64
        if e is not None:
            b64 = b64 + e.double()
    return w64.to(dtype), None if b64 is None else b64.to(dtype)


@torch.no_grad()
def merge_linear(linear: nn.Linear, update: LinearUpdate, keep_original: bool = True) -> None:
    """Fold ``update`` into ``linear`` in place (same Parameter objects; a bias Parameter is
    created on a bias-less Linear when needed). ``keep_original``: a copy of the original
    weight and bias is kept for :func:`unmerge_linear` (merging twice without undoing is an
    error then)."""
    if keep_original and hasattr(linear, "_reparam_original"):
        raise RuntimeError("this Linear is merged already: unmerge it first")
    w, b = fold(linear.weight, linear.bias, update)
    if keep_original:
        original = (linear.weight.detach().clone(),
                    None if linear.bias is None else linear.bias.detach().clone())
    linear.weight.copy_(w)
    created = False
    if b is not None:
        if linear.bias is None:
            linear.bias = nn.Parameter(b, requires_grad=linear.weight.requires_grad)
            created = True
        else:
            linear.bias.copy_(b)
    if keep_original:
        linear._reparam_original = (*original, created)


@torch.no_grad()
def unmerge_linear(linear: nn.Linear) -> None:
    """Undo :func:`merge_linear`: the kept original weight and bias are copied back (exact),
    a bias the merge created is removed."""
    if not hasattr(linear, "_reparam_original"):
        raise RuntimeError("this Linear is not merged (or was merged without keeping the "
                           "original)")
    weight, bias, created = linear._reparam_original
    del linear._reparam_original
    linear.weight.copy_(weight)
    if created:
        linear.bias = None
    elif bias is not None:
        linear.bias.copy_(bias)


def ensure_bias(linear: nn.Linear) -> None:
    """Give a bias-less Linear a zero bias (regrowing a merged structure before its weights
    are loaded)."""
    if linear.bias is None:
        linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=linear.weight.dtype,
                                               device=linear.weight.device),
                                   requires_grad=linear.weight.requires_grad)


class ReparamLinear(nn.Module):
    """Base of the wrappers: a frozen Linear (``base``) plus modules that are linear in the
    input; subclasses say what they add through :meth:`update` and compute the same thing in
    :meth:`adapted_forward` (training: dropout, drop-path). :meth:`fold_in` merges
    reversibly (then ``forward`` is the merged Linear alone), :meth:`fold_out` undoes it;
    :meth:`folded` is a new plain Linear with the folded weights."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        self.merged = False

    in_features = property(lambda self: self.base.in_features)
    out_features = property(lambda self: self.base.out_features)
    # code that reads layer.weight / layer.bias (shapes, dtypes) still works
    weight = property(lambda self: self.base.weight)
    bias = property(lambda self: self.base.bias)

    def update(self) -> LinearUpdate:  # pragma: no cover - abstract
        raise NotImplementedError

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) if self.merged else self.adapted_forward(x)

    def extra_parameters(self) -> int:
        """Parameters a forward uses besides the Linear's (0 once merged)."""
        if self.merged:
            return 0
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith("base."))

    def fold_in(self) -> None:
        merge_linear(self.base, self.update())
        self.merged = True

    def fold_out(self) -> None:
        unmerge_linear(self.base)
        self.merged = False

    @torch.no_grad()
    def folded(self) -> nn.Linear:
        """A new plain Linear computing what this wrapper computes in eval mode."""
        if self.merged:
            return copy.deepcopy(self.base)
        w, b = fold(self.base.weight, self.base.bias, self.update())
        out = nn.Linear(self.in_features, self.out_features, bias=b is not None,
                        device=w.device, dtype=w.dtype)
        out.weight.copy_(w)
        if b is not None:
            out.bias.copy_(b)
        out.weight.requires_grad_(self.base.weight.requires_grad)
        if b is not None:
            out.bias.requires_grad_(self.base.weight.requires_grad)
        return out


def wrappers(model: nn.Module) -> list[tuple[str, ReparamLinear]]:
    """The (name, wrapper) pairs of ``model``, outermost first."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ReparamLinear)]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def deploy(model: nn.Module, inplace: bool = False) -> nn.Module:
    """``model`` with every :class:`ReparamLinear` replaced by a plain ``nn.Linear`` holding
    the folded weights (a copy unless ``inplace``): no wrapper, no extra parameter, the
    backbone's structure and FLOPs. A merged wrapper gives its own (merged) Linear; the kept
    original copy is dropped."""
    if not inplace:
        model = copy.deepcopy(model)
    for name, wrapper in reversed(wrappers(model)):  # innermost first
        plain = wrapper.base if wrapper.merged else wrapper.folded()
        if hasattr(plain, "_reparam_original"):
            del plain._reparam_original
        replace_module(model, name, plain)
    return model

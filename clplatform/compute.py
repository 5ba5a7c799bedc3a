"""Compute accounting: training FLOPs, inference FLOPs per sample, peak memory, stored bytes.

FLOPs are counted with the formulas of ``torch.utils.flop_counter`` (Avalanche's MAC metric
undercounts ViTs badly), through :class:`FlopCount`: the same per-operator count as
``FlopCounterMode`` without its per-module breakdown, whose module and gradient hooks made a
counted training step ~2x slower instead of ~1.45x (measured on ``vit-glyphs``).

Counting every operation still costs Python dispatch time, so by default the meter is
*sampled*: inside one experience, a training iteration's FLOPs depend only on the mini-batch
shape and on which parameters exist and train, so each distinct (batch shape, parameter
count, trainable count) is counted once and re-used for every further iteration with the
same key; between iterations (data loading) nothing is counted. A strategy whose iterations
cost different amounts at the same key (AGEM draws a memory batch of varying size inside
each iteration) is registered with ``varying_iteration_cost=True``; its iterations are all
counted. Everything outside the iterations (EWC importances, prototype passes, expansion
scans, ...) is always counted in full. ``full`` counts every operation (the reference the
sampled figure is tested against); ``off`` counts nothing.

Attention: ``torch.utils.flop_counter`` has formulas for the CUDA kernels of
``scaled_dot_product_attention`` (flash, memory-efficient, cuDNN) but not for the fused CPU
kernel that timm's ViTs run on a CPU (``_scaled_dot_product_flash_attention_for_cpu``), the
"overrideable" and MPS variants, nor the fused inference paths of ``nn.MultiheadAttention``
and ``nn.TransformerEncoderLayer``; :data:`ATTENTION_FLOP_FORMULAS` adds them with torch's own
attention formulas (the math path needs none: it decomposes into matrix products, counted).
"""
from __future__ import annotations

import contextlib
import functools
import resource
import sys
from typing import Any, Hashable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count

from .contract import hooks

FLOP_MODES = ("sampled", "full", "off")


def _layout_queries() -> frozenset:
    """Queries of a tensor's layout, left to the tensor (NotImplemented) as FlopCounterMode
    does; the ones this torch has."""
    names = ("sym_is_contiguous.default", "is_contiguous.default", "is_contiguous.memory_format",
             "is_strides_like_format.default", "is_non_overlapping_and_dense.default",
             "size.default", "sym_size.default", "stride.default", "sym_stride.default",
             "storage_offset.default", "sym_storage_offset.default", "numel.default",
             "sym_numel.default", "dim.default")
    found = set()
    for name in names:
        packet, overload = name.split(".")
        op = getattr(getattr(torch.ops.aten, packet, None), overload, None)
        if op is not None:
            found.add(op)
    found.add(torch.ops.prim.layout.default)
    return frozenset(found)


_LAYOUT_QUERIES = _layout_queries()


def _sdpa_forward_flops(query, key, value, *args, out_val=None, **kwargs) -> int:
    """An attention kernel ``(query, key, value, ...)`` in [batch, heads, tokens, dim]."""
    return sdpa_flop_count(query.shape, key.shape, value.shape)


def _sdpa_backward_flops(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
    """Its backward ``(grad_out, query, key, value, ...)``: torch's count (the scores are
    recomputed, then four products)."""
    return sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


def _sequence_lengths(x: torch.Tensor) -> list[int]:
    """Tokens of each sequence of ``x``: [batch, tokens, dim], [tokens, dim], or a nested
    tensor of sequences of their own lengths (padding dropped by the fast path)."""
    if x.is_nested:
        return [t.shape[0] for t in x.unbind()]
    return [x.shape[-2]] * (x.shape[0] if x.dim() == 3 else 1)


def _attention_block_flops(query, key, embed_dim: int, num_heads: int) -> int:
    """Multi-head attention as ``nn.MultiheadAttention`` computes it: projections of query,
    key and value, attention, output projection (biases not counted, as for ``addmm``)."""
    head_dim = embed_dim // num_heads
    total = 0
    for q_tokens, k_tokens in zip(_sequence_lengths(query), _sequence_lengths(key)):
        total += 2 * (q_tokens + 2 * k_tokens) * embed_dim * embed_dim  # in-projections
        total += sdpa_flop_count((1, num_heads, q_tokens, head_dim),
                                 (1, num_heads, k_tokens, head_dim),
                                 (1, num_heads, k_tokens, head_dim))
        total += 2 * q_tokens * embed_dim * embed_dim  # output projection
    return total


def _native_multi_head_attention_flops(query, key, value, embed_dim, num_head, *args,
                                       out_val=None, **kwargs) -> int:
    """``nn.MultiheadAttention``'s fused inference path."""
    return _attention_block_flops(query, key, embed_dim, num_head)


def _transformer_encoder_layer_flops(src, embed_dim, num_heads, *args, out_val=None,
                                     **kwargs) -> int:
    """``nn.TransformerEncoderLayer``'s fused inference path: attention, then the
    feed-forward network (two linear layers through ``ffn_weight_1``'s width)."""
    ffn_weight_1 = kwargs["ffn_weight_1"] if "ffn_weight_1" in kwargs else args[11]
    tokens = sum(_sequence_lengths(src))
    return (_attention_block_flops(src, src, embed_dim, num_heads)
            + 2 * 2 * tokens * embed_dim * ffn_weight_1.shape[0])


_ATTENTION_KERNELS = {
    "_scaled_dot_product_flash_attention_for_cpu": _sdpa_forward_flops,
    "_scaled_dot_product_flash_attention_for_cpu_backward": _sdpa_backward_flops,
    "_scaled_dot_product_fused_attention_overrideable": _sdpa_forward_flops,
    "_scaled_dot_product_fused_attention_overrideable_backward": _sdpa_backward_flops,
    "_scaled_dot_product_attention_math_for_mps": _sdpa_forward_flops,
    "_native_multi_head_attention": _native_multi_head_attention_flops,
    "_transformer_encoder_layer_fwd": _transformer_encoder_layer_flops,
}
for _formula in _ATTENTION_KERNELS.values():
    # tensors, not shapes, come in (FlopCounterMode's custom_mapping reads this flag)
    _formula._get_raw = True  # type: ignore[attr-defined]


def _attention_formulas() -> dict:
    """The attention kernels of this torch that its flop registry lacks -> a formula."""
    found = {}
    for name, formula in _ATTENTION_KERNELS.items():
        packet = getattr(torch.ops.aten, name, None)
        if packet is not None and packet not in flop_registry:
            found[packet] = formula
    return found


#: Formulas ``FlopCount`` adds to ``torch.utils.flop_counter.flop_registry`` (usable as
#: ``FlopCounterMode(custom_mapping=ATTENTION_FLOP_FORMULAS)``).
ATTENTION_FLOP_FORMULAS = _attention_formulas()


def flop_formula(func):
    """The FLOP formula of an operator (an OpOverload or a higher-order operator) as
    :class:`FlopCount` applies it, or None: torch's registry, then
    :data:`ATTENTION_FLOP_FORMULAS`."""
    key = func if isinstance(func, torch._ops.HigherOrderOperator) else func._overloadpacket
    formula = flop_registry.get(key)
    return formula if formula is not None else ATTENTION_FLOP_FORMULAS.get(key)


@functools.lru_cache(maxsize=None)
def _decomposes(func) -> bool:
    """Whether ``func.decompose`` can split the operator (it has a composite kernel)."""
    key = torch._C.DispatchKey.CompositeImplicitAutograd
    return func is not torch.ops.prim.device.default and (
        key in func.py_kernels or torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), key))


class FlopCount(TorchDispatchMode):
    """``with FlopCount() as c: ...`` -> ``c.total``: FLOPs of every operator that runs inside,
    by ``torch.utils.flop_counter``'s formulas plus :data:`ATTENTION_FLOP_FORMULAS` (the total
    ``FlopCounterMode(custom_mapping=ATTENTION_FLOP_FORMULAS)`` reports).

    Like ``FlopCounterMode``, an operator without a formula is first decomposed, so the
    matrix products inside a composite operator are counted. ``uncounted`` names the
    operators that ran without a formula (element-wise ones, mostly).
    """
    supports_higher_order_operators = True

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.uncounted: set = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _LAYOUT_QUERIES:
            return NotImplemented
        formula = flop_formula(func)
        if formula is None:
            if not isinstance(func, torch._ops.HigherOrderOperator) and _decomposes(func):
                with self:
                    out = func.decompose(*args, **kwargs)
                if out is not NotImplemented:
                    return out
            self.uncounted.add(func)
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        self.total += formula(*args, **kwargs, out_val=out)
        return out


class FlopMeter:
    """Training FLOPs of one ``train`` call; see the module docstring for the modes."""

    def __init__(self, mode: str = "sampled"):
        if mode not in FLOP_MODES:
            raise ValueError(f"flop mode must be one of {FLOP_MODES}, got {mode!r}")
        self.mode = mode
        self.total = 0
        self._counter: FlopCount | None = None
        self._cache: dict[Hashable, int] = {}
        self.count_every_iteration = False
        self._key: Hashable = None
        self._measuring = False
        self._params: list[torch.nn.Parameter] | None = None  # re-read when the optimizer,
        self._params_optimizer: Any = None                     # or its group sizes, change
        self._params_groups: tuple[int, ...] = ()
        self.iterations_counted = 0
        self.iterations_reused = 0

    def _open(self) -> None:
        self._counter = FlopCount()
        self._counter.__enter__()

    def _close(self) -> int:
        counter, self._counter = self._counter, None
        counter.__exit__(None, None, None)
        flops = int(counter.total)
        self.total += flops
        return flops

    def start(self) -> None:
        self.total = 0
        self._cache.clear()
        self._params = None
        self.iterations_counted = self.iterations_reused = 0
        if self.mode != "off":
            self._open()

    def stop(self) -> int:
        if self._counter is not None:
            self._close()
        return self.total

    @contextlib.contextmanager
    def excluded(self):
        """Work inside is not training (an evaluation between rounds): never counted."""
        was_open = self._counter is not None
        if was_open:
            self._close()
        try:
            yield
        finally:
            if was_open:
                self._open()

    def pause(self) -> None:
        """Entering an epoch (sampled mode): only its iterations are counted, not the data
        loading between them, whose indexing operations cost dispatch time and no FLOPs."""
        if self.mode == "sampled" and self._counter is not None:
            self._close()

    def resume(self) -> None:
        """Leaving an epoch: count everything again."""
        if self.mode == "sampled" and self._counter is None:
            self._open()

    def before_iteration(self, strategy: Any) -> None:
        if self.mode != "sampled":
            return
        self.pause()  # in case iterations run outside an epoch
        self._key = key = self.iteration_key(strategy)
        self._measuring = self.count_every_iteration or key not in self._cache
        if self._measuring:
            self._open()

    def iteration_key(self, strategy: Any) -> Hashable:
        """What an iteration's FLOPs depend on: batch shape, the (trainable) parameters, and
        the kind of iteration a strategy with several training loops says it runs
        (its ``iteration_kind`` hook, any hashable; see
        :class:`clplatform.contract.StrategyHooks`).

        Walking the model's modules for its parameters costs ~1 ms, so the parameter list
        is re-read only when the optimizer changes (another object, or groups of other
        sizes: strategies rebuild it when they add modules) and at every ``start``;
        which of them train is checked every iteration.
        """
        optimizer = getattr(strategy, "optimizer", None)
        groups = (tuple(len(g["params"]) for g in optimizer.param_groups)
                  if optimizer is not None else ())
        if (self._params is None or optimizer is not self._params_optimizer
                or groups != self._params_groups):
            self._params = list(strategy.model.parameters())
            self._params_optimizer, self._params_groups = optimizer, groups
        shape = tuple(strategy.mb_x.shape) if torch.is_tensor(strategy.mb_x) else None
        return (shape, sum(p.numel() for p in self._params),
                sum(p.numel() for p in self._params if p.requires_grad),
                hooks(strategy).iteration_kind)

    def after_iteration(self) -> None:
        if self.mode != "sampled" or self._key is None:
            return
        if self._measuring:
            self._cache[self._key] = self._close()
            self.iterations_counted += 1
        else:
            self.total += self._cache[self._key]
            self.iterations_reused += 1
        self._key = None


@torch.inference_mode()
def inference_flops_per_sample(model: torch.nn.Module, x: torch.Tensor,
                               device: torch.device | str) -> float:
    """FLOPs of one evaluation forward pass, per sample (``x``: a few test samples)."""
    was_training = model.training
    model.eval()
    with FlopCount() as counter:
        model(x.to(device))
    model.train(was_training)
    return counter.total / len(x)


def reset_peak_memory(device: torch.device | str) -> None:
    """Start a new peak: CUDA allocator stats, or the process's peak RSS on Linux."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM (peak resident set size)
    except OSError:
        pass


def peak_memory_bytes(device: torch.device | str) -> int:
    """Peak memory since the last reset: device memory on GPU, resident set size on CPU."""
    if torch.device(device).type == "cuda":
        return int(torch.cuda.max_memory_allocated())
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # never reset: process peak
    return int(rss if sys.platform == "darwin" else rss * 1024)


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in ``obj`` (a tensor, module, dict, list or tuple of them)."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, torch.nn.Module):
        return sum(tensor_bytes(t) for t in obj.state_dict().values())
    if torch.is_tensor(getattr(obj, "data", None)):  # Avalanche's ParamData
        return tensor_bytes(obj.data)
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def dataset_bytes(dataset: Any) -> int:
    """Bytes a dataset of samples occupies: size x bytes of one (input, label) sample."""
    if dataset is None or len(dataset) == 0:
        return 0
    sample = dataset[0]
    per_sample = sum(tensor_bytes(v) if torch.is_tensor(v) else 8 for v in sample[:2])
    return len(dataset) * per_sample


def avalanche_state_bytes(strategy: Any) -> int:
    """Bytes of the state Avalanche's strategies keep between experiences.

    Rehearsal buffers (Replay, AGEM, Cumulative's growing dataset), EWC's saved parameters
    and importances, SI's parameter snapshots and importances, LwF's copy of the old model.
    """
    total = dataset_bytes(getattr(strategy, "dataset", None)) if hasattr(
        strategy, "dataset") and not callable(getattr(strategy, "dataset")) else 0
    for plugin in getattr(strategy, "plugins", []):
        policy = getattr(plugin, "storage_policy", None)
        if policy is not None:
            total += dataset_bytes(getattr(policy, "buffer", None))
        for buffer in getattr(plugin, "buffers", None) or []:
            total += dataset_bytes(buffer)
        for name in ("saved_params", "importances", "ewc_data", "syn_data"):
            total += tensor_bytes(getattr(plugin, name, None))
        lwf = getattr(plugin, "lwf", None)
        if lwf is not None and getattr(lwf, "prev_model", None) is not None:
            total += tensor_bytes(lwf.prev_model)
    return total

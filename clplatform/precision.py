"""Training precision (``--precision fp32|bf16|fp16``): torch autocast on the training device
with fp32 master weights.

- ``fp32`` (default): nothing changes.
- ``bf16`` / ``fp16``: the run's training call (training, the strategy's own passes such as
  prototype and cache passes, and the evaluations inside it) runs under
  ``torch.autocast(device_type, dtype)``; parameters, optimizer state and gradients stay fp32.
  Backward passes run with autocast off, as PyTorch's AMP recipe says (their operators run in
  the dtypes autocast chose in the forward pass).
- ``fp16`` on CUDA: a ``torch.amp.GradScaler`` scales every loss of the template's training
  iterations before backward, unscales the gradients before the update, skips the update of
  an iteration with non-finite gradients (all gradients dropped, as ``GradScaler.step``
  skips ``optimizer.step``) and updates the scale after it — through Avalanche's plugin
  hooks, so it covers every template, Avalanche's own included.

FLOP counts do not depend on the precision (the count of an operator depends on shapes
only; autocast's casts are not counted).
"""
from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device | str):
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[precision])


def _plugin_base():
    from avalanche.core import SupervisedPlugin
    return SupervisedPlugin


class MixedPrecision(_plugin_base()):
    """Backward without autocast, and fp16 loss scaling on CUDA (see the module docstring).
    The autocast region itself is :meth:`autocast`, entered by the runner around training."""

    def __init__(self, precision: str, device: torch.device | str):
        super().__init__()
        autocast(precision, device)  # checks the name
        self.precision = precision
        self.device = torch.device(device)
        self.scaler = (torch.amp.GradScaler("cuda")
                       if precision == "fp16" and self.device.type == "cuda" else None)
        self._backward = contextlib.ExitStack()
        self._unscaled = False  # this iteration's gradients were unscaled: update the scale
        self.skipped_updates = 0

    def autocast(self):
        return autocast(self.precision, self.device)

    def before_backward(self, strategy, **kwargs):
        if self.precision == "fp32":
            return
        self._backward.enter_context(torch.autocast(self.device.type, enabled=False))
        if self.scaler is not None:
            strategy.loss = self.scaler.scale(strategy.loss)

    def after_backward(self, strategy, **kwargs):
        self._backward.close()

    def before_update(self, strategy, **kwargs):
        if self.scaler is None:
            return
        optimizer = strategy.optimizer
        if not any(p.grad is not None for g in optimizer.param_groups for p in g["params"]):
            return
        self.scaler.unscale_(optimizer)
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]
                 if p.grad is not None]
        self._unscaled = bool(grads)  # without gradients GradScaler records no inf check
        if grads and not torch.stack([g.isfinite().all() for g in grads]).all():
            for group in optimizer.param_groups:  # optimizers skip parameters without grad
                for p in group["params"]:
                    p.grad = None
            self.skipped_updates += 1

    def after_update(self, strategy, **kwargs):
        if self._unscaled:
            self.scaler.update()
            self._unscaled = False

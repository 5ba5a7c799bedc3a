"""The evaluator: an Avalanche plugin that fills clplatform's records.

After every ``strategy.train(...)`` call it counts parameters (before any evaluation: dynamic
heads grow during Avalanche's eval) and evaluates the model on every test experience, seen
and unseen, in one pass over the whole test stream (tensors read once at start-up, batches
that run across experience boundaries), scored per experience. Before the first training it
evaluates the initial model (row ``train_exp = -1``, for forward transfer).

Records (see ``shared/specs/metrics.md``):
- accuracy rows: train_exp, eval_exp, accuracy, class_mean_accuracy, task_accuracy (the
  prediction restricted to the classes of experience j: task id known at test time), loss,
  n_samples, seen; task_selection_accuracy for models that choose a per-experience module
- experience rows: train_exp, train_seconds, eval_seconds, train_flops,
  inference_flops_per_sample, peak_memory_bytes, params_total, params_trainable,
  params_frozen, params_added (since the start), modules_added, stored_bytes, experience_size.
- round rows (active strategies report rounds through ``context.report_round``, which the
  runner sets to :meth:`Evaluator.record_round`): train_exp, round, labels_used, accuracy
  and class_mean_accuracy on that experience's test set.

Strategy-specific columns: the strategy's ``experience_extras()`` hook
(:class:`clplatform.contract.StrategyHooks`), called after each trained experience. The keys
``modules_added``, ``params_added``, ``stored_bytes`` and ``labels_queried`` (cumulative since
the start) fill the standard columns (a
strategy knows best what it added and must keep); any other key becomes a column named
``<strategy>.<key>`` (e.g. ``sema.adapters_added``). Without the hook, ``modules_added`` is 0
and ``stored_bytes`` is the growth of the model's state plus the buffers, importances and
old-model copies that Avalanche's strategies keep.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .compute import (FlopMeter, avalanche_state_bytes, inference_flops_per_sample,
                      peak_memory_bytes, reset_peak_memory, tensor_bytes)
from .contract import hooks
from .data import ExperienceImages, experience_images, rows_on

INITIAL = -1  # train_exp of the evaluation before any training


def _plugin_base():
    from avalanche.core import SupervisedPlugin
    return SupervisedPlugin


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params_total": total, "params_trainable": trainable,
            "params_frozen": total - trainable}


MASK_VALUE = -1000.0  # logit of a class the head has no unit for (as Avalanche masks them)


@torch.inference_mode()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int,
            device: torch.device | str, num_classes: int,
            selection: Callable[[], torch.Tensor | None] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits of ``model`` (eval mode) for every row of ``x``, on the CPU, padded to
    ``num_classes``; and the per-experience module each sample chose (or None).

    A head that has not grown to ``num_classes`` yet scores the missing classes MASK_VALUE,
    exactly as Avalanche's ``IncrementalClassifier`` scores classes it has not trained.
    A strategy that picks a per-experience module for each sample (prompt methods) tells
    the choice of the last forward through ``selection`` (its ``selected_experiences`` hook,
    :class:`clplatform.contract.StrategyHooks`).
    """
    was_training = model.training
    model.eval()
    outs: list[torch.Tensor] = []
    chosen_all: list[torch.Tensor] | None = []
    for start in range(0, len(x), batch_size):
        # non_blocking: asynchronous when x is pinned (the evaluator pins it on CUDA); the
        # outputs stay on the device until the end, so the device never waits for the host
        out = model(rows_on(x, slice(start, start + batch_size), device)).float()
        if out.shape[1] < num_classes:
            out = F.pad(out, (0, num_classes - out.shape[1]), value=MASK_VALUE)
        outs.append(out)
        chosen = selection() if selection is not None else None
        if chosen is None or chosen_all is None:
            chosen_all = None
        else:
            chosen_all.append(chosen)
    logits = torch.cat(outs).cpu() if outs else torch.empty(0, num_classes)
    selected = (torch.cat(chosen_all).cpu().long() if chosen_all else
                None if chosen_all is None else torch.empty(0, dtype=torch.long))
    model.train(was_training)
    return logits, selected


def _scored_loss(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cross-entropy over the samples whose class is not masked (NaN if none is)."""
    scored = logits.gather(1, y[:, None]).squeeze(1) != MASK_VALUE
    if not scored.any():
        return float("nan")
    return F.cross_entropy(logits[scored], y[scored]).item()


def scores(logits: torch.Tensor, y: torch.Tensor, selected: torch.Tensor | None = None,
           experience: int | None = None) -> dict[str, float]:
    """Accuracy (sample-weighted), per-class-mean accuracy, task-aware accuracy (argmax over
    the classes present in ``y`` only) and mean loss of ``logits`` against labels ``y``;
    with the modules chosen (``selected``) and ``experience`` given, also
    ``task_selection_accuracy`` (how often a sample picked that experience's module).

    The loss is the mean cross-entropy over the samples whose class the model scores: a
    class it has no unit for yet is scored MASK_VALUE, and a loss against that constant
    (about -MASK_VALUE) measures the mask, not the model; NaN when no sample's class is
    scored (an experience not learned yet, in a class-incremental stream)."""
    classes = y.unique()
    outside = torch.ones(logits.shape[1], dtype=torch.bool)
    outside[classes] = False
    correct = logits.argmax(1) == y
    task_correct = logits.masked_fill(outside, float("-inf")).argmax(1) == y
    per_class = torch.stack([correct[y == c].float().mean() for c in classes])
    result = {"accuracy": correct.float().mean().item(),
              "class_mean_accuracy": per_class.mean().item(),
              "task_accuracy": task_correct.float().mean().item(),
              "loss": _scored_loss(logits, y),
              "n_samples": len(y)}
    if selected is not None and experience is not None:
        result["task_selection_accuracy"] = (selected == experience).float().mean().item()
    return result


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             device: torch.device | str, num_classes: int,
             experience: int | None = None,
             selection: Callable[[], torch.Tensor | None] | None = None) -> dict[str, float]:
    """:func:`scores` of ``model`` on (``x``, ``y``), predicted in batches (:func:`predict`)."""
    logits, selected = predict(model, x, batch_size, device, num_classes, selection)
    return scores(logits, y, selected, experience)


RESERVED_EXTRAS = ("modules_added", "params_added", "stored_bytes", "labels_queried")


class Evaluator(_plugin_base()):
    """Records accuracy and costs after every training call; see the module docstring."""

    def __init__(self, test_stream, num_classes: int, batch_size: int = 256,
                 strategy_name: str = "", flops: str = "sampled"):
        super().__init__()
        self.num_classes = num_classes
        # the whole test stream as one tensor, predicted in one pass after each experience
        # (full batches across experience boundaries), scored per experience; held as uint8
        # (ExperienceImages), converted to float per batch
        tests = [experience_images(exp.dataset) for exp in test_stream]
        self.test_x = ExperienceImages.cat([x for x, _ in tests])
        self.test_y = torch.cat([y for _, y in tests])
        ends = torch.tensor([len(y) for _, y in tests]).cumsum(0).tolist()
        self.test_bounds = list(zip([0] + ends[:-1], ends))
        del tests
        self.batch_size = batch_size
        self.prefix = strategy_name
        self.meter = FlopMeter(flops)
        self.accuracy_rows: list[dict[str, Any]] = []
        self.experience_rows: list[dict[str, Any]] = []
        self.round_rows: list[dict[str, Any]] = []
        self.train_exp = 0
        self.experience_size = 0
        self._t0 = 0.0
        self._params_at_start: int | None = None
        self._state_bytes_at_start = 0

    def checkpoint_state(self) -> dict[str, Any]:
        """Records so far and the bookkeeping a resumed run needs (plain values)."""
        return {"accuracy_rows": self.accuracy_rows, "experience_rows": self.experience_rows,
                "round_rows": self.round_rows, "params_at_start": self._params_at_start,
                "state_bytes_at_start": self._state_bytes_at_start}

    def restore(self, state: dict[str, Any]) -> None:
        self.accuracy_rows = list(state["accuracy_rows"])
        self.experience_rows = list(state["experience_rows"])
        self.round_rows = list(state["round_rows"])
        self._params_at_start = state["params_at_start"]  # not None: no initial evaluation
        self._state_bytes_at_start = state["state_bytes_at_start"]

    def expect(self, train_exp: int, experience_size: int) -> None:
        """What the next ``train`` call learns (set by the runner): its index and size."""
        self.train_exp = train_exp
        self.experience_size = experience_size

    def _evaluate_all(self, strategy, train_exp: int) -> None:
        logits, selected = predict(strategy.model, self.test_x, self.batch_size,
                                   strategy.device, self.num_classes,
                                   hooks(strategy).selected_experiences)
        for eval_exp, (start, end) in enumerate(self.test_bounds):
            row = scores(logits[start:end], self.test_y[start:end],
                         None if selected is None else selected[start:end], eval_exp)
            self.accuracy_rows.append({"train_exp": train_exp, "eval_exp": eval_exp, **row,
                                       "seen": train_exp >= eval_exp})

    # ------------------------------------------------------------------ Avalanche hooks
    def before_training(self, strategy, **kwargs):
        if torch.device(strategy.device).type == "cuda" and not self.test_x.is_pinned():
            self.test_x = self.test_x.pin_memory()  # asynchronous host-to-device copies
        if self._params_at_start is None:
            strategy.model.to(strategy.device)
            self._params_at_start = count_parameters(strategy.model)["params_total"]
            self._state_bytes_at_start = tensor_bytes(strategy.model)
            self._evaluate_all(strategy, INITIAL)
        reset_peak_memory(strategy.device)
        _sync(strategy.device)
        self._t0 = time.perf_counter()
        self.meter.start()

    def before_training_epoch(self, strategy, **kwargs):
        self.meter.pause()

    def after_training_epoch(self, strategy, **kwargs):
        self.meter.resume()

    def before_training_iteration(self, strategy, **kwargs):
        self.meter.before_iteration(strategy)

    def after_training_iteration(self, strategy, **kwargs):
        self.meter.after_iteration()

    def record_round(self, strategy, round: int, labels_used: int, **kwargs):
        """Called by active strategies (not an Avalanche callback): accuracy on the current
        experience's test set after a query-and-adapt round (round 0: before any). Not
        counted as training time or FLOPs."""
        _sync(strategy.device)
        t0 = time.perf_counter()
        start, end = self.test_bounds[self.train_exp]
        x, y = self.test_x[start:end], self.test_y[start:end]
        with self.meter.excluded():
            result = evaluate(strategy.model, x, y, self.batch_size, strategy.device,
                              self.num_classes)
        self.round_rows.append({"train_exp": self.train_exp, "round": round,
                                "labels_used": labels_used, "accuracy": result["accuracy"],
                                "class_mean_accuracy": result["class_mean_accuracy"]})
        _sync(strategy.device)
        self._t0 += time.perf_counter() - t0

    def after_training(self, strategy, **kwargs):
        train_flops = self.meter.stop()
        _sync(strategy.device)
        train_seconds = time.perf_counter() - self._t0
        model = strategy.model
        # count before evaluating: Avalanche's dynamic heads also grow during evaluation
        params = count_parameters(model)
        row: dict[str, Any] = {
            "train_exp": self.train_exp, "train_seconds": train_seconds,
            "train_flops": train_flops if self.meter.mode != "off" else None,
            "peak_memory_bytes": peak_memory_bytes(strategy.device),
            **params, "params_added": params["params_total"] - self._params_at_start,
            "modules_added": 0,
            "stored_bytes": (max(tensor_bytes(model) - self._state_bytes_at_start, 0)
                             + avalanche_state_bytes(strategy)),
            "experience_size": self.experience_size,
        }
        for key, value in hooks(strategy).experience_extras().items():
            row[key if key in RESERVED_EXTRAS else f"{self.prefix}.{key}"] = value
        last = self.test_bounds[-1][0]
        x_probe = self.test_x[last:last + 16]
        row["inference_flops_per_sample"] = (
            inference_flops_per_sample(model, x_probe, strategy.device)
            if self.meter.mode != "off" else None)
        t0 = time.perf_counter()
        self._evaluate_all(strategy, self.train_exp)
        _sync(strategy.device)
        row["eval_seconds"] = time.perf_counter() - t0
        seen = [r for r in self.accuracy_rows if r["train_exp"] == self.train_exp and r["seen"]
                and "task_selection_accuracy" in r]
        if seen:  # over the test samples of the experiences seen so far
            row["task_selection_accuracy"] = (
                sum(r["task_selection_accuracy"] * r["n_samples"] for r in seen)
                / sum(r["n_samples"] for r in seen))
        self.experience_rows.append(row)

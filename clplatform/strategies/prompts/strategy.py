"""The prompt strategies as an Avalanche template.

Per experience: a new E-prompt and key; the frozen backbone's token embedding and the
un-prompted query of every training sample are computed once (exact: frozen, no
augmentation); Adam at a constant learning rate trains the E-prompt, its key, the G-prompt and
the head on cross-entropy masked to the experience's classes plus the key-matching loss. The
iterations run through Avalanche's plugin hooks (the evaluator times them, counts FLOPs).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from clplatform.data import experience_images, rows_on
from clplatform.models import tome

from ..base import Strategy, StrategyContext, experience_classes, masked_cross_entropy
from ..vit import frozen_rows, is_random, map_batches
from .config import PromptOptions
from .model import PromptModel


def embedded_inputs(model, x: torch.Tensor, device, budget_bytes: int
                    ) -> tuple[Callable, torch.Tensor]:
    """For training a prompt model on the images ``x`` of an experience: a function giving
    the frozen embedding of the samples ``idx`` (cached for the experience when it fits in
    ``budget_bytes``, the ``cache_gib`` setting, else recomputed per batch: ``frozen_rows``),
    and the un-prompted query of every sample (exact to cache: images read once).

    When reading ``x`` draws a random augmentation (``transform=pilot``) nothing is cached:
    ``tokens_of(idx)`` embeds a new draw and ``queries[idx]`` is the query of that same
    draw (:class:`SameDraw`), as the official codes query the augmented image."""
    if is_random(x):
        return SameDraw.pair(model, x, device)
    tokens = frozen_rows(model.embed, x, device, budget_bytes)
    queries = map_batches(lambda b: model.query(model.embed(b)), x, device)

    def tokens_of(idx: torch.Tensor) -> torch.Tensor:
        return tokens[idx]
    return tokens_of, queries


class SameDraw:
    """The queries of the last batch embedded by ``tokens_of`` (random reads: one draw
    per batch gives both); ``queries[idx]`` must follow ``tokens_of(idx)``."""

    def __init__(self):
        self.idx, self.queries = None, None

    @classmethod
    def pair(cls, model, x, device) -> tuple[Callable, "SameDraw"]:
        same = cls()

        def tokens_of(idx: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                tokens = model.embed(rows_on(x, idx, device))
                same.idx, same.queries = idx, model.query(tokens)
            return tokens
        return tokens_of, same

    def __getitem__(self, idx) -> torch.Tensor:
        if self.idx is None or not torch.equal(torch.as_tensor(idx), torch.as_tensor(self.idx)):
            raise RuntimeError("queries[idx] read before tokens_of(idx)")
        return self.queries


class PromptStrategy(Strategy):
    """``prompt`` and ``qprompt`` on a :class:`PromptModel` built from the context's
    backbone; trained with the context's training settings (epochs, batch size, lr)."""

    builds_own_optimizers = True
    model_class = PromptModel
    opts: PromptOptions

    def __init__(self, context: StrategyContext, opts: PromptOptions):
        model = self.model_class(context.backbone, context.info.num_classes, opts)
        super().__init__(context, opts, model=model, optimizer=torch.optim.Adam(
            model.head.parameters(), lr=context.train.lr))
        self.settings = context.train
        self._fits_before = 0
        self._refits_before = 0

    @property
    def prompts(self) -> PromptModel:
        return self.model

    def _train_exp(self, experience, eval_streams=None, **kwargs):
        model = self.prompts
        x, y = experience_images(experience.dataset)
        classes, current = experience_classes(y, model.seen)
        params = model.add_experience()
        # PYRA (token merging): its modulations train in the first experience (or every one)
        params += tome.pyra_to_train(model.vit, len(model.e_prompts) - 1)
        model.start_head_rows(classes)
        self._fits_before, self._refits_before = self._kmeans_counts()
        model.train()
        tokens_of, queries = embedded_inputs(model, x, self.device,
                                             self.context.train.cache_bytes)
        y = y.to(self.device)

        def loss(idx, labels):
            t = tokens_of(idx)
            logits = model.logits(model.prompted(t, model.current_e_prompts()))
            key = model.keys[-1]()
            match = 1 - F.cosine_similarity(queries[idx], key[None], dim=1)
            return masked_cross_entropy(logits, labels, current) + \
                self.opts.key_weight * match.mean()
        optimizer = torch.optim.Adam(params, lr=self.settings.lr)
        self.fit_tensors(optimizer, torch.arange(len(x)), y, loss, self.settings.epochs,
                         self.settings.batch_size)
        model.finish_experience()
        model.eval()

    def optimizer_step(self) -> None:
        """``grad_clip``: the global gradient norm of the trained parameters is clipped
        before the step (as the ports' ``clip_grad_norm_(model.parameters(), 1.0)``)."""
        if self.opts.grad_clip > 0 and self._tensor_fit is not None:
            torch.nn.utils.clip_grad_norm_(
                [p for group in self.optimizer.param_groups for p in group["params"]],
                self.opts.grad_clip)
        super().optimizer_step()

    def selected_experiences(self) -> torch.Tensor | None:
        """The experience whose E-prompt each sample of the last forward chose."""
        return self.prompts.selected_experience

    def _quantizers(self) -> list:
        return [m for m in self.prompts.modules() if hasattr(m, "refits")]

    def _kmeans_counts(self) -> tuple[int, int]:
        quantizers = self._quantizers()
        return sum(q.fits for q in quantizers), sum(q.refits for q in quantizers)

    def checkpoint_state(self) -> dict:
        return {"experiences": len(self.prompts.e_prompts),
                "quantizers": [[q.steps_since_fit, q.fits, q.refits]
                               for q in self._quantizers()]}

    def restore_checkpoint_state(self, state: dict, experiences: list) -> None:
        """E-prompts, keys and head rows of the finished experiences in their stored
        form, and the quantizers' counters (CAC's steps since the last fit); values,
        codebooks and stored tensors come with the model's state."""
        model = self.prompts
        for experience in experiences[:state["experiences"]]:
            model.add_experience()
            model.start_head_rows(torch.as_tensor(
                sorted(experience.classes_in_this_experience)))
            model.finish_experience()
        model.eval()
        for q, (steps, fits, refits) in zip(self._quantizers(), state["quantizers"],
                                            strict=True):
            q.steps_since_fit, q.fits, q.refits = steps, fits, refits

    def experience_extras(self) -> dict:
        model = self.prompts
        prompt_bits = sum(t.stored_bits for t in model.g_prompts) + \
            sum(t.stored_bits for e in model.e_prompts for t in e)
        key_bits = sum(k.stored_bits for k in model.keys)
        seen = int(model.seen.sum())
        quantized_rows = sum(len(r.classes) for r in model.head_rows)
        value_bits = 32 if self.opts.precision == "fp32" else 16
        head_bits = sum(r.stored_bits for r in model.head_rows) + \
            value_bits * ((seen - quantized_rows) * model.dim + seen)  # rows and biases
        prompt_values = sum(t.values for t in model.g_prompts) + \
            sum(t.values for e in model.e_prompts for t in e)
        fits, refits = self._kmeans_counts()
        prompt_bytes, key_bytes, head_bytes = (b / 8 for b in (prompt_bits, key_bits,
                                                               head_bits))
        return {
            "modules_added": len(model.e_prompts) + (1 if len(model.g_prompts) else 0),
            "params_added": prompt_values + len(model.keys) * model.dim +
            seen * (model.dim + 1),
            "stored_bytes": prompt_bytes + key_bytes + head_bytes,
            "prompt_bytes": prompt_bytes, "key_bytes": key_bytes, "head_bytes": head_bytes,
            "kmeans_fits": fits - self._fits_before,
            "kmeans_refits": refits - self._refits_before,
        }


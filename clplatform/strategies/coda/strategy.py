"""CODA-Prompt as an Avalanche template (GT-RIPL/CODA-Prompt ``learners/prompt.py``,
``learners/default.py``, ``trainer.py``).

Per experience: M/T new components in every prompted block, Gram-Schmidt-initialised against
the earlier ones, which stay frozen; the frozen backbone's token embedding and the un-prompted
query of every training sample are computed once (exact: frozen, no augmentation on these
streams); Adam (betas 0.9, 0.999; weight decay 0), re-created per experience, trains the new
components and the head on cross-entropy masked to the experience's classes (plus the
orthogonality penalty when its weight is set), with the code's per-epoch cosine schedule and a
loader that drops the last incomplete batch. The iterations run through Avalanche's plugin
hooks (the evaluator times them, counts FLOPs).
"""
from __future__ import annotations


import torch

from clplatform.data import experience_images
from clplatform.errors import UserError
from clplatform.models import tome

from ..base import (Strategy, StrategyContext, TensorBatches, cosine_factor,
                    experience_classes, masked_cross_entropy)
from ..prompts.strategy import embedded_inputs
from ..vit import map_batches
from .config import CODAOptions
from .model import CODAModel




class CODAPrompt(Strategy):
    """``coda-prompt`` on a :class:`CODAModel` built from the context's backbone; trained
    with the context's training settings (epochs, batch size, lr)."""

    builds_own_optimizers = True
    opts: CODAOptions

    def __init__(self, context: StrategyContext, opts: CODAOptions):
        model = CODAModel(context.backbone, context.info.num_classes, opts)
        super().__init__(context, opts, model=model, optimizer=torch.optim.Adam(
            model.head.parameters(), lr=context.train.lr))
        self.settings = context.train
        self._record: dict = {}

    @property
    def coda(self) -> CODAModel:
        return self.model

    def components_per_experience(self, experience) -> int:
        if self.opts.components_per_experience:
            return self.opts.components_per_experience
        stream = getattr(experience, "origin_stream", None)
        if stream is None:
            raise UserError("coda-prompt: the experience does not know its stream; set "
                            "components_per_experience")
        count = int(self.opts.components / len(stream))  # the code's int(pool / n_tasks)
        if count < 1:
            raise UserError(f"coda-prompt: {self.opts.components} components for "
                            f"{len(stream)} experiences; set components_per_experience")
        return count

    def _train_exp(self, experience, eval_streams=None, **kwargs):
        model, o, settings = self.coda, self.opts, self.settings
        x, y = experience_images(experience.dataset)
        _, current = experience_classes(y, model.seen)
        params = model.add_experience(self.components_per_experience(experience))
        params += tome.pyra_to_train(model.vit, experience.current_experience)  # PYRA
        model.train()
        tokens_of, queries = embedded_inputs(model, x, self.device,
                                             self.context.train.cache_bytes)
        y = y.to(self.device)

        def loss(idx, labels):
            t = tokens_of(idx)
            logits = model.logits(model.prompted(t, model.compose(queries[idx])))
            total = masked_cross_entropy(logits, labels, current)
            if o.ortho_weight > 0:
                total = total + o.ortho_weight * model.ortho_loss()
            return total

        optimizer = torch.optim.Adam(params, lr=settings.lr, betas=(0.9, 0.999),
                                     weight_decay=0.0)
        # an experience smaller than one batch keeps its one incomplete batch (the code
        # would train nothing)
        drop_last = o.drop_last and len(x) >= settings.batch_size
        steps = len(TensorBatches(torch.arange(len(x)), None, settings.batch_size,
                                  drop_last=drop_last))
        epochs = settings.epochs
        scheduler = torch.optim.lr_scheduler.LambdaLR(  # per iteration, constant per epoch
            optimizer, lambda it: cosine_factor(it // max(steps, 1), epochs, o.lr_schedule))
        self.fit_tensors(optimizer, torch.arange(len(x)), y, loss, epochs,
                         settings.batch_size, scheduler, drop_last=drop_last)
        model.finish_experience()
        model.eval()
        if not torch.is_tensor(queries):  # random reads (SameDraw): the eval view's queries
            queries = map_batches(lambda b: model.query(model.embed(b)), x, self.device)
        self._record = self._alpha_record(queries)

    @torch.no_grad()
    def _alpha_record(self, queries: torch.Tensor) -> dict:
        """Component weights on this experience's training samples: mean |alpha| of its
        own components and of the earlier experiences' ones."""
        model = self.coda
        per_experience = model.experience_weights(model.alphas(queries)).mean(dim=0)
        return {"alpha_current": round(float(per_experience[-1]), 6),
                "alpha_earlier": round(float(per_experience[:-1].mean()), 6)
                if len(per_experience) > 1 else float("nan"),
                "orthogonality_exhausted": model.exhausted}

    def selected_experiences(self) -> torch.Tensor | None:
        """Per sample of the last forward: the experience whose components weigh most."""
        return self.coda.selected_experience

    def checkpoint_state(self) -> dict:
        return {"components": [c.count for c in self.coda.components],
                "record": dict(self._record)}

    def restore_checkpoint_state(self, state: dict, experiences: list) -> None:
        """Room for the finished experiences' components (frozen); their values (and the
        orthogonal-start reserve) come with the model's state."""
        model = self.coda
        for count in state["components"]:
            model.grow(count)
            model.finish_experience()
        self._record = dict(state["record"])
        model.eval()

    def experience_extras(self) -> dict:
        model = self.coda
        per_component = model.coda.length * model.dim + 2 * model.dim  # P row, key, attention
        components = model.component_count
        latest = model.components[-1].count if len(model.components) else 0
        values = model.layers * components * per_component
        seen = int(model.seen.sum())
        head = seen * (model.dim + 1)
        return {
            "modules_added": len(model.components),
            "params_added": values + head,
            "stored_bytes": 4 * (values + head),
            "components": components, "components_added": latest,
            "prompt_blocks": model.layers,
            "component_values": values,
            "values_per_experience": model.layers * latest * per_component,
            "head_values": head,
            **self._record,
        }

"""L2P as an Avalanche template.

Per experience: the frozen tokens ([CLS] + patches with position embeddings) and the
un-prompted query of every training sample are computed once (exact: the backbone is frozen
and the platform's streams are not augmented); Adam, re-created per experience at a constant
learning rate, trains the whole pool, the keys and the head on cross-entropy masked to the
experience's classes minus ``pull_weight`` x the pull term, the global gradient norm clipped
at ``grad_clip``. The iterations run through Avalanche's plugin hooks.
"""
from __future__ import annotations

import torch

from clplatform.data import experience_images
from clplatform.models import tome

from ..base import Strategy, StrategyContext, experience_classes, masked_cross_entropy
from ..vit import frozen_rows, is_random, map_batches
from .config import L2POptions
from ..prompts.model import majority_ids
from .model import L2PModel


class L2P(Strategy):
    """``l2p`` on an :class:`L2PModel` built from the context's backbone; trained with the
    context's training settings (epochs, batch size, lr)."""

    builds_own_optimizers = True
    opts: L2POptions

    def __init__(self, context: StrategyContext, opts: L2POptions):
        model = L2PModel(context.backbone, context.info.num_classes, opts)
        super().__init__(context, opts, model=model, optimizer=torch.optim.Adam(
            model.head.parameters(), lr=context.train.lr))
        self.settings = context.train
        self._record: dict = {}

    @property
    def l2p(self) -> L2PModel:
        return self.model

    def _train_exp(self, experience, eval_streams=None, **kwargs):
        model = self.l2p
        x, y = experience_images(experience.dataset)
        _, current = experience_classes(y, model.seen)
        model.train()
        tokens = frozen_rows(model.frozen_tokens, x, self.device,
                             self.context.train.cache_bytes)
        # random reads (transform=pilot): the query of the batch's own draw, per batch
        random = is_random(tokens)
        queries = None if random else map_batches(model.query, tokens, self.device)
        y = y.to(self.device)
        batchwise = self.opts.batchwise_prompt in ("train", "both")

        def loss(idx, labels):
            t = tokens[idx]
            if random:
                with torch.no_grad():
                    q = model.query(t)
            else:
                q = queries[idx]
            chosen = model.select(q, batchwise=batchwise)
            logits = model.head(model.prompted(t, chosen))
            ce = masked_cross_entropy(logits, labels, current)
            if not self.opts.top_k:
                return ce
            return ce - self.opts.pull_weight * model.pull(q, chosen)
        params = [model.prompts, model.keys, *model.head.parameters(),
                  *tome.pyra_to_train(model.vit, experience.current_experience)]
        optimizer = torch.optim.Adam(params, lr=self.settings.lr)
        self.fit_tensors(optimizer, torch.arange(len(x)), y, loss, self.settings.epochs,
                         self.settings.batch_size)
        model.eval()
        if queries is None:  # the eval view's queries (map_batches)
            queries = map_batches(model.query, tokens, self.device)
        self._record = self._selection_statistics(queries)

    def optimizer_step(self) -> None:
        """``grad_clip``: global gradient norm clipped before the step (the port's
        ``clip_grad_norm_(model.parameters(), 1.0)``)."""
        if self.opts.grad_clip > 0 and self._tensor_fit is not None:
            torch.nn.utils.clip_grad_norm_(
                [p for group in self.optimizer.param_groups for p in group["params"]],
                self.opts.grad_clip)
        super().optimizer_step()

    @torch.no_grad()
    def _selection_statistics(self, queries: torch.Tensor) -> dict:
        """How the experience's training samples select prompts after training (per
        sample, no batch vote): use count of each prompt, distinct prompts used, the
        batch-vote ids over the whole experience, mean cosine of the selected keys."""
        model = self.l2p
        if not self.opts.top_k:
            return {}
        idx = model.select(queries)
        counts = torch.bincount(idx.flatten(), minlength=self.opts.pool_size)
        return {"prompt_counts": "/".join(str(int(c)) for c in counts),
                "prompts_used": int((counts > 0).sum()),
                "majority_prompts": "/".join(str(int(i)) for i in sorted(
                    majority_ids(idx, self.opts.top_k, self.opts.pool_size).tolist())),
                "key_similarity": float(model.similarity(queries).gather(1, idx).mean())}

    def experience_extras(self) -> dict:
        model = self.l2p
        seen = int(model.seen.sum())
        pool = model.prompts.numel() + model.keys.numel()
        params = pool + seen * (model.dim + 1)
        return {**self._record, "modules_added": 1, "params_added": params,
                "stored_bytes": 4 * params, "prompt_bytes": 4 * model.prompts.numel(),
                "key_bytes": 4 * model.keys.numel(), "head_bytes": 4 * seen * (model.dim + 1)}

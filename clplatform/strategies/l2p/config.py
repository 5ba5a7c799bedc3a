"""L2P's hyper-parameters, defaults from the official PyTorch port (JH-LEE-KR/l2p-pytorch,
``configs/cifar100_l2p.py``; ``shared/specs/prompt-comparators.md``)."""
from __future__ import annotations

from dataclasses import dataclass

from clplatform.options import opt

from ..prompts.config import GRAD_CLIP_HELP, HEAD_INIT_HELP, INPUT_NORM_HELP


@dataclass
class L2POptions:
    pool_size: int = opt(10, "prompts (and keys) in the shared pool (M)", min=1)
    length: int = opt(5, "tokens per prompt (L)", min=1)
    top_k: int = opt(5, "prompts each sample selects by key (N; 0: no prompt, the plain ViT)",
                     min=0)
    pull_weight: float = opt(0.1, "weight of the pull term: loss = CE - weight x sum over the "
                                  "selected keys of cos(query, key), averaged over the batch",
                             min=0)
    batchwise_prompt: str = opt("train", "whole batch uses the top_k ids most samples chose "
                                "(ties: lower id): off; train (the ports' training, not at "
                                "test); both (also at test, as the ports' per-task test "
                                "loaders: leaks the batch's composition)",
                                choices=("off", "train", "both"))
    head_type: str = opt("prompt", "head input: prompt (mean of the prompt tokens' outputs, "
                         "the port's head_type=prompt) or token ([CLS])",
                         choices=("prompt", "token"))
    grad_clip: float = opt(1.0, GRAD_CLIP_HELP, min=0)
    input_norm: str = opt("backbone", INPUT_NORM_HELP + "; default backbone: unit input "
                          "collapses vit-glyphs (BatchNorm stem) to chance",
                          choices=("backbone", "unit"))
    head_init: str = opt("trunc_normal", HEAD_INIT_HELP, choices=("torch", "trunc_normal", "zeros"))

    def parameters_added(self, width: int, depth: int, classes: int) -> int:
        """Pool, keys and head: all created before the first experience."""
        return self.pool_size * (self.length + 1) * width + (width + 1) * classes

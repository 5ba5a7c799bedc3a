"""Query scores: Contrastive Active Sampling and the baseline samplers.

Every function takes the softmax ``p`` [N, C] of the current model over the still-unlabelled
pool (one forward pass) and returns a score per sample; the ``budget`` samples with the
*smallest* scores are queried (stable sort: the lower pool position wins a tie). Vectorised:
no per-sample Python.
"""
from __future__ import annotations

import torch


def contrastive_scores(p: torch.Tensor, p_prev: torch.Tensor | None, alpha: float = 0.03,
                       kappa: int = 100, class_weight: float = 0.1) -> torch.Tensor:
    """LFTL's u = u_cm / max u_cm + lambda * u_ct.

    s = p (first round) or p + alpha (p - p_prev); u_cm = top1(s) - top2(s); the class term
    counts the predicted classes of the kappa samples with the largest margins, w_k = c_k /
    max c, and gives each sample the weight of its predicted class.
    """
    s = p if p_prev is None else p + alpha * (p - p_prev)
    top = s.topk(2, dim=1).values
    margin = top[:, 0] - top[:, 1]
    predicted = p.argmax(dim=1)
    confident = margin.topk(min(kappa, len(margin))).indices
    counts = torch.bincount(predicted[confident], minlength=p.shape[1]).float()
    transferability = counts / counts.max().clamp_min(1)
    return margin / margin.max().clamp_min(1e-12) + class_weight * transferability[predicted]


def margin_scores(p: torch.Tensor) -> torch.Tensor:
    """Best minus second-best probability (small: uncertain)."""
    top = p.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def entropy_scores(p: torch.Tensor) -> torch.Tensor:
    """Negative entropy (small: uncertain)."""
    return (p * p.clamp_min(1e-12).log()).sum(dim=1)


def least_confidence_scores(p: torch.Tensor) -> torch.Tensor:
    """Probability of the predicted class (small: uncertain)."""
    return p.max(dim=1).values


def random_scores(p: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(len(p), generator=generator)


def select(scores: torch.Tensor, budget: int) -> torch.Tensor:
    """Positions of the ``budget`` smallest scores; ties go to the lower position."""
    return torch.sort(scores, stable=True).indices[:budget]

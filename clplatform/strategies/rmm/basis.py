"""RMM's closed-form basis on bare tensors (no data argument anywhere).

Every task's low-rank factor of one layer is held as a *position matrix* ``(P, r)``: the
positions are the rows of the up-projection (``out x r``) or the columns of the
down-projection (``r x in``, transposed), each an r-dim vector. For ``n`` tasks:

- ``coeff=layer``: ``X`` (D x n, D = P r) stacks the flattened factors; ``Q`` (D x k) holds
  the top-k left singular vectors of ``X`` (minus the task mean when ``center``),
  ``C = Q^T X`` (k x n). Exact at ``k = n``.
- ``coeff=position``: per position p, ``X_p`` (r x n) gets its own ``Q_p`` (r x k) and
  ``C_p`` (k x n). Exact at ``k >= min(r, n)``.

By Eckart-Young, ``Q C`` is the best rank-k fit of ``X`` in Frobenius norm and the error is
the root sum of the discarded squared singular values. Computed in float64.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

COEFFS = ("layer", "position")


@dataclass
class FactorBasis:
    """The fit of one factor family: ``basis`` (layer: D x k; position: P x r x k),
    ``coeffs`` (layer: k x n; position: P x k x n), ``mean`` (layer: D; position: P x r;
    None when uncentred), the factor's position-matrix shape ``(P, r)`` and the
    ``discarded`` Frobenius error of the fit."""
    coeff: str
    shape: tuple[int, int]
    basis: torch.Tensor
    coeffs: torch.Tensor
    mean: torch.Tensor | None
    discarded: float

    @property
    def tasks(self) -> int:
        return self.coeffs.shape[-1]

    @property
    def size(self) -> int:
        """Basis k: the columns kept."""
        return self.basis.shape[-1]

    def stored_values(self) -> int:
        """Values kept: basis, coefficients (and mean)."""
        return (self.basis.numel() + self.coeffs.numel()
                + (self.mean.numel() if self.mean is not None else 0))

    def reconstruct(self, task: int) -> torch.Tensor:
        """Task ``task``'s position matrix (P x r), float64."""
        if self.coeff == "layer":
            x = self.basis @ self.coeffs[:, task]
            if self.mean is not None:
                x = x + self.mean
            return x.reshape(self.shape)
        x = (self.basis @ self.coeffs[:, :, task:task + 1]).squeeze(-1)
        return x + self.mean if self.mean is not None else x

    def reconstruct_all(self) -> torch.Tensor:
        """Every task's position matrix (n x P x r)."""
        return torch.stack([self.reconstruct(i) for i in range(self.tasks)])

    def state(self) -> dict:
        return {"coeff": self.coeff, "shape": list(self.shape), "basis": self.basis,
                "coeffs": self.coeffs, "mean": self.mean, "discarded": self.discarded}

    @classmethod
    def from_state(cls, state: dict) -> "FactorBasis":
        return cls(state["coeff"], tuple(state["shape"]), state["basis"], state["coeffs"],
                   state["mean"], state["discarded"])


def fit(factors: torch.Tensor, k: int, coeff: str = "layer",
        center: bool = False) -> FactorBasis:
    """The closed-form basis of ``factors`` (n x P x r: one position matrix per task) with at
    most ``k`` columns (layer: k <= n; position: k <= min(r, n))."""
    if coeff not in COEFFS:
        raise ValueError(f"coeff must be one of {COEFFS}, got {coeff!r}")
    if k < 1:
        raise ValueError(f"basis size must be at least 1, got {k}")
    t = factors.detach().to(torch.float64)
    n, p, r = t.shape
    if coeff == "layer":
        x = t.reshape(n, p * r).T                                  # D x n
        mean = x.mean(1) if center else None
        xc = x - mean[:, None] if center else x
        u, s, _ = torch.linalg.svd(xc, full_matrices=False)
        k = min(k, u.shape[1])
        q = u[:, :k]
        c = q.T @ xc
        discarded = float(s[k:].pow(2).sum().sqrt())
        return FactorBasis(coeff, (p, r), q.contiguous(), c.contiguous(), mean, discarded)
    x = t.permute(1, 2, 0)                                         # P x r x n
    mean = x.mean(2) if center else None
    xc = x - mean[..., None] if center else x
    u, s, _ = torch.linalg.svd(xc, full_matrices=False)           # u: P x r x min(r, n)
    k = min(k, u.shape[2])
    q = u[..., :k]
    c = q.transpose(1, 2) @ xc
    discarded = float(s[:, k:].pow(2).sum().sqrt())
    return FactorBasis(coeff, (p, r), q.contiguous(), c.contiguous(), mean, discarded)


def up_positions(up: torch.Tensor) -> torch.Tensor:
    """An up-projection (out x r) as its position matrix (its rows)."""
    return up


def down_positions(down: torch.Tensor) -> torch.Tensor:
    """A down-projection (r x in) as its position matrix (its columns, transposed)."""
    return down.T


def relative_error(x: torch.Tensor, approx: torch.Tensor) -> float:
    """``||x - approx|| / ||x||`` (0 when x is zero)."""
    norm = float(torch.linalg.norm(x.double()))
    return float(torch.linalg.norm((x - approx).double())) / norm if norm else 0.0

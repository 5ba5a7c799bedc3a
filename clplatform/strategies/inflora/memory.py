"""InfLoRA's subspace design and its DualGPM memory of old input subspaces (liangyanshuo/InfLoRA
``methods/inflora.py``: the design in ``_train``, the memory in ``update_DualGPM``; plain GPM as
``methods/inflorab5.py`` ``update_GPM``), on plain tensors, in float64.

Per adapted layer the memory holds an orthonormal basis ``B`` (d x k) of either the old
inputs' subspace M (``kind = "basis"``, the code's ``remove``) or of its orthogonal complement
(``kind = "complement"``, the code's ``retain``); it stores whichever is at most d/2 wide.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

BASIS, COMPLEMENT = "basis", "complement"


@dataclass
class LayerMemory:
    basis: torch.Tensor  # d x k, orthonormal columns (float64)
    kind: str            # BASIS: the span of old inputs; COMPLEMENT: its orthogonal complement

    @property
    def dim(self) -> int:
        """Dimension of the stored old-input subspace M (d - k for a complement)."""
        d, k = self.basis.shape
        return k if self.kind == BASIS else d - k

    def projector(self) -> torch.Tensor:
        return self.basis @ self.basis.T


def threshold(t: int, experiences: int, base: float, end: float = 1.0) -> float:
    """eps_t = base + (end - base) t / T (t 0-based; the code's ``lamb``/``lame``)."""
    return base + (end - base) * t / experiences


def project(cov: torch.Tensor, memory: LayerMemory | None) -> torch.Tensor:
    """The covariance with the old input subspace projected away: (I - M M^T) C when the
    memory stores M, B B^T C when it stores the complement B; unchanged with no memory."""
    cov = cov.double()
    if memory is None:
        return cov
    p = memory.projector().to(cov)
    return cov - p @ cov if memory.kind == BASIS else p @ cov


def design_down(cov: torch.Tensor, memory: LayerMemory | None, rank: int,
                scale: float) -> torch.Tensor:
    """The designed down-projection D_t (rank x d): the top ``rank`` left singular vectors of
    the projected covariance, transposed, times ``scale`` (code: 1/sqrt 3)."""
    u, _, _ = torch.linalg.svd(project(cov, memory), full_matrices=False)
    return u[:, :rank].T * scale


def update(cov: torch.Tensor, memory: LayerMemory | None, eps: float,
           dual: bool = True) -> LayerMemory | None:
    """The memory after an experience whose (trained-model) input covariance is ``cov``.
    ``dual=False``: plain GPM (``methods/inflorab5.py`` ``update_GPM``), the basis only,
    never its complement, at most d wide.

    First experience: the top-k singular vectors with cumulative energy (squared singular
    values) below eps, at least one. Later, storing M: add the top residual directions of
    (I - M M^T) C until the captured energy reaches eps. Later, storing the complement B:
    remove from B the top directions of B B^T C while the energy left outside M is at least
    1 - eps. Then a basis wider than d/2 becomes its complement. ``None`` stays ``None``
    only for an all-zero covariance."""
    cov = cov.double()
    d = cov.shape[0]
    s_all = torch.linalg.svdvals(cov)
    total = float((s_all ** 2).sum())
    if total == 0.0:
        return memory
    if memory is None:
        u, s, _ = torch.linalg.svd(cov)
        ratio = s ** 2 / total
        r = int((torch.cumsum(ratio, 0) < eps).sum())
        # the code labels r >= d/2 "retain" without complementing it (its own summary
        # assertion then fails for r > d/2); here the rule below stores the complement
        memory = LayerMemory(u[:, :max(r, 1)].contiguous(), BASIS)
    elif memory.kind == BASIS:
        u, s, _ = torch.linalg.svd(project(cov, memory), full_matrices=False)
        ratio = (s ** 2 / total).tolist()
        captured = (total - float((s ** 2).sum())) / total
        r = 0
        for value in ratio:
            if captured >= eps:
                break
            captured += value
            r += 1
        if r > 0:
            basis = torch.cat([memory.basis, u[:, :r]], dim=1)[:, :d]
            memory = LayerMemory(basis.contiguous(), BASIS)
    else:
        u, s, _ = torch.linalg.svd(project(cov, memory), full_matrices=False)
        ratio = (s ** 2 / total).tolist()
        outside = float((s ** 2).sum()) / total  # energy not explained by M
        r = 0
        for value in ratio:
            if outside < 1 - eps:
                break
            outside -= value
            r += 1
        if r > 0:
            b = memory.basis
            residual = b - u[:, :r] @ (u[:, :r].T @ b)
            ui, _, _ = torch.linalg.svd(residual)
            memory = LayerMemory(ui[:, :b.shape[1] - r].contiguous(), COMPLEMENT)
    if not dual:
        return memory
    if memory.kind == BASIS and memory.basis.shape[1] > d / 2:
        k = memory.basis.shape[1]
        u, _, _ = torch.linalg.svd(memory.basis)  # full: the last d - k span the complement
        memory = LayerMemory(u[:, k:].contiguous(), COMPLEMENT)
    elif memory.kind == COMPLEMENT and memory.basis.shape[1] > d / 2:
        raise AssertionError("a stored complement wider than d/2")  # unreachable, as in code
    return memory

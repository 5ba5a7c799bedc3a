"""The prompt quantizer of QPrompt (``shared/specs/qprompt.md``), as its own module.

Per tensor: standardise by the tensor's own (detached) mean and std, cluster the values with
a deterministic 1-D k-means into 2^b centroids (quantile initialisation, <= 30 Lloyd
iterations), forward the de-standardised centroids, backward the identity (straight-through
estimator: the optimizer updates the full-precision latent tensor). Constrained adaptive
clustering (CAC) re-fits the codebook only when enough steps passed *and* the assignment
histogram drifted (KL divergence). ``freeze`` produces what is stored: b-bit indices plus the
2^b centroids in fp16; inference uses exactly that tensor.
"""
from __future__ import annotations

import torch
from torch import nn


def stored_bits(numel: int, bits: int | None) -> int:
    """Bits to store a tensor of ``numel`` values: fp16 (``bits=None``) or b-bit indices plus
    a 2^b-entry fp16 codebook."""
    return 16 * numel if bits is None else bits * numel + 16 * 2 ** bits


def assign(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid (``centroids`` sorted ascending; ties go to the lower)."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    return torch.bucketize(values, midpoints)


def kmeans_1d(values: torch.Tensor, k: int, iterations: int = 30) -> torch.Tensor:
    """Deterministic scalar k-means: centroids start at the quantiles (i + 1/2) / k of the
    data; Lloyd iterations until nothing moves (at most ``iterations``); an empty cluster
    keeps its centroid. Returns the k centroids, sorted."""
    v = values.detach().flatten().float()
    levels = (torch.arange(k, dtype=torch.float32, device=v.device) + 0.5) / k
    centroids = torch.quantile(v, levels)
    for _ in range(iterations):
        labels = assign(v, centroids)
        sums = torch.zeros(k, device=v.device).index_add_(0, labels, v)
        counts = torch.bincount(labels, minlength=k)
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), centroids).sort().values
        if torch.equal(updated, centroids):
            break
        centroids = updated
    return centroids


def uniform_levels(values: torch.Tensor, k: int) -> torch.Tensor:
    """k evenly spaced levels from the minimum to the maximum (the uniform quantizer)."""
    v = values.detach().flatten().float()
    return torch.linspace(float(v.min()), float(v.max()), k, device=v.device)


def kl_divergence(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-8) -> float:
    """KL(p || q) of two histograms (normalised here, smoothed by ``eps``)."""
    p = (p + eps) / (p + eps).sum()
    q = (q + eps) / (q + eps).sum()
    return float((p * (p / q).log()).sum())


class StoredTensor(nn.Module):
    """What is kept of a finished tensor: b-bit indices + an fp16 codebook, or fp16 values
    (fp32 with ``full=True``)."""

    def __init__(self, tensor: torch.Tensor, codebook: torch.Tensor | None = None,
                 bits: int | None = None, full: bool = False):
        super().__init__()
        self.bits = bits
        self.full = full and codebook is None
        if codebook is None:
            self.register_buffer("values", tensor.detach().clone() if self.full
                                 else tensor.detach().half())
            self.register_buffer("indices", None)
        else:
            self.register_buffer("values", codebook.detach().half())
            self.register_buffer("indices", tensor.detach().to(torch.uint8))

    def dequantize(self) -> torch.Tensor:
        if self.indices is None:
            return self.values.float()
        return self.values.float()[self.indices.long()]

    @property
    def numel(self) -> int:
        return (self.indices if self.indices is not None else self.values).numel()

    @property
    def stored_bits(self) -> int:
        return 32 * self.numel if self.full else stored_bits(self.numel, self.bits)


class TensorQuantizer(nn.Module):
    """Quantization-aware forward of one tensor (``method`` kmeans or uniform).

    In training mode every forward is a step: the codebook is fitted on the first step, then
    re-fitted every step (``refit="every"``) or under CAC (``min_interval`` steps since the
    last fit and KL(current || cached assignment histogram) > ``kl_threshold``). ``fits``
    counts every fit, ``refits`` those after the first.
    """

    def __init__(self, bits: int = 2, method: str = "kmeans", standardize: bool = True,
                 refit: str = "cac", min_interval: int = 50, kl_threshold: float = 0.01):
        super().__init__()
        if method not in ("kmeans", "uniform"):
            raise ValueError(f"unknown quantizer {method!r}")
        self.bits, self.levels = bits, 2 ** bits
        self.method, self.standardize = method, standardize
        self.refit, self.min_interval, self.kl_threshold = refit, min_interval, kl_threshold
        self.register_buffer("codebook", torch.zeros(0))
        self.register_buffer("histogram", torch.zeros(0))
        self.steps_since_fit = 0
        self.fits = 0
        self.refits = 0

    def _standardise(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.standardize:
            one = w.new_ones(())
            return w, one * 0, one
        mu = w.detach().mean()
        sigma = w.detach().std().clamp_min(1e-8) if w.numel() > 1 else w.new_ones(())
        return (w - mu) / sigma, mu, sigma

    def _histogram(self, z: torch.Tensor) -> torch.Tensor:
        counts = torch.bincount(assign(z.flatten(), self.codebook), minlength=self.levels)
        return counts.float() / z.numel()

    @torch.no_grad()
    def fit(self, z: torch.Tensor) -> None:
        self.codebook = (kmeans_1d(z, self.levels) if self.method == "kmeans"
                         else uniform_levels(z, self.levels))
        self.histogram = self._histogram(z)
        self.refits += self.fits > 0
        self.fits += 1
        self.steps_since_fit = 0

    @torch.no_grad()
    def _step(self, z: torch.Tensor) -> None:
        if not len(self.codebook) or self.refit == "every":
            self.fit(z)
            return
        self.steps_since_fit += 1
        if self.steps_since_fit >= self.min_interval and \
                kl_divergence(self._histogram(z), self.histogram) > self.kl_threshold:
            self.fit(z)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        z, mu, sigma = self._standardise(w)
        if self.training:
            self._step(z.detach())
        elif not len(self.codebook):
            self.fit(z.detach())
        q = self.codebook[assign(z.detach(), self.codebook)] * sigma + mu
        return q.detach() + (w - w.detach())  # forward: exactly q; backward: identity

    @torch.no_grad()
    def freeze(self, w: torch.Tensor) -> StoredTensor:
        """The stored form of ``w``: indices under the current codebook (fitted now if it
        never was, as in post-training quantization) and the de-standardised fp16 centroids."""
        z, mu, sigma = self._standardise(w)
        if not len(self.codebook):
            self.fit(z)
        return StoredTensor(assign(z, self.codebook), self.codebook * sigma + mu, self.bits)


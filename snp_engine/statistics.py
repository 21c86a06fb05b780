"""Streaming activation statistics: the sufficient statistics of a unit group.

For a group of ``n`` units we accumulate, over every sample ``x`` (one image, or one
(image, spatial position) pair for conv features, or one token):

    count = N,   total = Σ x,   outer = Σ x xᵀ

in float64, so memory is O(n²) per group and never O(samples). Mean and covariance follow as
μ = total / N and C = outer / N − μ μᵀ. Because the three sums are plain sums, statistics of
several batches or processes merge exactly by adding them (``merge`` / ``all_reduce``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from snp_engine.errors import AnalysisError


def to_samples(x: torch.Tensor, layout: str, channels: int) -> torch.Tensor:
    """Reshape a consumer's input into a (samples, units) matrix.

    ``layout`` is ``"conv"`` (B, C, H, W): every (image, position) pair is a sample;
    ``"linear"`` (B, C); ``"tokens"`` (B, ..., C): every token is a sample;
    ``"flatten"`` (B, C·S): a flattened C-channel map whose S positions are samples.
    """
    if layout == "conv":
        return x.transpose(0, 1).reshape(channels, -1).T
    if layout == "linear" or layout == "tokens":
        return x.reshape(-1, channels)
    if layout == "flatten":
        batch = x.shape[0]
        return x.reshape(batch, channels, -1).transpose(1, 2).reshape(-1, channels)
    raise ValueError(f"unknown layout {layout!r}")


@dataclass
class Moments:
    """Running count, sum and sum of outer products of ``units``-dimensional samples (float64)."""

    count: torch.Tensor
    total: torch.Tensor
    outer: torch.Tensor

    @classmethod
    def zeros(cls, units: int, device: torch.device | str = "cpu") -> Moments:
        f64 = torch.float64
        return cls(
            torch.zeros((), dtype=f64, device=device),
            torch.zeros(units, dtype=f64, device=device),
            torch.zeros(units, units, dtype=f64, device=device),
        )

    @property
    def units(self) -> int:
        return self.total.shape[0]

    @property
    def samples(self) -> int:
        return int(self.count.item())

    def update(self, samples: torch.Tensor, name: str = "") -> None:
        """Add a (samples, units) batch. Non-finite activations are an error that names the layer."""
        x = samples.detach().to(dtype=torch.float64, device=self.total.device)
        if not torch.isfinite(x).all():
            where = f" at the input of {name}" if name else ""
            raise AnalysisError(f"non-finite activations (NaN or Inf){where}; check the model and the data")
        self.count += x.shape[0]
        self.total += x.sum(0)
        self.outer.addmm_(x.T, x)

    def merge(self, other: Moments) -> Moments:
        """Statistics of the union of both sample sets (exact)."""
        return Moments(self.count + other.count, self.total + other.total, self.outer + other.outer)

    @staticmethod
    def union(parts: Sequence[Moments]) -> Moments:
        """Statistics of the union of several disjoint sample sets (at least one), e.g. folds."""
        total = parts[0]
        for part in parts[1:]:
            total = total.merge(part)
        return total

    def all_reduce(self, group=None) -> None:
        """Sum the statistics over all processes of a ``torch.distributed`` group, in place."""
        import torch.distributed as dist

        flat = torch.cat([self.count.reshape(1), self.total, self.outer.reshape(-1)])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        n = self.units
        self.count.copy_(flat[0])
        self.total.copy_(flat[1 : n + 1])
        self.outer.copy_(flat[n + 1 :].reshape(n, n))

    def mean(self) -> torch.Tensor:
        """μ = Σx / N."""
        return self.total / self.count.clamp_min(1)

    def covariance(self) -> torch.Tensor:
        """Centred covariance C = Σ x xᵀ / N − μ μᵀ, symmetrised against round-off."""
        mu = self.mean()
        cov = self.outer / self.count.clamp_min(1) - torch.outer(mu, mu)
        return (cov + cov.T) / 2

    def to(self, device: torch.device | str) -> Moments:
        return Moments(self.count.to(device), self.total.to(device), self.outer.to(device))

    def state(self) -> dict[str, torch.Tensor]:
        return {"count": self.count.cpu(), "total": self.total.cpu(), "outer": self.outer.cpu()}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> Moments:
        return cls(state["count"].double(), state["total"].double(), state["outer"].double())

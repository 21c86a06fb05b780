"""Plain records of what an analysis found, what a plan decides and what pruning did.

:class:`GroupAnalysis` holds one unit group's statistics (and, once ordered, its ordering and
explained-variance curve); :class:`Plan` holds the keep counts per group, which units they keep
and what the pruned network costs. They live apart from :mod:`snp_engine.analysis` so that the
statistics file (:mod:`snp_engine.statsfile`) can build them without importing the analysis.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from snp_engine.compensation import within_groups
from snp_engine.groups import Reader, UnitGroup
from snp_engine.statistics import Moments
from snp_engine.subspace import OrderingInputs


@dataclass(frozen=True, eq=False)
class ReaderStatistics:
    """What one reader of a group saw: the moments of its input, that input's shape, its consumer
    metric M (n×n), the BatchNorm right after it (where constants are folded) and, for a conv
    reader, the fraction of output positions each kernel tap reads inside the padded input."""

    reader: Reader
    moments: Moments
    input_shape: tuple[int, ...]
    metric: torch.Tensor
    norm: str | None
    coverage: torch.Tensor | None = None
    factor: torch.Tensor | None = None  # F with M = Fᵀ F where it has fewer rows than units

    @property
    def consumer(self) -> str:
        return self.reader.consumer


@dataclass(frozen=True, eq=False)
class GroupAnalysis:
    """Statistics, ordering and explained-variance curve of one unit group.

    ``moments`` … ``coverage`` are those of the first reader; a coupled group carries its further
    readers' statistics in ``more`` (see :attr:`readers` for all of them).
    """

    group: UnitGroup
    moments: Moments
    input_shape: tuple[int, ...]
    metric: torch.Tensor  # consumer metric M (n×n)
    weight_l1: torch.Tensor
    norm: str | None  # BatchNorm right after the consumer, where constants are folded
    coverage: torch.Tensor | None = None
    order: torch.Tensor | None = None
    curve: np.ndarray | None = None
    more: tuple[ReaderStatistics, ...] = ()
    metric_factor: torch.Tensor | None = None  # F with M = Fᵀ F (fewer rows than units), else None

    @property
    def name(self) -> str:
        return self.group.name

    @property
    def units(self) -> int:
        return self.group.units

    @property
    def channels(self) -> int:
        """The width of the statistics: ``units`` times the channels of one unit (a head's width)."""
        return self.group.channels

    @property
    def readers(self) -> tuple[ReaderStatistics, ...]:
        """Every reader's statistics, the first reader's first."""
        first = ReaderStatistics(
            self.group.readers[0],
            self.moments,
            self.input_shape,
            self.metric,
            self.norm,
            self.coverage,
            self.metric_factor,
        )
        return (first, *self.more)

    @property
    def samples(self) -> int:
        """Samples behind the statistics (the fewest over the readers)."""
        return min(r.moments.samples for r in self.readers)

    @property
    def regularised(self) -> bool:
        """True where a covariance is singular (dead/duplicate units or fewer samples than units),
        so the ridge, not the data, decides part of the ordering."""
        return self.samples <= self.channels or bool(self.rank_deficient)

    @functools.cached_property
    def rank_deficient(self) -> bool:
        """Some reader's covariance is singular to round-off: its Cholesky factorisation breaks down
        or a unit's residual variance given the units before it (dᵢ of C = L D Lᵀ) is below 1e-10 of
        the largest variance. Every dᵢ is at least the smallest eigenvalue, so this flags no
        covariance the eigenvalue test would pass, at n³/3 operations instead of an eigensolver's."""
        for reader in self.readers:
            cov = reader.moments.covariance()
            scale = float(torch.diagonal(cov).max().clamp_min(1e-300))
            factor, info = torch.linalg.cholesky_ex(cov)
            if int(info) != 0 or bool((torch.diagonal(factor) ** 2).min() < 1e-10 * scale):
                return True
        return False

    def inputs(self, seed: int = 0) -> OrderingInputs:
        """The ordering's inputs: each reader's covariance (within its conv groups, for a grouped
        conv reader: :func:`~snp_engine.compensation.within_groups`) and consumer metric."""
        first, *others = self.group.readers
        more = tuple(
            (within_groups(r.moments.covariance(), reader.groups), r.metric)
            for r, reader in zip(self.more, others, strict=True)
        )
        own = within_groups(self.moments.covariance(), first.groups)
        return OrderingInputs(own, self.metric, self.weight_l1, seed, more, self.metric_factor)


@dataclass(frozen=True)
class Plan:
    """How many units each group keeps, which ones (original indices), and what it costs."""

    keep: dict[str, int]
    kept: dict[str, tuple[int, ...]]
    ordering: str
    threshold: float | None
    params_before: int
    params_after: int
    flops_before: float
    flops_after: float
    explained: dict[str, float] = field(default_factory=dict)

    @property
    def flops_reduction(self) -> float:
        return 1 - self.flops_after / self.flops_before if self.flops_before else 0.0

    @property
    def params_reduction(self) -> float:
        return 1 - self.params_after / self.params_before if self.params_before else 0.0

    def to_dict(self) -> dict:
        return {
            "keep": self.keep,
            "ordering": self.ordering,
            "threshold": self.threshold,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "flops_before": self.flops_before,
            "flops_after": self.flops_after,
            "explained": self.explained,
        }


__all__ = ["GroupAnalysis", "Plan", "Pruned", "PruningRecord", "ReaderStatistics"]


@dataclass(frozen=True)
class PruningRecord:
    """Which units of each group a pruned network keeps and how it was pruned.

    ``kept`` holds indices into the network it was pruned from (for an export: into its base
    architecture), ``units`` that network's group sizes. ``blocks`` names the residual blocks that
    were replaced by the identity first (see :mod:`snp_engine.blocks`); the groups are those of the
    network without them. Passed by value next to the network,
    never stored on the module.
    """

    kept: Mapping[str, tuple[int, ...]]
    units: Mapping[str, int]
    groups: tuple[str, ...]
    ordering: str | None = None
    threshold: float | None = None
    compensation: str | None = None
    input_shape: tuple[int, ...] = ()
    physical: bool = True
    fits: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per group: how its consumer was fitted
    blocks: tuple[str, ...] = ()  # residual blocks replaced by the identity (before the channels were pruned)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in export headers."""
        return {
            "kept": {name: [int(i) for i in kept] for name, kept in self.kept.items()},
            "units": {name: int(n) for name, n in self.units.items()},
            "groups": list(self.groups),
            "ordering": self.ordering,
            "threshold": self.threshold,
            "compensation": self.compensation,
            "input_shape": list(self.input_shape),
            "physical": self.physical,
            "fits": {name: dict(fit) for name, fit in self.fits.items()},
            "blocks": list(self.blocks),
        }


@dataclass(frozen=True)
class Pruned:
    """A pruned network and its :class:`PruningRecord`."""

    model: nn.Module
    record: PruningRecord

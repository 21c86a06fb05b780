"""The choices a job takes, as registries: compensation, allocation, plan targets, analysis options."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from snp_engine.errors import SnpError
from snp_engine.runtime import DEFAULT_BATCH_SIZE
from snp_engine.subspace import DEFAULT_ORDERING


class Compensation(str, enum.Enum):
    """How the consumers of pruned units are repaired."""

    NONE = "none"
    ONE_SHOT = "one-shot"
    SEQUENTIAL = "sequential"


# compensation -> (short label, one-line explanation), for help texts and the app's chooser
# what to do with coupled groups (see snp_engine.groups) -> (short label, one-line explanation)
COUPLED_HELP = {
    "prune": (
        "Prune",
        "Residual streams, gated channels and channels read by several layers are pruned too, "
        "compensated at every layer that reads them",
    ),
    "keep": ("Leave alone", "Only channels with one producer and one reader are pruned; residual streams stay whole"),
}

COMPENSATION_HELP = {
    Compensation.SEQUENTIAL: (
        "Sequential (best)",
        "Prune layer by layer and refit each next layer on the partly pruned network, so it also absorbs "
        "earlier errors. Needs the calibration data.",
    ),
    Compensation.ONE_SHOT: (
        "One-shot",
        "Refit every next layer from the analysis statistics at once; fast, no data pass",
    ),
    Compensation.NONE: (
        "None",
        "Just remove the units without adjusting the next layers (a plain structured-pruning baseline)",
    ),
}
ALLOCATIONS = ("greedy", "threshold")


@dataclass(frozen=True)
class PlanTarget:
    """What a plan aims for: a variance threshold, a FLOPs or parameter reduction, or keep counts."""

    kind: str  # one of TARGET_KINDS
    value: float | None = None
    keep: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, kind: str, value: float | Mapping[str, int]) -> PlanTarget:
        if kind not in TARGET_KINDS:
            raise SnpError(f"unknown plan target '{kind}'; choose one of {', '.join(TARGET_KINDS)}")
        if kind == "keep":
            return cls("keep", None, dict(value))  # type: ignore[arg-type]
        return cls(kind, float(value))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {"keep": dict(self.keep)} if self.kind == "keep" else {TARGET_KINDS[self.kind]: self.value}

    def describe(self) -> str:
        if self.kind == "keep":
            return f"keep counts for {len(self.keep)} layer(s)"
        return {"variance": "explained variance {:.1%}", "flops": "FLOPs -{:.1%}", "params": "parameters -{:.1%}"}[
            self.kind
        ].format(self.value)


# plan target kind -> the keyword of Analysis.plan
TARGET_KINDS = {"variance": "variance", "flops": "flops_reduction", "params": "params_reduction", "keep": "keep"}


@dataclass(frozen=True)
class AnalysisOptions:
    """Settings of the forward pass that gathers the statistics."""

    samples: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    ordering: str = DEFAULT_ORDERING
    curve: str = "variance"
    max_positions: int | None = None
    seed: int = 0
    coupled: bool = True  # prune residual streams and other coupled groups (see snp_engine.groups)


# ----------------------------------------------------------------------------------------------
# Preparing: model + data + input shape + checks

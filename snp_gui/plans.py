"""Named plans: the current plan kept under a name, compared side by side, switched back to, measured.

:class:`NamedPlans` is part of :class:`~snp_gui.state.Session` (which defines the state and the
``plans_changed`` signal). A :class:`NamedPlan` holds everything that makes up a plan (keep counts,
the threshold it came from, the per-layer constraints, the residual blocks it removes), its costs (the
removed blocks left out), and what was measured of it: top-1, output error and latency of the network
without its blocks, through the same evaluation as the Evaluate button
(:func:`snp_engine.workflows.prune_with_blocks`), in the background. Switching to a plan is one
undoable plan load, its blocks ticked in the Blocks tab.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from snp_engine import workflows
from snp_engine.errors import SnpError
from snp_engine.ratios import NO_CONSTRAINTS, Constraints
from snp_gui import tasks
from snp_gui.settings import THRESHOLD_LABELS
from snp_gui.workers import Task

if TYPE_CHECKING:
    from snp_gui.state import Session

MAX_NAME = 60
MEASURED = ("top1_before", "top1_after", "fidelity", "latency_before_ms", "latency_after_ms", "latency_batch", "device")


@dataclass
class NamedPlan:
    """One kept plan; ``metrics`` holds what was measured of it (empty until then)."""

    name: str
    keep: dict[str, int]
    mode: str
    value: float
    threshold: float | None
    overridden: bool
    constraints: Constraints = NO_CONSTRAINTS
    params: tuple[int, int] = (0, 0)  # before, after
    flops: tuple[float, float] = (0.0, 0.0)
    metrics: dict[str, Any] = field(default_factory=dict)
    blocks: tuple[str, ...] = ()  # residual blocks removed with the plan, in network order

    def target(self) -> str:
        """What the plan came from: the threshold, or "custom" when it was edited by hand."""
        if self.overridden:
            return "custom"
        return f"{THRESHOLD_LABELS.get(self.mode, self.mode)} {100 * self.value:.1f} %"

    def flops_reduction(self) -> float:
        before, after = self.flops
        return 1.0 - after / before if before > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "keep": dict(self.keep),
            "mode": self.mode,
            "value": self.value,
            "threshold": self.threshold,
            "overridden": self.overridden,
            "constraints": self.constraints.to_dict(),
            "blocks": list(self.blocks),
            "metrics": {key: self.metrics[key] for key in MEASURED if key in self.metrics},
        }

    @classmethod
    def from_dict(cls, raw: Any, units: Mapping[str, int]) -> NamedPlan:
        """A plan read from a session file, checked against the analysed layers; a ValueError says what is wrong."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"a plan must be a mapping, got {type(raw).__name__}")
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
            raise ValueError(f"plan name {name!r} is not a name of 1 … {MAX_NAME} characters")
        keep = raw.get("keep")
        if not isinstance(keep, Mapping) or set(keep) != set(units):
            raise ValueError(f"plan '{name}' does not name the analysed layers")
        counts = {}
        for layer, k in keep.items():
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= units[layer]:
                raise ValueError(f"plan '{name}': '{layer}' keeps {k!r}, not a count in 1 … {units[layer]}")
            counts[layer] = k
        mode, value = raw.get("mode"), raw.get("value")
        if mode not in THRESHOLD_LABELS or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"plan '{name}': threshold {mode!r} {value!r} is not valid")
        threshold = raw.get("threshold")
        if threshold is not None and not isinstance(threshold, (int, float)):
            raise ValueError(f"plan '{name}': threshold {threshold!r} is no number")
        try:
            constraints = Constraints.from_dict(raw.get("constraints") or {}).check(units)
        except ValueError as exc:
            raise ValueError(f"plan '{name}': {exc}") from None
        metrics = raw.get("metrics") or {}
        if not isinstance(metrics, Mapping):
            raise ValueError(f"plan '{name}': its measurements are damaged")
        kept = {k: v for k, v in metrics.items() if k in MEASURED and isinstance(v, (int, float, str, type(None)))}
        blocks = raw.get("blocks") or []
        if not isinstance(blocks, list) or not all(isinstance(b, str) and b for b in blocks):
            raise ValueError(f"plan '{name}': its removed blocks {blocks!r} are not a list of names")
        return cls(
            name,
            counts,
            str(mode),
            float(value),
            threshold,
            bool(raw.get("overridden")),
            constraints,
            metrics=kept,
            blocks=tuple(dict.fromkeys(blocks)),
        )


def names_blocks(raw: Any) -> bool:
    """Whether any of the plans read from a session file removes residual blocks (they are checked
    against the network's blocks, which must be found first)."""
    return isinstance(raw, list) and any(isinstance(p, Mapping) and p.get("blocks") for p in raw)


class NamedPlans:
    """Keeping, listing, switching, removing and measuring named plans."""

    def _init_plans(self: Session) -> None:
        self.plans: list[NamedPlan] = []

    def plan_named(self: Session, name: str) -> NamedPlan | None:
        return next((plan for plan in self.plans if plan.name == name), None)

    def current_plan_name(self: Session) -> str | None:
        """The name of a kept plan with exactly the current keep counts and removed blocks, if there is one."""
        return next(
            (plan.name for plan in self.plans if plan.keep == self.keep and plan.blocks == self.removed_blocks), None
        )

    def _plan_costs(
        self: Session, keep: dict[str, int], blocks: tuple[str, ...]
    ) -> tuple[tuple[int, int], tuple[float, float]]:
        """(parameters, FLOPs) before and after ``keep`` with the residual ``blocks`` removed."""
        (params_before, flops_before), (params_after, flops_after) = self.analysis.cost(), self.analysis.cost(keep)
        params_saved, flops_saved = workflows.blocks_cost(self.analysis, blocks, keep)
        return (params_before, params_after - params_saved), (flops_before, flops_after - flops_saved)

    def plan_name_problem(self: Session, name: str) -> str | None:
        """Why the current plan cannot be kept under ``name``, or None."""
        if self.analysis is None or not self.keep:
            return "run an analysis first: there is no plan to keep"
        name = name.strip()
        if not name:
            return "give the plan a name"
        if len(name) > MAX_NAME:
            return f"a plan name has at most {MAX_NAME} characters"
        return None

    def keep_plan(self: Session, name: str) -> str:
        """Keep the current plan under ``name`` (an existing plan of that name is replaced); "" or why not."""
        problem = self.plan_name_problem(name)
        if problem:
            return problem
        name = name.strip()
        params, flops = self._plan_costs(self.keep, self.removed_blocks)
        # numbers measured for exactly this plan go with it (not those of a fine-tuned network)
        fresh = self.metrics and not self.stale and not self.metrics.get("finetuned_epochs")
        measured = dict(self.metrics) if fresh else {}
        o = self.options
        plan = NamedPlan(
            name,
            dict(self.keep),
            o.threshold_mode,
            o.threshold_value,
            self.threshold,
            self.is_custom(),
            self.constraints,
            params,
            flops,
            {key: measured[key] for key in MEASURED if key in measured},
            self.removed_blocks,
        )
        old = self.plan_named(name)
        if old is not None:
            self.plans[self.plans.index(old)] = plan
        else:
            self.plans.append(plan)
        self.plans_changed.emit(list(self.plans))
        self.message.emit(f"Plan '{name}' {'replaced' if old else 'kept'}: FLOPs -{100 * plan.flops_reduction():.1f} %")
        return ""

    def load_plan(self: Session, name: str) -> None:
        """Switch to the plan ``name``: its keep counts, threshold, constraints and removed residual blocks,
        as one undo step."""
        plan = self.plan_named(name)
        if plan is None or self.analysis is None:
            return
        listed = {row.name for row in self.blocks}
        unknown = [block for block in plan.blocks if block not in listed]
        if unknown:
            self.error_occurred.emit("plan", f"plan '{name}' removes '{unknown[0]}', not a listed residual block")
            return
        self._begin_edit()
        self.options.threshold_mode, self.options.threshold_value = plan.mode, plan.value
        self.threshold, self.overridden = plan.threshold, plan.overridden
        self._set_constraints(plan.constraints)
        if plan.blocks != self.removed_blocks:
            self._set_removed(plan.blocks)
            self.mark_stale()
        self._planned = self._threshold_plan() or {}
        self.options_changed.emit(self.options)
        self._apply_keep(dict(plan.keep), final=True)
        self._end_edit()
        self.threshold_note.emit(self._plan_warning())
        self.message.emit(f"Switched to plan '{name}' ({plan.target()})")

    def remove_plan(self: Session, name: str) -> None:
        plan = self.plan_named(name)
        if plan is not None:
            self.plans.remove(plan)
            self.plans_changed.emit(list(self.plans))

    def clear_plans(self: Session) -> None:
        if self.plans:
            self.plans = []
            self.plans_changed.emit([])

    def set_plans(self: Session, raw: list, notes: list[str]) -> None:
        """Plans read from a session file; one that does not fit the analysis (or removes a block that is
        not one of the listed residual blocks) is left out with a note."""
        units = self.analysis.units if self.analysis is not None else {}
        listed = [row.name for row in self.blocks]
        plans: list[NamedPlan] = []
        for entry in raw if isinstance(raw, list) else []:
            try:
                plan = NamedPlan.from_dict(entry, units)
                unknown = [block for block in plan.blocks if block not in listed]
                if unknown:
                    raise ValueError(f"plan '{plan.name}': '{unknown[0]}' is not a removable block of this network")
            except ValueError as exc:
                notes.append(f"plan left out: {exc}")
                continue
            plan.blocks = tuple(block for block in listed if block in plan.blocks)  # network order
            plan.params, plan.flops = self._plan_costs(plan.keep, plan.blocks)
            plans = [p for p in plans if p.name != plan.name] + [plan]
        if not isinstance(raw, list):
            notes.append("the saved plans are damaged and were left out")
        self.plans = plans
        self.plans_changed.emit(list(plans))

    def measure_plans(self: Session, names: list[str] | None = None) -> None:
        """Top-1, output error and latency of each named plan (all when ``names`` is None), in the background;
        each plan's row fills in as soon as it is measured. Cancel stops after the current plan's batch."""
        chosen = [plan for plan in self.plans if names is None or plan.name in names]
        if not chosen:
            self.error_occurred.emit("plan measuring", "keep a plan first (give it a name and press Keep)")
            return

        def prepare():
            if self.analysis is None or self.model is None:
                raise SnpError("run an analysis first")
            prepared, options, scores = self.prepared(), self.options.copy(), self.block_scores()
            jobs = [
                (
                    plan.name,
                    tasks.PruneJob(
                        prepared, self.analysis, self.analysis.plan_for(plan.keep), options, plan.blocks, scores
                    ),
                )
                for plan in chosen
            ]
            key = jobs[0][1].baseline_key
            baseline = self._baseline[1] if self._baseline and self._baseline[0] == key else None
            return lambda reporter: tasks.measure_plans(jobs, baseline, reporter)

        def done(result: tuple) -> None:
            self._baseline = result
            self.message.emit(f"Measured {len(chosen)} plan(s)")

        self.runner.submit(Task("plan measuring", prepare, on_finished=done, on_partial=self._plan_measured))

    def _plan_measured(self: Session, point: tuple[str, dict[str, int], tuple[str, ...], dict]) -> None:
        name, keep, blocks, metrics = point
        plan = self.plan_named(name)
        if plan is None or plan.keep != keep or plan.blocks != blocks:
            return  # removed or replaced meanwhile
        plan.metrics = {key: metrics[key] for key in MEASURED if key in metrics}
        self.plans_changed.emit(list(self.plans))

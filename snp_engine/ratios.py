"""Per-group keep counts: from one global threshold, from a FLOPs/params budget, or explicit.

Every group g has an explained-variance curve E_g(k), k = 0 … n_g (monotone, E_g(n_g) = 1).

* Threshold τ: k_g = min{k : E_g(k) ≥ τ}, the paper's single global cumulative-variance knob.
* Budget: repeatedly remove the unit whose loss of explained variance per saved cost is smallest,
  across all groups (``allocation="greedy"``, the default: at 70 % fewer FLOPs it kept 1–3 points
  more top-1 than the threshold in docs/benchmarks.md) — or the largest τ whose plan meets the
  target, by bisection on τ (``allocation="threshold"``, the paper's single knob).
  A group read by several layers (a residual stream, a concatenated branch) can carry a weight
  w_g: the greedy then prices a step by w_g · ΔE_g / Δcost. With w_g = R_g, its number of readers,
  the loss is counted at every reader as the saving is (removing one stream channel saves a column
  in each of its R_g readers and costs each of them ΔE_g, the readers' mean loss that E_g
  measures); unweighted, a stream read by 12 blocks looked 12 times cheaper to cut than it is.
* Explicit counts per group.

All of them keep at least ``min_units`` per group and can round up to a multiple of ``round_to``.

:class:`Constraints` adds rules for single groups, passed by value to every plan: a *locked* group
keeps a fixed count (no threshold or budget moves it), a group's own *minimum* raises the floor, and
a group's own *round to N* keeps its count on multiples of N (or its full width).
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import numpy as np

CostFn = Callable[[Mapping[str, int]], float]
# cost saved when one group goes from its count in ``keep`` to ``new_k`` units
SavingFn = Callable[[Mapping[str, int], str, int], float]


def _round_up(k: int, units: int, round_to: int, min_units: int) -> int:
    k = max(k, min_units)
    if round_to > 1:
        k = -(-k // round_to) * round_to
    return min(k, units)


def _whole(value: Any, what: str) -> int:
    """``value`` as a whole number of at least 1, or a ValueError naming ``what``."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    if not isinstance(value, (int, np.integer)):
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{what} must be a whole number, got {value!r}") from None
        if not as_float.is_integer():
            raise ValueError(f"{what} must be a whole number, got {value!r}")
        value = int(as_float)
    if int(value) < 1:
        raise ValueError(f"{what} must be at least 1, got {int(value)}")
    return int(value)


@dataclass(frozen=True)
class GroupConstraint:
    """Rules for one group; ``None`` means "the plan's global setting".

    ``locked``: the group keeps exactly this many units whatever the threshold or budget says.
    ``min_units``: the group keeps at least this many. ``round_to``: its count is a multiple of N
    (or its full width, when that is no multiple).
    """

    locked: int | None = None
    min_units: int | None = None
    round_to: int | None = None

    def __post_init__(self) -> None:
        for name, what in (("locked", "a locked count"), ("min_units", "a minimum"), ("round_to", "round-to")):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _whole(value, what))

    @property
    def is_default(self) -> bool:
        return self.locked is None and self.min_units is None and self.round_to is None

    def lowest(self, units: int, min_units: int = 1, round_to: int = 1) -> int:
        """The fewest units this group may keep (its locked count when locked)."""
        if self.locked is not None:
            return self.locked
        return _round_up(0, units, self.round_to or round_to, max(min_units, self.min_units or 1))

    def fit(self, k: int, units: int, min_units: int = 1, round_to: int = 1, *, down: bool = False) -> int:
        """The allowed count nearest to ``k`` from above (from below with ``down``, for a count being
        lowered): at least the minimum, on the rounding, at most ``units``. A locked group gives its
        locked count."""
        if self.locked is not None:
            return self.locked
        k = min(max(int(k), 1), units)
        step = self.round_to or round_to
        if down and step > 1 and k < units:
            k = max(k // step * step, self.lowest(units, min_units, round_to))
        return _round_up(k, units, step, max(min_units, self.min_units or 1))

    def why(self, asked: int, fitted: int, units: int) -> str:
        """Why ``asked`` became ``fitted`` (for messages beside the control); "" when it did not change."""
        if asked == fitted:
            return ""
        if self.locked is not None:
            return f"it is locked at {self.locked}"
        if asked > units or asked < 1:
            return f"it has {units} units, so it keeps 1 … {units}"
        if self.min_units is not None and asked < self.min_units:
            return f"it keeps at least {self.min_units} units (its minimum)"
        if self.round_to is not None and self.round_to > 1:
            return f"it keeps a multiple of {self.round_to} units (or all {units})"
        return f"it keeps {fitted}"

    def to_dict(self) -> dict[str, int]:
        return {key: value for key, value in vars(self).items() if value is not None}


@dataclass(frozen=True)
class Constraints:
    """Per-group rules (:class:`GroupConstraint` by group name); groups not named follow the global settings.

    Immutable: :meth:`with_group` gives a changed copy. :meth:`check` validates against the groups'
    widths (unknown names, a minimum above the width, a locked count out of range).
    """

    groups: Mapping[str, GroupConstraint] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checked = {}
        for name, rule in dict(self.groups).items():
            if not isinstance(rule, GroupConstraint):
                raise ValueError(f"'{name}': a constraint must be a GroupConstraint, got {type(rule).__name__}")
            if not rule.is_default:
                checked[str(name)] = rule
        object.__setattr__(self, "groups", MappingProxyType(checked))

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.groups.items())))

    def __bool__(self) -> bool:
        return bool(self.groups)

    def __iter__(self) -> Iterator[str]:
        return iter(self.groups)

    def of(self, name: str) -> GroupConstraint:
        """The rules of group ``name`` (no rules when it has none)."""
        return self.groups.get(name, _NO_RULES)

    def with_group(self, name: str, **changes: int | None) -> Constraints:
        """A copy where group ``name`` has ``changes`` (``locked=None`` unlocks, and so on)."""
        return Constraints({**self.groups, name: replace(self.of(name), **changes)})

    @property
    def locked(self) -> dict[str, int]:
        """Locked groups and their counts."""
        return {name: rule.locked for name, rule in self.groups.items() if rule.locked is not None}

    def check(self, units: Mapping[str, int]) -> Constraints:
        """``self`` when every rule fits its group's width; otherwise a ValueError naming the layer."""
        for name, rule in self.groups.items():
            if name not in units:
                known = ", ".join(list(units)[:8])
                raise ValueError(f"constraint for '{name}': not a prunable layer; prunable layers include: {known}")
            n = units[name]
            if rule.min_units is not None and rule.min_units > n:
                raise ValueError(f"'{name}' has {n} units; a minimum of {rule.min_units} is more than it has")
            if rule.locked is not None and rule.locked > n:
                raise ValueError(f"'{name}' has {n} units; it cannot be locked at {rule.locked} (1 … {n})")
            if rule.locked is not None and rule.min_units is not None and rule.locked < rule.min_units:
                raise ValueError(f"'{name}' is locked at {rule.locked}, below its minimum of {rule.min_units}")
        return self

    def to_dict(self) -> dict[str, dict[str, int]]:
        """Plain JSON-ready values: ``{group: {"locked": k, "min_units": m, "round_to": r}}`` (set ones only)."""
        return {name: rule.to_dict() for name, rule in self.groups.items()}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Mapping[str, Any]]) -> Constraints:
        """The inverse of :meth:`to_dict`; a ValueError names the first bad entry."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"constraints must be a mapping of layer names, got {type(raw).__name__}")
        groups = {}
        for name, rule in raw.items():
            if not isinstance(rule, Mapping):
                raise ValueError(f"constraint for '{name}' must be a mapping, got {type(rule).__name__}")
            unknown = set(rule) - {"locked", "min_units", "round_to"}
            if unknown:
                raise ValueError(f"constraint for '{name}': unknown field(s) {', '.join(sorted(map(str, unknown)))}")
            try:
                groups[str(name)] = GroupConstraint(**{str(k): v for k, v in rule.items()})
            except ValueError as exc:
                raise ValueError(f"constraint for '{name}': {exc}") from None
        return cls(groups)


_NO_RULES = GroupConstraint()
NO_CONSTRAINTS = Constraints()


def keep_for_threshold(
    curves: Mapping[str, np.ndarray],
    threshold: float,
    *,
    round_to: int = 1,
    min_units: int = 1,
    constraints: Constraints = NO_CONSTRAINTS,
) -> dict[str, int]:
    """k_g = smallest k with E_g(k) ≥ τ (0 < τ ≤ 1), rounded and floored; locked groups keep their count."""
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    keep = {}
    for name, curve in curves.items():
        units, rule = len(curve) - 1, constraints.of(name)
        if rule.locked is not None:
            keep[name] = rule.locked
            continue
        # a small tolerance so τ = 1 keeps only units that carry variance
        k = int(np.searchsorted(np.asarray(curve), threshold - 1e-9, side="left"))
        keep[name] = _round_up(k, units, rule.round_to or round_to, max(min_units, rule.min_units or 1))
    return keep


def keep_for_budget(
    curves: Mapping[str, np.ndarray],
    cost: CostFn,
    target: float,
    *,
    round_to: int = 1,
    min_units: int = 1,
    allocation: str = "greedy",
    saving: SavingFn | None = None,
    constraints: Constraints = NO_CONSTRAINTS,
    path: BudgetPath | None = None,
    weights: Mapping[str, float] | None = None,
) -> tuple[dict[str, int], float | None]:
    """Keep counts whose cost is at most ``target`` (absolute), and the threshold used (None for greedy).

    ``saving`` (optional) prices one group's change directly, which makes greedy allocation fast;
    ``path`` (a :class:`BudgetPath` for the same curves, costs, ``round_to``, ``min_units``,
    constraints and weights) reuses the greedy removal made for earlier targets. ``weights``
    multiply each group's lost explained variance in the greedy (1 where not given; see the module
    docstring); the threshold allocation ignores them.
    Greedy is the default: it lost less accuracy than the global threshold in our benchmarks.
    Locked groups keep their count; the others never go below their minimum.

    Raises ValueError if even the smallest allowed network exceeds the budget (saying how close the
    constraints let it get).
    """
    smallest = {name: constraints.of(name).lowest(len(c) - 1, min_units, round_to) for name, c in curves.items()}
    if cost(smallest) > target:
        raise ValueError(_unreachable(curves, cost, target, smallest, constraints))
    if allocation == "greedy":
        return _greedy_budget(curves, cost, target, round_to, min_units, saving, constraints, path, weights), None
    if allocation != "threshold":
        raise ValueError(f"unknown allocation {allocation!r}; use 'threshold' or 'greedy'")

    def at(tau: float) -> dict[str, int]:
        return keep_for_threshold(curves, tau, round_to=round_to, min_units=min_units, constraints=constraints)

    low, high = 0.0, 1.0
    if cost(at(high)) <= target:
        return at(high), high
    for _ in range(60):
        middle = (low + high) / 2
        if cost(at(middle)) <= target:
            low = middle
        else:
            high = middle
    return at(low), low


def _unreachable(curves, cost: CostFn, target: float, smallest: Mapping[str, int], constraints: Constraints) -> str:
    """One line: why no plan meets ``target``."""
    if not constraints:
        return "the target reduction is not reachable: every prunable layer is already at its minimum"
    full = cost({name: len(c) - 1 for name, c in curves.items()})
    locked = len([name for name in constraints.locked if name in curves])
    share = cost(smallest) / full if full > 0 else 1.0
    goal = target / full if full > 0 else 0.0
    held = f"{locked} locked layer(s) and every other layer" if locked else "every layer"
    return (
        f"the target reduction is not reachable with these constraints: {held} at its minimum still "
        f"costs {100 * share:.1f} % of the unpruned network, the target is {100 * goal:.1f} % "
        f"(at most {100 * (1 - share):.1f} % reduction); unlock layers or lower their minimums"
    )


def _greedy_budget(
    curves,
    cost: CostFn,
    target: float,
    round_to: int,
    min_units: int,
    saving: SavingFn | None = None,
    constraints: Constraints = NO_CONSTRAINTS,
    path: BudgetPath | None = None,
    weights: Mapping[str, float] | None = None,
) -> dict[str, int]:
    """Remove units one step (``round_to`` units) at a time from the group where the (weighted) lost
    explained variance per saved cost is smallest, until the budget is met (:class:`BudgetPath`),
    then give back what a coarse last step made room for (:func:`_refilled`)."""
    path = path or BudgetPath(curves, cost, round_to, min_units, saving, constraints, weights)
    keep, current = path.keep_at(target)
    return _refilled(curves, keep, current, target, max(round_to, 1), path.saving, constraints, path.weights)


class BudgetPath:
    """The greedy removal of :func:`keep_for_budget` as one sequence of steps, made as far as asked.

    Each step removes ``round_to`` units (a group's own rounding: to its next multiple) from the
    group whose lost explained variance per saved cost is smallest; marginal costs are refreshed
    lazily. Which step comes next never depends on the target, only on the curves, costs and rules,
    so the plan for any budget is the longest prefix of the path that still costs more than it,
    plus one step — and one path serves every target (a budget slider held down, a sweep). A locked
    group never moves; no group goes below its minimum."""

    def __init__(
        self,
        curves: Mapping[str, np.ndarray],
        cost: CostFn,
        round_to: int = 1,
        min_units: int = 1,
        saving: SavingFn | None = None,
        constraints: Constraints = NO_CONSTRAINTS,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        self.curves, self.round_to, self.min_units, self.constraints = curves, round_to, min_units, constraints
        self.weights: Mapping[str, float] = MappingProxyType(dict(weights or {}))
        if saving is None:

            def saving(keep, name, new_k):
                return cost(keep) - cost({**keep, name: new_k})

        self.saving: SavingFn = saving
        self.start = {name: constraints.of(name).locked or len(c) - 1 for name, c in curves.items()}
        self._keep = dict(self.start)  # after every step made so far
        self.steps: list[tuple[str, int]] = []
        self.costs: list[float] = [cost(self._keep)]  # the cost after 0, 1, … steps
        self._lowest = list(self.costs)  # their running minimum (a step may add cost: a new bias)
        self._heap = [(p, name) for name in self._keep if (p := self._priority(name)) is not None]
        heapq.heapify(self._heap)

    def _lower(self, name: str, k: int) -> int:
        rule = self.constraints.of(name)
        if rule.locked is not None:
            return k
        floor = max(self.min_units, rule.min_units or 1)
        if rule.round_to is None:
            return max(k - max(self.round_to, 1), floor)
        below = (k - 1) // rule.round_to * rule.round_to  # the next multiple under k
        return max(below, rule.lowest(len(self.curves[name]) - 1, self.min_units, self.round_to))

    def _priority(self, name: str) -> float | None:
        k = self._keep[name]
        new_k = self._lower(name, k)
        if new_k >= k:
            return None
        lost = self.weights.get(name, 1.0) * float(self.curves[name][k] - self.curves[name][new_k])
        saved = self.saving(self._keep, name, new_k)
        return lost / saved if saved > 0 else np.inf

    def _extend(self, target: float) -> None:
        """Make steps until the cost is at most ``target`` or no group can lose more."""
        heap, keep = self._heap, self._keep
        while self._lowest[-1] > target and heap:
            stale, name = heapq.heappop(heap)
            fresh = self._priority(name)
            if fresh is None:
                continue
            if heap and fresh > heap[0][0] + 1e-15 and fresh != stale:
                heapq.heappush(heap, (fresh, name))
                continue
            new_k = self._lower(name, keep[name])
            self.costs.append(self.costs[-1] - self.saving(keep, name, new_k))
            self._lowest.append(min(self._lowest[-1], self.costs[-1]))
            keep[name] = new_k
            self.steps.append((name, new_k))
            if (p := self._priority(name)) is not None:
                heapq.heappush(heap, (p, name))

    def keep_at(self, target: float) -> tuple[dict[str, int], float]:
        """The counts after the fewest steps that bring the cost to ``target`` or below (all steps
        there are if none does), and that cost."""
        self._extend(target)
        steps = bisect.bisect_left(self._lowest, -target, key=lambda c: -c)  # the first cost ≤ target
        steps = min(steps, len(self.steps))
        keep = dict(self.start)
        for name, k in self.steps[:steps]:
            keep[name] = k
        return keep, self.costs[steps]


def _refilled(
    curves,
    keep: dict[str, int],
    current: float,
    target: float,
    step: int,
    saving: SavingFn,
    constraints: Constraints,
    weights: Mapping[str, float] | None = None,
) -> dict[str, int]:
    """Give units back while the plan stays within the budget: the last removal may have been a coarse
    step (an attention head is worth many channels) that took the plan far under ``target``. Each round
    adds one step to the group that regains the most (weighted) explained variance per added cost
    among those that still fit; it ends when no step fits."""
    weights = weights or {}

    def higher(name: str, k: int) -> int:
        rule, units = constraints.of(name), len(curves[name]) - 1
        if rule.locked is not None:
            return k
        if rule.round_to is None:
            return min(k + step, units)
        return min((k // rule.round_to + 1) * rule.round_to, units)

    while True:
        best, best_rate = None, -1.0
        for name, k in keep.items():
            new_k = higher(name, k)
            if new_k <= k:
                continue
            added = -saving(keep, name, new_k)
            if current + added > target:
                continue
            gained = weights.get(name, 1.0) * float(curves[name][new_k] - curves[name][k])
            rate = gained / added if added > 0 else np.inf
            if rate > best_rate:
                best, best_rate = (name, new_k, added), rate
        if best is None:
            return keep
        name, new_k, added = best
        keep[name] = new_k
        current += added


def validate_keep(
    keep: Mapping[str, int],
    units: Mapping[str, int],
    min_units: int = 1,
    constraints: Constraints = NO_CONSTRAINTS,
) -> dict[str, int]:
    """Check explicit per-group counts: known names, 1 ≤ k ≤ n, and no count against a group's constraint
    (another count than its lock, below its minimum, off its rounding). Locked groups not named get their
    locked count."""
    checked = {}
    for name, k in keep.items():
        if name not in units:
            known = ", ".join(list(units)[:8])
            raise ValueError(f"'{name}' is not a prunable layer; prunable layers include: {known}")
        if not min_units <= int(k) <= units[name]:
            raise ValueError(f"'{name}' has {units[name]} units; a keep count of {k} is out of range 1..{units[name]}")
        k, rule = int(k), constraints.of(name)
        if rule.locked is not None and k != rule.locked:
            raise ValueError(f"'{name}' is locked at {rule.locked}; a keep count of {k} contradicts the lock")
        if rule.min_units is not None and k < rule.min_units:
            raise ValueError(f"'{name}' keeps at least {rule.min_units} units (its minimum); {k} is below it")
        if rule.round_to is not None and k % rule.round_to and k != units[name]:
            raise ValueError(
                f"'{name}' keeps a multiple of {rule.round_to} units (or all {units[name]}); {k} is none of them"
            )
        checked[name] = k
    for name, count in constraints.locked.items():
        if name in units and name not in checked:
            checked[name] = count
    return checked

"""Per-group keep counts: from one global threshold, from a FLOPs/params budget, or explicit.

Every group g has an explained-variance curve E_g(k), k = 0 … n_g (monotone, E_g(n_g) = 1).

* Threshold τ: k_g = min{k : E_g(k) ≥ τ}, the paper's single global cumulative-variance knob.
* Budget: repeatedly remove the unit whose loss of explained variance per saved cost is smallest,
  across all groups (``allocation="greedy"``, the default: at 70 % fewer FLOPs it kept 1–3 points
  more top-1 than the threshold in docs/benchmarks.md) — or the largest τ whose plan meets the
  target, by bisection on τ (``allocation="threshold"``, the paper's single knob).
* Explicit counts per group.

All of them keep at least ``min_units`` per group and can round up to a multiple of ``round_to``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping

import numpy as np

CostFn = Callable[[Mapping[str, int]], float]
# cost saved when one group goes from its count in ``keep`` to ``new_k`` units
SavingFn = Callable[[Mapping[str, int], str, int], float]


def _round_up(k: int, units: int, round_to: int, min_units: int) -> int:
    k = max(k, min_units)
    if round_to > 1:
        k = -(-k // round_to) * round_to
    return min(k, units)


def keep_for_threshold(
    curves: Mapping[str, np.ndarray], threshold: float, *, round_to: int = 1, min_units: int = 1
) -> dict[str, int]:
    """k_g = smallest k with E_g(k) ≥ τ (0 < τ ≤ 1), rounded and floored."""
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    keep = {}
    for name, curve in curves.items():
        units = len(curve) - 1
        # a small tolerance so τ = 1 keeps only units that carry variance
        k = int(np.searchsorted(np.asarray(curve), threshold - 1e-9, side="left"))
        keep[name] = _round_up(k, units, round_to, min_units)
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
) -> tuple[dict[str, int], float | None]:
    """Keep counts whose cost is at most ``target`` (absolute), and the threshold used (None for greedy).

    ``saving`` (optional) prices one group's change directly, which makes greedy allocation fast.
    Greedy is the default: it lost less accuracy than the global threshold in our benchmarks.

    Raises ValueError if even the smallest allowed network exceeds the budget.
    """
    smallest = {name: _round_up(0, len(c) - 1, round_to, min_units) for name, c in curves.items()}
    if cost(smallest) > target:
        raise ValueError("the target reduction is not reachable: every prunable layer is already at its minimum")
    if allocation == "greedy":
        return _greedy_budget(curves, cost, target, round_to, min_units, saving), None
    if allocation != "threshold":
        raise ValueError(f"unknown allocation {allocation!r}; use 'threshold' or 'greedy'")
    low, high = 0.0, 1.0
    if cost(keep_for_threshold(curves, high, round_to=round_to, min_units=min_units)) <= target:
        return keep_for_threshold(curves, high, round_to=round_to, min_units=min_units), high
    for _ in range(60):
        middle = (low + high) / 2
        if cost(keep_for_threshold(curves, middle, round_to=round_to, min_units=min_units)) <= target:
            low = middle
        else:
            high = middle
    return keep_for_threshold(curves, low, round_to=round_to, min_units=min_units), low


def _greedy_budget(
    curves, cost: CostFn, target: float, round_to: int, min_units: int, saving: SavingFn | None = None
) -> dict[str, int]:
    """Remove units one step (``round_to`` units) at a time from the group where the lost explained
    variance per saved cost is smallest, until the budget is met. Marginal costs are refreshed lazily."""
    keep = {name: len(c) - 1 for name, c in curves.items()}
    step = max(round_to, 1)
    if saving is None:

        def saving(keep, name, new_k):
            return cost(keep) - cost({**keep, name: new_k})

    def priority(name: str) -> float | None:
        k = keep[name]
        new_k = max(k - step, min_units)
        if new_k >= k:
            return None
        lost = float(curves[name][k] - curves[name][new_k])
        saved = saving(keep, name, new_k)
        return lost / saved if saved > 0 else np.inf

    current = cost(keep)
    heap = [(p, name) for name in keep if (p := priority(name)) is not None]
    heapq.heapify(heap)
    while current > target and heap:
        stale, name = heapq.heappop(heap)
        fresh = priority(name)
        if fresh is None:
            continue
        if heap and fresh > heap[0][0] + 1e-15 and fresh != stale:
            heapq.heappush(heap, (fresh, name))
            continue
        new_k = max(keep[name] - step, min_units)
        current -= saving(keep, name, new_k)
        keep[name] = new_k
        if (p := priority(name)) is not None:
            heapq.heappush(heap, (p, name))
    return keep


def validate_keep(keep: Mapping[str, int], units: Mapping[str, int], min_units: int = 1) -> dict[str, int]:
    """Check explicit per-group counts: known names, 1 ≤ k ≤ n."""
    checked = {}
    for name, k in keep.items():
        if name not in units:
            known = ", ".join(list(units)[:8])
            raise ValueError(f"'{name}' is not a prunable layer; prunable layers include: {known}")
        if not min_units <= int(k) <= units[name]:
            raise ValueError(f"'{name}' has {units[name]} units; a keep count of {k} is out of range 1..{units[name]}")
        checked[name] = int(k)
    return checked

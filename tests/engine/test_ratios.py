"""Keep counts from a threshold, a budget or explicit counts."""

from __future__ import annotations

import numpy as np
import pytest

from snp_engine.ratios import keep_for_budget, keep_for_threshold, validate_keep


def _random_curve(units: int, rng: np.random.Generator) -> np.ndarray:
    gains = rng.exponential(size=units) ** 2
    return np.concatenate([[0.0], np.cumsum(np.sort(gains)[::-1]) / gains.sum()])


def _curves(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"layer{i}": _random_curve(units, rng) for i, units in enumerate([8, 16, 5, 32])}


def _linear_cost(weights: dict[str, float]):
    def cost(keep) -> float:
        return sum(weights[name] * k for name, k in keep.items())

    return cost


def _reference_threshold(curve: np.ndarray, tau: float) -> int:
    return next(k for k in range(len(curve)) if curve[k] >= tau - 1e-9)


@pytest.mark.parametrize("tau", [0.0, 0.3, 0.5, 0.9, 0.99, 0.999999, 1.0])
def test_threshold_gives_smallest_k_reaching_tau(tau):
    curves = _curves(1)
    keep = keep_for_threshold(curves, tau)
    for name, curve in curves.items():
        assert keep[name] == max(_reference_threshold(curve, tau), 1)
        assert curve[keep[name]] >= tau - 1e-9
        assert keep[name] == 1 or curve[keep[name] - 1] < tau


def test_threshold_exactly_on_a_curve_value():
    curve = np.array([0.0, 0.5, 0.75, 1.0])
    assert keep_for_threshold({"a": curve}, 0.75) == {"a": 2}
    assert keep_for_threshold({"a": curve}, 0.7500001) == {"a": 3}
    assert keep_for_threshold({"a": curve}, 0.0) == {"a": 1}, "at least one unit is kept"
    # a saturated curve: units after the first carry no variance
    flat = np.array([0.0, 1.0, 1.0, 1.0])
    assert keep_for_threshold({"a": flat}, 1.0) == {"a": 1}


@pytest.mark.parametrize("round_to", [2, 4, 8])
def test_threshold_rounds_up_to_multiples_capped_at_units(round_to):
    curves = _curves(2)
    plain = keep_for_threshold(curves, 0.8)
    rounded = keep_for_threshold(curves, 0.8, round_to=round_to)
    for name, curve in curves.items():
        units = len(curve) - 1
        assert rounded[name] >= plain[name]
        assert rounded[name] % round_to == 0 or rounded[name] == units
        assert rounded[name] - plain[name] < round_to
        assert rounded[name] <= units


def test_threshold_min_units():
    keep = keep_for_threshold(_curves(3), 0.1, min_units=3)
    assert min(keep.values()) >= 3


@pytest.mark.parametrize("tau", [-0.1, 1.5])
def test_threshold_out_of_range(tau):
    with pytest.raises(ValueError, match="threshold"):
        keep_for_threshold(_curves(), tau)


@pytest.mark.parametrize("allocation", ["threshold", "greedy"])
@pytest.mark.parametrize("fraction", [0.9, 0.5, 0.2])
def test_budget_meets_target(allocation, fraction):
    curves = _curves(4)
    cost = _linear_cost({"layer0": 3.0, "layer1": 1.0, "layer2": 10.0, "layer3": 0.5})
    full = cost({name: len(c) - 1 for name, c in curves.items()})
    target = fraction * full
    keep, threshold = keep_for_budget(curves, cost, target, allocation=allocation)
    assert cost(keep) <= target
    assert set(keep) == set(curves)
    assert all(1 <= keep[name] <= len(c) - 1 for name, c in curves.items())
    if allocation == "threshold":
        assert threshold is not None and keep == keep_for_threshold(curves, threshold)
        # the threshold is the largest that fits: a slightly larger one would not
        above = keep_for_threshold(curves, min(threshold + 1e-6, 1.0))
        assert cost(above) > target or threshold == 1.0
    else:
        assert threshold is None


def test_greedy_budget_prefers_cheap_variance_losses():
    """Two identical curves, one layer ten times as costly: the greedy allocation prunes it first."""
    curve = np.linspace(0, 1, 11)
    curves = {"cheap": curve, "costly": curve.copy()}
    cost = _linear_cost({"cheap": 1.0, "costly": 10.0})
    keep, _ = keep_for_budget(curves, cost, 80.0, allocation="greedy")
    assert cost(keep) <= 80
    assert keep["costly"] < keep["cheap"] == 10


def test_greedy_budget_respects_round_to():
    curves = _curves(5)
    cost = _linear_cost(dict.fromkeys(curves, 1.0))
    keep, _ = keep_for_budget(curves, cost, 30, allocation="greedy", round_to=4)
    assert cost(keep) <= 30
    for name, curve in curves.items():
        units = len(curve) - 1
        assert keep[name] >= 1
        assert (units - keep[name]) % 4 == 0 or keep[name] == 1


def test_budget_with_loose_target_keeps_everything_needed():
    curves = _curves(6)
    cost = _linear_cost(dict.fromkeys(curves, 1.0))
    keep, threshold = keep_for_budget(curves, cost, 1e9, allocation="threshold")
    assert threshold == 1.0
    assert keep == keep_for_threshold(curves, 1.0)
    keep, threshold = keep_for_budget(curves, cost, 1e9)  # greedy: nothing to remove
    assert threshold is None
    assert keep == {name: len(curve) - 1 for name, curve in curves.items()}


def test_greedy_saving_callback_gives_the_same_plan_as_full_costing():
    """The incremental pricing used by Analysis.plan must agree with re-costing the whole plan."""
    from snp_engine.costs import CostModel, LayerCost

    units = {"a": 8, "b": 16, "c": 4}
    model = CostModel(
        (
            LayerCost("a", 100.0, 80, 8, out_group="a"),
            LayerCost("b", 400.0, 8 * 16 * 9, 16, in_group="a", out_group="b"),
            LayerCost("bn", 0.0, 16, 16, channel_group="b"),
            LayerCost("c", 300.0, 16 * 4, 4, in_group="b", out_group="c"),
            LayerCost("head", 50.0, 40, 10, in_group="c"),
        ),
        7,
        3.0,
        units,
    )
    rng = np.random.default_rng(0)
    curves = {
        name: np.concatenate([[0.0], np.sort(rng.random(n))[::-1].cumsum() / rng.random(n).sum()])
        for name, n in units.items()
    }
    curves = {name: c / c[-1] for name, c in curves.items()}
    for index in (0, 1):

        def cost(k, index=index):
            return model.evaluate(k)[index]

        target = 0.5 * cost({})
        fast, _ = keep_for_budget(
            curves, cost, target, saving=lambda k, g, n, index=index: model.saving(k, g, n)[index]
        )
        slow, _ = keep_for_budget(curves, cost, target)
        assert fast == slow and cost(fast) <= target


@pytest.mark.parametrize("allocation", ["threshold", "greedy"])
def test_unreachable_budget_raises(allocation):
    curves = _curves(7)
    cost = _linear_cost(dict.fromkeys(curves, 1.0))
    with pytest.raises(ValueError, match="not reachable"):
        keep_for_budget(curves, cost, 3.0, allocation=allocation)  # four groups of at least one unit


def test_unknown_allocation():
    curves = _curves(8)
    with pytest.raises(ValueError, match="allocation"):
        keep_for_budget(curves, _linear_cost(dict.fromkeys(curves, 1.0)), 40, allocation="fair")


def test_validate_keep():
    units = {"a": 8, "b": 4}
    assert validate_keep({"a": 3, "b": np.int64(4)}, units) == {"a": 3, "b": 4}
    with pytest.raises(ValueError, match="not a prunable layer"):
        validate_keep({"c": 1}, units)
    with pytest.raises(ValueError, match="out of range"):
        validate_keep({"a": 0}, units)
    with pytest.raises(ValueError, match="out of range"):
        validate_keep({"b": 5}, units)

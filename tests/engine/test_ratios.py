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
            LayerCost("b", 400.0, 8 * 16 * 9, 16, in_groups=("a",), out_group="b"),
            LayerCost("bn", 0.0, 16, 16, channel_groups=("b",)),
            LayerCost("c", 300.0, 16 * 4, 4, in_groups=("b",), out_group="c"),
            LayerCost("head", 50.0, 40, 10, in_groups=("c",)),
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


# -- per-group constraints ----------------------------------------------------------------------------

from snp_engine.ratios import NO_CONSTRAINTS, Constraints, GroupConstraint  # noqa: E402


def test_group_constraint_refuses_bad_values_clearly():
    with pytest.raises(ValueError, match="round-to must be at least 1, got 0"):
        GroupConstraint(round_to=0)
    with pytest.raises(ValueError, match="a minimum must be at least 1"):
        GroupConstraint(min_units=-2)
    with pytest.raises(ValueError, match="whole number"):
        GroupConstraint(locked=2.5)
    with pytest.raises(ValueError, match="whole number"):
        GroupConstraint(locked=True)
    assert GroupConstraint(locked=np.int64(3), min_units=2.0).to_dict() == {"locked": 3, "min_units": 2}


def test_constraints_are_checked_against_the_widths():
    units = {"a": 8, "b": 16}
    with pytest.raises(ValueError, match="'a' has 8 units; a minimum of 9 is more than it has"):
        Constraints({"a": GroupConstraint(min_units=9)}).check(units)
    with pytest.raises(ValueError, match=r"'b' has 16 units; it cannot be locked at 17 \(1 … 16\)"):
        Constraints({"b": GroupConstraint(locked=17)}).check(units)
    with pytest.raises(ValueError, match="not a prunable layer"):
        Constraints({"c": GroupConstraint(locked=1)}).check(units)
    with pytest.raises(ValueError, match="below its minimum"):
        Constraints({"a": GroupConstraint(locked=2, min_units=4)}).check(units)
    fine = Constraints({"a": GroupConstraint(min_units=8), "b": GroupConstraint(round_to=32)})
    assert fine.check(units) is fine


def test_constraints_are_values():
    a = Constraints({"x": GroupConstraint(locked=3), "y": GroupConstraint()})
    b = NO_CONSTRAINTS.with_group("x", locked=3)
    assert a == b and hash(a) == hash(b) and list(a) == ["x"], "rules that say nothing are dropped"
    assert b.with_group("x", locked=None) == NO_CONSTRAINTS and not NO_CONSTRAINTS
    with pytest.raises(TypeError):
        a.groups["z"] = GroupConstraint(locked=1)  # read-only
    assert Constraints.from_dict(a.to_dict()) == a
    with pytest.raises(ValueError, match="constraint for 'x': round-to must be at least 1"):
        Constraints.from_dict({"x": {"round_to": 0}})
    with pytest.raises(ValueError, match="unknown field"):
        Constraints.from_dict({"x": {"lock": 3}})


def test_fit_and_why():
    rule = GroupConstraint(min_units=4, round_to=8)
    assert rule.fit(3, 20) == 8 and rule.fit(9, 20) == 16 and rule.fit(19, 20) == 20 and rule.fit(99, 20) == 20
    assert "at least 4" in rule.why(3, 8, 20) and "multiple of 8" in rule.why(9, 16, 20)
    assert rule.why(16, 16, 20) == ""
    assert GroupConstraint(locked=5).fit(2, 20) == 5 and "locked at 5" in GroupConstraint(locked=5).why(2, 5, 20)
    assert rule.fit(15, 20, down=True) == 8 and rule.fit(7, 20, down=True) == 8 and rule.fit(20, 20, down=True) == 20


@pytest.mark.parametrize("tau", [0.1, 0.5, 0.99])
def test_threshold_never_moves_a_locked_group_and_obeys_minimum_and_rounding(tau):
    curves = _curves(9)
    rules = Constraints(
        {
            "layer0": GroupConstraint(locked=7),
            "layer1": GroupConstraint(min_units=6),
            "layer3": GroupConstraint(round_to=8),
        }
    )
    plain = keep_for_threshold(curves, tau)
    keep = keep_for_threshold(curves, tau, constraints=rules)
    assert keep["layer0"] == 7
    assert keep["layer1"] == max(plain["layer1"], 6)
    assert keep["layer3"] % 8 == 0 and 0 <= keep["layer3"] - plain["layer3"] < 8
    assert keep["layer2"] == plain["layer2"], "groups without rules are untouched"


@pytest.mark.parametrize("allocation", ["threshold", "greedy"])
@pytest.mark.parametrize("fraction", [0.8, 0.6])
def test_budget_with_constraints_is_met_and_respects_them(allocation, fraction):
    curves = _curves(10)
    cost = _linear_cost({"layer0": 3.0, "layer1": 1.0, "layer2": 10.0, "layer3": 0.5})
    full = cost({name: len(c) - 1 for name, c in curves.items()})
    rules = Constraints(
        {
            "layer2": GroupConstraint(locked=4),
            "layer1": GroupConstraint(min_units=5),
            "layer3": GroupConstraint(round_to=8),
        }
    )
    keep, _ = keep_for_budget(curves, cost, fraction * full, allocation=allocation, constraints=rules)
    assert cost(keep) <= fraction * full
    assert keep["layer2"] == 4
    assert keep["layer1"] >= 5
    assert keep["layer3"] % 8 == 0 or keep["layer3"] == 32


def test_greedy_steps_over_multiples_of_a_groups_round_to():
    curve = np.linspace(0, 1, 21)  # 20 units: multiples of 8 are 8 and 16, and all 20
    keep, _ = keep_for_budget(
        {"a": curve}, lambda k: float(k["a"]), 10.0, constraints=Constraints({"a": GroupConstraint(round_to=8)})
    )
    assert keep == {"a": 8}


def test_locks_that_make_the_budget_unreachable_are_refused_in_one_line():
    curves = _curves(11)
    cost = _linear_cost(dict.fromkeys(curves, 1.0))
    rules = Constraints({"layer3": GroupConstraint(locked=32)})  # 32 of 61 units locked
    with pytest.raises(ValueError, match="not reachable with these constraints") as caught:
        keep_for_budget(curves, cost, 20.0, constraints=rules)
    message = str(caught.value)
    assert "\n" not in message and "1 locked layer(s)" in message and "unlock" in message


def test_validate_keep_with_constraints():
    units = {"a": 8, "b": 20, "c": 4}
    rules = Constraints(
        {"a": GroupConstraint(locked=3), "b": GroupConstraint(round_to=8), "c": GroupConstraint(min_units=2)}
    )
    assert validate_keep({"b": 16}, units, constraints=rules) == {"b": 16, "a": 3}, "a lock fills in its count"
    assert validate_keep({"b": 20}, units, constraints=rules)["b"] == 20, "the full width is always allowed"
    with pytest.raises(ValueError, match="locked at 3"):
        validate_keep({"a": 4}, units, constraints=rules)
    with pytest.raises(ValueError, match="multiple of 8"):
        validate_keep({"b": 12}, units, constraints=rules)
    with pytest.raises(ValueError, match="at least 2 units"):
        validate_keep({"c": 1}, units, constraints=rules)


def test_analysis_plan_and_make_plan_take_constraints():
    from snp_engine.api import analyze
    from snp_engine.errors import SnpError
    from snp_engine.workflows import PlanTarget, make_plan
    from tests.engine.helpers import demo_model, digits

    analysis = analyze(demo_model("demo-vgg"), digits(), samples=64)
    first, second = analysis.names[:2]
    width = analysis.units[first]
    rules = Constraints({first: GroupConstraint(locked=width - 1), second: GroupConstraint(min_units=2)})
    for target in (PlanTarget("variance", 0.5), PlanTarget("flops", 0.3), PlanTarget("params", 0.3)):
        plan = make_plan(analysis, target, constraints=rules)
        assert plan.keep[first] == width - 1 and plan.keep[second] >= 2
    assert make_plan(analysis, PlanTarget("keep", None, {}), constraints=rules).keep[first] == width - 1
    with pytest.raises(SnpError, match="cannot be locked"):
        analysis.plan(variance=0.5, constraints=Constraints({first: GroupConstraint(locked=width + 1)}))
    everything = Constraints({name: GroupConstraint(locked=units) for name, units in analysis.units.items()})
    with pytest.raises(SnpError, match="not reachable with these constraints"):
        analysis.plan(flops_reduction=0.5, constraints=everything)


def test_greedy_budget_gives_back_units_a_coarse_step_made_room_for():
    """The greedy removes fine units until the coarse group's one step (4 units, 40 of cost) is the
    cheaper loss; that step overshoots the budget, and the fine group gets the room back, unit by unit."""
    curves = {
        "coarse": np.array([0, 0.02, 0.04, 0.06, 0.1, 0.3, 0.6, 0.9, 1.0]),
        "fine": np.sqrt(np.linspace(0, 1, 41)),
    }

    def cost(keep):
        return 10.0 * keep["coarse"] + 1.0 * keep["fine"]

    rules = Constraints({"coarse": GroupConstraint(round_to=4)})
    keep, _ = keep_for_budget(curves, cost, 80.0, constraints=rules)
    assert keep["coarse"] == 4 and cost(keep) <= 80
    # nothing more fits: the fine group has every unit back, or one more would exceed the budget
    assert keep["fine"] == 40 or cost({**keep, "fine": keep["fine"] + 1}) > 80


def test_one_budget_path_gives_every_target_the_plan_of_its_own_greedy():
    """The greedy removal's steps do not depend on the target: one BudgetPath, asked for targets in
    any order, gives exactly the counts a fresh greedy gives each target alone."""
    from snp_engine.ratios import BudgetPath

    rng = np.random.default_rng(3)
    curves = {}
    for name, units in (("a", 12), ("b", 30), ("c", 7), ("d", 20)):
        gains = np.sort(rng.random(units))[::-1]
        curves[name] = np.concatenate([[0.0], np.cumsum(gains) / gains.sum()])
    weight = {"a": 3.0, "b": 1.0, "c": 7.0, "d": 2.0}

    def cost(keep):  # a chain a→b→c→d plus per-unit terms: products of neighbours' counts
        return (
            keep["a"] * keep["b"]
            + keep["b"] * keep["c"]
            + keep["c"] * keep["d"]
            + sum(weight[n] * k for n, k in keep.items())
        )

    rules = Constraints({"c": GroupConstraint(round_to=2), "d": GroupConstraint(min_units=5)})
    full = cost({n: len(c) - 1 for n, c in curves.items()})
    path = BudgetPath(curves, cost, constraints=rules)
    for share in (0.7, 0.2, 0.9, 0.45, 0.2, 0.6):
        alone, _ = keep_for_budget(curves, cost, share * full, constraints=rules)
        shared, _ = keep_for_budget(curves, cost, share * full, constraints=rules, path=path)
        assert shared == alone and cost(shared) <= share * full


def test_greedy_counts_a_groups_loss_at_each_of_its_readers():
    """Two identical curves and per-unit savings, one group read by three layers (weight 3): its
    step loses three times the explained variance, so the greedy cuts the other group first; the
    same plan comes from a shared path and from scaling that group's curve by 3."""
    from snp_engine.ratios import BudgetPath

    curve = np.linspace(0, 1, 11)
    curves = {"stream": curve, "layer": curve.copy()}
    cost = _linear_cost({"stream": 2.0, "layer": 1.0})  # a stream unit saves twice a layer unit
    plain, _ = keep_for_budget(curves, cost, 24.0)
    weighted, _ = keep_for_budget(curves, cost, 24.0, weights={"stream": 3.0})
    assert plain["stream"] < plain["layer"]  # unweighted the stream looks cheaper per saved cost
    assert weighted["layer"] < weighted["stream"]  # counted at its three readers it is not
    assert cost(weighted) <= 24.0
    scaled, _ = keep_for_budget({"stream": 3 * curve, "layer": curve}, cost, 24.0)
    path = BudgetPath(curves, cost, weights={"stream": 3.0})
    assert keep_for_budget(curves, cost, 24.0, path=path)[0] == weighted == scaled
    thresholds = keep_for_budget(curves, cost, 24.0, allocation="threshold", weights={"stream": 3.0})
    assert thresholds == keep_for_budget(curves, cost, 24.0, allocation="threshold")  # not the paper's rule


def test_an_analysis_weighs_each_group_by_its_readers():
    from snp_engine import api
    from tests.engine.helpers import demo_model, digits

    analysis = api.analyze(demo_model("demo-resnet"), digits().calibration, samples=64)
    weights = analysis.reader_weights
    assert weights == {g.name: float(len(g.group.readers)) for g in analysis.groups}
    assert max(weights.values()) > 1  # demo-resnet's residual stream has several readers

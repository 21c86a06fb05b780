"""Per-layer sensitivity (one layer pruned alone, one-shot) and relaxing the most sensitive layers."""

from __future__ import annotations

import pytest

from snp_engine import workflows
from snp_engine.errors import SnpError
from snp_engine.progress import Cancelled, Reporter
from snp_engine.ratios import Constraints, GroupConstraint
from snp_engine.workflows import AnalysisOptions, PlanTarget
from snp_engine.workflows.sensitivity import (
    LayerSensitivity,
    Sensitivity,
    layer_sensitivity,
    relax_share,
    relaxed_counts,
)


@pytest.fixture(scope="module")
def demo():
    prepared = workflows.prepare("demo-vgg", "digits", dense_check=False)
    analysis = workflows.analyse(prepared, AnalysisOptions(samples=64, batch_size=32))
    keep = dict(workflows.make_plan(analysis, PlanTarget.parse("flops", 0.6)).keep)
    return prepared, analysis, keep


def test_each_layer_is_measured_as_if_pruned_alone(demo):
    prepared, analysis, keep = demo
    seen: list[LayerSensitivity] = []
    found = layer_sensitivity(prepared, analysis, keep, on_layer=seen.append)
    assert [layer.name for layer in found.layers] == analysis.names == [layer.name for layer in seen]
    name = analysis.names[1]
    alone = analysis.plan_for({name: keep[name]})
    pruned = workflows.prune(prepared, analysis, alone, compensation="one-shot", physical=False)
    reference = workflows.compare(prepared, pruned)
    layer = found.of(name)
    assert layer.keep == keep[name] and layer.units == analysis.units[name]
    assert layer.top1 == pytest.approx(reference.after.top1, abs=1e-9)
    assert layer.error == pytest.approx(reference.fidelity, rel=1e-4) and layer.error > 0
    assert found.dense_top1 == pytest.approx(reference.before.top1)
    assert found.samples == reference.after.samples


def test_a_layer_that_keeps_every_unit_is_the_dense_network(demo):
    prepared, analysis, keep = demo
    name = analysis.names[0]
    found = layer_sensitivity(prepared, analysis, {**keep, name: analysis.units[name]})
    assert found.of(name).error == 0.0 and found.of(name).drop == 0.0
    assert name not in [layer.name for layer in found.ranked()]


def test_fewer_kept_units_hurt_more(demo):
    prepared, analysis, _keep = demo
    name = analysis.names[2]
    units = analysis.units[name]
    light = layer_sensitivity(prepared, analysis, {name: units - 4}).of(name)
    heavy = layer_sensitivity(prepared, analysis, {name: 2}).of(name)
    assert heavy.error > light.error


def test_bad_counts_are_one_line_errors(demo):
    prepared, analysis, _keep = demo
    with pytest.raises(SnpError, match="not a prunable layer"):
        layer_sensitivity(prepared, analysis, {"nope": 3})
    with pytest.raises(SnpError, match="not a count"):
        layer_sensitivity(prepared, analysis, {analysis.names[0]: 0})


def test_cancel_stops_the_measurement(demo):
    prepared, analysis, keep = demo

    class CancelAfterFirst(Reporter):
        def __init__(self) -> None:
            self.layers = 0

        def cancel_requested(self) -> bool:
            return self.layers >= 1

    reporter = CancelAfterFirst()

    def count(_layer):
        reporter.layers += 1

    with pytest.raises(Cancelled):
        layer_sensitivity(prepared, analysis, keep, on_layer=count, reporter=reporter)
    assert reporter.layers == 1


def _sensitivity(errors: dict[str, float], keep: dict[str, int], units: dict[str, int]) -> Sensitivity:
    layers = tuple(LayerSensitivity(n, units[n], keep[n], 90.0, e, 90.0) for n, e in errors.items())
    return Sensitivity(layers, keep, 90.0, "test", 10)


def test_relaxing_gives_the_most_sensitive_layers_half_their_units_back():
    units = {"a": 64, "b": 32, "c": 16, "d": 8}
    keep = {"a": 16, "b": 8, "c": 4, "d": 8}
    found = _sensitivity({"a": 0.1, "b": 0.5, "c": 0.3, "d": 0.0}, keep, units)
    assert [layer.name for layer in found.ranked()] == ["b", "c", "a"]  # d keeps every unit
    assert relaxed_counts(found, keep, units, 2) == {"b": 20, "c": 10}
    assert relax_share(16, 64) == 40 and relax_share(63, 64) == 64
    # a locked layer is left alone, the next one relaxed; rounding applies
    rules = Constraints({"b": GroupConstraint(locked=8), "a": GroupConstraint(round_to=16)})
    assert relaxed_counts(found, keep, units, 2, rules) == {"c": 10, "a": 48}
    with pytest.raises(SnpError, match="at least one"):
        relaxed_counts(found, keep, units, 0)


def test_top1_drop_ranks_before_output_error():
    units, keep = {"a": 8, "b": 8}, {"a": 4, "b": 4}
    layers = (LayerSensitivity("a", 8, 4, 80.0, 0.1, 90.0), LayerSensitivity("b", 8, 4, 89.0, 0.9, 90.0))
    found = Sensitivity(layers, keep, 90.0, "test", 10)
    assert [layer.name for layer in found.ranked()] == ["a", "b"]
    assert relaxed_counts(found, keep, units, 1) == {"a": 6}


def test_with_a_block_removed_each_layer_is_measured_on_the_network_without_it():
    prepared = workflows.prepare("demo-resnet", "digits", dense_check=False)
    options = AnalysisOptions(samples=64, batch_size=32)
    analysis = workflows.analyse(prepared, options)
    block, inside = "layer1.0", "layer1.0.conv1"
    keep = dict(workflows.plan_with_blocks(analysis, PlanTarget("flops", 0.5), [block]).keep)
    found = layer_sensitivity(prepared, analysis, keep, blocks=[block], options=options, samples=64)
    assert found.blocks == (block,) and found.skipped == (inside,)
    assert inside not in [layer.name for layer in found.layers] and found.layers
    removed = workflows.remove_blocks(prepared, [block], samples=64, batch_size=32)
    remaining = workflows.analyse(removed.prepared, options)
    without = workflows.score(removed.prepared.model.model, prepared.evaluation).top1
    assert found.dense_top1 == pytest.approx(without)  # the reference is the network without the block
    name = next(layer.name for layer in found.layers if layer.keep < layer.units)
    alone = remaining.plan_for({name: keep[name]})
    pruned = workflows.prune(removed.prepared, remaining, alone, compensation="one-shot", physical=False)
    assert found.of(name).top1 == pytest.approx(workflows.score(pruned.model, prepared.evaluation).top1, abs=1e-9)

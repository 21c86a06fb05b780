"""Plans that remove whole residual blocks and channels under one target (the app's path:
one analysis of the network with its blocks), and pruning to such a plan."""

from __future__ import annotations

import pytest
import torch

from snp_engine import workflows
from snp_engine.errors import SnpError
from snp_engine.workflows import AnalysisOptions, PlanTarget

BLOCK = "layer1.0"


@pytest.fixture(scope="module")
def demo():
    torch.manual_seed(0)
    prepared = workflows.prepare("demo-resnet", "digits", dense_check=False)
    analysis = workflows.analyse(prepared, AnalysisOptions(samples=64, batch_size=32))
    return prepared, analysis


def test_the_blocks_cost_is_what_their_layers_cost_at_the_plan(demo):
    prepared, analysis = demo
    params, macs = workflows.blocks_cost(analysis, [BLOCK])
    block = prepared.model.model.layer1[0]
    assert params >= sum(p.numel() for name, p in block.named_parameters() if "conv" in name)
    without = workflows.remove_blocks(prepared, [BLOCK], compensation="none")
    assert macs == pytest.approx(without.cost_before[1] - without.cost_after[1], rel=0.02)
    half = {name: max(1, units // 2) for name, units in analysis.units.items()}
    assert workflows.blocks_cost(analysis, [BLOCK], half)[1] < macs
    assert workflows.blocks_cost(analysis, []) == (0, 0.0)
    assert workflows.inner_groups(analysis, [BLOCK]) == ("layer1.0.conv1",)


@pytest.mark.parametrize("kind", ["flops", "params"])
def test_a_reduction_counts_the_removed_blocks_and_their_groups_keep_every_unit(demo, kind):
    _prepared, analysis = demo
    index = 1 if kind == "flops" else 0
    plain = workflows.make_plan(analysis, PlanTarget(kind, 0.5))
    plan = workflows.plan_with_blocks(analysis, PlanTarget(kind, 0.5), [BLOCK])
    total = analysis.cost()[index]
    after = analysis.cost(plan.keep)[index] - workflows.blocks_cost(analysis, [BLOCK], plan.keep)[index]
    assert after / total == pytest.approx(0.5, abs=0.02)
    assert plan.keep["layer1.0.conv1"] == analysis.units["layer1.0.conv1"]
    assert sum(plan.keep.values()) > sum(plain.keep.values())  # the channels give back what the block saves


def test_blocks_that_alone_reach_the_target_leave_the_channels_alone(demo):
    _prepared, analysis = demo
    plan = workflows.plan_with_blocks(analysis, PlanTarget("flops", 0.05), [BLOCK])
    assert plan.keep == analysis.units


def test_other_targets_and_no_blocks_plan_as_before(demo):
    _prepared, analysis = demo
    target = PlanTarget("variance", 0.9)
    assert workflows.plan_with_blocks(analysis, target, []).keep == workflows.make_plan(analysis, target).keep
    with_block = workflows.plan_with_blocks(analysis, target, [BLOCK]).keep
    assert with_block["layer1.0.conv1"] == analysis.units["layer1.0.conv1"]


def test_pruning_to_a_combined_plan_removes_the_block_and_meets_the_target(demo):
    prepared, analysis = demo
    plan = workflows.plan_with_blocks(analysis, PlanTarget("flops", 0.5), [BLOCK])
    pruned = workflows.prune_with_blocks(prepared, analysis, plan, [BLOCK], samples=64, batch_size=32)
    assert pruned.record.blocks == (BLOCK,) and isinstance(pruned.model.layer1[0], torch.nn.Identity)
    _params, macs = workflows.cost(pruned.model, prepared.input_shape, "cpu")
    assert macs / analysis.cost()[1] == pytest.approx(0.5, abs=0.02)
    images = prepared.require_data().calibration[0][0][None]
    assert pruned.model(images).shape == prepared.model.model(images).shape
    assert prepared.model.model.layer1[0] is not None and not isinstance(
        prepared.model.model.layer1[0], torch.nn.Identity
    )


def test_without_blocks_it_is_the_plain_prune_and_unknown_names_are_refused(demo):
    prepared, analysis = demo
    plan = workflows.make_plan(analysis, PlanTarget("flops", 0.3))
    pruned = workflows.prune_with_blocks(prepared, analysis, plan, [], samples=64, batch_size=32)
    assert pruned.record.blocks == () and not isinstance(pruned.model.layer1[0], torch.nn.Identity)
    with pytest.raises(SnpError, match=r"'layer9' is not a removable block; removable blocks: layer1\.0"):
        workflows.remove_blocks(prepared, ["layer9"])


def test_a_sweep_with_a_block_prunes_every_point_as_evaluate_does(demo, monkeypatch):
    from snp_engine.workflows import sweeps

    prepared, analysis = demo
    pruned_with: list[tuple[str, ...]] = []
    real = sweeps.prune_with_blocks

    def spy(*args, **kwargs):
        pruned_with.append(tuple(args[3]))
        return real(*args, **kwargs)

    monkeypatch.setattr(sweeps, "prune_with_blocks", spy)
    alone = workflows.blocks_cost(analysis, [BLOCK])[1] / analysis.cost()[1]
    assert 0.01 < alone < 0.7
    points: list[tuple[str, float, float]] = []
    found = workflows.sweep(
        prepared,
        analysis,
        [0.01, 0.7],
        baseline=analysis.ordering,
        blocks=[BLOCK],
        samples=64,
        batch_size=32,
        on_point=lambda *point: points.append(point),
    )
    label = f"SNP ({analysis.ordering}) without {BLOCK}"
    assert sorted(found) == [(label, alone), (label, 0.7)]  # 1 % is less than the block alone saves
    assert pruned_with == [(BLOCK,), (BLOCK,)] and points[0] == (label, 0.0, points[0][2])
    plan = workflows.plan_with_blocks(analysis, PlanTarget("flops", 0.7), [BLOCK])
    pruned = workflows.prune_with_blocks(prepared, analysis, plan, [BLOCK], samples=64, batch_size=32)
    assert found[(label, 0.7)] == pytest.approx(workflows.score(pruned.model, prepared.evaluation).top1)


def test_a_sweep_without_blocks_keeps_its_series_names(demo):
    prepared, analysis = demo
    found = workflows.sweep(prepared, analysis, [0.3], baseline="l1", samples=64, batch_size=32)
    assert sorted(found) == sorted([(f"SNP ({analysis.ordering})", 0.3), ("l1 (baseline)", 0.3)])


def test_a_sweep_removes_the_blocks_once_for_all_its_points(demo, monkeypatch):
    from snp_engine.workflows import sweeps

    prepared, analysis = demo
    made = []
    real = sweeps.without_blocks
    monkeypatch.setattr(sweeps, "without_blocks", lambda *a, **k: made.append(tuple(a[1])) or real(*a, **k))
    found = workflows.sweep(prepared, analysis, [0.6, 0.7], baseline="l1", blocks=[BLOCK], samples=64, batch_size=32)
    assert made == [(BLOCK,)] and len(found) == 4  # two orderings, two points each


def test_a_removal_made_for_other_blocks_is_refused(demo):
    from snp_engine.workflows.blockjobs import without_blocks

    prepared, analysis = demo
    gone = without_blocks(prepared, [BLOCK], samples=64, batch_size=32)
    plan = workflows.plan_with_blocks(analysis, PlanTarget("flops", 0.6), [BLOCK])
    with pytest.raises(SnpError, match=r"the network given lacks layer1\.0, not layer9"):
        workflows.prune_with_blocks(prepared, analysis, plan, ["layer9"], without=gone)
    reused = workflows.prune_with_blocks(prepared, analysis, plan, [BLOCK], samples=64, batch_size=32, without=gone)
    fresh = workflows.prune_with_blocks(prepared, analysis, plan, [BLOCK], samples=64, batch_size=32)
    images = prepared.require_data().calibration[0][0][None]
    torch.testing.assert_close(reused.model(images), fresh.model(images))

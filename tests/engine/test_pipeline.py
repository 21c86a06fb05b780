"""analyze → plan → prune on the bundled demo models and the digits data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from snp_engine import analysis as analysis_module
from snp_engine import api, pruning
from snp_engine.errors import AnalysisError, SnpError
from snp_engine.subspace import explained_curve, order_units, subspace_curve
from tests.engine.helpers import demo_model, digits, outputs, stacked

DEMOS = ["demo-vgg", "demo-resnet"]


@pytest.fixture(scope="module", params=DEMOS)
def demo(request):
    """(name, dense model, analysis with the default ordering, 50 % FLOPs plan)."""
    model = demo_model(request.param)
    analysis = api.analyze(model, digits())
    plan = analysis.plan(flops_reduction=0.5)
    return request.param, model, analysis, plan


@pytest.fixture(scope="module")
def test_images() -> torch.Tensor:
    return stacked(digits().test)[0]


def _max_diff(a: torch.nn.Module, b: torch.nn.Module, images: torch.Tensor) -> float:
    return float((outputs(a, images) - outputs(b, images)).abs().max())


def test_analysis_covers_the_calibration_split(demo):
    _, _, analysis, plan = demo
    assert analysis.groups, "demo models have prunable groups"
    for g in analysis.groups:
        per_image = int(np.prod(g.input_shape[1:])) if g.group.layout == "conv" else 1
        if g.group.layout == "flatten":
            per_image = g.input_shape[0] // g.units
        assert g.samples == 300 * per_image
        assert g.curve[0] == 0 and g.curve[-1] == pytest.approx(1.0) and (np.diff(g.curve) >= -1e-9).all()
    assert 0.5 <= plan.flops_reduction < 0.6
    assert all(1 <= k <= analysis.units[name] for name, k in plan.keep.items())


@pytest.mark.parametrize("sequential", [False, True])
def test_keeping_every_unit_reproduces_the_dense_network(demo, test_images, sequential):
    _, model, analysis, _ = demo
    plan = analysis.plan_for(analysis.units)
    assert plan.flops_after == plan.flops_before
    pruned = api.prune(model, analysis, plan, data=digits(), sequential=sequential).model
    assert _max_diff(model, pruned, test_images) <= 1e-5


def test_first_group_only_sequential_equals_one_shot(demo, test_images):
    """With nothing pruned upstream, the sequential fit of the first consumer is the one-shot LLS fit,
    and consumers of unpruned groups are left alone."""
    _, model, analysis, _ = demo
    # the first group with one reader (a residual stream's later readers see the first one's fit)
    first = next(g for g in analysis.groups if not g.more)
    plan = analysis.plan_for({first.name: first.units // 2})
    # with the fixed ridge formula of the one-shot fit, the fits are the same formula on the same inputs
    sequential_run = api.prune(model, analysis, plan, data=digits(), heldout_folds=1)
    one_shot_run = api.prune(model, analysis, plan, sequential=False)
    sequential, one_shot = sequential_run.model, one_shot_run.model
    assert sequential_run.record.kept == one_shot_run.record.kept
    assert _max_diff(sequential, one_shot, test_images) <= 1e-4
    # the held-out check may choose another ridge, which changes the fit only a little
    checked = api.prune(model, analysis, plan, data=digits()).model
    assert _max_diff(checked, one_shot, test_images) <= 1e-2
    assert _max_diff(model, one_shot, test_images) > 1e-3, "the group was pruned"


def test_refitting_unpruned_consumers_moves_towards_the_dense_network(demo, test_images):
    """Optionally, the consumers downstream of a pruned group are refitted towards the dense network
    even where they keep every unit; that only brings the output closer to the dense one."""
    _, model, analysis, _ = demo
    # the first group with one reader (a residual stream's later readers see the first one's fit)
    first = next(g for g in analysis.groups if not g.more)
    plan = analysis.plan_for({first.name: first.units // 2})
    refitted = api.prune(
        model, analysis, plan, data=digits(), physical=False, refit_unpruned=True, heldout_folds=1
    ).model
    one_shot = api.prune(model, analysis, plan, sequential=False, physical=False).model
    consumer = first.group.consumer
    torch.testing.assert_close(
        refitted.get_submodule(consumer).weight, one_shot.get_submodule(consumer).weight, rtol=1e-5, atol=1e-6
    )
    data = digits().test
    assert api.fidelity(model, refitted, data) <= api.fidelity(model, one_shot, data) + 1e-6


def test_last_group_only_sequential_equals_one_shot(demo, test_images):
    _, model, analysis, _ = demo
    last = analysis.groups[-1]
    plan = analysis.plan_for({last.name: last.units // 2})
    sequential = api.prune(model, analysis, plan, data=digits(), heldout_folds=1).model
    one_shot = api.prune(model, analysis, plan, sequential=False).model
    assert _max_diff(sequential, one_shot, test_images) <= 1e-4
    assert _max_diff(model, one_shot, test_images) > 1e-3, "the group was pruned"


def test_snp_beats_magnitude_pruning_without_fine_tuning(demo):
    name, model, analysis, plan = demo
    data = digits()
    snp = api.evaluate(api.prune(model, analysis, plan, data=data, physical=False).model, data)["top1"]

    l1 = analysis.reorder("l1")
    l1_plan = l1.plan_for(plan.keep)  # the same per-layer counts, chosen by filter L1 norm
    assert l1_plan.flops_after == pytest.approx(plan.flops_after)
    l1_plain = api.evaluate(api.prune(model, l1, l1_plan, compensate=False, physical=False).model, data)["top1"]
    l1_compensated = api.evaluate(api.prune(model, l1, l1_plan, data=data, physical=False).model, data)["top1"]

    assert snp >= 95.0, name
    assert snp >= l1_plain + 20, (name, snp, l1_plain)
    assert snp >= l1_compensated - 0.5, (name, snp, l1_compensated)


def test_physical_and_functional_pruning_agree(demo, test_images):
    _, model, analysis, plan = demo
    physical_run = api.prune(model, analysis, plan, sequential=False, physical=True)
    functional_run = api.prune(model, analysis, plan, sequential=False, physical=False)
    physical, functional = physical_run.model, functional_run.model
    assert _max_diff(physical, functional, test_images) <= 1e-4
    n_physical = sum(p.numel() for p in physical.parameters())
    n_functional = sum(p.numel() for p in functional.parameters())
    assert n_physical == plan.params_after < n_functional == plan.params_before
    assert physical_run.record.physical and not functional_run.record.physical
    assert not hasattr(physical, "snp_pruning")  # the record is passed by value, not stored on the module
    for name, kept in physical_run.record.kept.items():
        assert tuple(kept) == plan.kept[name]


def test_prune_leaves_the_dense_model_untouched(demo, test_images):
    _, model, analysis, plan = demo
    before = outputs(model, test_images)
    api.prune(model, analysis, plan, sequential=False)
    assert torch.equal(outputs(model, test_images), before)


def test_reorder_reuses_the_statistics(demo, monkeypatch):
    _, _, analysis, _ = demo

    def no_forward(*_args, **_kwargs):
        raise AssertionError("reorder must not run the model")

    monkeypatch.setattr(analysis_module, "collect_moments", no_forward)
    monkeypatch.setattr(pruning, "collect_joint_folds", no_forward)
    for ordering, curve in [("zca", "variance"), ("variance", "subspace"), ("greedy", "output")]:
        other = analysis.reorder(ordering, curve=curve)
        assert other.ordering == ordering and other.curve_kind == curve
        assert analysis.ordering == "output" and analysis.curve_kind == "variance", "the original is unchanged"
        for g, h in zip(analysis.groups, other.groups, strict=True):
            cov = g.moments.covariance()
            expected_order = order_units(ordering, g.inputs(analysis.seed))
            assert torch.equal(h.order, expected_order)
            more = [(r.moments.covariance(), r.metric if curve == "output" else None) for r in g.more]
            if curve == "subspace":
                expected = subspace_curve(cov, expected_order, more=[c for c, _ in more])
            else:
                expected = explained_curve(cov, expected_order, g.metric if curve == "output" else None, more=more)
            np.testing.assert_allclose(h.curve, expected.numpy(), rtol=1e-12, atol=1e-12)
    assert any(
        not np.allclose(g.curve, h.curve)
        for g, h in zip(analysis.groups, analysis.reorder("random").groups, strict=True)
    )


def test_variance_plan_meets_the_threshold(demo):
    _, _, analysis, _ = demo
    plan = analysis.plan(variance=0.95)
    assert plan.threshold == 0.95
    for name, explained in plan.explained.items():
        assert explained >= 0.95 - 1e-9
        k = plan.keep[name]
        assert k == 1 or analysis.group(name).curve[k - 1] < 0.95
        assert len(plan.kept[name]) == k
        assert set(plan.kept[name]) == set(analysis.group(name).order[:k].tolist())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"variance": 0.9, "flops_reduction": 0.5},
        {},
        {"variance": 0.0},
        {"variance": 1.5},
        {"flops_reduction": 1.0},
        {"params_reduction": -0.1},
        {"flops_reduction": 0.9999},
        {"keep": {"not-a-layer": 3}},
        {"keep": {"features.0": 0}},
        {"flops_reduction": 0.3, "allocation": "fair"},
    ],
)
def test_plan_errors_are_snp_errors(kwargs):
    model = demo_model("demo-vgg")
    analysis = _small_analysis(model)
    with pytest.raises(SnpError):
        analysis.plan(**kwargs)


def test_sequential_pruning_needs_data():
    model = demo_model("demo-vgg")
    analysis = _small_analysis(model)
    plan = analysis.plan(flops_reduction=0.3)
    with pytest.raises(SnpError, match="calibration data"):
        api.prune(model, analysis, plan)
    # without compensation there is nothing to calibrate
    pruned = api.prune(model, analysis, plan, compensate=False)
    assert pruned.record.compensation == "none"


_SMALL: dict[str, api.Analysis] = {}


def _small_analysis(model) -> api.Analysis:
    if "vgg" not in _SMALL:
        _SMALL["vgg"] = api.analyze(model, digits(), samples=64, ordering="variance")
    return _SMALL["vgg"]


def test_nan_activations_name_the_layer():
    model = demo_model("demo-vgg")
    with torch.no_grad():
        model.features[4].running_var[3] = -1.0  # sqrt of a negative variance: NaN in channel 3
    with pytest.raises(AnalysisError, match=r"features\.7"):
        api.analyze(model, digits(), samples=32)


@pytest.mark.gpu
def test_cuda_statistics_and_pruning_match_cpu(cuda_device):
    model = demo_model("demo-resnet")
    cpu = api.analyze(model, digits(), samples=128)
    gpu = api.analyze(demo_model("demo-resnet"), digits(), samples=128, device=cuda_device)
    for g, h in zip(cpu.groups, gpu.groups, strict=True):
        torch.testing.assert_close(h.moments.covariance().cpu(), g.moments.covariance(), rtol=1e-4, atol=1e-5)
    plan = gpu.plan(flops_reduction=0.4)
    pruned = api.prune(demo_model("demo-resnet"), gpu, plan, data=digits(), samples=128, device=cuda_device).model
    assert next(pruned.parameters()).device.type == "cuda"
    assert api.evaluate(pruned, digits(), device=cuda_device)["top1"] >= 90.0


def test_statistics_do_not_depend_on_batching_or_sample_cap():
    model = demo_model("demo-resnet")
    a = api.analyze(model, digits(), samples=50, batch_size=64)
    b = api.analyze(model, digits(), samples=50, batch_size=7)
    for g, h in zip(a.groups, b.groups, strict=True):
        assert g.samples == h.samples == 50 * int(np.prod(g.input_shape[1:]))
        # float32 forward passes differ in the last bits between batch sizes; the sums are float64
        scale = float(g.moments.covariance().abs().max())
        torch.testing.assert_close(g.moments.covariance(), h.moments.covariance(), rtol=0, atol=1e-6 * scale)
        np.testing.assert_allclose(g.curve, h.curve, atol=1e-5)
    capped = api.analyze(model, digits(), samples=50, max_positions=3)
    for g, h in zip(a.groups, capped.groups, strict=True):
        positions = int(np.prod(g.input_shape[1:]))
        assert h.samples == 50 * min(positions, 3)

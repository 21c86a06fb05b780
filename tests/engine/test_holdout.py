"""The held-out choice of each sequential fit: the error formula, the choice, and exactness."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from snp_engine import api
from snp_engine.compensation import one_shot_reconstruction, reconstruction
from snp_engine.data import load_data
from snp_engine.holdout import ONE_SHOT, SEQUENTIAL, choose_fit, fit_inputs, heldout_errors
from snp_engine.models import load_model
from snp_engine.statistics import Moments
from snp_engine.subspace import explained_curve, trusted_curve


def _moments(samples: torch.Tensor) -> Moments:
    m = Moments.zeros(samples.shape[1])
    m.update(samples)
    return m


def _joint(n: int, count: int, seed: int, noise: float = 0.3) -> torch.Tensor:
    """z = [x̃; x]: x correlated units, x̃ a noisy, shifted copy (a partly pruned network's input)."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(n, n, generator=gen, dtype=torch.float64)
    x = torch.randn(count, n, generator=gen, dtype=torch.float64) @ mix + 2.0
    x_tilde = 0.9 * x + noise * torch.randn(count, n, generator=gen, dtype=torch.float64) + 0.5
    return torch.cat([x_tilde, x], dim=1)


@pytest.mark.parametrize("kind", [SEQUENTIAL, ONE_SHOT])
def test_heldout_error_equals_a_direct_evaluation(kind):
    n, kept = 8, torch.tensor([0, 2, 3, 6])
    fit_z, held_z = _joint(n, 60, 0), _joint(n, 25, 1)
    gen = torch.Generator().manual_seed(2)
    weights = torch.randn(5, n, generator=gen, dtype=torch.float64)
    metric = weights.T @ weights
    ridges = [1e-6, 0.1, 3.0]
    found = heldout_errors(_moments(fit_z), _moments(held_z), metric, kept, kind, ridges)
    fit = _moments(fit_z)
    for ridge, error in zip(ridges, found, strict=True):
        if kind == SEQUENTIAL:
            cross, kept_cov, target_mean, kept_mean = fit_inputs(fit.covariance(), fit.mean(), kept, kind)
            prior = torch.zeros(n, len(kept), dtype=torch.float64)
            prior[kept, torch.arange(len(kept))] = 1
            mapping, offset = reconstruction(cross, kept_cov, target_mean, kept_mean, ridge, prior)
        else:
            dense = fit.covariance()[n:, n:], fit.mean()[n:]
            mapping, offset = one_shot_reconstruction(*dense, kept, ridge)
        residual = held_z[:, n:] - offset - held_z[:, :n][:, kept] @ mapping.T  # applied to x̃_K
        direct = float(((residual @ metric) * residual).sum(1).mean())
        assert float(error) == pytest.approx(direct, rel=1e-9)


def test_the_choice_has_the_least_heldout_error():
    n, kept = 10, torch.arange(0, 10, 2)
    samples = _joint(n, 40, 3, noise=1.0)
    folds = [_moments(samples[i::4]) for i in range(4)]
    metric = torch.eye(n, dtype=torch.float64)
    choice = choose_fit(folds, metric, kept, baseline_ridge=1e-6)
    assert choice.kind in (SEQUENTIAL, ONE_SHOT) and choice.folds == 4
    assert choice.error >= min(choice.sequential_error, choice.one_shot_error)
    assert 0 < choice.error < 1  # relative to the consumer's output energy


def test_duplicated_units_are_still_removed_exactly():
    gen = torch.Generator().manual_seed(4)
    base = torch.randn(80, 4, generator=gen, dtype=torch.float64)
    x = torch.cat([base, base[:, :2]], dim=1)  # units 4 and 5 copy units 0 and 1
    folds = [_moments(torch.cat([x, x], dim=1)[i::4]) for i in range(4)]
    choice = choose_fit(folds, torch.eye(6, dtype=torch.float64), torch.arange(4), baseline_ridge=1e-9)
    assert choice.error < 1e-12 and choice.relative_ridge <= 1e-6


@pytest.mark.slow
def test_sequential_pruning_reports_each_fit():
    data = load_data("digits")
    model = load_model("demo-vgg").model
    analysis = api.analyze(model, data, samples=96)
    plan = analysis.plan(flops_reduction=0.5)
    checked = api.prune(model, analysis, plan, data=data, samples=96)
    fixed = api.prune(model, analysis, plan, data=data, samples=96, heldout_folds=1)
    pruned_groups = {name for name, k in plan.keep.items() if k < analysis.units[name]}
    assert set(checked.record.fits) == pruned_groups and fixed.record.fits == {}
    for fit in checked.record.fits.values():
        assert fit["fit"] in (SEQUENTIAL, ONE_SHOT) and fit["folds"] == 4
        # the chosen fit is the fixed formula unless a candidate is clearly better on held-out images
        assert fit["heldout_error"] <= 1.5 * min(fit["heldout_error_one_shot"], fit["heldout_error_sequential"])
    before = api.evaluate(model, data)["top1"]
    assert api.evaluate(checked.model, data)["top1"] >= before - 3


def test_a_clearly_better_fit_replaces_the_formula_and_noise_does_not():
    samples = _joint(10, 200, 5, noise=0.05)
    folds = [_moments(samples[i::4]) for i in range(4)]
    metric, kept = torch.eye(10, dtype=torch.float64), torch.arange(0, 10, 2)
    scale = float(torch.diagonal(samples.T.cov()[:10, :10]).mean())
    poor = choose_fit(folds, metric, kept, baseline_ridge=1e3 * scale)  # a formula that shrinks far too much
    assert poor.ridge < 1e3 * scale and poor.relative_ridge < 1  # replaced by a candidate of the grid
    assert poor.error == pytest.approx(min(poor.sequential_error, poor.one_shot_error))  # the best one
    good = choose_fit(folds, metric, kept, baseline_ridge=1e-6 * scale)
    assert good.kind == SEQUENTIAL and good.ridge == pytest.approx(1e-6 * scale)  # the formula stays


def test_the_trusted_curve_of_a_rank_deficient_group():
    n, s = 40, 12
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(s, n, generator=gen, dtype=torch.float64) @ torch.randn(n, n, generator=gen, dtype=torch.float64)
    measured = explained_curve(x.T.cov(correction=0), torch.arange(n))
    assert float(measured[s - 1]) > 1 - 1e-3  # the in-sample curve: everything explained by s − 1 units
    curve = trusted_curve(measured, s)
    assert float(curve[0]) == 0 and float(curve[-1]) == pytest.approx(1.0)  # keep-all stays exact
    assert bool((curve[1:] >= curve[:-1] - 1e-12).all())  # monotone
    assert bool((curve <= measured + 1e-12).all())  # never more explained than measured
    # beyond where it can be trusted (fewer than s − 1 units), every unit adds the same share
    steps = (curve[1:] - curve[:-1])[s - 2 :]
    assert torch.allclose(steps, steps[-1].expand_as(steps))
    assert float(steps[-1]) > 0.5 / n  # the tail is not free: about an average unit's share each
    assert torch.equal(trusted_curve(measured, 1), torch.linspace(0, 1, n + 1, dtype=torch.float64))


def test_the_plan_does_not_remove_an_unmeasured_tail_for_free():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3)).double()
    images = torch.randn(24, 6, dtype=torch.float64)
    data = TensorDataset(images, torch.zeros(24, dtype=torch.long))
    analysis = api.analyze(model, data)
    for g in analysis.groups:
        assert g.samples == 24 < g.units
        curve = torch.as_tensor(g.curve)
        assert float(curve[23]) < 0.99 and float(curve[-1]) == pytest.approx(1.0)  # not "explained" at the rank
    plan = analysis.plan(flops_reduction=0.3)
    assert all(k > 23 for k in plan.keep.values())  # 30 % fewer FLOPs without dropping to the rank
    # more samples than units: the measured curve, as before
    more = TensorDataset(torch.randn(400, 6, dtype=torch.float64), torch.zeros(400, dtype=torch.long))
    wide = api.analyze(model, more)
    for g in wide.groups:
        assert torch.allclose(torch.as_tensor(g.curve), explained_curve(g.inputs(0).covariance, g.order).cpu())


def test_pooled_fold_blocks_equal_the_union_of_the_folds():
    from snp_engine.holdout import _Blocks

    samples, kept = _joint(6, 90, 7), torch.tensor([1, 2, 4])
    folds = [_moments(samples[i::4] * (1 + i)) for i in range(4)]  # folds of different spread and mean
    pooled = _Blocks.pooled([_Blocks.of(f, kept) for f in folds])
    union = _Blocks.of(Moments.union(folds), kept)
    for name in ("mean_kept", "mean_x", "kk", "xk", "xx"):
        assert torch.allclose(getattr(pooled, name), getattr(union, name), atol=1e-10), name
    assert pooled.samples == union.samples == 90

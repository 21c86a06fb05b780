"""Least-squares compensation: tap coverage, the one-shot mapping, exact removal of dependent units
and the consumer metric, against brute force."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from snp_engine import api
from snp_engine.compensation import (
    compensated_weight,
    constant_response,
    consumer_metric,
    one_shot_reconstruction,
    reconstruction,
    tap_coverage,
)
from tests.engine.helpers import correlated_samples, outputs

# ----------------------------------------------------------------------------------- coverage

COVERAGE_CASES = [
    # kernel, input size, stride, padding, dilation
    ((3, 3), (8, 8), (1, 1), (1, 1), (1, 1)),
    ((3, 3), (8, 8), (1, 1), (0, 0), (1, 1)),
    ((3, 3), (7, 5), (2, 2), (1, 1), (1, 1)),
    ((5, 3), (9, 6), (2, 1), (2, 1), (1, 1)),
    ((3, 3), (1, 1), (1, 1), (1, 1), (1, 1)),  # a 1x1 map: only the centre tap reads real input
    ((3, 3), (10, 10), (1, 1), (2, 2), (2, 2)),
    ((1, 1), (4, 4), (2, 2), (0, 0), (1, 1)),
    ((7, 7), (4, 4), (2, 2), (3, 3), (1, 1)),
]


def _coverage_by_convolution(kernel, size, stride, padding, dilation) -> np.ndarray:
    ones = torch.ones(1, 1, *size, dtype=torch.float64)
    result = np.zeros(kernel)
    for u in range(kernel[0]):
        for v in range(kernel[1]):
            one_hot = torch.zeros(1, 1, *kernel, dtype=torch.float64)
            one_hot[0, 0, u, v] = 1
            out = F.conv2d(ones, one_hot, stride=stride, padding=padding, dilation=dilation)
            result[u, v] = float(out.mean())
    return result


@pytest.mark.parametrize(("kernel", "size", "stride", "padding", "dilation"), COVERAGE_CASES)
def test_tap_coverage_matches_convolving_ones(kernel, size, stride, padding, dilation):
    coverage = tap_coverage(kernel, size, stride, padding, dilation)
    assert coverage.shape == kernel
    expected = _coverage_by_convolution(kernel, size, stride, padding, dilation)
    np.testing.assert_allclose(coverage.numpy(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("kernel", "dilation"), [((3, 3), (1, 1)), ((4, 2), (1, 1)), ((3, 4), (2, 1)), ((5, 5), (2, 2))]
)
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_tap_coverage_with_string_padding(kernel, dilation, padding):
    size = (11, 9)
    coverage = tap_coverage(kernel, size, (1, 1), padding, dilation)
    expected = _coverage_by_convolution(kernel, size, 1, padding, dilation)
    np.testing.assert_allclose(coverage.numpy(), expected, rtol=0, atol=1e-12)


def test_consumer_with_string_padding_is_analysed_and_pruned():
    torch.manual_seed(12)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 4, 3, padding="same"),
        nn.ReLU(),
        nn.Conv2d(4, 2, 3, padding="valid"),
    ).eval()
    data = TensorDataset(torch.randn(32, 3, 8, 8), torch.zeros(32, dtype=torch.long))
    analysis = api.analyze(model, data)
    assert analysis.names == ["0", "2"]
    np.testing.assert_allclose(
        analysis.group("0").coverage.numpy(), _coverage_by_convolution((3, 3), (8, 8), 1, "same", 1), atol=1e-12
    )
    assert torch.equal(analysis.group("2").coverage, torch.ones(3, 3, dtype=torch.float64))
    pruned = api.prune(model, analysis, analysis.plan(keep={"0": 3, "2": 2}), data=data).model
    assert pruned[0].out_channels == 3 and pruned[4].in_channels == 2
    assert outputs(pruned, data.tensors[0][:2]).shape == (2, 2, 6, 6)


def test_tap_coverage_of_a_1x1_map_is_the_centre_tap():
    coverage = tap_coverage((3, 3), (1, 1), padding=(1, 1))
    expected = torch.zeros(3, 3, dtype=torch.float64)
    expected[1, 1] = 1
    assert torch.equal(coverage, expected)


@pytest.mark.parametrize(("kernel", "size", "stride", "padding", "dilation"), COVERAGE_CASES[:5])
def test_constant_response_is_the_mean_response_to_a_constant_map(kernel, size, stride, padding, dilation):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 3, *kernel, generator=gen, dtype=torch.float64)
    constant = torch.randn(3, generator=gen, dtype=torch.float64)
    coverage = tap_coverage(kernel, size, stride, padding, dilation)
    response = constant_response(weight.reshape(4, 3, -1), constant, coverage)
    image = constant[None, :, None, None].expand(1, 3, *size)
    out = F.conv2d(image, weight, stride=stride, padding=padding, dilation=dilation)
    torch.testing.assert_close(response, out.mean((0, 2, 3)), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------- mappings


def test_one_shot_rows_are_identity_on_kept_and_regression_on_pruned():
    x = correlated_samples(300, 7, seed=1)
    cov = torch.from_numpy(np.cov(x, rowvar=False, bias=True))
    mean = torch.from_numpy(x.mean(0))
    kept = torch.tensor([0, 2, 3, 6])
    pruned = [1, 4, 5]
    mapping, offset = one_shot_reconstruction(cov, mean, kept, ridge=1e-12)
    assert mapping.shape == (7, 4) and offset.shape == (7,)
    torch.testing.assert_close(mapping[kept], torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(offset[kept], torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-10)
    c = cov.numpy()
    regression = c[np.ix_(pruned, kept.numpy())] @ np.linalg.inv(c[np.ix_(kept.numpy(), kept.numpy())])
    np.testing.assert_allclose(mapping[pruned].numpy(), regression, rtol=1e-8, atol=1e-10)
    # ... which is the least-squares fit of the pruned units on the kept ones (with intercept)
    design = np.hstack([x[:, kept.numpy()], np.ones((300, 1))])
    solution = np.linalg.lstsq(design, x[:, pruned], rcond=None)[0]
    np.testing.assert_allclose(mapping[pruned].numpy(), solution[:-1].T, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(offset[pruned].numpy(), solution[-1], rtol=1e-7, atol=1e-9)


def test_reconstruction_shrinks_towards_the_prior():
    cov = torch.eye(3, dtype=torch.float64)
    cross = torch.zeros(3, 3, dtype=torch.float64)
    prior = torch.eye(3, dtype=torch.float64)
    zeros = torch.zeros(3, dtype=torch.float64)
    mapping, _ = reconstruction(cross, cov, zeros, zeros, ridge=1.0, prior=prior)
    torch.testing.assert_close(mapping, 0.5 * torch.eye(3, dtype=torch.float64))
    plain, _ = reconstruction(cross, cov, zeros, zeros, ridge=1.0)
    assert torch.equal(plain, torch.zeros(3, 3, dtype=torch.float64))


def test_compensated_weight_applies_the_mapping_per_tap():
    gen = torch.Generator().manual_seed(2)
    taps = torch.randn(4, 5, 9, generator=gen)
    mapping = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    result = compensated_weight(taps, mapping)
    for t in range(9):
        torch.testing.assert_close(result[:, :, t], taps[:, :, t].double() @ mapping)


# ------------------------------------------------------------------------- exact dependence


def _dependent_conv_net(consumer_kind: str) -> nn.Module:
    """conv → conv (no nonlinearity) where unit 2 = 2·unit 0 − unit 1 + 0.5 exactly."""
    torch.manual_seed(3)
    producer = nn.Conv2d(5, 6, 3, padding=1)
    with torch.no_grad():
        producer.weight[2] = 2 * producer.weight[0] - producer.weight[1]
        producer.bias[2] = 2 * producer.bias[0] - producer.bias[1] + 0.5
    layers = [producer, nn.Conv2d(6, 4, 3, padding=0, bias=consumer_kind == "bias")]
    if consumer_kind == "relu-batchnorm":  # the BatchNorm does not see the consumer's output itself
        layers.append(nn.ReLU(inplace=True))
    if consumer_kind.endswith("batchnorm"):
        norm = nn.BatchNorm2d(4)
        with torch.no_grad():
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.5, 2)
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-1, 1)
        layers.append(norm)
    return nn.Sequential(*layers).eval()


def _dependent_mlp() -> nn.Module:
    torch.manual_seed(4)
    producer = nn.Linear(5, 6)
    with torch.no_grad():
        producer.weight[2] = 2 * producer.weight[0] - producer.weight[1]
        producer.bias[2] = 2 * producer.bias[0] - producer.bias[1] + 0.5
    return nn.Sequential(producer, nn.Linear(6, 3)).eval()


def _prune_unit_two(model: nn.Module, images: torch.Tensor, *, sequential: bool, physical: bool):
    data = TensorDataset(images, torch.zeros(len(images), dtype=torch.long))
    analysis = api.analyze(model, data, ordering="identity")
    assert analysis.names == ["0"]
    base = analysis.plan_for({"0": 6})
    plan = dataclasses.replace(base, keep={"0": 5}, kept={"0": (0, 1, 3, 4, 5)})
    pruned = api.prune(model, analysis, plan, data=data, sequential=sequential, physical=physical).model
    return analysis, pruned


def _relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm())


@pytest.mark.parametrize("consumer_kind", ["bias", "batchnorm", "no-bias", "relu-batchnorm"])
@pytest.mark.parametrize("sequential", [False, True])
def test_dependent_unit_is_removed_exactly_from_a_conv_consumer(consumer_kind, sequential):
    model = _dependent_conv_net(consumer_kind)
    images = torch.randn(48, 5, 8, 8, generator=torch.Generator().manual_seed(5))
    analysis, pruned = _prune_unit_two(model, images, sequential=sequential, physical=True)
    assert pruned[0].out_channels == 5 and pruned[1].in_channels == 5
    assert analysis.group("0").norm == ("2" if consumer_kind == "batchnorm" else None)
    assert _relative_change(outputs(model, images), outputs(pruned, images)) < 1e-4
    held_out = torch.randn(16, 5, 8, 8, generator=torch.Generator().manual_seed(6))
    assert _relative_change(outputs(model, held_out), outputs(pruned, held_out)) < 1e-4
    # the one-shot mapping recovers the construction: x2 = 2 x0 − x1 + 0.5
    g = analysis.group("0")
    cov, mean = g.moments.covariance(), g.moments.mean()
    mapping, offset = one_shot_reconstruction(cov, mean, torch.tensor([0, 1, 3, 4, 5]), 1e-9)
    torch.testing.assert_close(mapping[2], torch.tensor([2.0, -1.0, 0, 0, 0], dtype=torch.float64), rtol=0, atol=1e-4)
    assert float(offset[2]) == pytest.approx(0.5, abs=1e-4)


def test_uncompensated_removal_does_change_the_output():
    """The check above is meaningful: dropping the unit without compensation changes the output."""
    model = _dependent_conv_net("bias")
    images = torch.randn(48, 5, 8, 8, generator=torch.Generator().manual_seed(5))
    data = TensorDataset(images, torch.zeros(48, dtype=torch.long))
    analysis = api.analyze(model, data, ordering="identity")
    plan = dataclasses.replace(analysis.plan_for({"0": 6}), keep={"0": 5}, kept={"0": (0, 1, 3, 4, 5)})
    pruned = api.prune(model, analysis, plan, compensate=False).model
    assert _relative_change(outputs(model, images), outputs(pruned, images)) > 0.05


@pytest.mark.parametrize("sequential", [False, True])
@pytest.mark.parametrize("physical", [False, True])
def test_dependent_unit_is_removed_exactly_from_a_linear_consumer(sequential, physical):
    model = _dependent_mlp()
    inputs = torch.randn(64, 5, generator=torch.Generator().manual_seed(7))
    _, pruned = _prune_unit_two(model, inputs, sequential=sequential, physical=physical)
    assert _relative_change(outputs(model, inputs), outputs(pruned, inputs)) < 1e-4
    if physical:
        assert pruned[0].out_features == 5 and pruned[1].in_features == 5
    else:
        assert torch.all(pruned[1].weight[:, 2] == 0)


# ----------------------------------------------------------------------------------- metric


def test_linear_consumer_metric_gives_expected_output_error():
    rng = np.random.default_rng(8)
    weight = rng.standard_normal((4, 6))
    errors = correlated_samples(500, 6, seed=9)
    metric = consumer_metric(torch.from_numpy(weight)[:, :, None]).numpy()
    np.testing.assert_allclose(metric, weight.T @ weight, rtol=1e-12)
    centred = errors - errors.mean(0)
    expected = np.mean(np.sum((centred @ weight.T) ** 2, axis=1))  # E‖W e‖²
    assert np.trace(metric @ np.cov(errors, rowvar=False, bias=True)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize(("size", "padding"), [((5, 4), (1, 1)), ((3, 3), (0, 0)), ((1, 1), (1, 1))])
def test_conv_consumer_metric_for_spatially_uncorrelated_errors(size, padding):
    """E‖output error‖² averaged over output positions, for independent per-position errors of
    covariance Σ, is Σ_q Σ_{taps t inside at q} tr(W_t Σ W_tᵀ) / #q  == tr(M Σ)."""
    rng = np.random.default_rng(10)
    weight = rng.standard_normal((3, 4, 3, 3))
    sigma = np.cov(correlated_samples(50, 4, seed=11), rowvar=False, bias=True)
    coverage = tap_coverage((3, 3), size, padding=padding)
    metric = consumer_metric(torch.from_numpy(weight).reshape(3, 4, 9), coverage).numpy()
    out_h, out_w = size[0] + 2 * padding[0] - 2, size[1] + 2 * padding[1] - 2
    total = 0.0
    for qy in range(out_h):
        for qx in range(out_w):
            for u in range(3):
                for v in range(3):
                    y, x = qy + u - padding[0], qx + v - padding[1]
                    if 0 <= y < size[0] and 0 <= x < size[1]:
                        w_t = weight[:, :, u, v]
                        total += np.trace(w_t @ sigma @ w_t.T)
    assert np.trace(metric @ sigma) == pytest.approx(total / (out_h * out_w), rel=1e-10)


def test_compensation_ridge_grows_only_when_kept_units_crowd_the_samples():
    from snp_engine.compensation import compensation_ridge

    cov = torch.diag(torch.tensor([2.0, 4.0, 6.0], dtype=torch.float64))  # mean variance 4
    assert compensation_ridge(cov, kept=5, samples=64) == pytest.approx(4e-6)
    assert compensation_ridge(cov, kept=32, samples=64) == pytest.approx(4e-6)
    assert compensation_ridge(cov, kept=48, samples=64) == pytest.approx(4 * 0.25)
    assert compensation_ridge(cov, kept=64, samples=64) == pytest.approx(4.0)
    assert compensation_ridge(torch.zeros(3, 3, dtype=torch.float64), kept=2, samples=10) > 0


def test_an_analysis_passes_a_narrow_consumers_weight_rows_to_the_wide_layer_ordering():
    """A hidden layer read by a consumer with fewer outputs than inputs (an MLP's second layer)
    gets its metric's rows F (M = Fᵀ F); the ordering from F follows the one from M. A conv
    consumer with more (output, tap) rows than inputs keeps the whole metric only."""
    from snp_engine.subspace import explained_curve, forward_greedy, order_units

    torch.manual_seed(0)
    hidden = 600  # wider than the exact greedy's limit: the blocked path, which uses F
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10)).eval()
    data = TensorDataset(torch.randn(1500, 1, 8, 8), torch.zeros(1500, dtype=torch.long))
    group = api.analyze(model, data).group("1")
    factor = group.metric_factor
    assert factor is not None and factor.shape == (10, hidden)
    torch.testing.assert_close(factor.T @ factor, group.metric)
    inputs = group.inputs()
    assert inputs.factor is factor
    by_factor = order_units("output", inputs)
    by_metric = forward_greedy(inputs.covariance, inputs.metric)
    for metric in (None, group.metric):
        gap = explained_curve(inputs.covariance, by_factor, metric) - explained_curve(
            inputs.covariance, by_metric, metric
        )
        assert float(gap.abs().max()) < 0.005

    conv = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1)).eval()
    images = TensorDataset(torch.randn(8, 3, 8, 8), torch.zeros(8, dtype=torch.long))
    assert api.analyze(conv, images).group("0").metric_factor is None  # 4·9 rows ≥ 6 inputs

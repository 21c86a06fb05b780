"""Streaming moments and the (samples, units) layouts of consumer inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from snp_engine.errors import AnalysisError, SnpError
from snp_engine.statistics import Moments, to_samples
from tests.engine.helpers import correlated_samples


def _moments_of(x: np.ndarray, batch: int) -> Moments:
    m = Moments.zeros(x.shape[1])
    for start in range(0, x.shape[0], batch):
        m.update(torch.from_numpy(x[start : start + batch]))
    return m


@pytest.mark.parametrize("batch", [1, 7, 64, 1000])
def test_batched_moments_equal_one_pass_reference(batch):
    x = correlated_samples(301, 9, seed=1)
    m = _moments_of(x, batch)
    assert m.samples == 301 and m.units == 9
    assert m.count.dtype == m.total.dtype == m.outer.dtype == torch.float64
    np.testing.assert_allclose(m.mean().numpy(), x.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(m.covariance().numpy(), np.cov(x, rowvar=False, bias=True), rtol=1e-10, atol=1e-10)


def test_covariance_is_exactly_symmetric():
    m = _moments_of(correlated_samples(100, 6, seed=2).astype(np.float32), 13)
    cov = m.covariance()
    assert torch.equal(cov, cov.T)


def test_merge_is_exact_and_leaves_operands_alone():
    x = correlated_samples(200, 5, seed=3)
    a, b = _moments_of(x[:73], 10), _moments_of(x[73:], 10)
    a_count = a.samples
    merged = a.merge(b)
    whole = _moments_of(x, 10)
    assert merged.samples == 200 and a.samples == a_count
    torch.testing.assert_close(merged.total, whole.total, rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(merged.outer, whole.outer, rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(merged.covariance().numpy(), np.cov(x, rowvar=False, bias=True), atol=1e-10)


def test_float32_input_is_accumulated_in_float64():
    x = correlated_samples(50, 4, seed=4).astype(np.float32)
    m = _moments_of(x, 16)
    np.testing.assert_allclose(
        m.covariance().numpy(), np.cov(x.astype(np.float64), rowvar=False, bias=True), rtol=1e-10, atol=1e-10
    )


def test_state_round_trip():
    m = _moments_of(correlated_samples(40, 3, seed=5), 8)
    back = Moments.from_state(m.state())
    torch.testing.assert_close(back.covariance(), m.covariance(), rtol=0, atol=0)
    assert back.samples == 40


# ------------------------------------------------------------------------------------- layouts


def test_conv_layout_makes_every_position_a_sample():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, generator=gen)
    samples = to_samples(x, "conv", 3)
    assert samples.shape == (2 * 4 * 5, 3)
    expected = {tuple(x[b, :, h, w].tolist()) for b in range(2) for h in range(4) for w in range(5)}
    assert {tuple(row) for row in samples.tolist()} == expected
    # and the moments equal the explicit per-position reference
    ref = x.permute(0, 2, 3, 1).reshape(-1, 3).double().numpy()
    m = Moments.zeros(3)
    m.update(samples)
    np.testing.assert_allclose(m.covariance().numpy(), np.cov(ref, rowvar=False, bias=True), atol=1e-12)


def test_flatten_layout_gives_per_channel_samples():
    gen = torch.Generator().manual_seed(1)
    feature_map = torch.randn(3, 4, 2, 3, generator=gen)  # B, C, H, W
    flat = torch.flatten(feature_map, 1)  # what a flatten→linear consumer reads
    samples = to_samples(flat, "flatten", 4)
    assert samples.shape == (3 * 6, 4)
    explicit = torch.stack([feature_map[b, :, h, w] for b in range(3) for h in range(2) for w in range(3)])
    torch.testing.assert_close(samples, explicit, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["linear", "tokens"])
def test_linear_and_token_layouts(layout):
    gen = torch.Generator().manual_seed(2)
    x2 = torch.randn(5, 7, generator=gen)
    torch.testing.assert_close(to_samples(x2, layout, 7), x2, rtol=0, atol=0)
    tokens = torch.randn(2, 3, 7, generator=gen)  # B, T, C: each token is a sample
    samples = to_samples(tokens, layout, 7)
    assert samples.shape == (6, 7)
    torch.testing.assert_close(samples[4], tokens[1, 1], rtol=0, atol=0)


def test_unknown_layout_is_an_error():
    with pytest.raises(ValueError, match="layout"):
        to_samples(torch.zeros(2, 3), "sideways", 3)


# ------------------------------------------------------------------------------- robustness


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_activations_raise_naming_the_layer(bad):
    m = Moments.zeros(3)
    x = torch.ones(4, 3)
    x[2, 1] = bad
    with pytest.raises(AnalysisError, match=r"features\.7") as info:
        m.update(x, "features.7")
    assert isinstance(info.value, SnpError)
    assert m.samples == 0, "a rejected batch must not be counted"


def test_huge_activations_give_finite_accurate_covariance():
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((500, 6)) @ rng.standard_normal((6, 6)) * 1e6).astype(np.float32)
    m = Moments.zeros(6)
    for chunk in np.array_split(x, 5):
        m.update(torch.from_numpy(chunk))
    cov = m.covariance()
    assert cov.dtype == torch.float64 and torch.isfinite(cov).all()
    reference = np.cov(x.astype(np.float64), rowvar=False, bias=True)
    np.testing.assert_allclose(cov.numpy(), reference, rtol=1e-9, atol=1e-9 * np.abs(reference).max())
    assert torch.linalg.eigvalsh(cov).min() > -1e-9 * float(cov.diagonal().max())

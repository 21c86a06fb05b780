"""Streaming moments and the (samples, units) layouts of consumer inputs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from snp_engine.errors import AnalysisError, SnpError
from snp_engine.statistics import Moments, to_samples
from tests.engine.helpers import correlated_samples


def _relative(a, b) -> float:
    """‖a − b‖ / ‖b‖ (Frobenius)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _large_mean_samples(samples: int, units: int, seed: int, mean: float = 1e3) -> np.ndarray:
    """float32 samples with unit-scale correlated spread around a mean of ``mean``."""
    rng = np.random.default_rng(seed)
    spread = rng.standard_normal((samples, units)) @ rng.standard_normal((units, units)) / np.sqrt(units)
    return (mean + rng.uniform(-1, 1, units) + spread).astype(np.float32)


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
    # each batch's products are float32 (about the shift), the running sums float64
    x = correlated_samples(50, 4, seed=4).astype(np.float32)
    m = _moments_of(x, 16)
    assert m.shifted_total.dtype == m.shifted_outer.dtype == m.shift.dtype == torch.float64
    reference = np.cov(x.astype(np.float64), rowvar=False, bias=True)
    assert _relative(m.covariance().numpy(), reference) < 1e-6


def test_state_round_trip():
    m = _moments_of(correlated_samples(40, 3, seed=5), 8)
    back = Moments.from_state(m.state())
    torch.testing.assert_close(back.covariance(), m.covariance(), rtol=0, atol=0)
    assert back.samples == 40


# ------------------------------------------------------------------------------------ the shift


def _naive_float32_covariance(x: np.ndarray, batch: int) -> np.ndarray:
    """Un-shifted float32 products per batch, summed in float64: Σ x xᵀ / N − μ μᵀ."""
    outer, total = np.zeros((x.shape[1],) * 2), np.zeros(x.shape[1])
    for start in range(0, x.shape[0], batch):
        chunk = torch.from_numpy(x[start : start + batch])
        outer += (chunk.T @ chunk).double().numpy()
        total += chunk.sum(0).double().numpy()
    mu = total / x.shape[0]
    return outer / x.shape[0] - np.outer(mu, mu)


def test_large_mean_float32_covariance_matches_float64_reference():
    x = _large_mean_samples(4096, 24, seed=7)  # mean ~1e3, spread ~1
    m = _moments_of(x, 256)
    reference = np.cov(x.astype(np.float64), rowvar=False, bias=True)
    error = _relative(m.covariance().numpy(), reference)
    naive = _relative(_naive_float32_covariance(x, 256), reference)
    assert error <= 1e-6
    assert naive > 1e-3 and naive > 1000 * error, (naive, error)  # what the shift is for
    np.testing.assert_allclose(m.mean().numpy(), x.astype(np.float64).mean(0), rtol=1e-9, atol=0)
    assert torch.equal(m.shift, m.shift.float().double()), "the shift is a float32 value"
    first = torch.from_numpy(x[:256]).double().mean(0)
    assert float((m.shift - first).abs().max()) < 1e-3, "the shift is the first batch's mean"


def test_point_mass_at_a_bound_gets_a_short_shift():
    # ReLU features: half the rows are exactly 0. Shifted by the plain mean, those rows would all be
    # one long number, whose repeated float32 products and sums round the same way each time.
    rng = np.random.default_rng(22)
    mixing = rng.standard_normal((32, 32)) / np.sqrt(32)
    x = np.maximum(rng.standard_normal((8192, 32)) @ mixing, 0).astype(np.float32)
    x[:, 0] = np.float32(6.0) - x[:, 0]  # and a mass at the maximum (a clamp's limit)
    m = _moments_of(x, 1024)
    first = x[:1024].astype(np.float64)
    bound = np.where(np.arange(32) == 0, first.max(0), 0.0)
    offset = m.shift.numpy() - bound
    mantissa, _ = np.frexp(offset)
    assert np.all(mantissa * 64 == np.round(mantissa * 64)), "the distance to the mass has at most 6 bits"
    assert np.all(np.abs(offset - (first.mean(0) - bound)) <= np.abs(first.mean(0) - bound) / 64)
    reference = np.cov(x.astype(np.float64), rowvar=False, bias=True)
    assert _relative(m.covariance().numpy(), reference) < 5e-7


def test_float64_input_stays_exact():
    x = _large_mean_samples(1000, 7, seed=8).astype(np.float64) + 1e-3 * correlated_samples(1000, 7, seed=8)
    m = _moments_of(x, 64)
    assert _relative(m.covariance().numpy(), np.cov(x, rowvar=False, bias=True)) < 1e-12
    np.testing.assert_allclose(m.mean().numpy(), x.mean(0), rtol=1e-14, atol=0)
    np.testing.assert_allclose(m.total.numpy(), x.sum(0), rtol=1e-13, atol=0)
    np.testing.assert_allclose(m.outer.numpy(), x.T @ x, rtol=1e-12, atol=0)


def test_precision_of_the_products(monkeypatch):
    from snp_engine import statistics

    chosen = []
    real = statistics._compute_dtype
    monkeypatch.setattr(statistics, "_compute_dtype", lambda *args: chosen.append(real(*args)) or chosen[-1])
    m = Moments.zeros(8)
    for batch in (torch.randn(16, 8), torch.randn(15, 8), torch.randn(16, 8).double(), torch.randn(16, 8).bfloat16()):
        m.update(batch)
    assert chosen == [torch.float32, torch.float64, torch.float64, torch.float32]
    assert m.shifted_outer.dtype == torch.float64 and m.samples == 63


def test_few_samples_keep_an_exactly_singular_covariance():
    # batches with fewer than 2n rows are multiplied in float64: with fewer samples than units the
    # null space stays at float64 round-off instead of float32 noise of either sign
    x = _large_mean_samples(48, 96, seed=23, mean=5.0)
    m = _moments_of(x, 16)
    cov = m.covariance()
    reference = np.cov(x.astype(np.float64), rowvar=False, bias=True)
    assert _relative(cov.numpy(), reference) < 1e-12
    eigenvalues = torch.linalg.eigvalsh(cov)
    assert float(eigenvalues[:48].abs().max()) < 1e-12 * float(eigenvalues[-1])  # rank 47 of 96


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_is_multiplied_in_float32(dtype):
    x = torch.from_numpy(_large_mean_samples(512, 5, seed=9, mean=30.0)).to(dtype)
    m = Moments.zeros(5)
    for chunk in x.split(100):
        m.update(chunk)
    reference = np.cov(x.double().numpy(), rowvar=False, bias=True)
    assert _relative(m.covariance().numpy(), reference) < 1e-6


def _pooled(parts: list[Moments]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the union, from each part's own mean and covariance (float64)."""
    counts = np.array([p.samples for p in parts], dtype=np.float64)
    means = [p.mean().numpy() for p in parts]
    mu = sum(c * m for c, m in zip(counts, means, strict=True)) / counts.sum()
    cov = sum(
        c * (p.covariance().numpy() + np.outer(m - mu, m - mu)) for c, p, m in zip(counts, parts, means, strict=True)
    )
    return mu, cov / counts.sum()


def test_merge_of_different_shifts_is_exact():
    x = _large_mean_samples(900, 6, seed=10)
    a, b = _moments_of(x[:300], 50), _moments_of(x[300:] + np.float32(25.0), 50)
    assert float((a.shift - b.shift).abs().min()) > 20, "the parts have different shifts"
    mu, cov = _pooled([a, b])
    for merged, shift in ((a.merge(b), a.shift), (b.merge(a), b.shift)):
        assert merged.samples == 900 and torch.equal(merged.shift, shift)
        assert _relative(merged.covariance().numpy(), cov) < 1e-12
        np.testing.assert_allclose(merged.mean().numpy(), mu, rtol=1e-14, atol=0)
    assert a.samples == 300 and b.samples == 600, "the operands are left alone"
    union = np.concatenate([x[:300], x[300:] + np.float32(25.0)]).astype(np.float64)
    assert _relative(a.merge(b).covariance().numpy(), np.cov(union, rowvar=False, bias=True)) < 1e-6


def test_reshifted_keeps_the_statistics():
    m = _moments_of(_large_mean_samples(300, 4, seed=11), 64)
    target = m.shift + torch.tensor([2.5, -4.0, 0.0, 30.0], dtype=torch.float64)
    moved = m.reshifted(target)
    assert torch.equal(moved.shift, target)
    assert _relative(moved.covariance().numpy(), m.covariance().numpy()) < 1e-12
    np.testing.assert_allclose(moved.mean().numpy(), m.mean().numpy(), rtol=1e-14, atol=0)


def test_merge_with_empty_takes_the_other_shift():
    m = _moments_of(_large_mean_samples(200, 3, seed=12), 64)
    for merged in (Moments.zeros(3).merge(m), m.merge(Moments.zeros(3))):
        assert torch.equal(merged.shift, m.shift) and merged.samples == 200
        assert torch.equal(merged.covariance(), m.covariance())
    both = Moments.zeros(3).merge(Moments.zeros(3))
    assert both.samples == 0 and torch.equal(both.covariance(), torch.zeros(3, 3, dtype=torch.float64))


def test_union_of_folds_with_different_shifts():
    x = _large_mean_samples(1200, 5, seed=13)
    folds = [_moments_of(x[i::4] * np.float32(1 + i), 37) for i in range(4)]
    _, cov = _pooled(folds)
    union = Moments.union(folds)
    assert union.samples == 1200 and torch.equal(union.shift, folds[0].shift)
    assert _relative(union.covariance().numpy(), cov) < 1e-12


def test_shift_is_fixed_after_the_first_update():
    x = _large_mean_samples(300, 4, seed=14)
    m = Moments.zeros(4)
    m.update(torch.zeros(0, 4))  # an empty batch sets nothing
    assert m.samples == 0 and not bool(m.shift.any())
    m.update(torch.from_numpy(x[:100]))
    shift = m.shift.clone()
    m.update(torch.from_numpy(x[100:] - np.float32(500.0)))
    assert torch.equal(m.shift, shift)


def test_shift_that_float32_cannot_hold_is_still_exact():
    # e.g. after loading float64 statistics: float32 batches subtract the nearest float32 value of the
    # shift, and the difference is accounted for in float64
    x = _large_mean_samples(800, 4, seed=15)
    start = _moments_of(x[:100].astype(np.float64), 100).reshifted(torch.full((4,), 1000.00002, dtype=torch.float64))
    assert not torch.equal(start.shift.float().double(), start.shift)
    for chunk in np.array_split(x[100:], 7):
        start.update(torch.from_numpy(chunk))
    reference = x.astype(np.float64)
    np.testing.assert_allclose(start.mean().numpy(), reference.mean(0), rtol=1e-10, atol=0)
    assert _relative(start.covariance().numpy(), np.cov(reference, rowvar=False, bias=True)) < 1e-6


def test_state_holds_the_shift_and_round_trips_exactly():
    m = _moments_of(_large_mean_samples(300, 4, seed=16), 64)
    state = m.state()
    assert set(state) == {"count", "total", "outer", "shift"}
    assert torch.equal(state["shift"], m.shift) and torch.equal(state["outer"], m.shifted_outer)
    back = Moments.from_state(state)
    assert torch.equal(back.covariance(), m.covariance()) and torch.equal(back.mean(), m.mean())
    assert torch.equal(back.outer, m.outer) and back.samples == 300
    more = _large_mean_samples(50, 4, seed=17)
    back.update(torch.from_numpy(more))
    m.update(torch.from_numpy(more))
    assert torch.equal(back.shift, m.shift) and torch.equal(back.covariance(), m.covariance())


def test_state_without_shift_holds_plain_sums():
    # what statistics files written before the shift hold: count, Σx, Σxxᵀ
    x = correlated_samples(120, 5, seed=18)
    old = {"count": torch.tensor(120.0), "total": torch.from_numpy(x.sum(0)), "outer": torch.from_numpy(x.T @ x)}
    m = Moments.from_state(old)
    assert not bool(m.shift.any()) and m.samples == 120
    np.testing.assert_allclose(m.covariance().numpy(), np.cov(x, rowvar=False, bias=True), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(m.mean().numpy(), x.mean(0), rtol=1e-12, atol=1e-12)
    more = correlated_samples(30, 5, seed=19)
    m.update(torch.from_numpy(more))  # and it keeps accumulating (about the zero shift)
    assert not bool(m.shift.any())
    both = np.concatenate([x, more])
    np.testing.assert_allclose(m.covariance().numpy(), np.cov(both, rowvar=False, bias=True), rtol=1e-10, atol=1e-10)


def test_statistics_file_without_shifts_still_loads(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from snp_engine import api
    from tests.engine.helpers import demo_model, digits

    calibration = digits().calibration
    analysis = api.analyze(demo_model("demo-vgg"), torch.utils.data.Subset(calibration, range(96)))
    path = tmp_path / "stats.safetensors"
    analysis.save(path)
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        state = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (safe_open is not a dict)
    assert any(key.endswith(".shift") for key in state)
    for index, g in enumerate(analysis.groups):  # rewrite as before: plain sums, no shift
        prefix = f"group.{index}."
        del state[prefix + "shift"]
        state[prefix + "total"], state[prefix + "outer"] = g.moments.total, g.moments.outer
    old = tmp_path / "old.safetensors"
    save_file(state, str(old), metadata=meta)
    again = api.Analysis.load(old)
    for a, b in zip(analysis.groups, again.groups, strict=True):
        assert not bool(b.moments.shift.any()) and a.samples == b.samples
        torch.testing.assert_close(b.moments.covariance(), a.moments.covariance(), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(b.moments.mean(), a.moments.mean(), rtol=1e-12, atol=1e-12)
    assert again.plan(flops_reduction=0.5).kept == analysis.plan(flops_reduction=0.5).kept


def _simulated_all_reduce(parts: list[Moments], monkeypatch) -> None:
    """Run ``all_reduce`` of each part in its own thread, as if each were one process."""
    import threading

    import torch.distributed as dist

    slots: list[torch.Tensor | None] = [None] * len(parts)
    barrier = threading.Barrier(len(parts))
    local = threading.local()

    def fake_all_reduce(tensor, op=None, group=None):
        slots[local.rank] = tensor.clone()
        barrier.wait()
        summed = sum(slots[1:], slots[0].clone())
        barrier.wait()
        tensor.copy_(summed)

    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    errors = []

    def run(rank):
        local.rank = rank
        try:
            parts[rank].all_reduce()
        except Exception as exc:  # reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(len(parts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


@pytest.mark.parametrize("sizes", [(400, 500, 300), (600, 0, 600)])
def test_all_reduce_agrees_on_one_shift(sizes, monkeypatch):
    x = _large_mean_samples(sum(sizes), 6, seed=20)
    x[sizes[0] :] += np.float32(40.0)  # the processes see different data, so different first batches
    parts = [_moments_of(x[lo:hi], 64) for lo, hi in itertools.pairwise(np.cumsum((0, *sizes)))]
    expected = Moments.union(parts)
    mu, cov = _pooled([p for p in parts if p.samples])
    _simulated_all_reduce(parts, monkeypatch)
    for part in parts:
        assert part.samples == sum(sizes)
        assert torch.equal(part.shift, parts[0].shift) and torch.equal(part.shifted_outer, parts[0].shifted_outer)
        assert torch.equal(part.shift, part.shift.float().double())
        assert _relative(part.covariance().numpy(), cov) < 1e-12
        np.testing.assert_allclose(part.mean().numpy(), mu, rtol=1e-13, atol=0)
        assert _relative(part.covariance().numpy(), expected.covariance().numpy()) < 1e-12
    reference = np.cov(x.astype(np.float64), rowvar=False, bias=True)
    assert _relative(parts[0].covariance().numpy(), reference) < 1e-6


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
    assert not bool(m.shift.any()), "nor set the shift"
    m.update(torch.full((4, 3), 2.0))
    assert m.samples == 4 and torch.equal(m.shift, torch.full((3,), 2.0, dtype=torch.float64))


def test_non_finite_activations_after_the_first_batch_raise():
    m = Moments.zeros(3)
    m.update(torch.ones(5, 3))
    x = torch.ones(4, 3)
    x[0, 0] = float("nan")
    before = (m.shifted_total.clone(), m.shifted_outer.clone())
    with pytest.raises(AnalysisError, match="non-finite"):
        m.update(x, "layer")
    assert m.samples == 5 and torch.equal(m.shifted_total, before[0]) and torch.equal(m.shifted_outer, before[1])


def test_finite_activations_whose_float32_products_overflow_are_accepted():
    rng = np.random.default_rng(21)
    x = (rng.standard_normal((300, 4)) * 1e20).astype(np.float32)  # products ~1e40: beyond float32
    m = _moments_of(x, 100)
    reference = np.cov(x.astype(np.float64), rowvar=False, bias=True)
    assert torch.isfinite(m.covariance()).all()
    assert _relative(m.covariance().numpy(), reference) < 1e-12


def test_huge_activations_give_finite_accurate_covariance():
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((500, 6)) @ rng.standard_normal((6, 6)) * 1e6).astype(np.float32)
    m = Moments.zeros(6)
    for chunk in np.array_split(x, 5):
        m.update(torch.from_numpy(chunk))
    cov = m.covariance()
    assert cov.dtype == torch.float64 and torch.isfinite(cov).all()
    reference = np.cov(x.astype(np.float64), rowvar=False, bias=True)
    np.testing.assert_allclose(cov.numpy(), reference, rtol=1e-6, atol=1e-6 * np.abs(reference).max())
    assert torch.linalg.eigvalsh(cov).min() > -1e-6 * float(cov.diagonal().max())

"""LDL / Gram–Schmidt, ordering scores and explained-variance curves against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from snp_engine.subspace import (
    ORDERINGS,
    OrderingInputs,
    explained_curve,
    forward_greedy,
    ldl,
    order_pivoted,
    order_units,
    regularised,
    residual_variances,
    ridge_for,
    subspace_curve,
    zca_scores,
)
from tests.engine.helpers import (
    conditional_covariance,
    correlated_samples,
    explained_reference,
    gram_schmidt,
    is_permutation,
    random_covariance,
    random_metric,
)


def _perm(n: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).permutation(n))


# ------------------------------------------------------------------------------------ LDL


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ldl_is_unnormalised_gram_schmidt(seed):
    x = correlated_samples(200, 7, seed=seed)  # (samples, units)
    cov = torch.from_numpy(np.cov(x, rowvar=False, bias=True))
    order = _perm(7, seed)
    lower, d = ldl(cov, order, ridge=0.0)
    rows = x.T[order.numpy()]  # units as rows, in order
    y = gram_schmidt(rows)
    # d_i = squared residual norm (sample inner product) of unit i given the units before it
    np.testing.assert_allclose(d.numpy(), (y**2).mean(1), rtol=1e-9)
    # L is unit lower-triangular and L D Lᵀ reproduces the permuted covariance
    assert torch.allclose(torch.diagonal(lower), torch.ones(7, dtype=lower.dtype))
    assert torch.equal(torch.triu(lower, 1), torch.zeros_like(lower))
    permuted = cov[order][:, order]
    torch.testing.assert_close(lower @ torch.diag(d) @ lower.T, permuted, rtol=1e-10, atol=1e-10)
    # y = L⁻¹ x: the explicit Gram–Schmidt vectors, with a diagonal Gram matrix D
    centred = rows - rows.mean(1, keepdims=True)
    transformed = np.linalg.solve(lower.numpy(), centred)
    np.testing.assert_allclose(transformed, y, atol=1e-9)
    gram = transformed @ transformed.T / x.shape[0]
    np.testing.assert_allclose(gram, np.diag(d.numpy()), atol=1e-9)


def test_order_changes_the_factorisation():
    cov = random_covariance(5, seed=3)
    d_identity = residual_variances(cov, torch.arange(5), ridge=0.0)
    reverse = torch.arange(4, -1, -1)
    d_reverse = residual_variances(cov, reverse, ridge=0.0)
    assert float(d_identity[0]) == pytest.approx(float(cov[0, 0]))
    assert float(d_reverse[0]) == pytest.approx(float(cov[4, 4]))
    # product of the d_i is det C whatever the order
    assert float(d_identity.prod()) == pytest.approx(float(torch.linalg.det(cov)), rel=1e-9)
    assert float(d_reverse.prod()) == pytest.approx(float(torch.linalg.det(cov)), rel=1e-9)


@pytest.mark.parametrize("seed", [0, 4])
def test_last_residual_variance_is_inverse_precision(seed):
    cov = random_covariance(8, seed=seed)
    order = _perm(8, seed)
    d = residual_variances(cov, order, ridge=0.0)
    last = int(order[-1])
    assert float(d[-1]) == pytest.approx(1.0 / float(torch.linalg.inv(cov)[last, last]), rel=1e-9)
    assert (d <= torch.diagonal(cov[order][:, order]) * (1 + 1e-12)).all()


def test_default_ridge_perturbs_little():
    cov = random_covariance(6, seed=5)
    d_ridge = residual_variances(cov, torch.arange(6))
    d_exact = residual_variances(cov, torch.arange(6), ridge=0.0)
    mean_variance = float(torch.trace(cov)) / 6
    assert ridge_for(cov) == pytest.approx(1e-6 * mean_variance)
    # the perturbation is of the ridge's order, relative to the layer's variance scale
    assert float((d_ridge - d_exact).abs().max()) < 1e-4 * mean_variance
    assert (d_ridge >= d_exact).all()


# ------------------------------------------------------------------------------------ scores


def test_zca_scores_match_numpy_eigh():
    cov = random_covariance(7, seed=6)
    values, vectors = np.linalg.eigh(cov.numpy())
    inv_sqrt = vectors @ np.diag(values**-0.5) @ vectors.T
    reference = 1 / np.diag(inv_sqrt) ** 2
    np.testing.assert_allclose(zca_scores(cov, ridge=0.0).numpy(), reference, rtol=1e-9)
    # scores lie between the leave-one-out residual variance and the raw variance
    loo = 1 / np.diag(np.linalg.inv(cov.numpy()))
    assert (reference >= loo * (1 - 1e-9)).all() and (reference <= np.diag(cov.numpy()) * (1 + 1e-9)).all()


def test_zca_ordering_sorts_scores_descending():
    cov = random_covariance(9, seed=7)
    order = order_units("zca", OrderingInputs(cov))
    scores = zca_scores(cov)[order]
    assert (scores[:-1] >= scores[1:]).all()


# ------------------------------------------------------------------------------------ curves


@pytest.mark.parametrize("seed", [0, 8])
def test_explained_curve_matches_schur_complement(seed):
    cov = random_covariance(7, seed=seed)
    order = _perm(7, seed)
    curve = explained_curve(cov, order, ridge=0.0).numpy()
    assert curve.shape == (8,)
    assert curve[0] == 0 and curve[-1] == pytest.approx(1.0)
    assert (np.diff(curve) >= -1e-12).all()
    np.testing.assert_allclose(curve, explained_reference(cov.numpy(), order), atol=1e-10)


@pytest.mark.parametrize("seed", [1, 9])
def test_explained_curve_with_metric_matches_weighted_schur_complement(seed):
    cov, metric = random_covariance(7, seed=seed), random_metric(7, seed=seed)
    order = _perm(7, seed + 1)
    curve = explained_curve(cov, order, metric, ridge=0.0).numpy()
    np.testing.assert_allclose(curve, explained_reference(cov.numpy(), order, metric.numpy()), atol=1e-10)
    assert (np.diff(curve) >= -1e-12).all() and curve[0] == 0 and curve[-1] == pytest.approx(1.0)
    # the metric matters: it is not the plain-variance curve
    assert not np.allclose(curve, explained_curve(cov, order, ridge=0.0).numpy(), atol=1e-3)


def test_subspace_curve_is_cumulative_residual_variance():
    cov = random_covariance(6, seed=10)
    order = _perm(6, 10)
    d = residual_variances(cov, order).numpy()
    expected = np.concatenate([[0.0], np.cumsum(d) / d.sum()])
    np.testing.assert_allclose(subspace_curve(cov, order).numpy(), expected, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------ orderings


@pytest.mark.parametrize("name", sorted(ORDERINGS))
def test_every_ordering_returns_a_permutation(name):
    cov = random_covariance(10, seed=11)
    inputs = OrderingInputs(cov, random_metric(10, seed=11), torch.rand(10, dtype=torch.float64), seed=3)
    order = order_units(name, inputs)
    assert order.dtype == torch.long and is_permutation(order, 10)


def test_l1_and_variance_orderings_sort_their_scores():
    cov = random_covariance(8, seed=12)
    l1 = torch.tensor([0.3, 2.0, 0.1, 5.0, 1.0, 0.7, 4.0, 0.2], dtype=torch.float64)
    assert order_units("l1", OrderingInputs(cov, weight_l1=l1)).tolist() == [3, 6, 1, 4, 5, 0, 7, 2]
    variance_order = order_units("variance", OrderingInputs(cov))
    assert torch.equal(variance_order, torch.argsort(torch.diagonal(cov), descending=True))
    assert order_units("identity", OrderingInputs(cov)).tolist() == list(range(8))
    with pytest.raises(ValueError, match="weights"):
        order_units("l1", OrderingInputs(cov))
    with pytest.raises(ValueError, match="unknown ordering"):
        order_units("alphabetical", OrderingInputs(cov))


def test_random_ordering_is_seeded():
    cov = random_covariance(12, seed=13)
    a = order_units("random", OrderingInputs(cov, seed=1))
    assert torch.equal(a, order_units("random", OrderingInputs(cov, seed=1)))
    assert not torch.equal(a, order_units("random", OrderingInputs(cov, seed=2)))


def _brute_force_greedy(cov: np.ndarray, metric: np.ndarray) -> list[int]:
    kept: list[int] = []
    for _ in range(cov.shape[0]):
        candidates = [j for j in range(cov.shape[0]) if j not in kept]
        errors = [np.trace(metric @ conditional_covariance(cov, [*kept, j])) for j in candidates]
        kept.append(candidates[int(np.argmin(errors))])
    return kept


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("weighted", [False, True])
def test_forward_greedy_matches_brute_force(seed, weighted):
    cov = random_covariance(6, seed=seed + 20, samples=40)
    metric = random_metric(6, seed=seed, outputs=3) if weighted else None
    reference_cov = regularised(cov, ridge_for(cov)).numpy()  # the objective the greedy works on
    expected = _brute_force_greedy(reference_cov, np.eye(6) if metric is None else metric.numpy())
    assert forward_greedy(cov, metric).tolist() == expected
    name = "output" if weighted else "greedy"
    assert order_units(name, OrderingInputs(cov, metric)).tolist() == expected


@pytest.mark.parametrize("seed", [0, 1])
def test_pivoted_picks_the_largest_residual_variance(seed):
    cov = random_covariance(7, seed=seed + 40)
    order = order_pivoted(OrderingInputs(cov)).tolist()
    reg = regularised(cov, ridge_for(cov)).numpy()
    for step in range(7):
        residual = np.diag(conditional_covariance(reg, order[:step])).copy()
        residual[order[:step]] = -np.inf
        assert order[step] == int(np.argmax(residual))


# ------------------------------------------------------------------------------------ rank deficiency


def _degenerate_covariances() -> dict[str, torch.Tensor]:
    x = correlated_samples(100, 6, seed=50)
    dead = x.copy()
    dead[:, 2] = 0.7  # a constant unit (zero variance)
    duplicate = x.copy()
    duplicate[:, 4] = duplicate[:, 1]
    few = correlated_samples(4, 6, seed=51)  # fewer samples than units
    cov = {
        name: torch.from_numpy(np.cov(v, rowvar=False, bias=True))
        for name, v in (("dead", dead), ("duplicate", duplicate), ("few-samples", few))
    }
    cov["all-zero"] = torch.zeros(6, 6, dtype=torch.float64)
    return cov


@pytest.mark.parametrize("case", ["dead", "duplicate", "few-samples", "all-zero"])
@pytest.mark.parametrize("name", sorted(ORDERINGS))
def test_rank_deficient_inputs_give_finite_orders_and_curves(case, name):
    cov = _degenerate_covariances()[case]
    inputs = OrderingInputs(cov, random_metric(6, seed=52), torch.rand(6, dtype=torch.float64))
    order = order_units(name, inputs)
    assert is_permutation(order, 6)
    for curve in (explained_curve(cov, order), explained_curve(cov, order, inputs.metric), subspace_curve(cov, order)):
        values = curve.numpy()
        assert np.isfinite(values).all()
        assert values[0] == 0 and values[-1] == pytest.approx(1.0)
        assert (np.diff(values) >= -1e-9).all()
    assert torch.isfinite(residual_variances(cov, order)).all()


def test_redundant_units_come_last_and_explain_nothing():
    cov = _degenerate_covariances()["duplicate"]
    for name in ("greedy", "output", "pivoted"):
        order = order_units(name, OrderingInputs(cov, random_metric(6, seed=53))).tolist()
        # once one twin is kept the other explains nothing: it is picked last and adds nothing
        assert order[-1] in (1, 4)
        curve = explained_curve(cov, torch.tensor(order)).numpy()
        assert curve[5] == pytest.approx(1.0, abs=1e-5)
    dead = _degenerate_covariances()["dead"]
    assert order_units("greedy", OrderingInputs(dead)).tolist()[-1] == 2
    assert order_units("zca", OrderingInputs(dead)).tolist()[-1] == 2


def test_blocked_greedy_on_wide_layers_matches_the_exact_greedy_curve():
    """Wide layers take several units per greedy step; the diversity filter must keep it from
    taking both copies of a redundant pair, so its curve stays on the exact one."""
    from snp_engine.subspace import EXACT_GREEDY_UNITS, forward_greedy

    n, pairs = EXACT_GREEDY_UNITS + 88, 150
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(n, 2 * n, generator=gen, dtype=torch.float64)
    x[:pairs] = 0.95 * x[pairs : 2 * pairs] + 0.05 * x[:pairs]
    cov = x @ x.T / x.shape[1]
    exact = forward_greedy(cov, block=1)
    blocked = forward_greedy(cov)  # default block for this width is > 1
    assert sorted(blocked.tolist()) == list(range(n))
    gap = explained_curve(cov, exact) - explained_curve(cov, blocked)
    assert float(gap.abs().max()) < 1e-3

    def both_copies_kept(order: torch.Tensor) -> int:
        first_half = set(order[: n // 2].tolist())
        return sum(1 for i in range(pairs) if i in first_half and i + pairs in first_half)

    assert both_copies_kept(blocked) <= both_copies_kept(exact) + 2


def test_forward_greedy_finishes_when_no_gain_is_finite():
    """Round-off on a singular covariance can leave no finite gain; the ordering must still end
    with a permutation instead of looping."""
    cov = torch.full((6, 6), float("nan"), dtype=torch.float64)
    order = forward_greedy(cov)
    assert sorted(order.tolist()) == list(range(6))


# ------------------------------------------------------------------------------ blocked greedy (wide layers)


def _low_rank_covariance(n: int, seed: int, rank: int | None = None) -> torch.Tensor:
    """C = F Fᵀ + noise, F with a decaying spectrum (the shape of real layers' covariances)."""
    gen = torch.Generator().manual_seed(seed)
    rank = rank or max(n // 4, 1)
    factor = torch.randn(n, rank, generator=gen, dtype=torch.float64)
    factor *= torch.arange(1, rank + 1, dtype=torch.float64) ** -0.5
    noise = 0.01 * (torch.rand(n, generator=gen, dtype=torch.float64) + 0.1)
    return factor @ factor.T + torch.diag(noise)


def _consumer_metric(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(max(n // 4, 1), n, generator=gen, dtype=torch.float64)
    return weight.T @ weight


def _curve_gap(cov, metric, first, second, more=()) -> float:
    plain = [(c, None) for c, _ in more]
    gaps = [explained_curve(cov, first, more=plain) - explained_curve(cov, second, more=plain)]
    if metric is not None:
        gaps.append(explained_curve(cov, first, metric, more=more) - explained_curve(cov, second, metric, more=more))
    return max(float(g.abs().max()) for g in gaps)


@pytest.mark.parametrize("n", [64, 256, 1024])
@pytest.mark.parametrize("kind", ["random", "low-rank"])
@pytest.mark.parametrize("weighted", [False, True])
def test_blocked_greedy_curve_stays_on_the_exact_greedy_curve(n, kind, weighted):
    if n == 1024 and kind == "random":
        pytest.skip("the low-rank case covers this width")
    cov = random_covariance(n, seed=n + 1, samples=3 * n) if kind == "random" else _low_rank_covariance(n, seed=n)
    metric = _consumer_metric(n, seed=n + 2) if weighted else None
    exact = forward_greedy(cov, metric, block=1)
    blocked = forward_greedy(cov, metric, block=16)
    assert is_permutation(blocked, n)
    assert _curve_gap(cov, metric, exact, blocked) < (0.01 if weighted else 0.005)
    if weighted:  # the curve of the objective it minimises stays within 0.005
        gap = explained_curve(cov, exact, metric) - explained_curve(cov, blocked, metric)
        assert float(gap.abs().max()) < 0.005


@pytest.mark.parametrize("n", [48, 700])
def test_a_metric_given_as_a_factor_orders_as_the_metric_itself(n):
    """M = Fᵀ F given as F (the consumer's weight rows, fewer than the units) orders the units as
    M does: on the exact path identically, on the wide-layer path along the same curve."""
    cov = _low_rank_covariance(n, seed=n)
    gen = torch.Generator().manual_seed(n + 5)
    factor = torch.randn(n // 4, n, generator=gen, dtype=torch.float64)
    metric = factor.T @ factor
    by_metric = forward_greedy(cov, metric)
    by_factor = forward_greedy(cov, factor=factor)
    assert is_permutation(by_factor, n)
    if n <= 512:
        assert by_factor.tolist() == by_metric.tolist()
    else:
        exact = forward_greedy(cov, metric, block=1)
        assert _curve_gap(cov, metric, exact, by_factor) < 0.005
        assert _curve_gap(cov, metric, by_metric, by_factor) < 0.005


def test_blocked_greedy_puts_duplicated_units_last():
    n, copies = 300, 60
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(n, 4 * n, generator=gen, dtype=torch.float64)
    x[n - copies :] = x[:copies]  # the last units duplicate the first ones
    cov = x @ x.T / x.shape[1]
    for metric in (None, _consumer_metric(n, seed=8)):
        order = forward_greedy(cov, metric, block=16).tolist()
        assert sorted(order) == list(range(n))
        tail = order[n - copies :]
        # the tail holds exactly one copy of every duplicated pair, and no unit without a twin
        assert all(i < copies or i >= n - copies for i in tail)
        assert sorted(i % (n - copies) for i in tail) == list(range(copies))


@pytest.mark.parametrize("weighted", [False, True])
def test_blocked_greedy_with_several_readers_follows_the_exact_one(weighted):
    n = 200
    covs = [_low_rank_covariance(n, seed=s) * scale for s, scale in ((11, 1.0), (12, 30.0))]
    metrics = [_consumer_metric(n, seed=s) if weighted else None for s in (13, 14)]
    more = [(covs[1], metrics[1])]
    exact = forward_greedy(covs[0], metrics[0], block=1, more=more)
    blocked = forward_greedy(covs[0], metrics[0], block=16, more=more)
    assert is_permutation(blocked, n)
    # the curve of the objective it minimises within 0.005; the variance curve (a side view when the
    # order follows the readers' metrics) within 0.01
    for curve_more, metric, tolerance in (([(covs[1], None)], None, 0.01), (more, metrics[0], 0.005)):
        gap = explained_curve(covs[0], exact, metric, more=curve_more) - explained_curve(
            covs[0], blocked, metric, more=curve_more
        )
        assert float(gap.abs().max()) < (tolerance if weighted else 0.005)


def test_blocked_greedy_keeps_all_units_of_a_tiny_layer_in_a_permutation():
    for n in (2, 3, 17):
        cov = random_covariance(n, seed=n)
        assert is_permutation(forward_greedy(cov, block=16), n)
        assert is_permutation(forward_greedy(cov, _consumer_metric(n, seed=1), block=4), n)
    zero = torch.zeros(40, 40, dtype=torch.float64)
    assert is_permutation(forward_greedy(zero, block=8), 40)

"""The activation subspace of a unit group: orderings, the triangular (LDL) transform and
explained-variance curves.

Notation: C (n×n) is the covariance of the n units, an ordering is a permutation listing the
most important unit first. In that order the LDL factorisation

    C = L D Lᵀ,   L unit lower-triangular,   D = diag(d₁ … dₙ)

is the unnormalised Gram–Schmidt orthogonalisation of the units: y = L⁻¹x has uncorrelated
components and dᵢ = Var(yᵢ) is the part of unit i's variance *not* linearly explained by the
units before it. With R = L D^½ (the Cholesky factor), the residual covariance of all units given
the first k is Σ_{j>k} R₋ⱼ R₋ⱼᵀ, so unit j (in order) explains ‖R₋ⱼ‖² of the layer's total
variance — and R₋ⱼᵀ M R₋ⱼ of the consumer's output energy for a consumer metric M.

Rank-deficient covariances (dead units, duplicates, fewer samples than units) are handled by a
small ridge r·I added before factorising; :func:`ridge_for` picks it relative to the mean variance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

DEFAULT_RELATIVE_RIDGE = 1e-6


def ridge_for(cov: torch.Tensor, relative: float = DEFAULT_RELATIVE_RIDGE) -> float:
    """r = relative · tr(C)/n, with a tiny floor so an all-zero covariance still factorises."""
    n = cov.shape[0]
    mean_variance = float(torch.diagonal(cov).sum()) / max(n, 1)
    return relative * mean_variance if mean_variance > 0 else 1e-12


def regularised(cov: torch.Tensor, ridge: float) -> torch.Tensor:
    """C + r·I (a new tensor; the identity is never formed)."""
    out = cov.clone()
    torch.diagonal(out).add_(ridge)
    return out


def cholesky_in_order(cov: torch.Tensor, order: torch.Tensor, ridge: float | None = None) -> torch.Tensor:
    """Cholesky factor R (lower) of P (C + r I) Pᵀ for the permutation ``order``: R Rᵀ = C_perm."""
    if ridge is None:
        ridge = ridge_for(cov)
    permuted = cov[order[:, None], order]  # one gather, a new tensor
    torch.diagonal(permuted).add_(ridge)
    factor, info = torch.linalg.cholesky_ex(permuted)
    if int(info) != 0:
        # Round-off on a nearly singular matrix: grow the ridge until it factorises.
        return cholesky_in_order(cov, order, ridge=max(ridge * 100, 1e-12))
    return factor


def ldl(cov: torch.Tensor, order: torch.Tensor | None = None, ridge: float | None = None):
    """LDL factors (L unit lower-triangular, d) of the (regularised, permuted) covariance.

    L = R diag(R)⁻¹ and dᵢ = Rᵢᵢ², with R the Cholesky factor; dᵢ is the residual variance of unit i
    given the units before it in ``order``.
    """
    if order is None:
        order = torch.arange(cov.shape[0], device=cov.device)
    factor = cholesky_in_order(cov, order, ridge)
    diag = torch.diagonal(factor)
    return factor / diag, diag**2


def residual_variances(cov: torch.Tensor, order: torch.Tensor, ridge: float | None = None) -> torch.Tensor:
    """dᵢ: variance of the i-th unit (in ``order``) not linearly explained by the units before it."""
    return ldl(cov, order, ridge)[1]


def explained_curve(
    cov: torch.Tensor,
    order: torch.Tensor,
    metric: torch.Tensor | None = None,
    ridge: float | None = None,
    more: Sequence[tuple[torch.Tensor, torch.Tensor | None]] = (),
) -> torch.Tensor:
    """Fraction explained when keeping the first k units of ``order``, for k = 0 … n (length n+1).

    E(k) = Σ_{j≤k} R₋ⱼᵀ M R₋ⱼ / tr(M C): with M = I (default) the fraction of the layer's total
    activation variance that a least-squares reconstruction from the first k units recovers; with
    M the consumer metric, the fraction of the consumer's output energy. Monotone, E(0)=0, E(n)=1.

    A group read by several layers passes the further readers' (covariance, metric) pairs as
    ``more`` (``metric`` applies to the first reader only; each further pair names its own): then
    E(k) = (1/R) Σ_r E_r(k), the mean over the R readers of the share each one keeps, so that a
    reader with a large output scale does not drown the others.
    """
    if more:
        readers = [(cov, metric), *more]
        return sum(explained_curve(c, order, m, ridge) for c, m in readers) / len(readers)
    factor = cholesky_in_order(cov, order, ridge)
    if metric is None:
        gains = _column_dots(factor, factor).to(factor.dtype)
    else:
        permuted_metric = metric[order][:, order]
        gains = (factor * (permuted_metric @ factor)).sum(0).clamp_min(0)
    return _cumulative_fraction(gains)


def subspace_curve(
    cov: torch.Tensor, order: torch.Tensor, ridge: float | None = None, more: Sequence[torch.Tensor] = ()
) -> torch.Tensor:
    """The paper's cumulative subspace variance F(k) = Σ_{i≤k} dᵢ / Σᵢ dᵢ, k = 0 … n (for several
    readers, ``more`` being the further readers' covariances: the mean of their curves)."""
    if more:
        covariances = [cov, *more]
        return sum(subspace_curve(c, order, ridge) for c in covariances) / len(covariances)
    return _cumulative_fraction(residual_variances(cov, order, ridge))


def _cumulative_fraction(gains: torch.Tensor) -> torch.Tensor:
    total = gains.sum()
    cumulative = torch.cat([gains.new_zeros(1), torch.cumsum(gains, 0)])
    if total <= 0:
        return torch.linspace(0, 1, gains.shape[0] + 1, dtype=gains.dtype, device=gains.device)
    return (cumulative / total).clamp(0, 1)


def trusted_curve(curve: torch.Tensor, samples: int) -> torch.Tensor:
    """The explained curve of a group measured on ``samples`` ≤ n samples, as far as it can be trusted.

    With s samples the covariance has rank at most s − 1: the first s − 1 units of any order
    explain every measured sample exactly, and the in-sample curve E(k) reaches 1 long before k = n,
    so the tail looks free to remove although nothing was measured about it. This curve instead
    takes the unexplained share U(k) = 1 − E(k) of a least-squares fit from k units to new samples,
    corrected for the degrees of freedom the fit used,

        U_h(k) = min(1, U(k) · (s + k) / (s − k − 1)),   k ≤ s − 2

    (in-sample residual variance σ²(s − k − 1)/s, prediction error σ²(1 + k/s)), keeps its running
    maximum E_h(k) = 1 − U_h(k) up to the k* where it peaks, and treats every unit beyond k* as
    equally unexplained: E'(k) = E_h(k*) + (1 − E_h(k*)) · (k − k*)/(n − k*). So E'(0) = 0,
    E'(n) = 1 (keeping every unit stays exact), E' is monotone, and the budget allocator prices each
    tail unit at the share of the unexplained variance an average unit would carry instead of zero.
    """
    curve = curve.to(torch.float64)
    n = curve.shape[0] - 1
    s = int(samples)
    top = min(s - 2, n)
    if top < 1:
        return torch.linspace(0, 1, n + 1, dtype=torch.float64)
    k = torch.arange(top + 1, dtype=torch.float64)
    unexplained = (1 - curve[: top + 1]).clamp_min(0) * (s + k) / (s - k - 1)
    head = torch.cummax(1 - unexplained.clamp(max=1.0), 0).values
    peak = int(torch.argmax(head))
    if peak >= n:
        return curve.clamp(0, 1)
    tail = head[peak] + (1 - head[peak]) * torch.arange(1, n - peak + 1, dtype=torch.float64) / (n - peak)
    return torch.cat([head[: peak + 1], tail]).clamp(0, 1)


# ----------------------------------------------------------------------------------------------
# Orderings: each returns a permutation of the units, most important first.


@dataclass(frozen=True)
class OrderingInputs:
    """What an ordering may look at for one group: the covariance and consumer metric at its
    (first) reader and, for a group read by several layers, ``more`` (covariance, metric) pairs."""

    covariance: torch.Tensor
    metric: torch.Tensor | None = None  # consumer metric M (n×n), see compensation.consumer_metric
    weight_l1: torch.Tensor | None = None  # L1 norm of each unit's producing filter
    seed: int = 0
    more: tuple[tuple[torch.Tensor, torch.Tensor | None], ...] = ()
    factor: torch.Tensor | None = None  # F with metric = Fᵀ F, where F has fewer rows than units

    @property
    def readers(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        return [(self.covariance, self.metric), *self.more]

    @property
    def pooled(self) -> torch.Tensor:
        """One covariance for orderings that look at one: the first reader's, or for several
        readers Σ_r C_r / tr(C_r) (every reader weighted equally, as in the curves)."""
        if not self.more:
            return self.covariance
        total = torch.zeros_like(self.covariance)
        for cov, _ in self.readers:
            total += cov / max(float(torch.diagonal(cov).sum()), 1e-300)
        return total


def order_identity(inputs: OrderingInputs) -> torch.Tensor:
    """Units in their original index order."""
    return torch.arange(inputs.covariance.shape[0], device=inputs.covariance.device)


def order_random(inputs: OrderingInputs) -> torch.Tensor:
    """A seeded random permutation (a baseline)."""
    gen = torch.Generator().manual_seed(inputs.seed)
    return torch.randperm(inputs.covariance.shape[0], generator=gen).to(inputs.covariance.device)


def order_variance(inputs: OrderingInputs) -> torch.Tensor:
    """Descending activation variance Cᵢᵢ (ignores redundancy)."""
    return torch.argsort(torch.diagonal(inputs.pooled), descending=True, stable=True)


def order_l1(inputs: OrderingInputs) -> torch.Tensor:
    """Descending L1 norm of the producing filter (classic magnitude pruning, Li et al. 2017)."""
    if inputs.weight_l1 is None:
        raise ValueError("the l1 ordering needs the producing layer's weights")
    return torch.argsort(inputs.weight_l1.to(inputs.covariance.device), descending=True, stable=True)


def zca_scores(cov: torch.Tensor, ridge: float | None = None) -> torch.Tensor:
    """The paper's unnormalised-ZCA score: Var(yᵢ) for y = diag(W)⁻¹ W x, W = C^{-1/2}.

    Var(yᵢ) = (W C W)ᵢᵢ / Wᵢᵢ² = 1 / (C^{-1/2})ᵢᵢ²: the variance of unit i that remains after a
    symmetric whitening against all other units at once.
    """
    if ridge is None:
        ridge = ridge_for(cov)
    eigenvalues, eigenvectors = torch.linalg.eigh(regularised(cov, ridge))
    inv_sqrt = (eigenvectors * eigenvalues.clamp_min(ridge).rsqrt()) @ eigenvectors.T
    return 1.0 / torch.diagonal(inv_sqrt) ** 2


def order_zca(inputs: OrderingInputs) -> torch.Tensor:
    """The paper's ordering: descending unnormalised-ZCA score (one-shot, order-free)."""
    return torch.argsort(zca_scores(inputs.pooled), descending=True, stable=True)


def order_pivoted(inputs: OrderingInputs) -> torch.Tensor:
    """Pivoted Cholesky: repeatedly keep the unit with the largest residual variance S_jj given the
    units kept so far (S = C − C₋K C_KK⁻¹ C_K₋, updated by rank-one steps, O(n²) each)."""
    cov = regularised(inputs.pooled, ridge_for(inputs.pooled))
    n = cov.shape[0]
    residual = cov.clone()
    available = torch.ones(n, dtype=torch.bool, device=cov.device)
    order = []
    for _ in range(n):
        diag = torch.diagonal(residual).masked_fill(~available, -torch.inf)
        j = int(torch.argmax(diag))
        order.append(j)
        available[j] = False
        column = residual[:, j].clone()
        residual.addr_(column, column, alpha=-1.0 / float(column[j].clamp_min(1e-300)))  # in place: no n×n temporary
    return torch.tensor(order, device=cov.device)


EXACT_GREEDY_UNITS = 512
# Wider layers (see _blocked_greedy): picks between two updates of the full matrices; how many
# units outside the pool are re-scored at a time; the loss per pick (a share of tr(M C) / n) a
# pick may give away to a unit outside the pool instead of re-scoring it; the residual variance
# S_jj / (C_jj + r) below which a unit counts as explained (float32 round-off on S is about 1e-6
# of C_jj); and the margin over the highest bound outside the pool that a pick must clear.
GREEDY_BLOCK = 128
GREEDY_RESCORE = 64
GREEDY_TOLERANCE = 0.005
EXPLAINED_FLOOR = 1e-4
GREEDY_MARGIN = 1.05


def forward_greedy(
    cov: torch.Tensor,
    metric: torch.Tensor | None = None,
    block: int | None = None,
    more: Sequence[tuple[torch.Tensor, torch.Tensor | None]] = (),
    factor: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy forward selection minimising E(K) = tr(M S|K), S|K the residual covariance given K.

    Keeping unit j lowers E by g_j = s_jᵀ M s_j / S_jj (s_j = S₋ⱼ): pick the largest, then update
    S ← S − s_j s_jᵀ / S_jj and G = M S ← G − (M s_j) s_jᵀ / S_jj. O(n²) per step, O(n³) in all.
    With M = I it keeps the unit that explains most of the remaining total variance.

    A group read by several layers (``more`` holds the further readers' (C_r, M_r), ``None`` for
    M_r = I) minimises Σ_r tr(M_r S_r|K) / tr(M_r C_r): every reader's share of lost output
    energy, summed — the gain of unit j is the weighted sum of its gains at the readers, and each
    reader's S_r, G_r is updated as above. O(R n²) per step.

    ``factor`` (F, r × n, with M = Fᵀ F: the consumer's weight rows) may stand for the first
    reader's metric; where r < n the wide-layer path then works with F S (r × n) instead of M S.

    Up to ``EXACT_GREEDY_UNITS`` units (or with ``block=1``) every step updates S and G in float64.
    Wider layers take :func:`_blocked_greedy`: lazy greedy picks among candidates kept exact, S and
    G updated every ``block`` picks (default ``GREEDY_BLOCK``) as one float32 matrix product.
    """
    n = cov.shape[0]
    if block is None:
        block = 1 if n <= EXACT_GREEDY_UNITS else GREEDY_BLOCK
    readers = [(cov, metric), *more]
    blocked = block > 1 and n > 1 and all(bool(torch.isfinite(c.sum())) for c, _ in readers)  # NaN/inf propagate
    if blocked and factor is not None and factor.shape[0] < n:
        return _blocked_greedy(readers, block, factor)
    if metric is None and factor is not None:
        readers[0] = (cov, factor.T.to(cov) @ factor.to(cov))
    return _blocked_greedy(readers, block) if blocked else _exact_greedy(readers)


def _reader_scales(totals: Sequence[float], several: bool) -> list[float]:
    """1 / tr(M_r C_r) per reader (``totals``) when there are several (every reader's share
    counts), else 1."""
    return [1.0 / max(total, 1e-300) if several else 1.0 for total in totals]


def _column_dots(a: torch.Tensor, b: torch.Tensor, rows: int = 512) -> torch.Tensor:
    """Σ_i A_ij B_ij for every column j, a band of rows at a time (no n×n temporary), the bands'
    sums added in float64."""
    total = torch.zeros(a.shape[1], dtype=torch.float64, device=a.device)
    for start in range(0, a.shape[0], rows):
        total += (a[start : start + rows] * b[start : start + rows]).sum(0).double()
    return total


def _row_dots(a: torch.Tensor, b: torch.Tensor, rows: int = 512) -> torch.Tensor:
    """Σ_j A_ij B_ij for every row i, a band of rows at a time, in float64."""
    return torch.cat([(a[i : i + rows] * b[i : i + rows]).sum(1).double() for i in range(0, a.shape[0], rows)])


def _exact_greedy(readers: Sequence[tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
    """:func:`forward_greedy` one unit per step, float64: g_j = Σ_r w_r (S_r ∘ G_r)₋ⱼ·1 / (S_r)_jj,
    then the rank-one updates S ← S − s sᵀ / S_jj, G ← G − (M s) sᵀ / S_jj in place."""
    residuals, weighteds = [], []
    for c, m in readers:
        residual = regularised(c, ridge_for(c))
        residuals.append(residual)
        weighteds.append(residual.clone() if m is None else m.to(residual) @ residual)
    scales = _reader_scales([float(torch.diagonal(w).sum()) for w in weighteds], len(readers) > 1)
    n = residuals[0].shape[0]
    device = residuals[0].device
    remaining = torch.arange(n, device=device)  # original index of each row
    available = torch.ones(n, dtype=torch.bool, device=device)
    order: list[int] = []
    while available.any():
        if (~available).sum() * 4 > available.numel():
            keep = available.nonzero().squeeze(1)
            residuals = [r[keep][:, keep] for r in residuals]
            weighteds = [w[keep][:, keep] for w in weighteds]
            remaining, available = remaining[keep], available[keep]
        gains = sum(
            scale * _column_dots(r, w) / torch.diagonal(r).clamp_min(1e-300)
            for r, w, scale in zip(residuals, weighteds, scales, strict=True)
        )
        gains = gains.masked_fill(~available, -torch.inf)
        if not bool(torch.isfinite(gains).any()):  # round-off on a singular covariance: keep index order
            j = int(available.nonzero()[0])
        else:
            j = int(torch.argmax(torch.nan_to_num(gains, nan=-torch.inf)))
        order.append(int(remaining[j]))
        available[j] = False
        for r, w in zip(residuals, weighteds, strict=True):
            _condition_on(r, w, j)
    return torch.tensor(order, device=device)


def _condition_on(residual: torch.Tensor, weighted: torch.Tensor, j: int) -> None:
    """In place: S ← S − s_j s_jᵀ / S_jj and G ← G − G₋ⱼ s_jᵀ / S_jj (rank one, no n×n temporary)."""
    column, weighted_column = residual[:, j].clone(), weighted[:, j].clone()
    alpha = -1.0 / float(column[j].clamp_min(1e-300))
    weighted.addr_(weighted_column, column, alpha=alpha)
    residual.addr_(column, column, alpha=alpha)


@dataclass
class _Reader:
    """One reader's matrices in :func:`_blocked_greedy`: S as of the last update (``residual``) and
    W (``weighted``), whose row j is what unit j's gain is read from — S₋ⱼ itself for M = I
    (``identity``), (M S)₋ⱼ (W = S M) for a metric given whole (``metric``), (F S)₋ⱼ (W = S Fᵀ,
    m × r) for a metric given as M = Fᵀ F (``factor``) — the explained floor per unit and the
    reader's weight in the summed gain."""

    residual: torch.Tensor
    weighted: torch.Tensor
    floor: torch.Tensor
    scale: float
    kind: str

    @property
    def identity(self) -> bool:
        return self.kind == "identity"

    def numerators(self, rows: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """N_j = s_jᵀ M s_j: (S ∘ W)1, or ‖W_j‖² for a factor (for ``rows`` of S, W if given)."""
        residual, weighted = (self.residual, self.weighted) if rows is None else rows
        return _row_dots(weighted, weighted) if self.kind == "factor" else _row_dots(residual, weighted)

    def compact(self, keep: torch.Tensor) -> None:
        """Drop the rows and columns of every unit not in ``keep``."""
        self.residual = self.residual[keep[:, None], keep]
        if self.kind == "identity":
            self.weighted = self.residual
        elif self.kind == "metric":
            self.weighted = self.weighted[keep[:, None], keep]
        else:
            self.weighted = self.weighted[keep]
        self.floor = self.floor[keep]


def _reader_state(cov: torch.Tensor, metric: torch.Tensor | None, factor: torch.Tensor | None) -> tuple[_Reader, float]:
    """A reader's float32 matrices for :func:`_blocked_greedy` and tr(M C) (its objective's total)."""
    dtype = torch.float32
    residual = cov.to(dtype=dtype, copy=True)
    torch.diagonal(residual).add_(ridge_for(cov))  # C + r I, without an n×n identity
    floor = EXPLAINED_FLOOR * torch.diagonal(residual).double()
    if factor is not None:
        factor = factor.to(device=cov.device, dtype=dtype)
        weighted = residual @ factor.T
        total = float((weighted * factor.T).double().sum())  # tr(F S Fᵀ)
        return _Reader(residual, weighted, floor, 1.0, "factor"), total
    if metric is None:
        return _Reader(residual, residual, floor, 1.0, "identity"), float(torch.diagonal(residual).double().sum())
    weighted = residual @ metric.to(device=cov.device, dtype=dtype)
    return _Reader(residual, weighted, floor, 1.0, "metric"), float(torch.diagonal(weighted).double().sum())


def _blocked_greedy(
    readers: Sequence[tuple[torch.Tensor, torch.Tensor | None]], block: int, factor: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`forward_greedy` with the updates of S and W delayed and applied ``block`` at a time.

    With S₀, W₀ the matrices at the last update and U = [u₁ … u_p] the columns picked since
    (u = s_j / √S_jj, s_j the current residual column), the current matrices are S = S₀ − U Uᵀ
    and W = W₀ − U Φᵀ, Φ = M U (W = S M) or F U (W = S Fᵀ, a metric given as M = Fᵀ F: m × r
    instead of m × m, four times less work for an MLP's 4× narrower second layer). Each round
    scores every unit exactly from S₀, W₀ and starts a pool Q of the ``block`` best whose gains
    g_q = N_q / S_qq stay current in O(|Q| r + p m) per pick: after picking u,

        N_q ← N_q − 2 u_q zᵀ w_q + u_q² uᵀ M u,   S_qq ← S_qq − u_q²,

    with z = u (z = F u for a factor), w_q the current row q of W: zᵀ w_q = zᵀ W₀[q] −
    (Φᵀ z)ᵀ U_qᵀ. Before each pick, while the best pool gain is below ``GREEDY_MARGIN`` times the
    highest bound outside Q (a unit's gain when last scored) and more than a tolerance
    (``GREEDY_TOLERANCE`` · tr(M C) / n) below it, the ``GREEDY_RESCORE`` highest bounds are
    re-scored from S₀[q] − U_q Uᵀ and W₀[q] − U_q Φᵀ; those within the margin of the best join Q
    (lazy greedy: with diminishing gains a bound caps the current gain, so the pick is the
    greedy one up to the tolerance, which caps what a round can lose; the margin covers gains
    that grow, which output metrics allow). A round makes ``block`` picks; then
    S₀ ← S₀ − U Uᵀ and W₀ ← W₀ − U Φᵀ are matrix products of rank ``block``, in float32 (on a
    GPU too); gains and the pool's updates are summed in float64. Units whose residual variance
    has fallen below ``EXPLAINED_FLOOR`` of their own (round-off level in float32) count as
    explained and gain nothing; once every unit left is explained they follow in descending
    residual variance. Rows and columns of picked units are dropped from S₀, W₀ from time to time.
    """
    states, totals = [], []
    for index, (c, m) in enumerate(readers):
        state, total = _reader_state(c, m, factor if index == 0 else None)
        states.append(state)
        totals.append(total)
    for state, scale in zip(states, _reader_scales(totals, len(readers) > 1), strict=True):
        state.scale = scale
    n = states[0].residual.shape[0]
    tolerance = GREEDY_TOLERANCE * sum(s.scale * t for s, t in zip(states, totals, strict=True)) / n
    device = states[0].residual.device
    remaining = torch.arange(n, device=device)  # original index of each row
    available = torch.ones(n, dtype=torch.bool, device=device)
    dropped = 0  # picked units still in the matrices
    order: list[torch.Tensor] = []
    while True:
        m = remaining.numel()
        if dropped * 8 > m:
            keep = available.nonzero().squeeze(1)
            for state in states:
                state.compact(keep)
            remaining, available, dropped = remaining[keep], available[keep], 0
            m = remaining.numel()
        if not bool(available.any()):
            break
        numerators, denominators = [], []
        gains = torch.zeros(m, dtype=torch.float64, device=device)
        for state in states:
            numerator = state.numerators()
            denominator = torch.diagonal(state.residual).double()
            gains += state.scale * _gain(numerator, denominator, state.floor)
            numerators.append(numerator)
            denominators.append(denominator)
        gains = gains.masked_fill(~available, -torch.inf)
        if not bool((gains > 0).any()):  # everything left is explained
            left = available.nonzero().squeeze(1)
            rest = torch.argsort(torch.diagonal(states[0].residual)[left], descending=True, stable=True)
            order.append(remaining[left[rest]])
            break
        chosen = _round(states, gains, numerators, denominators, block, tolerance)
        order.append(remaining[chosen])
        available[chosen] = False
        dropped += chosen.numel()
    return torch.cat(order)


class _Pool:
    """One reader's view of a round's candidate pool Q in :func:`_blocked_greedy`: W₀[Q], U_Q,
    the current N_Q, S_QQ and floors, and the round's Uᵀ and Φᵀ, one row per pick. Pool rows
    live in buffers that double when full."""

    def __init__(self, state: _Reader, block: int, numerator: torch.Tensor, denominator: torch.Tensor) -> None:
        like = state.residual
        self.state, self.numerator, self.denominator, self.block = state, numerator, denominator, block
        self.update = like.new_empty(block, like.shape[0])  # Uᵀ
        self.weighted_update = self.update if state.identity else like.new_empty(block, state.weighted.shape[1])  # Φᵀ
        self.size = 0
        self._allocate(2 * block)

    def _allocate(self, capacity: int) -> None:
        """(Re)allocate the pool's buffers for ``capacity`` units, keeping the first ``size`` rows."""
        like, size = self.state.weighted, self.size
        names = ("positions", "columns", "rows", "num", "den", "floor")
        old = [getattr(self, name, None) for name in names]
        self.positions = torch.zeros(capacity, dtype=torch.long, device=like.device)
        self.columns = like.new_empty(capacity, like.shape[1])  # W₀[q]
        self.rows = like.new_empty(capacity, self.block)  # U_q
        self.num = self.numerator.new_empty(capacity)
        self.den, self.floor = self.denominator.new_empty(capacity), self.denominator.new_empty(capacity)
        if size:
            for name, source in zip(names, old, strict=True):
                getattr(self, name)[:size] = source[:size]

    def current(self, positions: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """W₀[q], and N_q, S_qq after the round's first ``p`` picks, for units q."""
        state = self.state
        columns = state.weighted[positions]
        num, den = self.numerator[positions], self.denominator[positions]
        if p:
            coefficients = self.update[:p, positions].T  # U_q
            weighted = torch.addmm(columns, coefficients, self.weighted_update[:p], alpha=-1.0)
            residual = weighted
            if state.kind == "metric":
                residual = torch.addmm(state.residual[positions], coefficients, self.update[:p], alpha=-1.0)
            num = state.numerators((residual, weighted))
            den = den - (coefficients.double() ** 2).sum(1)
        return columns, num, den

    def gain_of(self, num: torch.Tensor, den: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.state.scale * _gain(num, den, self.state.floor[positions])

    def join(self, positions: torch.Tensor, columns: torch.Tensor, num: torch.Tensor, den: torch.Tensor) -> None:
        """Add units (with W₀[q] and their current N_q, S_qq) to Q."""
        count = positions.numel()
        if self.size + count > self.positions.numel():
            self._allocate(2 * (self.size + count))
        rows = slice(self.size, self.size + count)
        self.positions[rows] = positions
        self.columns[rows] = columns
        self.rows[rows] = self.update[:, positions].T  # U_q (columns ≥ p are filled later)
        self.num[rows], self.den[rows], self.floor[rows] = num, den, self.state.floor[positions]
        self.size += count

    def gains(self) -> torch.Tensor:
        size = self.size
        return self.state.scale * _gain(self.num[:size], self.den[:size], self.floor[:size])

    def pick(self, best: int, p: int) -> None:
        """Condition on the pool's unit ``best`` as the round's pick number ``p``."""
        state, size = self.state, self.size
        coefficients = self.rows[best, :p]
        s = state.residual[self.positions[best]] - coefficients @ self.update[:p]
        scale = 1.0 / max(float(self.den[best]), 1e-300) ** 0.5
        u = s * scale
        if state.identity:
            probe = u
            quadratic = float(torch.dot(u, u))
        else:
            phi = (self.columns[best] - coefficients @ self.weighted_update[:p]) * scale  # M u or F u
            probe = phi if state.kind == "factor" else u
            quadratic = float(torch.dot(phi, probe))  # uᵀ M u
            self.weighted_update[p] = phi
        uq = u[self.positions[:size]]
        self.rows[:size, p] = uq
        cross = (self.columns[:size] @ probe - self.rows[:size, :p] @ (self.weighted_update[:p] @ probe)).double()
        uq = uq.double()
        self.num[:size] -= 2 * uq * cross - uq**2 * quadratic
        self.den[:size] -= uq**2
        self.update[p] = u

    def apply(self, p: int) -> None:
        """The delayed update of S₀ and W₀ by the round's ``p`` picks."""
        update = self.update[:p]
        if not self.state.identity:
            self.state.weighted.addmm_(update.T, self.weighted_update[:p], alpha=-1.0)  # W ← W − U Φᵀ
        self.state.residual.addmm_(update.T, update, alpha=-1.0)


def _round(
    states: list[_Reader],
    bounds: torch.Tensor,
    numerators: list[torch.Tensor],
    denominators: list[torch.Tensor],
    block: int,
    tolerance: float,
) -> torch.Tensor:
    """One round of :func:`_blocked_greedy`: up to ``block`` greedy picks, then the delayed update
    of every reader's S and W. ``bounds`` holds every unit's gain at the round start (−∞ for units
    already picked); it is lowered in place as units outside the pool are re-scored. Returns the
    positions (in the matrices) of the picks, in order."""
    pools = [_Pool(state, block, num, den) for state, num, den in zip(states, numerators, denominators, strict=True)]
    device = bounds.device
    alive = torch.ones(0, dtype=torch.bool, device=device)

    def score(count: int, p: int) -> tuple[torch.Tensor, list[tuple], torch.Tensor]:
        """Re-score the ``count`` units with the highest bounds outside the pool."""
        values, positions = torch.topk(bounds, min(count, bounds.numel()))
        positions = positions[values > -torch.inf]
        parts = [pool.current(positions, p) for pool in pools]
        gains = sum(pool.gain_of(num, den, positions) for pool, (_, num, den) in zip(pools, parts, strict=True))
        return positions, parts, gains

    def join(positions: torch.Tensor, parts: list[tuple], take: torch.Tensor) -> None:
        nonlocal alive
        for pool, (columns, num, den) in zip(pools, parts, strict=True):
            pool.join(positions[take], columns[take], num[take], den[take])
        bounds[positions[take]] = -torch.inf
        alive = torch.cat([alive, torch.ones(int(take.sum()), dtype=torch.bool, device=device)])

    positions, parts, _ = score(block, 0)
    join(positions, parts, torch.ones_like(positions, dtype=torch.bool))
    picked: list[int] = []
    for p in range(block):
        while True:
            gains = sum(pool.gains() for pool in pools).masked_fill(~alive, -torch.inf)
            best = int(torch.argmax(gains)) if gains.numel() else 0
            value = float(gains[best]) if gains.numel() else -float("inf")
            top = float(bounds.max()) if bounds.numel() else -float("inf")
            if not top > 0 or value >= GREEDY_MARGIN * top or top - value <= tolerance:
                break
            # lazy greedy: re-score the highest bounds outside the pool; the competitive ones join it
            positions, parts, fresh = score(GREEDY_RESCORE, p)
            bounds[positions] = fresh
            join(positions, parts, fresh * GREEDY_MARGIN > max(value, 0.0))
        if value <= 0:
            break
        for pool in pools:
            pool.pick(best, p)
        alive[best] = False
        picked.append(best)
    for pool in pools:
        pool.apply(len(picked))
    return pools[0].positions[torch.tensor(picked, dtype=torch.long, device=device)]


def _gain(numerator: torch.Tensor, denominator: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    """g_j = N_j / S_jj, zero for units explained to within ``floor``."""
    return torch.where(denominator > floor, numerator / denominator.clamp_min(1e-300), 0.0).clamp_min(0)


def order_greedy(inputs: OrderingInputs) -> torch.Tensor:
    """Forward greedy with M = I: each step keeps the unit explaining most remaining variance."""
    return forward_greedy(inputs.covariance, more=[(c, None) for c, _ in inputs.more])


def order_output(inputs: OrderingInputs) -> torch.Tensor:
    """Output-aware forward greedy: each step keeps the unit whose addition most lowers the consumer's
    output error tr(M S|K) (falls back to M = I where no consumer metric is known)."""
    return forward_greedy(inputs.covariance, inputs.metric, more=inputs.more, factor=inputs.factor)


ORDERINGS: dict[str, Callable[[OrderingInputs], torch.Tensor]] = {
    "output": order_output,
    "greedy": order_greedy,
    "pivoted": order_pivoted,
    "zca": order_zca,
    "variance": order_variance,
    "l1": order_l1,
    "identity": order_identity,
    "random": order_random,
}

ORDERING_HELP = {
    "output": "output-aware greedy: keeps the units that best preserve the next layer's output (default)",
    "greedy": "greedy: keeps the units that explain the most remaining activation variance",
    "pivoted": "pivoted Cholesky: keeps the unit with the largest unexplained variance next",
    "zca": "the paper's unnormalised-ZCA score (one-shot ranking)",
    "variance": "plain activation variance",
    "l1": "L1 norm of the producing filter (weight magnitude)",
    "identity": "original unit order",
    "random": "random order (baseline)",
}

DEFAULT_ORDERING = "output"


def balanced(order: torch.Tensor, parts: int) -> torch.Tensor:
    """``order`` rearranged so that every prefix of length m·``parts`` holds m units of each of the
    ``parts`` equal, consecutive parts of the units (a grouped conv keeps the same number of channels
    in every group): unit u goes to round r(u) = how many units of its part come before it in
    ``order``, and the units are sorted by round, then by their place in ``order``."""
    if parts <= 1:
        return order
    n = order.numel()
    part = order // (n // parts)
    rounds = torch.zeros_like(order)
    seen = torch.zeros(parts, dtype=torch.long, device=order.device)
    for position, p in enumerate(part.tolist()):
        rounds[position] = seen[p]
        seen[p] += 1
    key = rounds * n + torch.arange(n, device=order.device)
    return order[torch.argsort(key)]


def block_greedy(cov: torch.Tensor, metric: torch.Tensor | None, block: int) -> torch.Tensor:
    """Greedy forward selection of whole blocks of ``block`` consecutive units (attention heads),
    minimising E(K) = tr(M S|K) as :func:`forward_greedy` does for single units.

    Keeping block b (units B) lowers E by g_b = tr(S_BB⁻¹ S_B₋ M S₋B), S the residual covariance
    given the blocks kept so far; then S ← S − S₋B S_BB⁻¹ S_B₋. Returns the blocks, most important
    first. O(n³) per step for n units: meant for a few dozen blocks (the heads of one layer).
    """
    n = cov.shape[0]
    count = n // block
    residual = regularised(cov, ridge_for(cov)).double()
    weight = metric.double() if metric is not None else None
    left, picked = list(range(count)), []
    for _ in range(count):
        gains = []
        for b in left:
            rows = slice(b * block, (b + 1) * block)
            column = residual[:, rows]
            weighted = column if weight is None else weight @ column
            inner = column.T @ weighted
            gains.append(float(torch.trace(torch.linalg.solve(residual[rows, rows], inner))))
        best = left[max(range(len(left)), key=gains.__getitem__)]
        rows = slice(best * block, (best + 1) * block)
        column = residual[:, rows].clone()
        residual -= column @ torch.linalg.solve(residual[rows, rows], column.T)
        picked.append(best)
        left.remove(best)
    return torch.tensor(picked, dtype=torch.long, device=cov.device)


def order_blocks(name: str, inputs: OrderingInputs, block: int) -> torch.Tensor:
    """The ordering ``name`` applied to whole blocks of ``block`` consecutive units (attention heads):
    the greedy orderings (``output``, ``greedy``, ``pivoted``) by :func:`block_greedy` (with the consumer
    metric for ``output``), the score orderings (``variance``, ``l1``, ``zca``) by each block's summed
    score, ``identity`` and ``random`` as for units. Returns block indices, most important first."""
    n = inputs.covariance.shape[0]
    count = n // block
    if name not in ORDERINGS:
        raise ValueError(f"unknown ordering {name!r}; choose one of {', '.join(ORDERINGS)}")
    if name in ("output", "greedy", "pivoted"):
        return block_greedy(inputs.pooled, inputs.metric if name == "output" and not inputs.more else None, block)
    if name in ("identity", "random"):
        units = ORDERINGS[name](replace(inputs, covariance=inputs.covariance[:count, :count]))
        return units
    if name == "l1":
        if inputs.weight_l1 is None:
            raise ValueError("the l1 ordering needs the producing layer's weights")
        scores = inputs.weight_l1.double()
    else:
        unit_scores = zca_scores(inputs.pooled) if name == "zca" else torch.diagonal(inputs.pooled)
        scores = unit_scores.reshape(count, block).sum(1)
    return torch.argsort(scores.to(inputs.covariance.device), descending=True, stable=True)


def block_units(order: torch.Tensor, block: int) -> torch.Tensor:
    """The unit order of a block order: block b stands for units b·block … b·block + block − 1."""
    if block == 1:
        return order
    return (order[:, None] * block + torch.arange(block, device=order.device)).reshape(-1)


def order_units(name: str, inputs: OrderingInputs) -> torch.Tensor:
    """Apply the ordering registered as ``name``."""
    try:
        ordering = ORDERINGS[name]
    except KeyError:
        raise ValueError(f"unknown ordering {name!r}; choose one of {', '.join(ORDERINGS)}") from None
    return ordering(inputs)

"""Choosing each consumer's compensation on calibration samples it was not fitted on.

The sequential fit predicts the dense consumer input x from the kept units x̃_K of the partly
pruned network, x ≈ c + A x̃_K with the ridge least squares of :func:`snp_engine.compensation.reconstruction`.
With few calibration samples per unit that fit follows the calibration images too closely. So the
calibration images are split into F folds (statistics are sums, so each fold's moments are sums
too); for every candidate fit — the sequential fit, and the one-shot fit from the dense statistics
x ≈ c + A x_K, each with every ridge r of a grid — the fit is made on F−1 folds and scored on the
left-out one by the consumer's output error

    E = E‖M^½ (x − c − A x̃_K)‖² = tr(M Cov_h(x − A x̃_K)) + mᵀ M m,   m = δx − A δ_K,

(Cov_h and δ = μ_h − μ_fit over the held-out fold, M the consumer metric). The candidate with the
least error summed over folds is refitted on all samples — but only where it beats the fixed ridge
formula of the sequential fit by more than the folds' standard error (measured: choosing on noisy
held-out errors alone cost demo-resnet up to 3 points at 32 calibration images).

Every ridge of the grid is scored from one eigendecomposition C_KK = V Λ Vᵀ per fold and fit kind:
with Q = C_{x,K} V, P = A₀ V and d = 1/(λ + r), A = (Q + r P) diag(d) Vᵀ, and each term of E is a
quadratic in r whose k×k coefficient matrices are formed once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from snp_engine.statistics import Moments

SEQUENTIAL, ONE_SHOT = "sequential", "one-shot"
# ridges, relative to the mean variance of the fitted inputs, that the held-out check chooses from
RELATIVE_RIDGES = (1e-8, 1e-6, 1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0)
DEFAULT_FOLDS = 4


@dataclass(frozen=True)
class FitChoice:
    """The fit a group's consumer gets, and the held-out errors behind the choice.

    ``error`` is the held-out output error of the chosen fit, ``sequential_error`` and
    ``one_shot_error`` the best of each kind, all relative to the consumer's output energy
    tr(M C_xx) (0 = perfect).
    """

    kind: str  # SEQUENTIAL or ONE_SHOT
    relative_ridge: float
    ridge: float
    error: float
    sequential_error: float
    one_shot_error: float
    folds: int

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            "fit": self.kind,
            "relative_ridge": self.relative_ridge,
            "heldout_error": self.error,
            "heldout_error_sequential": self.sequential_error,
            "heldout_error_one_shot": self.one_shot_error,
            "folds": self.folds,
        }


def fit_inputs(
    cov: torch.Tensor, mean: torch.Tensor, kept: torch.Tensor, kind: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(C_{x,K}, C_KK, μ_x, μ_K) of a fit from the joint moments of z = [x̃; x] (n units each).

    ``sequential`` regresses x on the kept units of x̃; ``one-shot`` on the kept units of x itself
    (the dense statistics), to be applied to x̃ all the same.
    """
    n = cov.shape[0] // 2
    source = kept if kind == SEQUENTIAL else kept + n
    return cov[n:][:, source], cov[source][:, source], mean[n:], mean[source]


def _sym(matrix: torch.Tensor) -> torch.Tensor:
    return (matrix + matrix.T) / 2


def heldout_errors(
    fit: Moments, held: Moments, metric: torch.Tensor, kept: torch.Tensor, kind: str, ridges: Sequence[float]
) -> torch.Tensor:
    """E(r) of the ``kind`` fit made on ``fit`` and scored on ``held``, for every ridge r (absolute)."""
    n = metric.shape[0]
    k = kept.shape[0]
    cov_f, mean_f = fit.covariance(), fit.mean()
    cross, kept_cov, target_mean, kept_mean = fit_inputs(cov_f, mean_f, kept, kind)
    cov_h, mean_h = held.covariance(), held.mean()
    h_kk = cov_h[:n, :n][kept][:, kept]  # the fitted map is always applied to x̃_K
    h_xk = cov_h[n:, :n][:, kept]
    h_xx = cov_h[n:, n:]
    d_x = mean_h[n:] - target_mean
    d_k = mean_h[:n][kept] - kept_mean

    lam, vec = torch.linalg.eigh(_sym(kept_cov))
    lam = lam.clamp_min(0)
    q = cross @ vec  # n×k
    p = torch.zeros(n, k, dtype=vec.dtype)
    p[kept] = vec  # A₀ V: the identity on the kept rows
    mq, mp = metric @ q, metric @ p
    x0, x1, x2 = q.T @ mq, q.T @ mp + mp.T @ q, p.T @ mp  # BᵀMB = x0 + r x1 + r² x2
    g = vec.T @ h_kk @ vec
    w = vec.T @ h_xk.T @ metric  # Vᵀ C_{K,x} M (k×n)
    wq, wp = (w * q.T).sum(1), (w * p.T).sum(1)
    m_dx = metric @ d_x
    qm, pm = q.T @ m_dx, p.T @ m_dx
    u = vec.T @ d_k
    base = float((metric * h_xx).sum()) + float(d_x @ m_dx)

    errors = []
    for r in ridges:
        d = 1.0 / (lam + r)
        x = x0 + r * x1 + (r * r) * x2
        quadratic = float((x * torch.outer(d, d) * g.T).sum())
        linear = float((d * (wq + r * wp)).sum())
        du = d * u
        mean_cross = float((qm + r * pm) @ du)
        mean_quadratic = float(du @ x @ du)
        errors.append(base - 2 * linear + quadratic - 2 * mean_cross + mean_quadratic)
    return torch.tensor(errors, dtype=torch.float64)


def choose_fit(
    folds: Sequence[Moments],
    metric: torch.Tensor,
    kept: torch.Tensor,
    baseline_ridge: float,
    *,
    relative_ridges: Sequence[float] = RELATIVE_RIDGES,
) -> FitChoice:
    """The fit (kind and ridge) with the least output error on held-out folds.

    The sequential fit with ``baseline_ridge`` (the fixed formula) stays unless another candidate
    is better by more than the standard error of the paired per-fold differences: held-out errors
    from a handful of folds are noisy, and a change that the folds cannot tell apart from noise is
    not made. Among the candidates, ties favour the sequential fit and the smaller ridge (so exactly
    dependent units are still removed exactly).
    """
    total = Moments.union(folds)
    n = metric.shape[0]
    cov = total.covariance()
    energy = max(float((metric * cov[n:, n:]).sum()), 1e-300)
    weights = torch.tensor([part.samples for part in folds], dtype=torch.float64) / total.samples
    candidates: list[tuple[str, float, float]] = []  # (kind, ridge, ridge relative to the inputs' variance)
    for kind in (SEQUENTIAL, ONE_SHOT):
        _, kept_cov, _, _ = fit_inputs(cov, total.mean(), kept, kind)
        scale = max(float(torch.diagonal(kept_cov).mean()), 1e-300)
        if kind == SEQUENTIAL:
            candidates.append((SEQUENTIAL, baseline_ridge, baseline_ridge / scale))  # the fixed formula: index 0
        candidates += [(kind, scale * rel, rel) for rel in relative_ridges]
    # per-fold errors (relative to the output energy) of every candidate: (candidates, folds)
    errors = torch.zeros(len(candidates), len(folds), dtype=torch.float64)
    for index, held in enumerate(folds):
        fit = Moments.union([f for j, f in enumerate(folds) if j != index])
        for kind in (SEQUENTIAL, ONE_SHOT):
            rows = [i for i, c in enumerate(candidates) if c[0] == kind]
            found = heldout_errors(fit, held, metric, kept, kind, [candidates[i][1] for i in rows])
            errors[rows, index] = found / energy
    mean = (errors * weights).sum(1)
    best = int(torch.argmin(mean[1:])) + 1
    gain = errors[0] - errors[best]
    spread = float(gain.std()) / len(folds) ** 0.5 if len(folds) > 1 else 0.0
    chosen = best if float(mean[0] - mean[best]) > spread else 0
    kind, ridge, relative = candidates[chosen]
    sequential = [i for i, c in enumerate(candidates) if c[0] == SEQUENTIAL]
    one_shot = [i for i, c in enumerate(candidates) if c[0] == ONE_SHOT]
    return FitChoice(
        kind,
        float(relative),
        float(ridge),
        float(mean[chosen]),
        float(mean[sequential].min()),
        float(mean[one_shot].min()),
        len(folds),
    )


__all__ = ["DEFAULT_FOLDS", "ONE_SHOT", "RELATIVE_RIDGES", "SEQUENTIAL", "FitChoice", "choose_fit", "heldout_errors"]

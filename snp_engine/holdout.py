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


@dataclass(frozen=True)
class _Blocks:
    """What the fits of x from the kept units need of one set of samples: its count, the means of
    x̃_K and x, and the covariance blocks C_{x̃K x̃K} (k×k), C_{x x̃K} (n×k) and C_xx (n×n) — not the
    whole 2n×2n covariance, which for a wide layer costs far more to form and to pool."""

    samples: float
    mean_kept: torch.Tensor
    mean_x: torch.Tensor
    kk: torch.Tensor
    xk: torch.Tensor
    xx: torch.Tensor

    @classmethod
    def of(cls, moments: Moments, kept: torch.Tensor) -> _Blocks:
        """The blocks straight from the shifted sums: C_ab = (S_ab + S_baᵀ)/2N − o_a o_bᵀ with
        S = Σ(z − s)(z − s)ᵀ and o = Σ(z − s)/N, without the rest of the 2n×2n covariance."""
        n = moments.units // 2
        count = moments.count.clamp_min(1)
        offset = moments.shifted_total / count
        outer = moments.shifted_outer
        mean = moments.mean()
        x = slice(n, 2 * n)

        def block(rows, cols) -> torch.Tensor:
            product = outer[rows][:, cols] + outer[cols][:, rows].T
            return product / (2 * count) - torch.outer(offset[rows], offset[cols])

        return cls(float(moments.samples), mean[:n][kept], mean[n:], block(kept, kept), block(x, kept), block(x, x))

    @staticmethod
    def pooled(parts: Sequence[_Blocks]) -> _Blocks:
        """The blocks of the union of ``parts``: μ = Σ nᵢμᵢ/N, C = Σ nᵢ(Cᵢ + (μᵢ − μ)(μᵢ − μ)ᵀ)/N."""
        total = sum(p.samples for p in parts)
        weights = [p.samples / total for p in parts]
        mean_kept = sum(w * p.mean_kept for w, p in zip(weights, parts, strict=True))
        mean_x = sum(w * p.mean_x for w, p in zip(weights, parts, strict=True))
        kk = torch.zeros_like(parts[0].kk)
        xk = torch.zeros_like(parts[0].xk)
        xx = torch.zeros_like(parts[0].xx)
        for w, p in zip(weights, parts, strict=True):
            dk, dx = p.mean_kept - mean_kept, p.mean_x - mean_x
            kk += w * (p.kk + torch.outer(dk, dk))
            xk += w * (p.xk + torch.outer(dx, dk))
            xx += w * (p.xx + torch.outer(dx, dx))
        return _Blocks(total, mean_kept, mean_x, kk, xk, xx)

    def inputs(self, kept: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(C_{x,K}, C_KK, μ_x, μ_K) of the ``kind`` fit, as :func:`fit_inputs`."""
        if kind == SEQUENTIAL:
            return self.xk, self.kk, self.mean_x, self.mean_kept
        return self.xx[:, kept], self.xx[kept][:, kept], self.mean_x, self.mean_x[kept]


def heldout_errors(
    fit: Moments, held: Moments, metric: torch.Tensor, kept: torch.Tensor, kind: str, ridges: Sequence[float]
) -> torch.Tensor:
    """E(r) of the ``kind`` fit made on ``fit`` and scored on ``held``, for every ridge r (absolute)."""
    return _errors(_Blocks.of(fit, kept), _Blocks.of(held, kept), metric, kept, kind, ridges)


def _errors(
    fit: _Blocks, held: _Blocks, metric: torch.Tensor, kept: torch.Tensor, kind: str, ridges: Sequence[float]
) -> torch.Tensor:
    cross, kept_cov, target_mean, kept_mean = fit.inputs(kept, kind)
    h_kk, h_xk, h_xx = held.kk, held.xk, held.xx  # the fitted map is always applied to x̃_K
    d_x = held.mean_x - target_mean
    d_k = held.mean_kept - kept_mean

    lam, vec = torch.linalg.eigh(_sym(kept_cov))
    lam = lam.clamp_min(0)
    # P = A₀ V is V on the kept rows and 0 elsewhere, so Pᵀ Y = Vᵀ Y_K and M P = M_{:,K} V (M symmetric)
    q = cross @ vec  # n×k
    mq, mp = metric @ q, metric[:, kept] @ vec
    cross_term = vec.T @ mq[kept]  # Pᵀ M Q
    x0, x1, x2 = q.T @ mq, cross_term + cross_term.T, vec.T @ mp[kept]  # BᵀMB = x0 + r x1 + r² x2
    g = vec.T @ h_kk @ vec
    held_v = h_xk @ vec  # C_{x,K} V of the held-out fold (n×k)
    wq, wp = (held_v * mq).sum(0), (held_v * mp).sum(0)  # diagonals of Vᵀ C_{K,x} M Q and … M P
    m_dx = metric @ d_x
    qm, pm = q.T @ m_dx, vec.T @ m_dx[kept]
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
    dependent units are still removed exactly). Each fold's covariance is formed once; the fits on
    the other folds pool the blocks they need (:class:`_Blocks`).
    """
    parts = [_Blocks.of(part, kept) for part in folds]
    total = _Blocks.pooled(parts)
    energy = max(float((metric * total.xx).sum()), 1e-300)
    weights = torch.tensor([part.samples for part in parts], dtype=torch.float64) / total.samples
    candidates: list[tuple[str, float, float]] = []  # (kind, ridge, ridge relative to the inputs' variance)
    for kind in (SEQUENTIAL, ONE_SHOT):
        _, kept_cov, _, _ = total.inputs(kept, kind)
        scale = max(float(torch.diagonal(kept_cov).mean()), 1e-300)
        if kind == SEQUENTIAL:
            candidates.append((SEQUENTIAL, baseline_ridge, baseline_ridge / scale))  # the fixed formula: index 0
        candidates += [(kind, scale * rel, rel) for rel in relative_ridges]
    # per-fold errors (relative to the output energy) of every candidate: (candidates, folds)
    errors = torch.zeros(len(candidates), len(parts), dtype=torch.float64)
    for index, held in enumerate(parts):
        fit = _Blocks.pooled([f for j, f in enumerate(parts) if j != index])
        for kind in (SEQUENTIAL, ONE_SHOT):
            rows = [i for i, c in enumerate(candidates) if c[0] == kind]
            found = _errors(fit, held, metric, kept, kind, [candidates[i][1] for i in rows])
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

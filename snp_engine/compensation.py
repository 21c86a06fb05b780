"""Least-squares compensation: rewrite a consumer layer so it no longer reads the pruned units.

The consumer computes z = Σ_t W_t x(p+t) + b (t runs over kernel taps; a linear layer has one tap,
a flatten→linear layer one tap per position of the flattened map). If the units it reads are
approximated from a kept subset K as

    x ≈ c + A x̃_K          A = (C_{x,x̃K} + r A₀)(C_{x̃K x̃K} + r I)⁻¹,   c = μ_x − A μ_{x̃K}

then W_t ← W_t A for every tap and the constant Σ_t f_t W_t c moves into the bias, f_t being the
fraction of output positions at which tap t reads inside the zero-padded input (so padding is
honoured instead of summing the constant over all taps). For the paper's one-shot case x̃ = x,
A₀ = [I; 0] and the rows of A are I on K and B = C_PK (C_KK + r)⁻¹ on the pruned units P: the
classic W_K ← W_K + W_P B, b ← b + W_P(μ_P − B μ_K).
"""

from __future__ import annotations

import torch


def tap_coverage(
    kernel_size: tuple[int, int],
    input_size: tuple[int, int],
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] | str = (0, 0),
    dilation: tuple[int, int] = (1, 1),
) -> torch.Tensor:
    """f_t: for each kernel tap, the fraction of output positions where it reads a real input pixel.

    Equal to the mean over output positions of the convolution of an all-ones map under the
    layer's zero padding, tap by tap. Shape (kh, kw), values in [0, 1]. ``padding`` may also be
    Conv2d's ``"valid"`` or ``"same"`` (which pads d·(k−1)//2 before and the rest after).
    """
    if padding == "valid":
        padding = (0, 0)
    pads = (
        [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel_size, dilation, strict=True)]
        if padding == "same"
        else [(p, p) for p in padding]
    )
    per_axis = []
    for k, size, s, (before, after), d in zip(kernel_size, input_size, stride, pads, dilation, strict=True):
        outputs = (size + before + after - d * (k - 1) - 1) // s + 1
        starts = torch.arange(outputs) * s - before
        taps = torch.arange(k) * d
        positions = starts[None, :] + taps[:, None]
        inside = ((positions >= 0) & (positions < size)).double()
        per_axis.append(inside.mean(1) if outputs > 0 else torch.zeros(k, dtype=torch.float64))
    return per_axis[0][:, None] * per_axis[1][None, :]


def consumer_metric(weight_taps: torch.Tensor, coverage: torch.Tensor | None = None) -> torch.Tensor:
    """M = Σ_t f_t W_tᵀ W_t (n×n) for consumer weights arranged as (out, n, taps).

    The consumer's output error for an input error e is Σ_t W_t e(p+t); treating errors at different
    positions as uncorrelated gives E‖error‖² = tr(M Cov(e)).
    """
    rows = consumer_metric_rows(weight_taps, coverage)
    # As one matrix product: a BLAS call, far faster than the equivalent three-operand einsum on
    # wide flatten→linear consumers.
    return rows.T @ rows


def consumer_metric_rows(weight_taps: torch.Tensor, coverage: torch.Tensor | None = None) -> torch.Tensor:
    """F with M = Fᵀ F (:func:`consumer_metric`): one row √f_t W_t[o, :] per (output, tap) pair.

    A consumer with fewer (output, tap) pairs than inputs (an MLP's second layer, a classifier)
    has a metric of rank below n, and the wide-layer ordering works with F instead of M."""
    w = weight_taps.double()
    f = _tap_weights(w, coverage)
    return (w * f.sqrt()).transpose(1, 2).reshape(-1, w.shape[1])


def within_groups(cov: torch.Tensor, groups: int, copies: int = 1) -> torch.Tensor:
    """C with every covariance between units of different conv groups set to zero.

    A grouped conv reader (``groups`` equal parts of the n units) can only be rewritten within each
    part: its weight is block-diagonal, and so must W A be. With the cross-part covariances zero,
    the least-squares map A = C_{x,x̃K} C_{x̃K x̃K}⁻¹ decouples into one map per part, each the best
    that part can have from its own kept units; the ordering and the curve then measure what those
    maps explain. ``copies`` > 1 handles the joint covariance of [x̃; x] (each n units, same parts).
    """
    if groups <= 1:
        return cov
    n = cov.shape[0] // copies
    part = torch.arange(n, device=cov.device) // (n // groups)
    part = part.repeat(copies)
    return cov * (part[:, None] == part[None, :]).to(cov.dtype)


def compensation_ridge(cov: torch.Tensor, kept: int, samples: int, relative: float = 1e-6) -> float:
    """Ridge for the least-squares fit: r = max(relative, (2k/N − 1)₊²) · tr(C)/n.

    A fit on k kept units from N samples interpolates the calibration data as k approaches N and
    then fails on new data (a hidden FC layer with 64 calibration images and 61 kept units lost
    8 points of top-1 on demo-vgg). Shrinking towards "no change" once k exceeds N/2 fixed that; below
    that the ridge stays tiny, so exactly dependent units are still removed exactly.
    """
    mean_variance = float(torch.diagonal(cov).sum()) / max(cov.shape[0], 1)
    if mean_variance <= 0:
        return 1e-12
    crowding = max(0.0, 2 * kept / max(samples, 1) - 1)
    return mean_variance * max(relative, crowding**2)


def reconstruction(
    cross: torch.Tensor,
    kept_cov: torch.Tensor,
    target_mean: torch.Tensor,
    kept_mean: torch.Tensor,
    ridge: float,
    prior: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge least squares x ≈ c + A x̃_K, shrunk towards ``prior`` (A₀).

    A = (C_{x,x̃K} + r A₀)(C_{x̃K x̃K} + r I)⁻¹ (n×k),  c = μ_x − A μ_{x̃K} (n).
    ``cross`` is C_{x,x̃K} (n×k), ``kept_cov`` C_{x̃K x̃K} (k×k).
    """
    k = kept_cov.shape[0]
    eye = torch.eye(k, dtype=kept_cov.dtype, device=kept_cov.device)
    rhs = cross if prior is None else cross + ridge * prior
    # Solve A (C_KK + rI) = rhs  <=>  (C_KK + rI) Aᵀ = rhsᵀ (symmetric system).
    system = kept_cov + ridge * eye
    solution = torch.linalg.solve(system, rhs.T).T
    offset = target_mean - solution @ kept_mean
    return solution, offset


def one_shot_reconstruction(
    cov: torch.Tensor, mean: torch.Tensor, kept: torch.Tensor, ridge: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's LLS compensation from dense statistics: rows K of A are I, rows P are
    B = C_PK (C_KK + r)⁻¹, and c is zero on K and μ_P − B μ_K on P."""
    n = cov.shape[0]
    prior = torch.zeros(n, kept.shape[0], dtype=cov.dtype, device=cov.device)
    prior[kept, torch.arange(kept.shape[0], device=cov.device)] = 1
    return reconstruction(cov[:, kept], cov[kept][:, kept], mean, mean[kept], ridge, prior)


def compensated_weight(weight_taps: torch.Tensor, mapping: torch.Tensor) -> torch.Tensor:
    """W_t ← W_t A for every tap: (out, n, taps) × (n, k) → (out, k, taps)."""
    w = weight_taps.double()
    mapped = w.transpose(1, 2).reshape(-1, w.shape[1]) @ mapping.to(w)  # (out·taps, k)
    return mapped.reshape(w.shape[0], w.shape[2], -1).transpose(1, 2)


def constant_response(
    weight_taps: torch.Tensor, offset: torch.Tensor, coverage: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean consumer response to the constant input map c under zero padding: Σ_t f_t W_t c (out)."""
    w = weight_taps.double()
    return (w * _tap_weights(w, coverage)).sum(2) @ offset.to(w)


def _tap_weights(w: torch.Tensor, coverage: torch.Tensor | None) -> torch.Tensor:
    """f_t per tap (all ones without a coverage map)."""
    if coverage is None:
        return torch.ones(w.shape[2], dtype=w.dtype, device=w.device)
    return coverage.reshape(-1).to(w)

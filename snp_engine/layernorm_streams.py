"""Residual streams read through layer norms over their channels (ConvNeXt, torchvision and timm).

A ConvNeXt stage keeps a stream x_b ∈ R^n per position, b = 0 … B:

    x_0 = LN(y_0)                       y_0 = stem conv (first stage) — or x_0 = downsample conv
    x_b = x_{b−1} + s ⊙ W₂ GELU(W₁ z_b + b₁) + b₂,   z_b = LN(dw_b(x_{b−1}))
    downsample / head:  Conv(LN(x_B)) / Linear(LN(pool(x_B)))

LN(y) = γ ⊙ (y − μ(y)) / σ(y) + β normalises over the n channels at each position (μ, σ² the mean
and variance of the n entries; ``nn.LayerNorm`` over the last dim after a permute, or a
``LayerNorm2d`` over dim 1).

**Units.** Unit c is stream channel c, the same index in every x_b of the stage. Removing a set P
(keeping K) removes output c of every producer (the stem conv or the downsample conv, each block's
W₂ row and b₂ entry, the layer-scale entry s_c), channel c of every depthwise conv dw_b (channel-wise,
exact) and shrinks every layer norm over the stream to the kept channels: LN_K(y_K) = γ_K ⊙
(y_K − μ_K) / σ_K + β_K with μ_K, σ_K² the mean and variance of the kept entries y_K alone. Unlike a
BatchNorm this is not channel-wise: every kept output changes when P is removed, unless the removed
entries happen to have the kept entries' mean and variance.

**Where statistics are taken.** At every *reader* of the stream: the linear layer right after a
reader-side layer norm (each block's W₁ after z_b, the downsample conv, the classifier), on the
tensor it reads (the dense z = LN(y)). The ordering and the explained-variance curve of the group
combine these readers with their consumer metrics as for any coupled group
(:mod:`snp_engine.groups`).

**What the compensation solves.** After pruning, reader r reads z'_K = LN_K(y_K) instead of z. It
is refitted by least squares towards what the dense reader read,

    z ≈ c + A z'_K,    A = C_{z z'_K} C_{z'_K z'_K}⁻¹,    c = μ_z − A μ_{z'_K}
    W ← W A,  b ← b + W c

(:func:`snp_engine.compensation.reconstruction`, the fit sequential calibration makes, with its
ridge shrinking A towards I on K; C_{z'_K z'_K} has rank k − 1 at most, as the normalised entries of
z'_K sum to zero, and the ridge settles that direction). A reader of the stream itself, with no
norm in between (a pre-norm MLP's last layer), is a stream reader as in a ResNet. z'_K is a
deterministic function of the layer norm's input y given K, so the joint moments of [z'_K; z] are
taken with the kept channels' layer norm in place (:func:`restrict_norms`) on the network that is
being pruned (sequential calibration: the partly pruned network, so the fit also absorbs what was
pruned upstream) or on a copy of the dense network (one-shot with calibration data). With K = all
channels LN_K = LN, and nothing changes: keep-all reproduces the dense network exactly. One-shot
pruning without data has only the dense moments of z: it linearises LN_K around them
(:func:`linearised_moments`: the centring over K is linear, the scale 1/s_K is replaced by its
root mean square), z'_K ≈ T z + t, and fits z ≈ c + A (T z + t) from C_z and μ_z
(:func:`data_free_fit`); exact only where s_K is the same at every position, so the fit from data
(sequential calibration, the default) is the one to use for these streams.

A producer-side layer norm (the stem's, x_0 = LN(y_0)) changes the stream itself: x_0,K becomes
LN_K(y_0,K), which no reader can undo exactly; the readers' fits towards the dense network take
that change up with everything else.

**Functional and physical pruning agree.** While pruning, each layer norm of a pruned stream is
restricted in place by a forward hook (:func:`restrict_norms`): it normalises the kept channels
only and writes zeros to the removed ones, which no reader reads any more. Physical removal
(:func:`snp_engine.surgery.remove_units`, through torch-pruning) then deletes γ_P, β_P (and the
producers' rows, the depthwise channels, the layer-scale entries, the readers' columns), and the
shrunk layer norm computes LN_K exactly as the hook did. Sequential calibration does not use its
segment cache on such networks: :mod:`snp_engine.segments` runs a traced graph node by node, in
which a norm traced through (torchvision's ``LayerNorm2d`` is not a torch.nn leaf) never calls its
hook, and its checks of what changed see parameters, not hooks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from snp_engine.compensation import compensation_ridge, reconstruction
from snp_engine.groups import UnitGroup

# attribute of a restricted layer norm: (kept indices, the hook's id in its forward hooks); an id, not a
# handle, so that a deep copy of the network stays restricted and releasable
_HANDLES = "_snp_kept_channels"


def is_stream_norm(module: nn.Module, units: int) -> bool:
    """True for a layer norm over exactly ``units`` channels (the last dim, or dim 1 for a
    ``LayerNorm2d``)."""
    return isinstance(module, nn.LayerNorm) and tuple(module.normalized_shape) == (units,)


def channels_first(module: nn.Module) -> bool:
    """Whether a layer norm normalises dim 1 of an (N, C, H, W) map (torchvision's and timm's
    ``LayerNorm2d``) rather than the last dim."""
    return "2d" in type(module).__name__.lower()


def stream_norms(model: nn.Module, group: UnitGroup) -> tuple[str, ...]:
    """The layer norms over the group's channels (empty for groups of other kinds)."""
    if group.kind != "channels" or group.block != 1:
        return ()
    return tuple(name for name in group.channelwise if is_stream_norm(model.get_submodule(name), group.units))


def kept_channels_norm(module: nn.LayerNorm, x: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """LN_K: the layer norm of ``module`` over the channels ``kept`` only (their own mean and
    variance, γ_K and β_K); the other channels of the output are zero."""
    dim = 1 if channels_first(module) else x.dim() - 1
    moved = x.movedim(dim, -1)
    kept = kept.to(x.device)
    weight = module.weight[kept] if module.weight is not None else None
    bias = module.bias[kept] if module.bias is not None else None
    out = torch.zeros_like(moved)
    out[..., kept] = F.layer_norm(moved[..., kept], (int(kept.numel()),), weight, bias, module.eps)
    return out.movedim(-1, dim)


def restrict_norms(model: nn.Module, names: Iterable[str], kept: Sequence[int] | torch.Tensor) -> None:
    """Make each layer norm ``names`` of ``model`` compute LN_K over the channels ``kept`` (a forward
    hook replacing its output; a norm restricted before is restricted anew)."""
    kept = torch.as_tensor(kept, dtype=torch.long)
    for name in names:
        module = model.get_submodule(name)
        release_norms_of(module)
        if kept.numel() == module.normalized_shape[0]:
            continue  # keep-all: LN_K is LN

        def hook(mod, inputs, _output, kept=kept):
            return kept_channels_norm(mod, inputs[0], kept)

        setattr(module, _HANDLES, (kept, module.register_forward_hook(hook).id))


def release_norms_of(module: nn.Module) -> None:
    """Remove a restriction made by :func:`restrict_norms` from one layer norm."""
    entry = module.__dict__.pop(_HANDLES, None)
    if entry is not None:
        module._forward_hooks.pop(entry[1], None)


def release_norms(model: nn.Module) -> None:
    """Remove every restriction made by :func:`restrict_norms` (before physical removal, which
    shrinks the layer norms themselves to the kept channels)."""
    for module in model.modules():
        release_norms_of(module)


def reader_norms(model: nn.Module, norms: Sequence[str], readers: Sequence[str], example: torch.Tensor) -> dict:
    """For each reader, the layer norm of ``norms`` whose output it reads as it is (the same values,
    perhaps flattened: the head's norm → flatten → classifier), found on one forward pass of
    ``example``; readers that read anything else are missing."""
    last: dict[str, tuple[str, torch.Tensor]] = {}
    found: dict[str, str] = {}
    handles = []
    for name in norms:

        def remember(_module, _inputs, output, name=name):
            last["norm"] = (name, output)

        handles.append(model.get_submodule(name).register_forward_hook(remember))
    for reader in readers:

        def check(_module, inputs, reader=reader):
            entry = last.get("norm")
            x = inputs[0]
            if entry is not None and entry[1].numel() == x.numel() and torch.equal(entry[1].reshape(-1), x.reshape(-1)):
                found.setdefault(reader, entry[0])

        handles.append(model.get_submodule(reader).register_forward_pre_hook(check))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return found


def linearised_moments(
    cov: torch.Tensor, mean: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, kept: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Moments of z'_K = LN_K(y_K) from the dense moments of z = LN(y) alone (no data), to first order.

    With u = (z − β)/γ the dense normalised entries (mean 0, mean square 1 over the n channels),
    LN_K(y_K) = γ_K ⊙ (P u_K)/s_K + β_K, P = I − 11ᵀ/k the centring over the kept channels and s_K² =
    ‖P u_K‖²/k. Replacing s_K by its root mean square ŝ, ŝ² = tr(P E[u_K u_Kᵀ] P)/k, makes z'_K ≈ T z + t
    affine in z: T = diag(γ_K) P S_K diag(γ)⁻¹ / ŝ (S_K picks rows K), t = β_K − T β. Then

        μ_{z'} = T μ_z + t,   C_{z'z'} = T C_z Tᵀ,   C_{z z'} = C_z Tᵀ,

    the inputs of the least-squares fit z ≈ c + A z'_K. Returns (C_{z z'}, C_{z'z'}, μ_{z'}), or None
    where some γ is 0 (that channel's u is not known from z)."""
    cov, mean = cov.double(), mean.double()
    gamma = (weight.detach() if weight is not None else torch.ones_like(mean)).double().to(cov.device)
    beta = (bias.detach() if bias is not None else torch.zeros_like(mean)).double().to(cov.device)
    if bool((gamma.abs() < 1e-12).any()):
        return None
    kept = kept.to(cov.device)
    k = kept.numel()
    u_mean = (mean - beta) / gamma
    u_second = cov / gamma[:, None] / gamma[None, :] + u_mean[:, None] * u_mean[None, :]
    centring = torch.eye(k, dtype=cov.dtype, device=cov.device) - 1.0 / k
    second_k = u_second[kept][:, kept]
    scale = float(torch.trace(centring @ second_k @ centring)) / k
    if scale <= 0:
        return None
    transform = torch.zeros(k, mean.numel(), dtype=cov.dtype, device=cov.device)
    transform[:, kept] = (gamma[kept][:, None] * centring) / gamma[kept][None, :] / scale**0.5
    shift = beta[kept] - transform @ beta
    return cov @ transform.T, transform @ cov @ transform.T, transform @ mean + shift


def data_free_fit(
    cov: torch.Tensor, mean: torch.Tensor, norm: nn.Module, kept: torch.Tensor, samples: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One-shot without data: z ≈ c + A z'_K from :func:`linearised_moments`, A = (C_{z z'} + r A₀)
    (C_{z'z'} + r I)⁻¹ with A₀ = I on K (:func:`snp_engine.compensation.reconstruction`; C_{z'z'} has
    rank k − 1, as z'_K has: its normalised entries sum to zero). Returns (A, c), or None where the
    moments cannot be linearised."""
    moments = linearised_moments(cov, mean, norm.weight, norm.bias, kept)
    if moments is None:
        return None
    cross, kept_cov, kept_mean = moments
    prior = torch.zeros_like(cross)
    prior[kept.to(cross.device), torch.arange(kept.numel(), device=cross.device)] = 1
    ridge = compensation_ridge(kept_cov, kept.numel(), samples)
    return reconstruction(cross, kept_cov, mean.double(), kept_mean, ridge, prior)


def restricted(model: nn.Module) -> bool:
    """Whether any layer norm of ``model`` is restricted by :func:`restrict_norms`."""
    return any(_HANDLES in vars(m) for m in model.modules())


__all__ = [
    "channels_first",
    "data_free_fit",
    "is_stream_norm",
    "kept_channels_norm",
    "linearised_moments",
    "reader_norms",
    "release_norms",
    "restrict_norms",
    "restricted",
    "stream_norms",
]

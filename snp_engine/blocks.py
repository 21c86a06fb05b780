"""Whole residual blocks as removable units: find them, score them, remove them compensated.

**What counts as a block.** A submodule B (not the network itself) that

* takes one floating-point tensor x and returns one tensor y of the same shape,
* contains a ``Conv2d`` or ``Linear`` (and is not one itself),
* computes y = g(x + f(x)): walking back from y through its autograd graph, past element-wise
  activations at the top (g, e.g. ResNet's ReLU after the add), one reaches an addition that has x
  itself as an operand, possibly through further additions (a ViT or Swin block adds two branches in
  turn: y = (x + a(x)) + m(x + a(x))),
* can be replaced by ``nn.Identity`` with the network still running and giving outputs of the same shape,
* and contains no other such block (the innermost residual modules are the units).

That finds torchvision's BasicBlock/Bottleneck without a downsample, MobileNetV2's InvertedResidual
with its skip, ConvNeXt's CNBlock and ViT's EncoderBlock without naming any of them. Inputs of four
dimensions are read as (batch, channels, height, width), three as (batch, tokens, channels).

**Score** (the subspace reasoning for channels, one level up). At the block's input x and output y
(n channels each; samples are (image, position) pairs or tokens) take the joint moments of
z = [x; y]. The best affine map from the input,

    y ≈ c + A x,   A = (C_yx + r I)(C_xx + r I)⁻¹,   c = μ_y − A μ_x,

is what a linear reader of the stream can still recover once the block is the identity (it reads
W y + b ≈ W A x + W c + b, a rewrite of its weights and bias). What the map leaves,

    S = Cov(y − c − A x)   (r → 0: C_yy − C_yx C_xx⁻¹ C_xy, the Schur complement),

is what the branch carries beyond any linear function of its input; its share of the output's
variance, u = tr S / tr C_yy, is the block's score: u = 0 for a block whose branch is linear in its
input (its removal loses nothing compensation cannot restore), u → 1 for a branch that is new
information. Fitted and scored on the same images u shrinks as n approaches the sample count, so it
is measured on held-out folds (image i in fold i mod F, the error E of
:func:`snp_engine.holdout.heldout_errors` with M = I) at the best ridge of a grid. Also reported:
b = tr Cov(y − x) / tr C_yy, the share of the output's variance in the branch itself, which is what
dropping the block without compensation changes, and the next-reader energy share v: the same
held-out residual weighed by M = Σ WᵀW of the conv/linear layers that read y itself
(:func:`reader_energy_share`), i.e. the share of those readers' output energy that the map leaves.

**Removal.** The blocks become ``nn.Identity``; then every conv/linear layer that runs after the
first removed block is refitted, front to back, towards the *dense* network's input of that layer
exactly as sequential calibration refits a reader (:func:`snp_engine.pruning.fit_reader`: joint
moments of [x̃; x], x̃ from the network with the blocks removed, x ≈ c + A x̃ with the ridge
shrinking to "no change" and chosen on held-out folds). A removed block's skip path carries its
error on to later blocks unchanged; only the layers that read the stream (and everything after
them) can be corrected.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from snp_engine.activations import collect_joint_folds, following_norms, images_of, model_dtype
from snp_engine.compensation import consumer_metric, tap_coverage
from snp_engine.distributed import all_reduce, numbering, shifts_of_process_zero
from snp_engine.distributed import total as total_over_processes
from snp_engine.errors import SnpError
from snp_engine.groups import Reader
from snp_engine.holdout import DEFAULT_FOLDS, RELATIVE_RIDGES, SEQUENTIAL, heldout_errors
from snp_engine.progress import Reporter, Scaled
from snp_engine.pruning import fit_reader
from snp_engine.residual import Block, collect_block_moments, find_blocks, first_calls, replace_blocks
from snp_engine.runtime import DEFAULT_BATCH_SIZE, CastImages, batches_of, out_of_memory_as_error, resolve_device
from snp_engine.statistics import Moments
from snp_engine.surgery import weight_taps

# Readers with more inputs than this are not refitted (their joint moments would be (2n)² floats per fold).
MAX_REFIT_UNITS = 2048


@dataclass(frozen=True)
class BlockScore:
    """How much a block adds beyond a linear map of its input (see the module docstring).

    ``unexplained`` is u (held-out, at the best ``relative_ridge``), ``branch`` is b; both are
    shares of the block's output variance. ``samples`` counts the rows behind them. ``reader_energy``
    is v, the share of the next readers' output energy (None when no conv/linear layer reads the
    block's output itself, e.g. it goes through a norm or a pooling first).
    """

    name: str
    units: int
    samples: int
    unexplained: float
    branch: float
    relative_ridge: float
    reader_energy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "units": self.units,
            "samples": self.samples,
            "unexplained": self.unexplained,
            "branch": self.branch,
            "relative_ridge": self.relative_ridge,
            "reader_energy": self.reader_energy,
        }


@dataclass(frozen=True)
class BlockRemoval:
    """A copy of a network with blocks replaced by the identity, and how the rest was refitted.

    ``refitted`` are the layers rewritten towards the dense network (``fits``: the held-out choice
    per layer, as in a pruning record), ``skipped`` the later layers left alone, with why.
    """

    model: nn.Module
    removed: tuple[str, ...]
    compensated: bool
    refitted: tuple[str, ...] = ()
    skipped: Mapping[str, str] = field(default_factory=dict)
    fits: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "removed": list(self.removed),
            "compensated": self.compensated,
            "refitted": list(self.refitted),
            "skipped": dict(self.skipped),
            "fits": {name: dict(fit) for name, fit in self.fits.items()},
        }


# ----------------------------------------------------------------------------------------------
# The equations


def branch_share(moments: Moments) -> float:
    """b = tr Cov(y − x) / tr C_yy from the moments of z = [x; y]:
    Cov(y − x) = C_yy − C_yx − C_xy + C_xx (0 when the output variance is zero)."""
    cov = moments.covariance()
    n = cov.shape[0] // 2
    energy = float(torch.diagonal(cov[n:, n:]).sum())
    if energy <= 0:
        return 0.0
    difference = cov[n:, n:] - cov[n:, :n] - cov[:n, n:] + cov[:n, :n]
    return float(torch.diagonal(difference).sum()) / energy


def unexplained_share(
    folds: Sequence[Moments], relative_ridges: Sequence[float] = RELATIVE_RIDGES
) -> tuple[float, float]:
    """(u, relative ridge): the least held-out share of the output variance that y ≈ c + A x leaves.

    For each ridge r = ρ · mean(diag C_xx) of the grid ρ and each fold h, the map is fitted on the
    other folds (A = (C_yx + r I)(C_xx + r I)⁻¹, c = μ_y − A μ_x) and scored on fold h by
    E_h = tr Cov_h(y − A x) + ‖δy − A δx‖² (δ: fold mean minus fitted mean); u = min_r Σ_h w_h E_h / tr C_yy
    with w_h the fold's share of the samples. With one fold the fit is scored in-sample.
    """
    return reader_energy_share(folds, None, relative_ridges)


def reader_energy_share(
    folds: Sequence[Moments], metric: torch.Tensor | None, relative_ridges: Sequence[float] = RELATIVE_RIDGES
) -> tuple[float, float]:
    """(v, relative ridge): the least held-out share of the next readers' output energy that y ≈ c + A x leaves.

    A reader of the block's output with weights W (its taps folded into n input columns, as
    :func:`snp_engine.compensation.consumer_metric` folds them) turns y into W y; the readers together
    see the energy tr(W C_yy Wᵀ) summed over them, = tr(M C_yy) with M = Σ Wᵀ W (n×n, ``metric``).
    Once the block is the identity they read W (c + A x) instead (their weights rewritten), and lose

        E_M = tr(M Cov(y − c − A x)),

    the branch's part that no linear map of the input restores, as the readers see it: a direction
    of y no reader weighs costs nothing, one they weigh heavily costs more than its variance. The map
    is the score's own, A = (C_yx + r I)(C_xx + r I)⁻¹; at r → 0 and M positive definite it is also the
    map that minimises E_M (the normal equations M (C_yx − A C_xx) = 0 do not depend on M).
    v = min_r Σ_h w_h E_M,h / tr(M C_yy), held out as u is (see :func:`unexplained_share`); ``metric``
    None is M = I, which is u.
    """
    parts = [part for part in folds if part.samples]
    if not parts:
        return 0.0, 0.0
    total = Moments.union(parts)
    cov = total.covariance()
    n = cov.shape[0] // 2
    metric = torch.eye(n, dtype=torch.float64) if metric is None else metric.to(torch.float64)
    energy = float((metric * cov[n:, n:]).sum())  # tr(M C_yy), M symmetric
    if energy <= 0:
        return 0.0, 0.0
    scale = max(float(torch.diagonal(cov[:n, :n]).mean()), 1e-300)
    ridges = [scale * rho for rho in relative_ridges]
    kept = torch.arange(n)
    errors = torch.zeros(len(ridges), dtype=torch.float64)
    if len(parts) == 1:
        errors += heldout_errors(total, total, metric, kept, SEQUENTIAL, ridges)
    else:
        for index, held in enumerate(parts):
            fit = Moments.union([p for j, p in enumerate(parts) if j != index])
            errors += held.samples / total.samples * heldout_errors(fit, held, metric, kept, SEQUENTIAL, ridges)
    best = int(torch.argmin(errors))
    return max(float(errors[best]) / energy, 0.0), float(relative_ridges[best])


def check_block_count(count: int, names: Sequence[str]) -> None:
    """Refuse a count of blocks to remove below 0 or above the removable ``names`` (one line each)."""
    if count < 0:
        raise SnpError(f"the number of blocks to remove must be 0 or more, got {count}")
    if count > len(names):
        listed = ", ".join(names[:8]) + (", …" if len(names) > 8 else "")
        found = f" ({listed})" if names else ""
        raise SnpError(f"cannot remove {count} blocks: the network has {len(names)} removable blocks{found}")


def least_important(scores: Sequence[BlockScore], count: int) -> tuple[str, ...]:
    """The ``count`` blocks with the least unexplained share u (ties: the earlier block), in network order."""
    check_block_count(count, [s.name for s in scores])
    position = {s.name: i for i, s in enumerate(scores)}
    chosen = sorted(scores, key=lambda s: (s.unexplained, position[s.name]))[:count]
    return tuple(sorted((s.name for s in chosen), key=position.__getitem__))


# ----------------------------------------------------------------------------------------------
# Scoring


def _loader(model: nn.Module, data, batch_size: int, samples: int | None):
    return CastImages(batches_of(data, batch_size=batch_size, samples=samples), model_dtype(model))


def _example(model: nn.Module, loader, device) -> torch.Tensor:
    first = next(iter(loader))
    return images_of(first)[:1].to(device)


def reader_metrics(model: nn.Module, blocks: Sequence[Block], example: torch.Tensor) -> dict[str, torch.Tensor]:
    """M = Σ_readers Σ_t f_t W_tᵀ W_t (:func:`~snp_engine.compensation.consumer_metric`) of the conv/linear
    layers whose input is a block's output tensor itself, per block, from one probe on ``example``;
    a block whose output no such layer reads directly is left out."""
    names = {block.name: block for block in blocks}
    outputs: list[tuple[torch.Tensor, str]] = []  # kept alive for the probe: compared by identity
    metrics: dict[str, torch.Tensor] = {}

    def block_done(name: str, output: object) -> None:
        if isinstance(output, torch.Tensor):
            outputs.append((output, name))

    def reader_called(name: str, layer: nn.Module, inputs: tuple) -> None:
        block = next((b for out, b in outputs if inputs and inputs[0] is out), None)
        if block is None:
            return
        x = inputs[0]
        if isinstance(layer, nn.Conv2d):
            units, layout = layer.in_channels, "conv"
            coverage = tap_coverage(layer.kernel_size, tuple(x.shape[2:]), layer.stride, layer.padding, layer.dilation)
        else:
            units, layout, coverage = layer.in_features, "linear", None
        if units != names[block].units:
            return
        metric = consumer_metric(weight_taps(layer, layout, units), coverage).cpu()
        metrics[block] = metrics[block] + metric if block in metrics else metric

    handles = []
    for name, module in model.named_modules():
        if name in names:
            handles.append(module.register_forward_hook(lambda _m, _i, out, name=name: block_done(name, out)))
        elif isinstance(module, nn.Conv2d | nn.Linear):
            handles.append(module.register_forward_pre_hook(lambda m, i, name=name: reader_called(name, m, i)))
    try:
        with torch.no_grad():
            model(example.to(model_dtype(model)))
    finally:
        for handle in handles:
            handle.remove()
    return metrics


def _folds(loader, folds: int, distributed: bool = False) -> int:
    """``folds``, at most one per image (of all processes' images with ``distributed``)."""
    images = len(loader.loader.dataset) if hasattr(loader, "loader") else None
    if images is not None and distributed:
        images = total_over_processes(images)
    return max(1, min(folds, images or folds))


def score_blocks(
    model: nn.Module,
    data,
    *,
    blocks: Sequence[Block] | None = None,
    folds: int = DEFAULT_FOLDS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    samples: int | None = None,
    device: str | torch.device | None = "cpu",
    distributed: bool = False,
    reporter: Reporter | None = None,
) -> tuple[BlockScore, ...]:
    """The score of every removable block of ``model`` (or of ``blocks``) on the calibration ``data``,
    from one streamed pass, in network order.

    With ``distributed=True`` each ``torch.distributed`` process holds its shard of the images
    (image i on process i mod N, :func:`snp_engine.distributed.shard`): image i still goes to fold
    i mod F, and each fold's moments are summed over the processes before scoring, so every process
    finds the scores of one process reading all images."""
    reporter = reporter or Reporter()
    device = resolve_device(device)
    with out_of_memory_as_error("scoring blocks", device, batch_size):
        model = model.to(device).eval()
        loader = _loader(model, data, batch_size, samples)
        if blocks is None:
            reporter.update(0.0, "finding residual blocks")
            blocks = find_blocks(model, _example(model, loader, device))
        if not blocks:
            return ()
        numbered = numbering(loader, distributed)
        parts = collect_block_moments(
            model,
            blocks,
            loader,
            folds=_folds(loader, folds, distributed),
            numbering=numbered,
            device=device,
            total_batches=len(loader),
            reporter=Scaled(reporter, 0.0, 0.9),
        )
        if distributed:
            for found in parts.values():
                all_reduce(found)
        parts = {name: [part.to("cpu") for part in found] for name, found in parts.items()}
        metrics = reader_metrics(model, blocks, _example(model, loader, device))
        scores = []
        for block in blocks:
            reporter.check()
            found = parts[block.name]
            unexplained, ridge = unexplained_share(found)
            total = Moments.union(found)
            reader = reader_energy_share(found, metrics[block.name])[0] if block.name in metrics else None
            scores.append(
                BlockScore(block.name, block.units, total.samples, unexplained, branch_share(total), ridge, reader)
            )
        reporter.update(1.0, "blocks scored")
        return tuple(scores)


# ----------------------------------------------------------------------------------------------
# Removing


def _refit_plan(model: nn.Module, removed: Sequence[str], example: torch.Tensor):
    """The conv/linear layers that run after the first removed block, in call order, each with its
    reader record, unit count and input shape; and the later layers that cannot be refitted, with why."""
    layers = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    calls = first_calls(model, [*removed, *layers], example)
    start = min(calls[name][0] for name in removed if name in calls)
    later = sorted((name for name in layers if name in calls and calls[name][0] > start), key=lambda n: calls[n][0])
    plan, skipped = [], {}
    for name in later:
        layer = model.get_submodule(name)
        if isinstance(layer, nn.Conv2d):
            units, reader = layer.in_channels, Reader(name, "conv")
            if layer.groups != 1:
                skipped[name] = "grouped convolution"
                continue
        else:
            units, reader = layer.in_features, Reader(name, "linear")
        if units > MAX_REFIT_UNITS:
            skipped[name] = f"{units} inputs (more than {MAX_REFIT_UNITS})"
            continue
        plan.append((reader, units, calls[name][1]))
    return plan, skipped


def remove_blocks(
    model: nn.Module,
    names: Sequence[str],
    data=None,
    *,
    compensate: bool = True,
    folds: int = DEFAULT_FOLDS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    samples: int | None = None,
    device: str | torch.device | None = "cpu",
    distributed: bool = False,
    reporter: Reporter | None = None,
) -> BlockRemoval:
    """A copy of ``model`` with the blocks ``names`` replaced by the identity (the original is untouched).

    With ``compensate`` (needs calibration ``data``) every later conv/linear layer is refitted
    towards the dense network, front to back, as sequential calibration refits a reader (see the
    module docstring); without it the blocks are simply dropped. With ``distributed=True`` each
    process holds its shard of ``data`` and every layer's fold moments are summed over the processes
    before its fit, as in distributed sequential calibration, so every process makes the same fits.
    """
    reporter = reporter or Reporter()
    device = resolve_device(device)
    names = list(dict.fromkeys(names))
    with out_of_memory_as_error("removing blocks", device, batch_size):
        dense = model.to(device).eval()
        if compensate and data is None:
            raise SnpError("compensating removed blocks needs calibration data")
        loader = _loader(dense, data, batch_size, samples) if data is not None else None
        dtype = model_dtype(dense)
        example = _example(dense, loader, device) if loader is not None else None
        if names:
            if example is None:
                raise SnpError("finding removable blocks needs an example input: give calibration data")
            known = {b.name for b in find_blocks(dense, example)}
            unknown = [name for name in names if name not in known]
            if unknown:
                listed = ", ".join(sorted(known)[:8]) or "none"
                raise SnpError(f"'{unknown[0]}' is not a removable block; removable blocks: {listed}")
        pruned = replace_blocks(copy.deepcopy(dense), names)
        if not names or not compensate:
            return BlockRemoval(pruned.eval(), tuple(names), compensate and bool(names))
        example = example.to(dtype)
        plan, skipped = _refit_plan(pruned, names, example)
        order = first_calls(dense, names, example)
        names = sorted(names, key=lambda name: order.get(name, (len(order),))[0])
        norms = following_norms(pruned, [reader.consumer for reader, _, _ in plan], example)
        folds = _folds(loader, folds, distributed)
        numbered = numbering(loader, distributed)
        fits: dict[str, dict] = {}
        for index, (reader, units, shape) in enumerate(plan):
            reporter.check()
            reporter.update(index / max(len(plan), 1), f"refitting {reader.consumer}")
            layer = pruned.get_submodule(reader.consumer)
            coverage = None
            if reader.layout == "conv":
                coverage = tap_coverage(layer.kernel_size, shape[2:], layer.stride, layer.padding, layer.dilation)
            metric = consumer_metric(weight_taps(layer, reader.layout, units), coverage).cpu()
            step = Scaled(reporter, index / len(plan), (index + 1) / len(plan))
            with shifts_of_process_zero() if distributed else contextlib.nullcontext():  # see snp_engine.statistics
                parts = collect_joint_folds(
                    pruned,
                    dense,
                    reader,
                    units,
                    loader,
                    folds=folds,
                    numbering=numbered,
                    device=device,
                    reporter=step,
                )
            if distributed:
                all_reduce(parts)
            parts = [part.to("cpu") for part in parts]
            kept = torch.arange(units)
            choice = fit_reader(pruned, reader, units, kept, parts, metric, coverage, norms.get(reader.consumer))
            if choice is not None:
                fits[reader.consumer] = choice.to_dict()
        reporter.update(1.0, f"removed {len(names)} block(s)")
        refitted = tuple(reader.consumer for reader, _, _ in plan)
        return BlockRemoval(pruned.eval(), tuple(names), True, refitted, dict(skipped), fits)


__all__ = [
    "MAX_REFIT_UNITS",
    "BlockRemoval",
    "BlockScore",
    "branch_share",
    "check_block_count",
    "least_important",
    "reader_energy_share",
    "reader_metrics",
    "remove_blocks",
    "score_blocks",
    "unexplained_share",
]

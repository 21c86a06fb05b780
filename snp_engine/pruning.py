"""Pruning a network to a plan: compensation of each consumer, then physical removal of units.

``prune`` defaults to sequential calibration: readers are fitted front to back, each towards the
*dense* network's activations at its input, so compensation also absorbs the error of everything
pruned before it. A coupled group (a residual stream) keeps the same units at all its readers and
each reader gets its own fit. One-shot pruning compensates every reader from the analysis' dense
statistics alone.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence

import torch
from torch import nn

from snp_engine.activations import collect_joint_folds, collect_joint_moments, model_dtype
from snp_engine.analysis import Analysis
from snp_engine.compensation import compensation_ridge, one_shot_reconstruction, reconstruction, within_groups
from snp_engine.distributed import all_reduce, numbering, shifts_of_process_zero
from snp_engine.distributed import total as total_over_processes
from snp_engine.errors import SnpError
from snp_engine.groups import Reader, call_order
from snp_engine.holdout import DEFAULT_FOLDS, ONE_SHOT, FitChoice, choose_fit
from snp_engine.layernorm_streams import data_free_fit, reader_norms, release_norms, restrict_norms, stream_norms
from snp_engine.progress import Reporter, Scaled
from snp_engine.results import GroupAnalysis, Plan, Pruned, PruningRecord, ReaderStatistics
from snp_engine.runtime import DEFAULT_BATCH_SIZE, CastImages, batches_of, out_of_memory_as_error, resolve_device
from snp_engine.segments import DEFAULT_CACHE_MB, SegmentCache
from snp_engine.statistics import Moments
from snp_engine.subspace import OrderingInputs, balanced, order_units
from snp_engine.surgery import apply_reconstruction, drop_columns, remove_units


def prune(
    model: nn.Module,
    analysis: Analysis,
    plan: Plan,
    *,
    data=None,
    compensate: bool = True,
    sequential: bool = True,
    physical: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    samples: int | None = None,
    device: str | torch.device | None = "cpu",
    reselect: bool = False,
    refit_unpruned: bool = False,
    heldout_folds: int = DEFAULT_FOLDS,
    distributed: bool = False,
    cache_mb: float | None = DEFAULT_CACHE_MB,
    reporter: Reporter | None = None,
) -> Pruned:
    """A pruned copy of ``model`` (the original is left untouched) and its pruning record.

    One-shot (``sequential=False``) compensates every consumer from the dense statistics of the
    analysis. Sequential (default, needs ``data``) prunes groups front to back, re-measuring each
    consumer's input on the partly pruned network and fitting it towards the dense network.
    By default it keeps exactly the units of ``plan`` (what the user saw); ``reselect=True``
    re-runs the ordering on the partly pruned network's statistics instead (for groups with one
    reader; a coupled group keeps the plan's units at all its readers). Consumers of groups
    that keep every unit are left as they are (so pruning only the first group equals one-shot);
    ``refit_unpruned=True`` refits them too, towards the dense network, once anything upstream
    was pruned.
    Each sequential fit is checked on calibration images it was not fitted on (``heldout_folds``
    folds, see :mod:`snp_engine.holdout`): the ridge, and whether the group keeps the sequential
    fit or falls back to the one-shot fit, are what predicts held-out images best (the record's
    ``fits`` say which). ``heldout_folds=1`` uses the fixed ridge formula instead.
    With ``distributed=True`` each process holds its shard of the calibration data (see
    :mod:`snp_engine.distributed`) and the joint statistics of every group are summed over the
    processes before each fit, so every process makes the same fit as one process on all images.
    ``physical=False`` returns the functionally pruned model at full size (faster; same outputs).
    Sequential calibration keeps, per batch, both networks' activations where the last fitted reader
    starts (:mod:`snp_engine.segments`), so each network segment runs once in all instead of once per
    reader; the fits are the same. ``cache_mb`` bounds that memory (None: no bound; 0: no cache);
    batches over it are computed from their images, as without the cache.
    A residual stream read through layer norms over its channels (ConvNeXt) has those norms
    restricted to the kept channels and each reader refitted from them
    (:mod:`snp_engine.layernorm_streams`); one-shot does that fit too when ``data`` is given.
    The :class:`~snp_engine.results.PruningRecord` holds the kept indices per group and the settings.
    """
    reporter = reporter or Reporter()
    device = resolve_device(device)
    with out_of_memory_as_error("pruning", device, batch_size):
        dense = model.to(device).eval()
        pruned = copy.deepcopy(dense)
        sequential = sequential and compensate
        if sequential and data is None:
            raise SnpError("sequential calibration needs calibration data (or use one-shot)")
        loader = None
        # residual streams read through layer norms (ConvNeXt), see snp_engine.layernorm_streams
        norm_streams = {g.name: stream_norms(dense, g.group) for g in analysis.groups}
        if sequential or (data is not None and any(norm_streams.values())):
            loader = CastImages(batches_of(data, batch_size=batch_size, samples=samples), model_dtype(dense))
        kept_now: dict[str, tuple[int, ...]] = {}
        fits: dict[str, dict] = {}
        upstream_pruned = False
        probe: tuple = (None, None)  # (layer-norm stream, the dense network with its norms restricted)
        norm_of: dict[str, dict[str, str]] = {}  # per layer-norm stream: the norm each reader reads
        probe_input = torch.randn((1, *analysis.input_shape), generator=torch.Generator().manual_seed(0))
        probe_input = probe_input.to(device=device, dtype=model_dtype(dense))
        steps = _reader_steps(dense, analysis, device)
        segments = None
        if sequential and steps and not any(norm_streams.values()):  # the cache assumes unchanged norms
            example = torch.randn(
                (2, *analysis.input_shape), generator=torch.Generator().manual_seed(0), dtype=model_dtype(dense)
            ).to(device)
            consumers = list(dict.fromkeys(r.consumer for _, r in steps))
            segments = SegmentCache.build(pruned, dense, consumers, example, budget_mb=cache_mb)
        for index, (g, reader) in enumerate(steps):
            reporter.check()
            reporter.update(index / len(steps), f"pruning {g.name}" + (f" at {reader.consumer}" if g.more else ""))
            k = plan.keep.get(g.name, g.units)
            chosen = kept_now.get(g.name)  # set for the further readers of a coupled group
            kept = torch.tensor(
                chosen if chosen is not None else plan.kept.get(g.name, tuple(range(g.units))), dtype=torch.long
            )
            norms = norm_streams[g.name] if k < g.units else ()
            if norms and chosen is None:  # the group's layer norms compute LN_K from here on
                restrict_norms(pruned, norms, kept)
            if sequential and (k < g.units or (refit_unpruned and upstream_pruned)):
                step = Scaled(reporter, index / len(steps), (index + 1) / len(steps))
                select = k if reselect and not g.more and g.group.block == 1 and not norms else kept
                kept, choice = _fit_sequential(
                    pruned,
                    dense,
                    g,
                    reader,
                    select,
                    analysis,
                    loader,
                    device,
                    step,
                    heldout_folds,
                    distributed,
                    segments,
                )
                if choice is not None:
                    key = g.name if reader.reader == g.group.readers[0] else f"{g.name}:{reader.consumer}"
                    fits[key] = choice.to_dict()
            elif k < g.units:
                if compensate and norms and loader is not None:
                    if probe[0] != g.name:  # the dense network with only this group's norms restricted
                        probe = (None, None)  # one copy at a time
                        probe = (g.name, copy.deepcopy(dense))
                        restrict_norms(probe[1], norms, kept)
                    channels = g.group.channel_indices(kept)
                    joint = collect_joint_moments(probe[1], dense, reader.reader, g.channels, loader, device=device)
                    if distributed:
                        all_reduce([joint])
                    fit_reader(
                        pruned,
                        reader.reader,
                        g.channels,
                        channels,
                        [joint],
                        reader.metric,
                        reader.coverage,
                        reader.norm,
                    )
                elif compensate:
                    cov, mean = within_groups(reader.moments.covariance(), reader.reader.groups), reader.moments.mean()
                    channels = g.group.channel_indices(kept)
                    ridge = compensation_ridge(cov, len(channels), reader.moments.samples)
                    fitted = None
                    if norms:  # no data: LN_K linearised about the dense moments
                        if g.name not in norm_of:
                            readers = [r.consumer for r in g.group.readers]
                            norm_of[g.name] = reader_norms(dense, norms, readers, probe_input)
                        norm = norm_of[g.name].get(reader.reader.consumer)
                        if norm is not None and reader.reader.groups == 1:
                            norm = dense.get_submodule(norm)
                            fitted = data_free_fit(cov, mean, norm, channels, reader.moments.samples)
                    mapping, offset = fitted or one_shot_reconstruction(cov, mean, channels, ridge)
                    apply_reconstruction(
                        pruned, reader.reader, g.channels, channels, mapping, offset, reader.coverage, reader.norm
                    )
                else:
                    drop_columns(pruned, reader.reader, g.channels, g.group.channel_indices(kept))
            kept_now[g.name] = tuple(int(i) for i in kept.tolist())
            upstream_pruned = upstream_pruned or k < g.units
        segments = None  # the cached activations are not needed for the removal
        if physical:
            reporter.update(0.99, "removing units")
            release_norms(pruned)  # removal shrinks the layer norms to the kept channels themselves
            removed = {name: sorted(set(range(analysis.units[name])) - set(kept)) for name, kept in kept_now.items()}
            example = torch.zeros((1, *analysis.input_shape), device=device, dtype=model_dtype(pruned))
            remove_units(pruned, [g.group for g in analysis.groups], removed, example)
        record = PruningRecord(
            kept=dict(kept_now),
            units=dict(analysis.units),
            groups=tuple(g.name for g in analysis.groups),
            ordering=analysis.ordering,
            threshold=plan.threshold,
            compensation="sequential" if sequential else ("one-shot" if compensate else "none"),
            input_shape=tuple(analysis.input_shape),
            physical=physical,
            fits=fits,
        )
        reporter.update(1.0, "pruned")
        return Pruned(pruned, record)


def _reader_steps(model: nn.Module, analysis: Analysis, device) -> list[tuple[GroupAnalysis, ReaderStatistics]]:
    """Every (group, reader) pair in the order the readers run, so that each reader is fitted
    after everything upstream of it (a residual stream's readers sit between other groups)."""
    example = torch.zeros((1, *analysis.input_shape), device=device, dtype=model_dtype(model))
    steps = [(g, r) for g in analysis.groups for r in g.readers]
    calls = call_order(model, [r.consumer for _, r in steps], example)
    return sorted(steps, key=lambda step: calls.get(step[1].consumer, len(calls)))


def _fit_sequential(
    pruned,
    dense,
    g: GroupAnalysis,
    reader: ReaderStatistics,
    kept: torch.Tensor | int,
    analysis: Analysis,
    loader,
    device,
    reporter,
    folds: int = DEFAULT_FOLDS,
    distributed: bool = False,
    segments: SegmentCache | None = None,
) -> tuple[torch.Tensor, FitChoice | None]:
    """Fit one reader towards its dense input from the kept units of the partly pruned network.

    ``kept`` is either the indices to keep, or a count: then the units are re-selected with the
    analysis' ordering on the partly pruned network's covariance. With ``folds`` > 1 the fit (kind
    and ridge) is chosen on held-out images; returns the kept indices and that choice. ``segments``
    (the cache of both networks' activations, see :mod:`snp_engine.segments`) changes how the inputs
    are computed, not their values.
    """
    images = len(loader.loader.dataset) if hasattr(loader, "loader") else None
    if images is not None and distributed:
        images = total_over_processes(images)
    folds = max(1, min(folds, images or folds))
    with shifts_of_process_zero() if distributed else contextlib.nullcontext():  # see snp_engine.statistics
        parts = collect_joint_folds(
            pruned,
            dense,
            reader.reader,
            g.channels,
            loader,
            folds=folds,
            numbering=numbering(loader, distributed),
            device=device,
            reporter=reporter,
            segments=segments,
        )
    if distributed:
        all_reduce(parts)
    parts = [part.to("cpu") for part in parts]
    if isinstance(kept, int):
        n = g.units
        own_cov = within_groups(Moments.union(parts).covariance()[:n, :n], reader.reader.groups)
        inputs = OrderingInputs(own_cov, reader.metric, g.weight_l1, analysis.seed, factor=reader.factor)
        kept = torch.sort(balanced(order_units(analysis.ordering, inputs), g.group.parts)[:kept]).values
    channels = g.group.channel_indices(kept)
    choice = fit_reader(pruned, reader.reader, g.channels, channels, parts, reader.metric, reader.coverage, reader.norm)
    return kept, choice


def fit_reader(
    pruned: nn.Module,
    reader: Reader,
    units: int,
    kept: torch.Tensor,
    parts: Sequence[Moments],
    metric: torch.Tensor,
    coverage: torch.Tensor | None,
    norm: str | None,
) -> FitChoice | None:
    """Rewrite one reader of ``pruned`` from the joint moments of z = [x̃; x] at its input (``parts``,
    one per fold of images; x̃ from ``pruned``, x from the dense network, ``units`` each).

    The reader reads x ≈ c + A x̃_K instead of x (:func:`~snp_engine.compensation.reconstruction`,
    ridge shrinking towards A₀ = I on K). With several folds the fit kind and ridge are chosen on
    held-out folds (:func:`~snp_engine.holdout.choose_fit`), which may fall back to the one-shot fit
    from the dense moments; one fold uses the fixed ridge formula. Returns that choice (None for one fold).
    """
    joint = Moments.union(parts)
    n = units
    cov, mean = within_groups(joint.covariance().cpu(), reader.groups, copies=2), joint.mean().cpu()
    own_cov, cross = cov[:n, :n], cov[n:, :n]
    k = kept.shape[0]
    formula = compensation_ridge(own_cov, k, joint.samples)
    # the held-out check works on whole covariances; a grouped conv reader keeps the formula's ridge
    checked = len(parts) > 1 and all(p.samples for p in parts) and reader.groups == 1
    choice = choose_fit(parts, metric, kept, formula) if checked else None
    if choice is not None and choice.kind == ONE_SHOT:
        mapping, offset = one_shot_reconstruction(cov[n:, n:], mean[n:], kept, choice.ridge)
    else:
        ridge = choice.ridge if choice is not None else formula
        prior = torch.zeros(n, k, dtype=cov.dtype)
        prior[kept, torch.arange(k)] = 1
        mapping, offset = reconstruction(cross[:, kept], own_cov[kept][:, kept], mean[n:], mean[:n][kept], ridge, prior)
    apply_reconstruction(pruned, reader, n, kept, mapping, offset, coverage, norm)
    return choice


__all__ = ["fit_reader", "prune"]

"""The analysis: one forward pass of statistics per unit group, then orderings, curves and plans.

    analysis = analyze(model, calibration_dataset)        # streams the data once
    plan = analysis.plan(variance=0.99)                   # or flops_reduction=… / keep={…}

:func:`analyze` keeps only O(units²) statistics per group; :class:`Analysis` recomputes orderings,
curves and plans from them without touching the data again, which is what lets the GUI re-plot
instantly. :func:`save_analysis` / :func:`load_analysis` store the statistics in a file
(:mod:`snp_engine.statsfile`) so that later runs skip the forward pass.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from snp_engine.activations import collect_moments, following_norms, model_dtype
from snp_engine.compensation import consumer_metric_rows, tap_coverage
from snp_engine.costs import CostModel, build_cost_model
from snp_engine.distributed import active as distributed_active
from snp_engine.distributed import shifts_of_process_zero
from snp_engine.distributed import total as total_over_processes
from snp_engine.errors import AnalysisError, SnpError
from snp_engine.groups import ExcludedGroup, find_groups
from snp_engine.progress import Reporter, Scaled
from snp_engine.ratios import (
    NO_CONSTRAINTS,
    BudgetPath,
    Constraints,
    keep_for_budget,
    keep_for_threshold,
    validate_keep,
)
from snp_engine.results import GroupAnalysis, Plan, ReaderStatistics
from snp_engine.runtime import (
    DEFAULT_BATCH_SIZE,
    CastImages,
    batches_of,
    check_forward,
    first_example,
    out_of_memory_as_error,
    resolve_device,
)
from snp_engine.statsfile import StoredAnalysis, read_statistics, write_statistics
from snp_engine.subspace import (
    DEFAULT_ORDERING,
    ORDERINGS,
    balanced,
    block_units,
    explained_curve,
    order_blocks,
    order_units,
    subspace_curve,
    trusted_curve,
)
from snp_engine.surgery import producer_l1, reader_taps
from snp_engine.version import __version__

# curve kind -> (short label, one-line explanation), for help texts and the app's chooser
CURVE_HELP = {
    "variance": ("Activation variance", "Share of the layer's activation variance the kept units can reconstruct"),
    "output": ("Next-layer output", "Share of the next layer's output energy that survives, weighted by its weights"),
    "subspace": ("Subspace", "How much of the activation subspace the kept units span (the paper's curve)"),
}
CURVES = tuple(CURVE_HELP)


def _ordered(
    groups: list[GroupAnalysis], ordering: str, curve_kind: str, seed: int, reporter: Reporter
) -> list[GroupAnalysis]:
    """Each group with its unit order and explained-variance curve (new records; inputs untouched).

    A group with no more samples than units (its covariance rank is below its width) gets the
    :func:`~snp_engine.subspace.trusted_curve` of its curve: explained shares corrected for what a fit
    from so few samples predicts on new ones, and every unit past that point counted as equally
    unexplained, so thresholds and budgets do not remove its unmeasured tail for free. Groups with
    more samples than units keep the measured curve."""
    ordered = []
    for index, g in enumerate(groups):
        reporter.check()
        reporter.update(index / max(len(groups), 1), f"ordering {g.name} ({g.units} units)")
        inputs, block = g.inputs(seed), g.group.block
        if block > 1:  # units of several channels (attention heads): ordered as whole blocks
            order = order_blocks(ordering, inputs, block)
        else:
            order = balanced(order_units(ordering, inputs), g.group.parts)
        channels = block_units(order, block)
        if curve_kind == "subspace":
            curve = subspace_curve(inputs.covariance, channels, more=[c for c, _ in inputs.more])
        else:
            output = curve_kind == "output"
            more = [(c, m if output else None) for c, m in inputs.more]
            curve = explained_curve(inputs.covariance, channels, g.metric if output else None, more=more)
        if g.samples <= g.channels:  # rank below the width: the tail of the curve is not measured
            curve = trusted_curve(curve, g.samples)
        ordered.append(replace(g, order=order, curve=curve[::block].cpu().numpy()))
    reporter.update(1.0, "orderings done")
    return ordered


def _shared_orders(
    groups: list[GroupAnalysis], ordering: str, curve_kind: str, seed: int, reporter: Reporter
) -> list[GroupAnalysis]:
    """:func:`_ordered` on process 0, broadcast to the others (orderings of wide layers take long)."""
    main = dist.get_rank() == 0
    ordered = _ordered(groups, ordering, curve_kind, seed, reporter) if main else groups
    payload = [[(g.order.cpu(), g.curve) for g in ordered] if main else None]
    dist.broadcast_object_list(payload, src=0)
    return [replace(g, order=order, curve=curve) for g, (order, curve) in zip(groups, payload[0], strict=True)]


@dataclass(frozen=True, eq=False)
class Analysis:
    """The outcome of :func:`analyze`: per-group statistics, orderings and curves, plus a cost model.

    A frozen record: build one with :meth:`build` (which orders every group); changing the
    ordering or the curve kind (:meth:`reorder`) gives a new one from the same statistics, with no
    forward pass.
    """

    groups: tuple[GroupAnalysis, ...]
    excluded: tuple[ExcludedGroup, ...]
    costs: CostModel
    input_shape: tuple[int, ...]
    ordering: str = DEFAULT_ORDERING
    curve_kind: str = "variance"
    seed: int = 0
    info: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        groups: Sequence[GroupAnalysis],
        excluded: Sequence[ExcludedGroup],
        costs: CostModel,
        input_shape: Sequence[int],
        *,
        ordering: str = DEFAULT_ORDERING,
        curve: str = "variance",
        seed: int = 0,
        info: Mapping[str, Any] | None = None,
        reporter: Reporter | None = None,
        share: bool = False,
    ) -> Analysis:
        """Order every group with ``ordering`` and compute its ``curve`` from the statistics.

        With ``share`` inside a ``torch.distributed`` job (every process holding the same summed
        statistics), process 0 alone orders and the others receive its orders and curves.
        """
        if ordering not in ORDERINGS:
            raise SnpError(f"unknown ordering '{ordering}'; choose one of {', '.join(ORDERINGS)}")
        if curve not in CURVES:
            raise SnpError(f"unknown curve '{curve}'; choose one of {', '.join(CURVES)}")
        if share and distributed_active():
            ordered = _shared_orders(list(groups), ordering, curve, seed, reporter or Reporter())
        else:
            ordered = _ordered(list(groups), ordering, curve, seed, reporter or Reporter())
        return cls(tuple(ordered), tuple(excluded), costs, tuple(input_shape), ordering, curve, seed, dict(info or {}))

    # -- derived views ------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    @property
    def units(self) -> dict[str, int]:
        return {g.name: g.units for g in self.groups}

    @property
    def curves(self) -> dict[str, np.ndarray]:
        return {g.name: g.curve for g in self.groups}

    @property
    def reader_weights(self) -> dict[str, float]:
        """The budget greedy's weight of each group's lost explained variance: its number of readers
        (see :mod:`snp_engine.ratios`)."""
        return {g.name: float(1 + len(g.more)) for g in self.groups}

    def group(self, name: str) -> GroupAnalysis:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def reorder(
        self, ordering: str | None = None, curve: str | None = None, reporter: Reporter | None = None
    ) -> Analysis:
        """A new analysis with another ordering and/or curve kind, from the same statistics."""
        groups = [replace(g, order=None, curve=None) for g in self.groups]
        return Analysis.build(
            groups,
            self.excluded,
            self.costs,
            self.input_shape,
            ordering=ordering or self.ordering,
            curve=curve or self.curve_kind,
            seed=self.seed,
            info=self.info,
            reporter=reporter,
        )

    def cost(self, keep: Mapping[str, int] | None = None) -> tuple[int, float]:
        """(parameters, FLOPs as MACs per sample) of the network pruned to ``keep``."""
        return self.costs.evaluate(keep)

    # -- planning -----------------------------------------------------------------------------
    def plan(
        self,
        *,
        variance: float | None = None,
        flops_reduction: float | None = None,
        params_reduction: float | None = None,
        keep: Mapping[str, int] | None = None,
        round_to: int = 1,
        allocation: str = "greedy",
        constraints: Constraints | None = None,
    ) -> Plan:
        """Keep counts from exactly one of: a global explained-variance threshold ``variance``
        (0 < V ≤ 1), a FLOPs or parameter reduction (0 ≤ R < 1), or explicit ``keep`` counts
        (groups not named keep all their units). A reduction is split across layers greedily by lost
        explained variance per saved cost (``allocation="greedy"``; a group's loss counted at each of
        its readers, :attr:`reader_weights`) or by bisection on one global threshold
        (``allocation="threshold"``). ``constraints`` lock groups or set their own minimum and
        rounding (:class:`~snp_engine.ratios.Constraints`); explicit counts must agree with them."""
        given = [x is not None for x in (variance, flops_reduction, params_reduction, keep)]
        if sum(given) != 1:
            raise SnpError("give exactly one of variance, flops_reduction, params_reduction or keep")
        threshold = None
        curves = self.curves
        try:
            rules = self.structural(constraints or NO_CONSTRAINTS, round_to).check(self.units)
            if variance is not None:
                if not 0 < variance <= 1:
                    raise SnpError(f"variance threshold must be in (0, 1], got {variance}")
                threshold = float(variance)
                counts = keep_for_threshold(curves, threshold, round_to=round_to, constraints=rules)
            elif keep is not None:
                counts = {**self.units, **validate_keep(keep, self.units, constraints=rules)}
            else:
                reduction = flops_reduction if flops_reduction is not None else params_reduction
                if not 0 <= reduction < 1:
                    raise SnpError(f"reduction must be in [0, 1), got {reduction}")
                index = 1 if flops_reduction is not None else 0
                target = self.cost()[index] * (1 - reduction)

                def cost(k):
                    return self.cost(k)[index]

                def saving(k, name, new_k):
                    return self.costs.saving(k, name, new_k)[index]

                # one greedy removal path per (cost, rounding, rules), reused by later targets
                paths = self.__dict__.setdefault("_budget_paths", {})
                key = (index, round_to, rules)
                if allocation == "greedy" and key not in paths:
                    paths[key] = BudgetPath(curves, cost, round_to, 1, saving, rules, self.reader_weights)
                counts, threshold = keep_for_budget(
                    curves,
                    cost,
                    target,
                    round_to=round_to,
                    allocation=allocation,
                    saving=saving,
                    constraints=rules,
                    path=paths.get(key) if allocation == "greedy" else None,
                    weights=self.reader_weights,
                )
        except ValueError as exc:
            raise SnpError(str(exc)) from None
        return self.plan_for(counts, threshold)

    def structural(self, constraints: Constraints, round_to: int = 1) -> Constraints:
        """``constraints`` with what the network itself demands: a group read or produced by grouped
        convolutions keeps a multiple of its ``parts`` (the same number in every conv group). A global
        ``round_to`` (for channel counts that suit the hardware) does not apply to attention heads,
        which are whole blocks already; a per-group rounding does."""
        for g in self.groups:
            if g.group.kind == "heads" and round_to > 1 and constraints.of(g.name).round_to is None:
                constraints = constraints.with_group(g.name, round_to=1)
            parts = g.group.parts
            if parts > 1:
                rule = constraints.of(g.name)
                step = math.lcm(rule.round_to or round_to, parts)
                constraints = constraints.with_group(g.name, min_units=max(rule.min_units or 1, parts), round_to=step)
        return constraints

    def plan_for(self, counts: Mapping[str, int], threshold: float | None = None) -> Plan:
        """A :class:`Plan` for explicit per-group counts (the first ``k`` units of each ordering)."""
        counts = {name: int(counts.get(name, units)) for name, units in self.units.items()}
        for g in self.groups:
            if g.group.parts > 1 and counts[g.name] % g.group.parts:
                raise SnpError(
                    f"'{g.name}' is read or produced by grouped convolutions with {g.group.parts} groups: "
                    f"it keeps a multiple of {g.group.parts} units (the same number in every group), "
                    f"not {counts[g.name]}"
                )
        kept = {g.name: tuple(sorted(int(i) for i in g.order[: counts[g.name]].tolist())) for g in self.groups}
        params_before, flops_before = self.cost()
        params_after, flops_after = self.cost(counts)
        explained = {g.name: float(g.curve[counts[g.name]]) for g in self.groups}
        return Plan(
            counts, kept, self.ordering, threshold, params_before, params_after, flops_before, flops_after, explained
        )

    # -- persistence --------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the statistics (not the model) so later runs skip the forward pass."""
        save_analysis(self, path)

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> Analysis:
        """Read statistics written by :meth:`save`; ``kwargs`` as for :func:`load_analysis`."""
        return load_analysis(path, **kwargs)

    def warnings(self) -> list[str]:
        """One line per group whose statistics are singular, so the user knows the ridge, not the
        data, decided part of its ordering (and that more calibration samples would help)."""
        lines = []
        for g in self.groups:
            if not g.regularised:
                continue
            if g.samples <= g.channels:
                width = f"{g.units} units" if g.group.block == 1 else f"{g.channels} channels ({g.units} heads)"
                why = f"{g.samples} calibration samples for {width}"
                hint = "use more samples"
                images = self.info.get("samples")
                if isinstance(images, int) and images > 0:
                    # the fit needs samples >= 2·units to keep its ridge at the floor (compensation_ridge)
                    per_image = max(g.samples / images, 1e-9)
                    hint = f"use at least {math.ceil(2 * g.channels / per_image)} images (now {images})"
            else:
                why = "dead or duplicate units"
                hint = "pruning them first is harmless"
            lines.append(f"{g.name}: singular statistics ({why}), regularised; {hint}")
        return lines

    def summary(self) -> dict:
        params, flops = self.cost()
        return {
            "ordering": self.ordering,
            "curve": self.curve_kind,
            "params": params,
            "flops": flops,
            "groups": [
                {
                    "name": g.name,
                    "consumer": g.group.consumer,
                    "units": g.units,
                    "kind": g.group.kind,
                    "layout": g.group.layout,
                    "readers": [r.consumer for r in g.group.readers],
                    "producers": list(g.group.all_producers),
                    "samples": g.samples,
                    "regularised": g.regularised,
                }
                for g in self.groups
            ],
            "excluded": [{"name": e.name, "units": e.units, "reason": e.reason} for e in self.excluded],
        }


# ----------------------------------------------------------------------------------------------
# Measuring


def analyze(
    model: nn.Module,
    data,
    *,
    samples: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device | None = "cpu",
    ordering: str = DEFAULT_ORDERING,
    curve: str = "variance",
    max_positions: int | None = None,
    seed: int = 0,
    distributed: bool = False,
    coupled: bool = True,
    reporter: Reporter | None = None,
    info: dict | None = None,
) -> Analysis:
    """Stream calibration data through ``model`` once and analyse every prunable unit group.

    ``data`` is a Dataset of (image, label) pairs, a DataLoader or a DataBundle (its calibration
    split). ``max_positions`` caps the spatial positions sampled per image for conv features.
    With ``distributed=True`` the statistics are summed over all ``torch.distributed`` processes.
    ``coupled=False`` leaves coupled groups (residual streams, gated channels, channels read by
    several layers; see :mod:`snp_engine.groups`) unpruned.
    """
    reporter = reporter or Reporter()
    device = resolve_device(device)
    loader = batches_of(data, batch_size=batch_size, samples=samples)
    with out_of_memory_as_error("the analysis", device, batch_size):
        model = model.to(device).eval()
        dtype = model_dtype(model)
        example = first_example(loader, device, dtype)
        reporter.update(0.0, "finding prunable layers")
        check_forward(model, example)
        groups, excluded = find_groups(model, example, coupled=coupled)
        if not groups:
            reasons = "; ".join(f"{e.name}: {e.reason}" for e in excluded[:5])
            raise AnalysisError(f"no prunable layers found: {reasons}")
        readers = [r.consumer for g in groups for r in g.readers]
        norms = following_norms(model, readers, example)
        costs = build_cost_model(model, groups, example, norms)
        with shifts_of_process_zero() if distributed else contextlib.nullcontext():  # see snp_engine.statistics
            moments, shapes = collect_moments(
                model,
                groups,
                CastImages(loader, dtype),
                device=device,
                total_batches=len(loader),
                max_positions=max_positions,
                reporter=Scaled(reporter, 0.0, 0.8),
                seed=seed,
            )
        if distributed:
            for m in moments.values():
                m.all_reduce()

        def statistics_of(group, reader) -> ReaderStatistics:
            consumer = model.get_submodule(reader.consumer)
            shape = shapes[reader.consumer]
            coverage = None
            if reader.layout == "conv":
                coverage = tap_coverage(
                    consumer.kernel_size, shape[1:], consumer.stride, consumer.padding, consumer.dilation
                )
            rows = consumer_metric_rows(reader_taps(model, reader, group.channels), coverage)
            metric = (rows.T @ rows).cpu()
            factor = rows.cpu() if rows.shape[0] < rows.shape[1] else None  # a low-rank metric
            own = moments[group.name, reader.consumer].to("cpu")
            return ReaderStatistics(reader, own, shape, metric, norms.get(reader.consumer), coverage, factor)

        analysed = []
        for group in groups:
            first, *more = (statistics_of(group, reader) for reader in group.readers)
            analysed.append(
                GroupAnalysis(
                    group,
                    first.moments,
                    first.input_shape,
                    first.metric,
                    producer_l1(model, group).cpu(),
                    first.norm,
                    first.coverage,
                    more=tuple(more),
                    metric_factor=first.factor,
                )
            )
        images = total_over_processes(len(loader.dataset)) if distributed else len(loader.dataset)
        info = {"snp_version": __version__, "samples": images, **(info or {})}
        return Analysis.build(
            analysed,
            excluded,
            costs,
            tuple(example.shape[1:]),
            ordering=ordering,
            curve=curve,
            seed=seed,
            info=info,
            reporter=Scaled(reporter, 0.8, 1.0),
            share=distributed,
        )


# ----------------------------------------------------------------------------------------------
# Statistics files


def save_analysis(analysis: Analysis, path: str | Path) -> Path:
    """Write an analysis's statistics so a later run can plan and prune without a forward pass.

    Tensors (moments, consumer metric, filter norms, coverage) go into safetensors; groups, cost
    model and settings into its JSON header. Orderings and curves are recomputed on loading.
    """
    stored = StoredAnalysis(
        list(analysis.groups),
        list(analysis.excluded),
        analysis.costs,
        tuple(analysis.input_shape),
        analysis.ordering,
        analysis.curve_kind,
        analysis.seed,
        dict(analysis.info),
    )
    return write_statistics(stored, path)


def load_analysis(path: str | Path, **kwargs: Any) -> Analysis:
    """Rebuild an :class:`Analysis` saved by :func:`save_analysis`.

    ``kwargs`` (``ordering``, ``curve``, ``seed``, ``reporter``) override what was stored.
    """
    stored = read_statistics(path)
    options: dict[str, Any] = {"ordering": stored.ordering, "curve": stored.curve, "seed": stored.seed}
    options.update({k: v for k, v in kwargs.items() if v is not None})
    return Analysis.build(
        list(stored.groups), list(stored.excluded), stored.costs, stored.input_shape, info=stored.info, **options
    )


def check_analysis_fits(analysis: Analysis, model: nn.Module, input_shape: Sequence[int]) -> None:
    """Refuse statistics that were measured on another network or another input size."""
    input_shape = tuple(int(s) for s in input_shape)
    if tuple(analysis.input_shape) != input_shape:
        raise SnpError(
            f"the statistics were measured on inputs of shape {tuple(analysis.input_shape)}, "
            f"but the data now has shape {input_shape}; re-run snp analyze or use --input-size"
        )
    example = torch.zeros((1, *input_shape), dtype=model_dtype(model), device=next(model.parameters()).device)
    found = {(g.name, g.readers, g.units) for g in find_groups(model, example)[0]}
    stored = {(g.group.name, g.group.readers, g.units) for g in analysis.groups}
    if not stored <= found:
        missing = sorted(f"{name} ({units} units)" for name, _, units in stored - found)
        detail = f"; not in the model: {', '.join(missing[:4])}" if missing else ""
        raise SnpError(f"the statistics do not belong to this model: its prunable layers differ{detail}")
    for r in (r for g in analysis.groups for r in g.readers):
        kernel = getattr(model.get_submodule(r.consumer), "kernel_size", None)
        if r.coverage is not None and kernel is not None and tuple(r.coverage.shape) != tuple(kernel):
            raise SnpError(
                f"the statistics do not belong to this model: {r.consumer} has a {tuple(kernel)} kernel, "
                f"the statistics one of {tuple(r.coverage.shape)}"
            )


__all__ = [
    "CURVES",
    "Analysis",
    "GroupAnalysis",
    "Plan",
    "analyze",
    "check_analysis_fits",
    "load_analysis",
    "save_analysis",
]

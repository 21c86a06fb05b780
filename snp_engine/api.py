"""The public Python API of snp: analyse a network, plan keep counts, prune, evaluate.

    analysis = snp_engine.analyze(model, calibration_dataset)          # one forward pass
    plan = analysis.plan(variance=0.99)          # or flops_reduction=0.5 / params_reduction=… / keep={…}
    pruned = snp_engine.prune(model, analysis, plan, data=calibration_dataset)
    snp_engine.export(pruned, "small.safetensors")
    same = snp_engine.load("small.safetensors")

``analyze`` streams activations once and keeps only O(units²) statistics per group; orderings,
curves and plans are recomputed from them without touching the data again, which is what lets
the GUI re-plot instantly. ``prune`` defaults to sequential calibration: groups are pruned front
to back and each consumer is fitted towards the *dense* network's activations, so compensation
also absorbs the error of the groups pruned before it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from snp_engine import __version__
from snp_engine.activations import (
    collect_joint_moments,
    collect_moments,
    following_norms,
    images_of,
    model_dtype,
)
from snp_engine.compensation import (
    compensation_ridge,
    consumer_metric,
    one_shot_reconstruction,
    reconstruction,
    tap_coverage,
)
from snp_engine.costs import CostModel, LayerCost, build_cost_model
from snp_engine.errors import AnalysisError, DataError, OutOfMemoryError, SnpError
from snp_engine.groups import ExcludedGroup, UnitGroup, execution_order, find_groups
from snp_engine.progress import Reporter, Scaled
from snp_engine.ratios import keep_for_budget, keep_for_threshold, validate_keep
from snp_engine.statistics import Moments
from snp_engine.subspace import (
    DEFAULT_ORDERING,
    ORDERINGS,
    OrderingInputs,
    explained_curve,
    order_units,
    subspace_curve,
)
from snp_engine.surgery import apply_reconstruction, drop_columns, producer_l1, remove_units, weight_taps

CURVES = ("variance", "output", "subspace")
DEFAULT_BATCH_SIZE = 64


# ----------------------------------------------------------------------------------------------
# Results


@dataclass
class GroupAnalysis:
    """Statistics, ordering and explained-variance curve of one unit group."""

    group: UnitGroup
    moments: Moments
    input_shape: tuple[int, ...]
    metric: torch.Tensor  # consumer metric M (n×n)
    weight_l1: torch.Tensor
    norm: str | None  # BatchNorm right after the consumer, where constants are folded
    coverage: torch.Tensor | None = None
    order: torch.Tensor | None = None
    curve: np.ndarray | None = None

    @property
    def name(self) -> str:
        return self.group.name

    @property
    def units(self) -> int:
        return self.group.units

    @property
    def samples(self) -> int:
        return self.moments.samples

    @property
    def regularised(self) -> bool:
        """True where the covariance is singular (dead/duplicate units or fewer samples than units),
        so the ridge, not the data, decides part of the ordering."""
        return self.samples <= self.units or bool(self.rank_deficient)

    @functools.cached_property
    def rank_deficient(self) -> bool:
        cov = self.moments.covariance()
        scale = float(torch.diagonal(cov).max().clamp_min(1e-300))
        return bool(torch.linalg.eigvalsh(cov).min() < 1e-10 * scale)

    def inputs(self, seed: int = 0) -> OrderingInputs:
        return OrderingInputs(self.moments.covariance(), self.metric, self.weight_l1, seed)


@dataclass(frozen=True)
class Plan:
    """How many units each group keeps, which ones (original indices), and what it costs."""

    keep: dict[str, int]
    kept: dict[str, tuple[int, ...]]
    ordering: str
    threshold: float | None
    params_before: int
    params_after: int
    flops_before: float
    flops_after: float
    explained: dict[str, float] = field(default_factory=dict)

    @property
    def flops_reduction(self) -> float:
        return 1 - self.flops_after / self.flops_before if self.flops_before else 0.0

    @property
    def params_reduction(self) -> float:
        return 1 - self.params_after / self.params_before if self.params_before else 0.0

    def to_dict(self) -> dict:
        return {
            "keep": self.keep,
            "ordering": self.ordering,
            "threshold": self.threshold,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "flops_before": self.flops_before,
            "flops_after": self.flops_after,
            "explained": self.explained,
        }


class Analysis:
    """The outcome of :func:`analyze`: per-group statistics, orderings and curves, plus a cost model.

    Changing the ordering or the curve kind (``reorder``) reuses the statistics: no forward pass.
    """

    def __init__(
        self,
        groups: list[GroupAnalysis],
        excluded: list[ExcludedGroup],
        costs: CostModel,
        input_shape: tuple[int, ...],
        *,
        ordering: str = DEFAULT_ORDERING,
        curve: str = "variance",
        seed: int = 0,
        info: dict | None = None,
        reporter: Reporter | None = None,
    ) -> None:
        if ordering not in ORDERINGS:
            raise SnpError(f"unknown ordering '{ordering}'; choose one of {', '.join(ORDERINGS)}")
        if curve not in CURVES:
            raise SnpError(f"unknown curve '{curve}'; choose one of {', '.join(CURVES)}")
        self.groups = groups
        self.excluded = excluded
        self.costs = costs
        self.input_shape = tuple(input_shape)
        self.ordering = ordering
        self.curve_kind = curve
        self.seed = seed
        self.info = dict(info or {})
        self._compute_orders(reporter or Reporter())

    def _compute_orders(self, reporter: Reporter) -> None:
        for index, g in enumerate(self.groups):
            reporter.check()
            reporter.update(index / max(len(self.groups), 1), f"ordering {g.name} ({g.units} units)")
            inputs = g.inputs(self.seed)
            g.order = order_units(self.ordering, inputs)
            if self.curve_kind == "subspace":
                curve = subspace_curve(inputs.covariance, g.order)
            else:
                metric = g.metric if self.curve_kind == "output" else None
                curve = explained_curve(inputs.covariance, g.order, metric)
            g.curve = curve.cpu().numpy()
        reporter.update(1.0, "orderings done")

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
        return Analysis(
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
    ) -> Plan:
        """Keep counts from exactly one of: a global explained-variance threshold ``variance``
        (0 < V ≤ 1), a FLOPs or parameter reduction (0 ≤ R < 1), or explicit ``keep`` counts
        (groups not named keep all their units). A reduction is split across layers greedily by lost
        explained variance per saved cost (``allocation="greedy"``) or by bisection on one global
        threshold (``allocation="threshold"``)."""
        given = [x is not None for x in (variance, flops_reduction, params_reduction, keep)]
        if sum(given) != 1:
            raise SnpError("give exactly one of variance, flops_reduction, params_reduction or keep")
        threshold = None
        curves = self.curves
        try:
            if variance is not None:
                if not 0 < variance <= 1:
                    raise SnpError(f"variance threshold must be in (0, 1], got {variance}")
                threshold = float(variance)
                counts = keep_for_threshold(curves, threshold, round_to=round_to)
            elif keep is not None:
                counts = {**self.units, **validate_keep(keep, self.units)}
            else:
                reduction = flops_reduction if flops_reduction is not None else params_reduction
                if not 0 <= reduction < 1:
                    raise SnpError(f"reduction must be in [0, 1), got {reduction}")
                index = 1 if flops_reduction is not None else 0
                target = self.cost()[index] * (1 - reduction)
                counts, threshold = keep_for_budget(
                    curves,
                    lambda k: self.cost(k)[index],
                    target,
                    round_to=round_to,
                    allocation=allocation,
                    saving=lambda k, name, new_k: self.costs.saving(k, name, new_k)[index],
                )
        except ValueError as exc:
            raise SnpError(str(exc)) from None
        return self.plan_for(counts, threshold)

    def plan_for(self, counts: Mapping[str, int], threshold: float | None = None) -> Plan:
        """A :class:`Plan` for explicit per-group counts (the first ``k`` units of each ordering)."""
        counts = {name: int(counts.get(name, units)) for name, units in self.units.items()}
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
        from snp_engine.io import save_analysis

        save_analysis(self, path)

    @classmethod
    def load(cls, path: str | Path, **kwargs) -> Analysis:
        from snp_engine.io import load_analysis

        return load_analysis(path, **kwargs)

    def warnings(self) -> list[str]:
        """One line per group whose statistics are singular, so the user knows the ridge, not the
        data, decided part of its ordering (and that more calibration samples would help)."""
        lines = []
        for g in self.groups:
            if not g.regularised:
                continue
            if g.samples <= g.units:
                why = f"{g.samples} calibration samples for {g.units} units"
                hint = "use more samples"
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
                    "layout": g.group.layout,
                    "samples": g.samples,
                    "regularised": g.regularised,
                }
                for g in self.groups
            ],
            "excluded": [{"name": e.name, "units": e.units, "reason": e.reason} for e in self.excluded],
        }


# ----------------------------------------------------------------------------------------------
# Data plumbing


def _as_dataset(data) -> Dataset | DataLoader:
    return getattr(data, "calibration", data)


def batches_of(data, *, batch_size: int = DEFAULT_BATCH_SIZE, samples: int | None = None) -> DataLoader:
    """A deterministic DataLoader over (the first ``samples`` of) a dataset, DataBundle or loader."""
    data = _as_dataset(data)
    if isinstance(data, DataLoader):
        return data
    if samples is not None:
        if samples < 1:
            raise SnpError(f"the number of samples must be positive, got {samples}")
        data = Subset(data, range(min(samples, len(data))))
    if len(data) == 0:
        raise SnpError("the calibration data is empty")
    return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" picks CUDA when present; asking for CUDA without it is a clear error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SnpError("CUDA was requested but no CUDA device is available; use --device cpu")
    return device


def _example(loader: DataLoader, device, dtype) -> torch.Tensor:
    batch = next(iter(loader))
    images = images_of(batch)
    return images[:1].to(device=device, dtype=dtype)


class _Cast:
    """Iterates over a loader, casting images to the model's dtype."""

    def __init__(self, loader, dtype):
        self.loader, self.dtype = loader, dtype

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            images = images_of(batch)
            yield images.to(self.dtype)


_OUT_OF_MEMORY_MARKERS = ("out of memory", "can't allocate memory", "not enough memory")


def _is_out_of_memory(exc: BaseException) -> bool:
    """torch.OutOfMemoryError, or the RuntimeError that other allocators (CPU, MPS) raise."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OUT_OF_MEMORY_MARKERS)


@contextlib.contextmanager
def _out_of_memory_as_error(what: str, device: torch.device, batch_size: int):
    """Turn an allocator failure into :class:`OutOfMemoryError` with what to change.

    The error is raised after the ``except`` block so that the failed step's tensors (held by the
    original traceback) are released before the cache is emptied and the caller retries.
    """
    try:
        yield
        return
    except Exception as exc:
        if not _is_out_of_memory(exc):
            raise
    if device.type == "cuda":
        torch.cuda.empty_cache()
    advice = "a smaller batch size (--batch-size)" + ("" if device.type == "cpu" else " or the CPU (--device cpu)")
    raise OutOfMemoryError(f"{what} ran out of memory on {device} with batches of {batch_size}; try {advice}")


def _check_forward(model: nn.Module, example: torch.Tensor) -> None:
    """Run one example so that a model/input mismatch (a fixed input size, a different channel
    count) is reported as one clear sentence instead of an error from deep inside the network."""
    try:
        with torch.inference_mode():
            model(example)
    except Exception as exc:
        if _is_out_of_memory(exc):
            raise
        detail = " ".join(str(exc).split())[:200]
        raise AnalysisError(
            f"the model cannot run on inputs of shape {tuple(example.shape[1:])} ({type(exc).__name__}: {detail})"
        ) from None


# ----------------------------------------------------------------------------------------------
# Analysis


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
    reporter: Reporter | None = None,
    info: dict | None = None,
) -> Analysis:
    """Stream calibration data through ``model`` once and analyse every prunable unit group.

    ``data`` is a Dataset of (image, label) pairs, a DataLoader or a DataBundle (its calibration
    split). ``max_positions`` caps the spatial positions sampled per image for conv features.
    With ``distributed=True`` the statistics are summed over all ``torch.distributed`` processes.
    """
    reporter = reporter or Reporter()
    device = resolve_device(device)
    loader = batches_of(data, batch_size=batch_size, samples=samples)
    with _out_of_memory_as_error("the analysis", device, batch_size):
        model = model.to(device).eval()
        dtype = model_dtype(model)
        example = _example(loader, device, dtype)
        reporter.update(0.0, "finding prunable layers")
        _check_forward(model, example)
        groups, excluded = find_groups(model, example)
        if not groups:
            reasons = "; ".join(f"{e.name}: {e.reason}" for e in excluded[:5])
            raise AnalysisError(f"no prunable layers found: {reasons}")
        groups = execution_order(model, groups, example)
        norms = following_norms(model, [g.consumer for g in groups], example)
        costs = build_cost_model(model, groups, example)
        moments, shapes = collect_moments(
            model,
            groups,
            _Cast(loader, dtype),
            device=device,
            total_batches=len(loader),
            max_positions=max_positions,
            reporter=Scaled(reporter, 0.0, 0.8),
            seed=seed,
        )
        if distributed:
            for m in moments.values():
                m.all_reduce()
        analysed = []
        for group in groups:
            consumer = model.get_submodule(group.consumer)
            coverage = None
            if group.layout == "conv":
                coverage = tap_coverage(
                    consumer.kernel_size, shapes[group.name][1:], consumer.stride, consumer.padding, consumer.dilation
                )
            taps = weight_taps(consumer, group)
            analysed.append(
                GroupAnalysis(
                    group,
                    moments[group.name].to("cpu"),
                    shapes[group.name],
                    consumer_metric(taps, coverage).cpu(),
                    producer_l1(model, group).cpu(),
                    norms.get(group.consumer),
                    coverage,
                )
            )
        info = {"snp_version": __version__, "samples": len(loader.dataset), **(info or {})}
        return Analysis(
            analysed,
            excluded,
            costs,
            tuple(example.shape[1:]),
            ordering=ordering,
            curve=curve,
            seed=seed,
            info=info,
            reporter=Scaled(reporter, 0.8, 1.0),
        )


# ----------------------------------------------------------------------------------------------
# Pruning


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
    reporter: Reporter | None = None,
) -> nn.Module:
    """A pruned copy of ``model`` (the original is left untouched).

    One-shot (``sequential=False``) compensates every consumer from the dense statistics of the
    analysis. Sequential (default, needs ``data``) prunes groups front to back, re-measuring each
    consumer's input on the partly pruned network and fitting it towards the dense network.
    By default it keeps exactly the units of ``plan`` (what the user saw); ``reselect=True``
    re-runs the ordering on the partly pruned network's statistics instead. Consumers of groups
    that keep every unit are left as they are (so pruning only the first group equals one-shot);
    ``refit_unpruned=True`` refits them too, towards the dense network, once anything upstream
    was pruned.
    ``physical=False`` returns the functionally pruned model at full size (faster; same outputs).
    The copy carries ``snp_pruning``: the kept indices per group and the settings used.
    """
    reporter = reporter or Reporter()
    device = resolve_device(device)
    with _out_of_memory_as_error("pruning", device, batch_size):
        dense = model.to(device).eval()
        pruned = copy.deepcopy(dense)
        sequential = sequential and compensate
        if sequential and data is None:
            raise SnpError("sequential calibration needs calibration data (or use one-shot)")
        loader = None
        if sequential:
            loader = _Cast(batches_of(data, batch_size=batch_size, samples=samples), model_dtype(dense))
        kept_now: dict[str, tuple[int, ...]] = {}
        upstream_pruned = False
        for index, g in enumerate(analysis.groups):
            reporter.check()
            reporter.update(index / len(analysis.groups), f"pruning {g.name}")
            k = plan.keep.get(g.name, g.units)
            kept = torch.tensor(plan.kept.get(g.name, tuple(range(g.units))), dtype=torch.long)
            if sequential and (k < g.units or (refit_unpruned and upstream_pruned)):
                step = Scaled(reporter, index / len(analysis.groups), (index + 1) / len(analysis.groups))
                kept = _fit_sequential(pruned, dense, g, kept if not reselect else k, analysis, loader, device, step)
            elif k < g.units:
                if compensate:
                    cov, mean = g.moments.covariance(), g.moments.mean()
                    ridge = compensation_ridge(cov, len(kept), g.samples)
                    mapping, offset = one_shot_reconstruction(cov, mean, kept, ridge)
                    apply_reconstruction(pruned, g.group, kept, mapping, offset, g.coverage, g.norm)
                else:
                    drop_columns(pruned, g.group, kept)
            kept_now[g.name] = tuple(int(i) for i in kept.tolist())
            upstream_pruned = upstream_pruned or k < g.units
        if physical:
            reporter.update(0.99, "removing units")
            removed = {name: sorted(set(range(analysis.units[name])) - set(kept)) for name, kept in kept_now.items()}
            example = torch.zeros((1, *analysis.input_shape), device=device, dtype=model_dtype(pruned))
            remove_units(pruned, [g.group for g in analysis.groups], removed, example)
        pruned.snp_pruning = {
            "kept": {name: list(kept) for name, kept in kept_now.items()},
            "units": analysis.units,
            "groups": [g.name for g in analysis.groups],
            "ordering": analysis.ordering,
            "threshold": plan.threshold,
            "compensation": "sequential" if sequential else ("one-shot" if compensate else "none"),
            "input_shape": list(analysis.input_shape),
            "physical": physical,
        }
        reporter.update(1.0, "pruned")
        return pruned


def _fit_sequential(
    pruned, dense, g: GroupAnalysis, kept: torch.Tensor | int, analysis: Analysis, loader, device, reporter
) -> torch.Tensor:
    """Fit the consumer towards the dense input from the kept units of the partly pruned network.

    ``kept`` is either the indices to keep, or a count: then the units are re-selected with the
    analysis' ordering on the partly pruned network's covariance.
    """
    joint = collect_joint_moments(pruned, dense, g.group, loader, device=device, reporter=reporter)
    n = g.units
    cov, mean = joint.covariance().cpu(), joint.mean().cpu()
    own_cov, cross = cov[:n, :n], cov[n:, :n]
    if isinstance(kept, int):
        inputs = OrderingInputs(own_cov, g.metric, g.weight_l1, analysis.seed)
        kept = torch.sort(order_units(analysis.ordering, inputs)[:kept]).values
    k = kept.shape[0]
    prior = torch.zeros(n, k, dtype=cov.dtype)
    prior[kept, torch.arange(k)] = 1
    mapping, offset = reconstruction(
        cross[:, kept],
        own_cov[kept][:, kept],
        mean[n:],
        mean[:n][kept],
        compensation_ridge(own_cov, k, joint.samples),
        prior,
    )
    apply_reconstruction(pruned, g.group, kept, mapping, offset, g.coverage, g.norm)
    return kept


# ----------------------------------------------------------------------------------------------
# Evaluation


def evaluate(
    model: nn.Module,
    data,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = "cpu",
    topk: tuple[int, ...] = (1, 5),
    reporter: Reporter | None = None,
) -> dict[str, float]:
    """Top-k accuracy (percent) of ``model`` on a labelled dataset or DataBundle (its test split)."""
    data = getattr(data, "test", data)
    loader = batches_of(data, batch_size=batch_size)
    device = resolve_device(device)
    model = model.to(device).eval()
    dtype = model_dtype(model)
    correct = {k: 0 for k in topk}
    seen = 0
    reporter = reporter or Reporter()
    with _out_of_memory_as_error("the evaluation", device, batch_size), torch.inference_mode():
        _check_forward(model, _example(loader, device, dtype))
        for index, (images, labels) in enumerate(loader):
            reporter.check()
            logits = model(images.to(device=device, dtype=dtype)).float()
            labels = labels.to(device)
            _check_labels(labels, logits.shape[1])
            top = logits.topk(min(max(topk), logits.shape[1]), dim=1).indices
            for k in topk:
                correct[k] += int((top[:, :k] == labels[:, None]).any(1).sum())
            seen += labels.shape[0]
            reporter.update((index + 1) / len(loader), "evaluating")
    return {f"top{k}": 100.0 * correct[k] / max(seen, 1) for k in topk}


def _check_labels(labels: torch.Tensor, classes: int) -> None:
    """A label the model cannot predict makes accuracy meaningless (and training crash): refuse it."""
    if labels.numel() == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= classes:
        raise DataError(
            f"the data has labels {low}..{high} but the model predicts {classes} classes "
            f"(labels 0..{classes - 1}); evaluate it on data with matching classes"
        )


def fidelity(
    reference: nn.Module,
    candidate: nn.Module,
    data,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = "cpu",
) -> float:
    """Relative logit error ‖f̃(x) − f(x)‖ / ‖f(x)‖ over a dataset (0 = identical outputs)."""
    data = getattr(data, "test", data)
    loader = batches_of(data, batch_size=batch_size)
    device = resolve_device(device)
    reference, candidate = reference.to(device).eval(), candidate.to(device).eval()
    error = norm = 0.0
    with torch.inference_mode():
        for batch in loader:
            images = images_of(batch).to(device)
            a = reference(images.to(model_dtype(reference))).double()
            b = candidate(images.to(model_dtype(candidate))).double()
            error += float(((a - b) ** 2).sum())
            norm += float((a**2).sum())
    return (error / norm) ** 0.5 if norm > 0 else 0.0


def export(model: nn.Module, path: str | Path, **metadata) -> Path:
    """Write a pruned model to snp's self-describing safetensors file (see :mod:`snp_engine.io`)."""
    from snp_engine.io import export_model

    return export_model(model, path, **metadata)


def load(path: str | Path, *, trust: bool = False) -> nn.Module:
    """Rebuild a model from a file exported by snp — no code is executed (safetensors + JSON)."""
    from snp_engine.io import load_exported

    return load_exported(path).model


__all__ = [
    "CURVES",
    "Analysis",
    "CostModel",
    "GroupAnalysis",
    "LayerCost",
    "Plan",
    "analyze",
    "batches_of",
    "evaluate",
    "export",
    "fidelity",
    "load",
    "prune",
    "resolve_device",
]

"""Per-layer sensitivity: how much each layer alone costs when it is pruned to its keep count.

For every prunable group g, only g is pruned to ``keep[g]`` units (every other group keeps all its
units) and the network is measured on the evaluation data: top-1 and the relative logit error
‖f_g(x) − f(x)‖ / ‖f(x)‖ against the dense network. The pruned copy uses *one-shot* compensation
(every reader of g refitted from the analysis' dense statistics, no pass over the calibration data),
so a layer costs one copy of the network and one pass over the evaluation data; with one group
pruned, one-shot and sequential compensation are the same fit (see :mod:`snp_engine.pruning`).

With residual blocks removed as well, each layer is pruned alone on the network *without* them: the
blocks are removed and compensated and what remains is analysed again, once
(:func:`~snp_engine.workflows.blockjobs.without_blocks`, what
:func:`~snp_engine.workflows.blockjobs.prune_with_blocks` prunes); the reference is that network (so
a layer's numbers are what it costs beyond the blocks), and the layers inside the removed blocks are
not measured (:attr:`Sensitivity.skipped`).

:func:`relaxed_counts` turns the ranking into a plan change: the most sensitive layers get back half
of the units they lose.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from snp_engine import api
from snp_engine.activations import model_dtype
from snp_engine.blocks import BlockScore
from snp_engine.data import make_loader
from snp_engine.errors import SnpError
from snp_engine.metrics import check_labels, topk_hits
from snp_engine.progress import Reporter, Scaled
from snp_engine.ratios import NO_CONSTRAINTS, Constraints
from snp_engine.runtime import check_forward, first_example, out_of_memory_as_error, resolve_device
from snp_engine.workflows.blockjobs import without_blocks
from snp_engine.workflows.choices import AnalysisOptions, Compensation
from snp_engine.workflows.preparation import Prepared


@dataclass(frozen=True)
class LayerSensitivity:
    """One group pruned alone to ``keep`` of ``units``: top-1 (%) and relative logit error (0 = identical)."""

    name: str
    units: int
    keep: int
    top1: float
    error: float
    dense_top1: float

    @property
    def drop(self) -> float:
        """Top-1 points lost against the dense network (negative when pruning helped)."""
        return self.dense_top1 - self.top1

    @property
    def rank_key(self) -> tuple[float, float]:
        """Larger is more sensitive: the top-1 drop first, the output error to break ties."""
        return (round(self.drop, 6), self.error)


@dataclass(frozen=True)
class Sensitivity:
    """Every layer's :class:`LayerSensitivity` (network order), for the keep counts they were measured at.

    ``blocks`` are the residual blocks removed from the network the layers were measured on (its
    ``dense_top1`` is that network's), ``skipped`` the layers not measured because they went with them.
    """

    layers: tuple[LayerSensitivity, ...]
    keep: Mapping[str, int]
    dense_top1: float
    evaluation: str
    samples: int
    blocks: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()

    def of(self, name: str) -> LayerSensitivity | None:
        return next((layer for layer in self.layers if layer.name == name), None)

    def ranked(self) -> list[LayerSensitivity]:
        """The layers that lose units, most sensitive first (see :attr:`LayerSensitivity.rank_key`)."""
        pruned = [layer for layer in self.layers if layer.keep < layer.units]
        return sorted(pruned, key=lambda layer: layer.rank_key, reverse=True)


def _logits(model: nn.Module, loader, device: torch.device, reporter: Reporter) -> tuple[torch.Tensor, torch.Tensor]:
    """All logits (float32, on the CPU) and labels of ``model`` over ``loader``."""
    dtype = model_dtype(model)
    model.eval()
    outputs, labels = [], []
    with torch.inference_mode():
        for index, (images, targets) in enumerate(loader):
            reporter.check()
            outputs.append(model(images.to(device=device, dtype=dtype)).float().cpu())
            labels.append(targets.cpu())
            reporter.update((index + 1) / max(len(loader), 1), "evaluating")
    return torch.cat(outputs), torch.cat(labels)


def _top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * topk_hits(logits, labels, (1,))[1] / max(int(labels.shape[0]), 1)


def _relative_error(dense: torch.Tensor, pruned: torch.Tensor) -> float:
    norm = float((dense.double() ** 2).sum())
    return float(((pruned.double() - dense.double()) ** 2).sum() / norm) ** 0.5 if norm > 0 else 0.0


def layer_sensitivity(
    prepared: Prepared,
    analysis: api.Analysis,
    keep: Mapping[str, int],
    *,
    blocks: Sequence[str] = (),
    block_scores: Sequence[BlockScore] | None = None,
    options: AnalysisOptions | None = None,
    compensation: Compensation | str = Compensation.SEQUENTIAL,
    samples: int | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    on_layer: Callable[[LayerSensitivity], None] | None = None,
    reporter: Reporter | None = None,
) -> Sensitivity:
    """Top-1 and relative logit error on the prepared evaluation data when *only* one group is pruned
    to its count in ``keep`` (one-shot compensation), for every group of ``analysis`` in network order.

    A group that keeps all its units is the dense network (its error is 0) and costs nothing.
    ``on_layer`` receives each layer's result as soon as it is measured; ``reporter`` gives progress
    and cancel (checked between batches and between layers).

    With residual ``blocks`` (of the network ``analysis`` describes) the layers are measured on the
    network without them, removed with ``compensation`` (``block_scores`` spare scoring them again)
    and analysed again with ``options`` on ``samples`` calibration images; see the module's docstring.
    """
    reporter = reporter or Reporter()
    unknown = sorted(set(keep) - set(analysis.units))
    if unknown:
        raise SnpError(f"'{unknown[0]}' is not a prunable layer of this analysis")
    counts = {name: int(keep.get(name, units)) for name, units in analysis.units.items()}
    for name, k in counts.items():
        if not 1 <= k <= analysis.units[name]:
            raise SnpError(f"'{name}' keeps {k} units, not a count in 1 … {analysis.units[name]}")
    blocks, skipped = tuple(blocks), ()
    if blocks:
        reporter.update(0.0, f"removing {', '.join(blocks)}")
        options = options or AnalysisOptions(samples=samples, ordering=analysis.ordering)
        gone = without_blocks(
            prepared,
            blocks,
            options=options,
            compensation=compensation,
            scores=block_scores,
            batch_size=options.batch_size,
            samples=samples,
            device=device,
            reporter=Scaled(reporter, 0.0, 0.3),
        )
        skipped = tuple(name for name in analysis.names if name not in gone.analysis.units)
        counts = gone.counts(counts)
        prepared, analysis, reporter = gone.removed.prepared, gone.analysis, Scaled(reporter, 0.3, 1.0)
    evaluation = prepared.evaluation or prepared.require_data()
    device = resolve_device(device)
    dense = prepared.model.model.to(device).eval()
    loader = make_loader(evaluation.test, batch_size)
    pruned_names = [name for name in analysis.names if counts[name] < analysis.units[name]]
    steps = 1 + len(pruned_names)
    with out_of_memory_as_error("the sensitivity measurement", device, batch_size):
        check_forward(dense, first_example(loader, device, model_dtype(dense)))
        reporter.update(0.0, "scoring the original network")
        reference, labels = _logits(dense, loader, device, Scaled(reporter, 0.0, 1 / steps))
        check_labels(labels, reference.shape[1])
        dense_top1 = _top1(reference, labels)
        layers, done = [], 1
        for name in analysis.names:
            reporter.check()
            units, k = analysis.units[name], counts[name]
            if k >= units:
                result = LayerSensitivity(name, units, k, dense_top1, 0.0, dense_top1)
            else:
                part = Scaled(reporter, done / steps, (done + 1) / steps)
                part.update(0.0, f"{name} alone at {k} of {units} units ({done} of {steps - 1})")
                plan = analysis.plan_for({name: k})
                pruned = api.prune(
                    dense,
                    analysis,
                    plan,
                    compensate=True,
                    sequential=False,
                    physical=False,
                    batch_size=batch_size,
                    device=device,
                    reporter=Scaled(part, 0.0, 0.3),
                ).model
                logits, _ = _logits(pruned, loader, device, Scaled(part, 0.3, 1.0))
                del pruned
                result = LayerSensitivity(
                    name, units, k, _top1(logits, labels), _relative_error(reference, logits), dense_top1
                )
                done += 1
            layers.append(result)
            if on_layer is not None:
                on_layer(result)
    reporter.update(1.0, "sensitivity measured")
    return Sensitivity(
        tuple(layers), dict(counts), dense_top1, prepared.evaluation_label, int(labels.shape[0]), blocks, skipped
    )


def relax_share(keep: int, units: int) -> int:
    """The count a relaxed layer keeps: half of the units it loses come back, ⌈(k + n) / 2⌉."""
    return min(units, -(-(keep + units) // 2))


def relaxed_counts(
    sensitivity: Sensitivity,
    keep: Mapping[str, int],
    units: Mapping[str, int],
    count: int,
    constraints: Constraints = NO_CONSTRAINTS,
) -> dict[str, int]:
    """New counts for the ``count`` most sensitive layers that lose units under ``keep`` (ranked by
    ``sensitivity``, layers locked by ``constraints`` left out): each gets back half of the units it
    loses (:func:`relax_share`), fitted up to its own minimum and rounding. Only the changed layers
    are returned; the caller keeps the plan's target by re-planning the others around them."""
    if count < 1:
        raise SnpError(f"relax at least one layer, not {count}")
    changed: dict[str, int] = {}
    for layer in sensitivity.ranked():
        if len(changed) == count:
            break
        name = layer.name
        if name not in keep or constraints.of(name).locked is not None or keep[name] >= units[name]:
            continue
        rule = constraints.of(name)
        new = rule.fit(relax_share(keep[name], units[name]), units[name])
        if new > keep[name]:
            changed[name] = new
    return changed


__all__ = ["LayerSensitivity", "Sensitivity", "layer_sensitivity", "relax_share", "relaxed_counts"]

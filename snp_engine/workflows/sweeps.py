"""Top-1 against FLOPs reduction: the analysis' ordering against a baseline ordering, each point a plan
pruned and scored; with residual blocks removed as well, every point is the network without them.

Each point is planned and pruned as the app's Evaluate button and ``snp prune`` do it:
:func:`~snp_engine.workflows.blockjobs.plan_with_blocks` for the FLOPs target counted from the network
with all its blocks, then :func:`~snp_engine.workflows.blockjobs.prune_with_blocks` (without blocks
these are the plain plan and prune). The blocks are removed and what remains analysed once
(:func:`~snp_engine.workflows.blockjobs.without_blocks`), for every point.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from snp_engine import api
from snp_engine.blocks import BlockScore
from snp_engine.progress import Reporter, Scaled
from snp_engine.workflows.blockjobs import blocks_cost, plan_with_blocks, prune_with_blocks, without_blocks
from snp_engine.workflows.choices import AnalysisOptions, Compensation, PlanTarget
from snp_engine.workflows.measuring import score
from snp_engine.workflows.preparation import Prepared


def series_label(ordering: str, current: bool, blocks: Sequence[str] = ()) -> str:
    """The name of one sweep series: "SNP (ordering)" or "ordering (baseline)", and the removed blocks."""
    label = f"SNP ({ordering})" if current else f"{ordering} (baseline)"
    if blocks:
        label += f" without {', '.join(blocks)}" if len(blocks) <= 2 else f" without {len(blocks)} blocks"
    return label


def sweep_points(analysis: api.Analysis, reductions: Sequence[float], blocks: Sequence[str] = ()) -> list[float]:
    """The FLOPs reductions a sweep measures: ``reductions``, but none below what removing ``blocks``
    alone saves (that network is measured once, at its own reduction)."""
    if not blocks:
        return list(reductions)
    total = analysis.cost()[1]
    alone = blocks_cost(analysis, blocks)[1] / total if total > 0 else 0.0
    return sorted({max(float(r), alone) for r in reductions})


def sweep(
    prepared: Prepared,
    analysis: api.Analysis,
    reductions: Sequence[float],
    *,
    baseline: str = "l1",
    blocks: Sequence[str] = (),
    block_scores: Sequence[BlockScore] | None = None,
    options: AnalysisOptions | None = None,
    compensation: Compensation | str = Compensation.SEQUENTIAL,
    batch_size: int = api.DEFAULT_BATCH_SIZE,
    samples: int | None = None,
    device: str | torch.device = "cpu",
    on_point: Callable[[str, float, float], None] | None = None,
    reporter: Reporter | None = None,
) -> dict[tuple[str, float], float]:
    """Top-1 against FLOPs reduction for the analysis' ordering and a baseline ordering; every point goes
    to ``on_point(series, reduction, top1)`` as soon as it is measured, the dense network at 0.

    With residual ``blocks`` (of the network ``analysis`` describes) every point removes them,
    compensated, before its channels are pruned, and the reduction counts from the network with
    them; a reduction the blocks alone exceed is measured at what they save (:func:`sweep_points`).
    ``block_scores`` spare scoring the blocks again; ``options`` are those of the analysis of what
    remains (its ordering is the series').
    """
    reporter = reporter or Reporter()
    on_point = on_point or (lambda *point: None)
    blocks = tuple(blocks)
    evaluation = prepared.evaluation or prepared.require_data()
    dense = score(prepared.model.model, evaluation, device=device).top1
    options = options or AnalysisOptions(samples=samples, batch_size=batch_size)
    points = sweep_points(analysis, reductions, blocks)
    orderings = list(dict.fromkeys([analysis.ordering, baseline]))
    steps, done, results = len(orderings) * len(points), 0, {}
    gone = None
    if blocks:
        share = 1 / (steps + 1)  # removing the blocks and analysing what remains: about one point's work
        gone = without_blocks(
            prepared,
            blocks,
            options=dataclasses.replace(options, ordering=analysis.ordering),
            compensation=compensation,
            scores=block_scores,
            batch_size=batch_size,
            samples=samples,
            device=device,
            reporter=Scaled(reporter, 0.0, share),
        )
        reporter = Scaled(reporter, share, 1.0)
    for ordering in orderings:
        current = analysis if ordering == analysis.ordering else analysis.reorder(ordering)
        label = series_label(ordering, ordering == analysis.ordering, blocks)
        on_point(label, 0.0, dense)
        for reduction in points:
            reporter.check()
            part = Scaled(reporter, done / steps, (done + 1) / steps)
            plan = plan_with_blocks(current, PlanTarget("flops", reduction), blocks)
            pruned = prune_with_blocks(
                prepared,
                current,
                plan,
                blocks,
                compensation=compensation,
                physical=False,
                batch_size=batch_size,
                samples=samples,
                device=device,
                reporter=part,
                without=gone.reordered(ordering) if gone is not None else None,
            ).model
            top1 = score(pruned, evaluation, device=device).top1
            results[(label, reduction)] = top1
            on_point(label, reduction, top1)
            done += 1
    return results


__all__ = ["series_label", "sweep", "sweep_points"]

"""Removing whole residual blocks before the channels: list, score and remove them, then hand the
rest to the usual channel analysis, plan and prune (the CLI and the app call these in that order).

    removal = remove_blocks(prepared, 2)                 # the 2 blocks that add least, compensated
    analysis = analyse(removal.prepared, options)        # the channels of what remains
    plan = make_plan(analysis, channel_target(target, removal))
    pruned = with_blocks(prune(removal.prepared, analysis, plan), removal)

The app keeps one analysis of the network with all its blocks while blocks are ticked on and off:
:func:`plan_with_blocks` plans its channels for a target that counts the ticked blocks as gone,
:func:`blocks_cost` says what they cost, and :func:`prune_with_blocks` removes them (the same
:func:`remove_blocks` as above), analyses what remains and prunes it to the plan's keep counts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Subset

from snp_engine import api, blocks
from snp_engine.activations import model_dtype
from snp_engine.blocks import BlockRemoval, BlockScore
from snp_engine.errors import SnpError
from snp_engine.evaluation import fidelity
from snp_engine.progress import Reporter, Scaled
from snp_engine.ratios import NO_CONSTRAINTS, Constraints
from snp_engine.residual import Block, find_blocks
from snp_engine.results import Pruned
from snp_engine.runtime import DEFAULT_BATCH_SIZE, resolve_device
from snp_engine.workflows.choices import AnalysisOptions, Compensation, PlanTarget
from snp_engine.workflows.jobs import analyse, make_plan, prune
from snp_engine.workflows.measuring import cost
from snp_engine.workflows.preparation import Prepared


@dataclass(frozen=True)
class BlocksRemoved:
    """The blocks' scores, which were removed and how, and the prepared model without them.

    ``cost_before``/``cost_after`` are (parameters, MACs) of the network with and without the blocks.
    """

    scores: tuple[BlockScore, ...]
    removal: BlockRemoval
    prepared: Prepared
    cost_before: tuple[int, float]
    cost_after: tuple[int, float]

    @property
    def removed(self) -> tuple[str, ...]:
        return self.removal.removed

    def to_dict(self) -> dict:
        return {
            **self.removal.to_dict(),
            "scores": [score.to_dict() for score in self.scores],
            "params_before": self.cost_before[0],
            "params_after": self.cost_after[0],
            "flops_before": self.cost_before[1],
            "flops_after": self.cost_after[1],
        }


def removable_blocks(prepared: Prepared, *, device: str | torch.device = "cpu") -> tuple[Block, ...]:
    """The residual blocks of the prepared model that can be removed (one probe on a zero input;
    none for a model the probe cannot run, such as a TorchScript program)."""
    model = prepared.model.model
    if isinstance(model, torch.jit.ScriptModule):
        return ()
    device = resolve_device(device)
    model = model.to(device).eval()
    example = torch.zeros((1, *prepared.input_shape), device=device, dtype=model_dtype(model))
    try:
        return tuple(find_blocks(model, example))
    except Exception:  # a network the probe cannot run has no removable blocks as far as snp knows
        return ()


def block_scores(
    prepared: Prepared,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    samples: int | None = None,
    device: str | torch.device = "cpu",
    reporter: Reporter | None = None,
    distributed: bool = False,
) -> tuple[BlockScore, ...]:
    """The score of every removable block of the prepared model on its calibration data, in network
    order (empty for a network without removable blocks). ``distributed``: the calibration data is
    this process's shard (:func:`~snp_engine.workflows.preparation.sharded`) and the statistics are
    summed over the processes."""
    data = prepared.require_data()
    model = prepared.model.model
    if isinstance(model, torch.jit.ScriptModule):
        raise SnpError(f"{prepared.model.spec} is a TorchScript program: its blocks cannot be removed")
    found = removable_blocks(prepared, device=device)
    if not found:
        return ()
    return blocks.score_blocks(
        model,
        data,
        blocks=found,
        batch_size=batch_size,
        samples=samples,
        device=device,
        distributed=distributed,
        reporter=reporter,
    )


def remove_blocks(
    prepared: Prepared,
    count: int | Sequence[str],
    *,
    compensation: Compensation | str = Compensation.SEQUENTIAL,
    scores: Sequence[BlockScore] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    samples: int | None = None,
    device: str | torch.device = "cpu",
    reporter: Reporter | None = None,
    distributed: bool = False,
) -> BlocksRemoved:
    """Remove the ``count`` removable blocks that add least beyond a linear map of their input, or
    the blocks named in ``count``; later layers are refitted unless ``compensation`` is none.

    The blocks are scored on the calibration data unless ``scores`` (from :func:`block_scores` on
    the same network) are given. ``distributed``: the calibration data is this process's shard and
    scores and refits use statistics summed over the processes (every process removes the same blocks
    and makes the same fits).
    """
    reporter = reporter or Reporter()
    data = prepared.require_data()
    model = prepared.model.model
    if isinstance(model, torch.jit.ScriptModule):
        raise SnpError(f"{prepared.model.spec} is a TorchScript program: its blocks cannot be removed")
    if scores is None:
        found = removable_blocks(prepared, device=device)
        if isinstance(count, int):
            blocks.check_block_count(count, [b.name for b in found])  # before any pass over the data
        scores = blocks.score_blocks(
            model,
            data,
            blocks=found,
            batch_size=batch_size,
            samples=samples,
            device=device,
            distributed=distributed,
            reporter=Scaled(reporter, 0.0, 0.3),
        )
    scores = tuple(scores)
    if isinstance(count, int):
        names = blocks.least_important(scores, count)
    else:
        known = [s.name for s in scores]
        unknown = [name for name in count if name not in known]
        if unknown:
            listed = ", ".join(known[:8]) or "none"
            raise SnpError(f"'{unknown[0]}' is not a removable block; removable blocks: {listed}")
        names = tuple(name for name in known if name in set(count))  # network order
    removal = blocks.remove_blocks(
        model,
        names,
        data,
        compensate=Compensation(compensation) is not Compensation.NONE,
        batch_size=batch_size,
        samples=samples,
        device=device,
        distributed=distributed,
        reporter=Scaled(reporter, 0.3, 1.0),
    )
    loaded = dataclasses.replace(prepared.model, model=removal.model)
    before = cost(model, prepared.input_shape, device)
    after = cost(removal.model, prepared.input_shape, device)
    return BlocksRemoved(scores, removal, dataclasses.replace(prepared, model=loaded), before, after)


def channel_target(target: PlanTarget, removed: BlocksRemoved) -> PlanTarget:
    """``target`` for the channels of the network without the blocks.

    A FLOPs or parameter reduction R counts from the network *with* its blocks: the channels are
    asked for R' = 1 − (1 − R) · cost_before / cost_after, nothing (every unit kept) when removing
    the blocks already reached R. Variance thresholds and keep counts apply to what remains unchanged.
    """
    if target.kind not in ("flops", "params") or target.value is None:
        return target
    index = 1 if target.kind == "flops" else 0
    before, after = removed.cost_before[index], removed.cost_after[index]
    if after <= 0:
        return PlanTarget("keep")
    reduction = 1 - (1 - float(target.value)) * before / after
    if reduction <= 0:
        return PlanTarget("keep")
    return dataclasses.replace(target, value=reduction)


def with_blocks(pruned: Pruned, removed: BlocksRemoved) -> Pruned:
    """``pruned`` with a record that also names the removed blocks (what an export needs)."""
    record = dataclasses.replace(pruned.record, blocks=(*pruned.record.blocks, *removed.removed))
    return Pruned(pruned.model, record)


def _inside(name: str, blocks_: Sequence[str]) -> bool:
    return any(name == block or name.startswith(block + ".") for block in blocks_)


def blocks_cost(
    analysis: api.Analysis, names: Sequence[str], keep: Mapping[str, int] | None = None
) -> tuple[int, float]:
    """(parameters, MACs) of the layers inside the blocks ``names`` when the groups keep ``keep``
    (all units where absent), from the analysis's cost model: what removing them saves."""
    model, keep = analysis.costs, keep or {}
    if not names:
        return 0, 0.0
    params, macs = 0.0, 0.0
    for layer in model.layers:
        if _inside(layer.name, names):
            layer_params, layer_macs = layer.cost(lambda g: keep.get(g, model.units[g]), model.units)
            params, macs = params + layer_params, macs + layer_macs
    return round(params), macs


def inner_groups(analysis: api.Analysis, names: Sequence[str]) -> tuple[str, ...]:
    """The unit groups whose every producer lies inside one of the blocks ``names`` (gone with them)."""
    return tuple(g.name for g in analysis.groups if all(_inside(p, names) for p in g.group.producers or (g.name,)))


def plan_with_blocks(
    analysis: api.Analysis,
    target: PlanTarget,
    names: Sequence[str],
    *,
    round_to: int = 1,
    allocation: str = "greedy",
    constraints: Constraints | None = None,
) -> api.Plan:
    """Keep counts for the channels of the network with all its blocks when the blocks ``names`` are
    removed as well, for one ``target``.

    The groups inside the removed blocks keep every unit (they go with the blocks). A FLOPs or
    parameter reduction R counts from the whole network and the removed blocks count as saved: the
    channels are asked for R' with (1 − R') · T = (1 − R) · T + B(keep), T the network's cost and B
    the blocks' cost at the plan's keep counts (their inputs may be pruned), found by a few fixed-point
    steps from B at full width; nothing more is cut when the blocks alone reach R. Other targets are
    planned as they are.
    """
    constraints = constraints or NO_CONSTRAINTS
    if not names:
        return make_plan(analysis, target, round_to=round_to, allocation=allocation, constraints=constraints)
    for name in inner_groups(analysis, names):
        constraints = constraints.with_group(name, locked=analysis.units[name])

    def plan(wanted: PlanTarget) -> api.Plan:
        return make_plan(analysis, wanted, round_to=round_to, allocation=allocation, constraints=constraints)

    if target.kind not in ("flops", "params") or target.value is None:
        return plan(target)
    index = 1 if target.kind == "flops" else 0
    total = analysis.cost()[index]
    saved = blocks_cost(analysis, names)[index]
    found = None
    for _ in range(4):
        reduction = 1 - ((1 - float(target.value)) * total + saved) / total if total > 0 else 0.0
        if reduction <= 0:
            return plan(dataclasses.replace(target, value=0.0))
        found = plan(dataclasses.replace(target, value=reduction))
        now = blocks_cost(analysis, names, found.keep)[index]
        if abs(now - saved) <= 1e-6 * max(total, 1.0):
            break
        saved = now
    return found


@dataclass(frozen=True)
class WithoutBlocks:
    """A network without some residual blocks (removed, compensated) and the analysis of what remains:
    what :func:`prune_with_blocks` prunes. Made once by :func:`without_blocks`, it serves every point of
    a sweep and every layer of a sensitivity measurement."""

    removed: BlocksRemoved
    analysis: api.Analysis

    def reordered(self, ordering: str) -> WithoutBlocks:
        """The same network with its analysis in another unit ordering (no forward pass)."""
        if ordering == self.analysis.ordering:
            return self
        return dataclasses.replace(self, analysis=self.analysis.reorder(ordering))

    def counts(self, keep: Mapping[str, int]) -> dict[str, int]:
        """``keep`` (counts for the network with its blocks) for the groups of what remains; a group
        ``keep`` does not name keeps every unit."""
        return {name: min(int(keep.get(name, units)), units) for name, units in self.analysis.units.items()}


def without_blocks(
    prepared: Prepared,
    names: Sequence[str],
    *,
    options: AnalysisOptions | None = None,
    compensation: Compensation | str = Compensation.SEQUENTIAL,
    scores: Sequence[BlockScore] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    samples: int | None = None,
    device: str | torch.device = "cpu",
    reporter: Reporter | None = None,
    distributed: bool = False,
) -> WithoutBlocks:
    """Remove the blocks ``names``, compensated (:func:`remove_blocks`), and analyse the channels of the
    network that remains with ``options`` (its statistics changed with the blocks)."""
    reporter = reporter or Reporter()
    removed = remove_blocks(
        prepared,
        list(names),
        compensation=compensation,
        scores=scores,
        batch_size=batch_size,
        samples=samples,
        device=device,
        reporter=Scaled(reporter, 0.0, 0.6),
        distributed=distributed,
    )
    options = options or AnalysisOptions(samples=samples, batch_size=batch_size)
    again = analyse(
        removed.prepared, options, device=device, reporter=Scaled(reporter, 0.6, 1.0), distributed=distributed
    )
    return WithoutBlocks(removed, again)


def prune_with_blocks(
    prepared: Prepared,
    analysis: api.Analysis,
    plan: api.Plan,
    names: Sequence[str],
    *,
    options: AnalysisOptions | None = None,
    compensation: Compensation | str = Compensation.SEQUENTIAL,
    scores: Sequence[BlockScore] | None = None,
    physical: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    samples: int | None = None,
    device: str | torch.device = "cpu",
    reporter: Reporter | None = None,
    distributed: bool = False,
    without: WithoutBlocks | None = None,
) -> Pruned:
    """``prepared``'s network without the blocks ``names`` and with its channels pruned to ``plan``.

    Without blocks this is :func:`~snp_engine.workflows.jobs.prune`. Otherwise the blocks are removed
    and compensated (:func:`remove_blocks`), the network that remains is analysed again with ``options``
    (its statistics changed with the blocks) and pruned to the keep counts ``plan`` gives its groups
    (made for ``analysis``, of the network with its blocks); the record names the removed blocks.
    ``distributed``: the calibration data is this process's shard; every step sums its statistics
    over the processes. ``without`` (from :func:`without_blocks`, for the same ``names``) is the
    removal and analysis already made.
    """
    reporter = reporter or Reporter()
    if not names:
        return prune(
            prepared,
            analysis,
            plan,
            compensation=compensation,
            batch_size=batch_size,
            samples=samples,
            physical=physical,
            device=device,
            reporter=reporter,
            distributed=distributed,
        )
    if without is None:
        without = without_blocks(
            prepared,
            names,
            options=options or AnalysisOptions(samples=samples, batch_size=batch_size, ordering=analysis.ordering),
            compensation=compensation,
            scores=scores,
            batch_size=batch_size,
            samples=samples,
            device=device,
            reporter=Scaled(reporter, 0.0, 0.6),
            distributed=distributed,
        )
    elif set(without.removed.removed) != set(names):
        raise SnpError(f"the network given lacks {', '.join(without.removed.removed)}, not {', '.join(names)}")
    removed, again = without.removed, without.analysis
    pruned = prune(
        removed.prepared,
        again,
        again.plan_for(without.counts(plan.keep), plan.threshold),
        compensation=compensation,
        batch_size=batch_size,
        samples=samples,
        physical=physical,
        device=device,
        reporter=Scaled(reporter, 0.6, 1.0),
        distributed=distributed,
    )
    return with_blocks(pruned, removed)


def logit_error(
    reference: torch.nn.Module,
    candidate: torch.nn.Module,
    data,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    distributed: bool = False,
) -> float:
    """Relative logit error ‖f̃(x) − f(x)‖ / ‖f(x)‖ over the images of ``data``, as
    :func:`snp_engine.api.fidelity`; with ``distributed`` ``data`` is this process's shard already
    (the calibration images) and both sums of squares Σ‖f̃(x) − f(x)‖², Σ‖f(x)‖² are added over the
    processes."""
    return fidelity(
        reference, candidate, data, batch_size=batch_size, device=device, distributed=distributed, sharded=True
    )


@dataclass(frozen=True)
class BlockChoice:
    """What :func:`choose_blocks` tried and kept: the blocks removed, the plan and the pruned network,
    and for every candidate its blocks, relative logit error on the calibration images and MACs."""

    blocks: tuple[str, ...]
    plan: api.Plan
    pruned: Pruned
    scores: tuple[BlockScore, ...]
    candidates: tuple[Mapping[str, object], ...]

    def to_dict(self) -> dict:
        return {
            "removed": list(self.blocks),
            "mode": "auto",
            "scores": [score.to_dict() for score in self.scores],
            "candidates": [dict(c) for c in self.candidates],
        }


def choose_blocks(
    prepared: Prepared,
    analysis: api.Analysis,
    target: PlanTarget,
    *,
    options: AnalysisOptions | None = None,
    compensation: Compensation | str = Compensation.SEQUENTIAL,
    constraints: Constraints | None = None,
    round_to: int = 1,
    allocation: str = "greedy",
    max_blocks: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    samples: int | None = None,
    device: str | torch.device = "cpu",
    reporter: Reporter | None = None,
    distributed: bool = False,
) -> BlockChoice:
    """Let a FLOPs or parameter ``target`` choose how many residual blocks to remove.

    The blocks are ranked by their unexplained share (least first). For k = 0, 1, … (at most
    ``max_blocks``, and only while the first k blocks alone save less than the target asks) the
    first k are removed and the channels meet the rest of the target (:func:`plan_with_blocks` on
    ``analysis``, the network with its blocks, then :func:`prune_with_blocks`, as in the app); the
    candidate whose logits are closest to the dense network's on the calibration images (the first
    ``samples`` of them, those the fits saw) is kept. Each candidate is one removal, analysis and prune.
    ``distributed``: the calibration data is this process's shard; statistics and the logit error's
    sums are added over the processes, so every process keeps the same candidate.
    """
    if target.kind not in ("flops", "params") or target.value is None:
        raise SnpError("choosing the blocks to remove needs a FLOPs or parameter reduction target")
    reporter = reporter or Reporter()
    scores = block_scores(
        prepared,
        batch_size=batch_size,
        samples=samples,
        device=device,
        reporter=Scaled(reporter, 0.0, 0.1),
        distributed=distributed,
    )
    position = {s.name: i for i, s in enumerate(scores)}
    ranked = [s.name for s in sorted(scores, key=lambda s: (s.unexplained, position[s.name]))]
    index = 1 if target.kind == "flops" else 0
    total = analysis.cost()[index]
    counts = [0]
    for k in range(1, min(len(ranked), len(ranked) if max_blocks is None else max_blocks) + 1):
        if blocks_cost(analysis, ranked[:k])[index] >= float(target.value) * total:
            break  # the blocks alone cut more than asked
        counts.append(k)
    calibration = prepared.require_data().calibration
    if samples is not None:
        calibration = Subset(calibration, range(min(samples, len(calibration))))  # type: ignore[arg-type]
    dense = prepared.model.model
    best, candidates = None, []
    for step, k in enumerate(counts):
        reporter.check()
        part = Scaled(reporter, 0.1 + 0.9 * step / len(counts), 0.1 + 0.9 * (step + 1) / len(counts))
        names = tuple(sorted(ranked[:k], key=position.__getitem__))
        part.update(0.0, f"trying {k} block(s) removed" + (f": {', '.join(names)}" if names else ""))
        plan = plan_with_blocks(
            analysis, target, names, round_to=round_to, allocation=allocation, constraints=constraints
        )
        pruned = prune_with_blocks(
            prepared,
            analysis,
            plan,
            names,
            options=options,
            compensation=compensation,
            scores=scores,
            batch_size=batch_size,
            samples=samples,
            device=device,
            reporter=Scaled(part, 0.0, 0.9),
            distributed=distributed,
        )
        error = logit_error(dense, pruned.model, calibration, device=device, distributed=distributed)
        macs = cost(pruned.model, prepared.input_shape, device)[1]
        candidates.append({"blocks": list(names), "error": float(error), "flops_after": macs})
        if best is None or error < best[0]:
            best = (float(error), names, plan, pruned)
    _error, names, plan, pruned = best
    return BlockChoice(names, plan, pruned, tuple(scores), tuple(candidates))


__all__ = [
    "BlockChoice",
    "BlocksRemoved",
    "WithoutBlocks",
    "block_scores",
    "blocks_cost",
    "channel_target",
    "choose_blocks",
    "inner_groups",
    "logit_error",
    "plan_with_blocks",
    "prune_with_blocks",
    "removable_blocks",
    "remove_blocks",
    "with_blocks",
    "without_blocks",
]

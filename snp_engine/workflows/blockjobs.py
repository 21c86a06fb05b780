"""Removing whole residual blocks before the channels: list, score and remove them, then hand the
rest to the usual channel analysis, plan and prune (the CLI and the app call these in that order).

    removal = remove_blocks(prepared, 2)                 # the 2 blocks that add least, compensated
    analysis = analyse(removal.prepared, options)        # the channels of what remains
    plan = make_plan(analysis, channel_target(target, removal))
    pruned = with_blocks(prune(removal.prepared, analysis, plan), removal)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from snp_engine import blocks
from snp_engine.activations import model_dtype
from snp_engine.blocks import BlockRemoval, BlockScore
from snp_engine.errors import SnpError
from snp_engine.progress import Reporter, Scaled
from snp_engine.residual import Block, find_blocks
from snp_engine.results import Pruned
from snp_engine.runtime import DEFAULT_BATCH_SIZE, resolve_device
from snp_engine.workflows.choices import Compensation, PlanTarget
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


def remove_blocks(
    prepared: Prepared,
    count: int,
    *,
    compensation: Compensation | str = Compensation.SEQUENTIAL,
    batch_size: int = DEFAULT_BATCH_SIZE,
    samples: int | None = None,
    device: str | torch.device = "cpu",
    reporter: Reporter | None = None,
) -> BlocksRemoved:
    """Score every removable block on the calibration data and remove the ``count`` that add least
    beyond a linear map of their input; later layers are refitted unless ``compensation`` is none."""
    reporter = reporter or Reporter()
    data = prepared.require_data()
    model = prepared.model.model
    if isinstance(model, torch.jit.ScriptModule):
        raise SnpError(f"{prepared.model.spec} is a TorchScript program: its blocks cannot be removed")
    found = removable_blocks(prepared, device=device)
    blocks.check_block_count(count, [b.name for b in found])  # before any pass over the data
    scores = blocks.score_blocks(
        model,
        data,
        blocks=found,
        batch_size=batch_size,
        samples=samples,
        device=device,
        reporter=Scaled(reporter, 0.0, 0.3),
    )
    names = blocks.least_important(scores, count)
    removal = blocks.remove_blocks(
        model,
        names,
        data,
        compensate=Compensation(compensation) is not Compensation.NONE,
        batch_size=batch_size,
        samples=samples,
        device=device,
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


__all__ = ["BlocksRemoved", "channel_target", "removable_blocks", "remove_blocks", "with_blocks"]

"""Model plumbing for pruning: view a consumer's weights per kernel tap, write compensated weights
back, fold constants into bias or BatchNorm, and physically remove units with torch-pruning.

Pruning happens in two steps. First every reader of a group is rewritten so that it no longer
reads the pruned units (their weight columns become zero): the network is then functionally
pruned, which is all that evaluation needs. Then :func:`remove_units` deletes the units for real —
the rows of every producer, BatchNorm entries, depthwise channels and every reader's columns —
through torch-pruning's dependency graph, which keeps every coupled layer consistent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch_pruning as tp
from torch import nn

from snp_engine.compensation import compensated_weight, constant_response
from snp_engine.groups import Reader, UnitGroup, build_dependency_graph, tracing


def weight_taps(consumer: nn.Module, layout: str, units: int) -> torch.Tensor:
    """A reader's weight as (out, units, taps): conv taps are kernel positions, a flatten→linear
    layer has one tap per position of the flattened map, a plain linear layer one tap."""
    weight = consumer.weight.detach()
    if layout == "conv":
        return weight.reshape(weight.shape[0], weight.shape[1], -1)
    if layout == "flatten":
        return weight.reshape(weight.shape[0], units, -1)
    return weight.unsqueeze(-1)


def write_weight_taps(consumer: nn.Module, taps: torch.Tensor) -> None:
    with torch.no_grad():
        consumer.weight.copy_(taps.reshape(consumer.weight.shape).to(consumer.weight.dtype))


def fold_constant(model: nn.Module, consumer_name: str, delta: torch.Tensor, norm_name: str | None) -> None:
    """Add the constant ``delta`` (one value per consumer output) to the consumer's output: into its
    bias, else into the running mean of the BatchNorm that follows it (BN(y + δ) with μ ← μ − δ),
    else as a new bias."""
    consumer = model.get_submodule(consumer_name)
    with torch.no_grad():
        if consumer.bias is not None:
            consumer.bias += delta.to(consumer.bias)
        elif norm_name is not None:
            norm = model.get_submodule(norm_name)
            norm.running_mean -= delta.to(norm.running_mean)
        else:
            weight = consumer.weight
            consumer.bias = nn.Parameter(delta.to(device=weight.device, dtype=weight.dtype).clone())


def apply_reconstruction(
    model: nn.Module,
    reader: Reader,
    units: int,
    kept: torch.Tensor,
    mapping: torch.Tensor,
    offset: torch.Tensor,
    coverage: torch.Tensor | None,
    norm_name: str | None,
) -> None:
    """Rewrite the reader for x ≈ c + A x_K: columns K ← W A, other columns 0, constant folded."""
    consumer = model.get_submodule(reader.consumer)
    taps = weight_taps(consumer, reader.layout, units).double()
    new_taps = torch.zeros_like(taps)
    new_taps[:, kept.to(taps.device)] = compensated_weight(taps, mapping.to(taps.device))
    delta = constant_response(taps, offset.to(taps.device), coverage)
    write_weight_taps(consumer, new_taps)
    fold_constant(model, reader.consumer, delta, norm_name)


def drop_columns(model: nn.Module, reader: Reader, units: int, kept: torch.Tensor) -> None:
    """Prune without compensation: the reader simply stops reading the other units."""
    consumer = model.get_submodule(reader.consumer)
    taps = weight_taps(consumer, reader.layout, units)
    mask = torch.zeros(units, dtype=torch.bool, device=taps.device)
    mask[kept.to(taps.device)] = True
    write_weight_taps(consumer, taps * mask[None, :, None])


def remove_units(
    model: nn.Module,
    groups: Sequence[UnitGroup],
    removed: Mapping[str, Sequence[int]],
    example_input: torch.Tensor,
) -> nn.Module:
    """Physically delete ``removed[group]`` units of each group (in place) and return the model."""
    with tracing(model):
        graph = build_dependency_graph(model, example_input)
        for group in groups:
            indices = sorted(int(i) for i in removed.get(group.name, ()))
            if not indices:
                continue
            producer = model.get_submodule(group.name)
            handler = tp.prune_conv_out_channels if isinstance(producer, nn.Conv2d) else tp.prune_linear_out_channels
            pruning_group = graph.get_pruning_group(producer, handler, idxs=indices)
            pruning_group.prune()
    return model


def producer_l1(model: nn.Module, group: UnitGroup) -> torch.Tensor:
    """L1 norm of each unit's producing filters (rows of the producers' weights, summed over them)."""
    total = None
    for name in group.all_producers:
        weight = model.get_submodule(name).weight.detach()
        l1 = weight.abs().reshape(weight.shape[0], -1).sum(1).double()
        total = l1 if total is None else total + l1
    return total

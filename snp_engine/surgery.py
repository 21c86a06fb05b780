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


def weight_view(consumer: nn.Module, layout: str, units: int, start: int = 0, width: int = 0) -> torch.Tensor:
    """A view (out, units, taps) of the reader's weight columns that read the group's units: conv
    taps are kernel positions, a flatten→linear layer has one tap per position of the flattened
    map, a plain linear layer one tap. Behind a concatenation (``width`` > 0) only the columns of
    input channels ``start`` … ``start + units − 1`` are in the view."""
    weight = consumer.weight
    channels = width or units
    if layout == "conv":
        columns = weight[:, start : start + units] if width else weight
        return columns.view(weight.shape[0], units, -1)
    if layout == "flatten":
        return weight.view(weight.shape[0], channels, -1)[:, start : start + units]
    return (weight[:, start : start + units] if width else weight).unsqueeze(-1)


def weight_taps(consumer: nn.Module, layout: str, units: int, start: int = 0, width: int = 0) -> torch.Tensor:
    """The reader's weight for the group's units as (out, units, taps), see :func:`weight_view`."""
    return weight_view(consumer, layout, units, start, width).detach()


def write_weight_taps(
    consumer: nn.Module, taps: torch.Tensor, layout: str = "conv", start: int = 0, width: int = 0
) -> None:
    """Write ``taps`` (out, units, taps) back: the whole weight, or behind a concatenation
    (``width`` > 0) the columns of the group's units only."""
    with torch.no_grad():
        if not width:
            consumer.weight.copy_(taps.reshape(consumer.weight.shape).to(consumer.weight.dtype))
            return
        view = weight_view(consumer, layout, taps.shape[1], start, width)
        view.copy_(taps.reshape(view.shape).to(view.dtype))


def reader_taps(model: nn.Module, reader: Reader, units: int) -> torch.Tensor:
    """:func:`weight_taps` of one reader of a group of ``units``."""
    return weight_taps(model.get_submodule(reader.consumer), reader.layout, units, reader.start, reader.width)


def write_reader_taps(model: nn.Module, reader: Reader, taps: torch.Tensor) -> None:
    """:func:`write_weight_taps` of one reader."""
    write_weight_taps(model.get_submodule(reader.consumer), taps, reader.layout, reader.start, reader.width)


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
        elif bool(delta.any()):  # a new bias only where there is a constant to hold
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
    taps = reader_taps(model, reader, units).double()
    new_taps = torch.zeros_like(taps)
    new_taps[:, kept.to(taps.device)] = compensated_weight(taps, mapping.to(taps.device))
    delta = constant_response(taps, offset.to(taps.device), coverage)
    write_reader_taps(model, reader, new_taps)
    fold_constant(model, reader.consumer, delta, norm_name)


def drop_columns(model: nn.Module, reader: Reader, units: int, kept: torch.Tensor) -> None:
    """Prune without compensation: the reader simply stops reading the other units."""
    taps = reader_taps(model, reader, units)
    mask = torch.zeros(units, dtype=torch.bool, device=taps.device)
    mask[kept.to(taps.device)] = True
    write_reader_taps(model, reader, taps * mask[None, :, None])


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

"""Model plumbing for pruning: view a consumer's weights per kernel tap, write compensated weights
back, fold constants into bias or BatchNorm, and physically remove units with torch-pruning.

Pruning happens in two steps. First every reader of a group is rewritten so that it no longer
reads the pruned units (their weight columns become zero): the network is then functionally
pruned, which is all that evaluation needs. Then :func:`remove_units` deletes the units for real —
the rows of every producer, BatchNorm entries, depthwise channels and every reader's columns —
through torch-pruning's dependency graph, which keeps every coupled layer consistent; attention
heads are removed by :func:`snp_engine.heads.remove_heads`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch_pruning as tp
from torch import nn

from snp_engine.adapters import traceable
from snp_engine.compensation import compensated_weight, constant_response
from snp_engine.groups import Reader, UnitGroup, build_dependency_graph, tracing
from snp_engine.heads import remove_heads, value_l1
from snp_engine.partition_attention import explicit_where_narrowed


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


def _is_grouped(consumer: nn.Module) -> bool:
    return isinstance(consumer, nn.Conv2d) and consumer.groups > 1


def weight_taps(consumer: nn.Module, layout: str, units: int, start: int = 0, width: int = 0) -> torch.Tensor:
    """The reader's weight for the group's units as (out, units, taps), see :func:`weight_view`.

    A grouped conv's weight is given as the equivalent dense one: output o of conv group g reads
    only the input channels of group g, every other entry is zero (a block-diagonal matrix)."""
    if _is_grouped(consumer):
        weight = consumer.weight.detach()
        groups, (out, per_group) = consumer.groups, weight.shape[:2]
        dense = weight.new_zeros(out, per_group * groups, weight[0, 0].numel())
        rows = out // groups
        for g in range(groups):
            dense[g * rows : (g + 1) * rows, g * per_group : (g + 1) * per_group] = weight[
                g * rows : (g + 1) * rows
            ].reshape(rows, per_group, -1)
        return dense
    return weight_view(consumer, layout, units, start, width).detach()


def write_weight_taps(
    consumer: nn.Module, taps: torch.Tensor, layout: str = "conv", start: int = 0, width: int = 0
) -> None:
    """Write ``taps`` (out, units, taps) back: the whole weight, or behind a concatenation
    (``width`` > 0) the columns of the group's units only. For a grouped conv ``taps`` is the
    dense equivalent (see :func:`weight_taps`), which must still be block-diagonal."""
    with torch.no_grad():
        if _is_grouped(consumer):
            weight, groups = consumer.weight, consumer.groups
            rows, per_group = weight.shape[0] // groups, weight.shape[1]
            blocks = [taps[g * rows : (g + 1) * rows, g * per_group : (g + 1) * per_group] for g in range(groups)]
            outside = taps.abs().sum() - sum(b.abs().sum() for b in blocks)
            if float(outside) > 1e-6 * float(taps.abs().sum()):
                raise ValueError(f"a grouped convolution's weights must stay within its {groups} groups")
            weight.copy_(torch.cat(blocks).reshape(weight.shape).to(weight.dtype))
            return
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
    grouped = _grouped_inputs(model, groups, removed)
    heads = [g for g in groups if g.kind == "heads"]
    with tracing(model), traceable(model):
        graph = build_dependency_graph(model, example_input)
        for group in groups:
            indices = sorted(int(i) for i in removed.get(group.name, ()))
            if not indices or group.kind == "heads":
                continue
            producer = model.get_submodule(group.name)
            handler = tp.prune_conv_out_channels if isinstance(producer, nn.Conv2d) else tp.prune_linear_out_channels
            pruning_group = graph.get_pruning_group(producer, handler, idxs=indices)
            pruning_group.prune()
    _restore_grouped_inputs(model, groups, removed, grouped)
    explicit_where_narrowed(model)  # MaxViT's attention on a narrower stream
    for group in heads:  # after torch-pruning: it traces attention layers as they were
        if removed.get(group.name):
            remove_heads(model, group.name, removed[group.name])
    return model


def _grouped_inputs(
    model: nn.Module, groups: Sequence[UnitGroup], removed: Mapping[str, Sequence[int]]
) -> dict[str, tuple[torch.Tensor, list[int]]]:
    """Each grouped conv reader that loses inputs: its weight before removal and its kept inputs."""
    found = {}
    for group in groups:
        lost = set(int(i) for i in removed.get(group.name, ()))
        for reader in group.readers:
            if reader.groups > 1 and lost:
                weight = model.get_submodule(reader.consumer).weight.detach().clone()
                found[reader.consumer] = (weight, [i for i in range(group.units) if i not in lost])
    return found


def _restore_grouped_inputs(
    model: nn.Module,
    groups: Sequence[UnitGroup],
    removed: Mapping[str, Sequence[int]],
    grouped: Mapping[str, tuple[torch.Tensor, list[int]]],
) -> None:
    """torch-pruning removes the same input positions from every group of a grouped conv (those of
    the first group); rebuild each such weight from its kept rows and each group's own kept inputs."""
    lost_rows = {p: set(int(i) for i in removed.get(g.name, ())) for g in groups for p in g.all_producers}
    for name, (weight, kept) in grouped.items():
        conv = model.get_submodule(name)
        groups_, rows, per_group = conv.groups, weight.shape[0] // conv.groups, weight.shape[1]
        columns = [[i - g * per_group for i in kept if i // per_group == g] for g in range(groups_)]
        new = torch.stack([weight[o, columns[o // rows]] for o in range(weight.shape[0])])
        keep_rows = [o for o in range(weight.shape[0]) if o not in lost_rows.get(name, set())]
        with torch.no_grad():
            conv.weight.copy_(new[keep_rows].to(conv.weight))


def producer_l1(model: nn.Module, group: UnitGroup) -> torch.Tensor:
    """L1 norm of each unit's producing filters (rows of the producers' weights, summed over them;
    for attention heads, each head's value-projection rows)."""
    if group.kind == "heads":
        return value_l1(model, group.name)
    total = None
    for name in group.all_producers:
        weight = model.get_submodule(name).weight.detach()
        l1 = weight.abs().reshape(weight.shape[0], -1).sum(1).double()
        total = l1 if total is None else total + l1
    return total

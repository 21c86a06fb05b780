"""Parameters and FLOPs (multiply–accumulates) of a network and of any pruning plan for it.

One forward pass with hooks records, per conv / linear / BatchNorm layer, its MACs and parameter
count. A plan changes a layer's cost by simple ratios: a conv or linear layer's MACs and weights
scale with (kept inputs / inputs) · (kept outputs / outputs); a BatchNorm or depthwise conv inside
a group scales with that group's kept fraction; biases scale with the kept outputs. Behind a
concatenation a layer's inputs (or a BatchNorm's channels) are several groups side by side, perhaps
with channels of no group: the kept fraction is (fixed channels + Σ_g kept_g) / width. This is exact
for these layers, so plans can be costed in microseconds while the user drags a marker. An
attention layer's heads add their q/k/v projection and the two attention products (q kᵀ and
softmax(·) v), which scale with the kept heads like the output projection that reads them.
A layer norm over a stream's channels (ConvNeXt) scales its γ and β like a BatchNorm, and so do
the stream's layer-scale vectors (:func:`layer_scales`); parameters
of other layers (embeddings, other layer norms) and the FLOPs torch's counter attributes to
other operations are carried as a constant.

FLOPs here are multiply–accumulates (MACs), the convention of most pruning papers and of
torch-pruning's counter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from snp_engine import flops
from snp_engine.groups import UnitGroup, units_of
from snp_engine.heads import explicit_attention, per_head_parameters, product_macs, projection
from snp_engine.layernorm_streams import stream_norms

_COUNTED = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class LayerCost:
    """One layer's MACs and parameters, and the groups its inputs, outputs and channels belong to.

    ``in_groups`` are the groups the layer's input channels belong to (several behind a
    concatenation), ``in_width`` the layer's input channels in all (0: the groups' units, no
    other channels); ``channel_groups`` / ``channel_width`` likewise for a BatchNorm or a
    depthwise conv carried along by groups."""

    name: str
    macs: float
    weight_params: int
    bias_params: int
    in_groups: tuple[str, ...] = ()
    out_group: str | None = None
    channel_groups: tuple[str, ...] = ()
    in_width: int = 0
    channel_width: int = 0
    new_bias: int = 0  # bias entries compensation adds (a reader with no bias and no BatchNorm after it)

    @property
    def in_group(self) -> str | None:
        """The first input group (None if the input belongs to no group)."""
        return self.in_groups[0] if self.in_groups else None

    @property
    def channel_group(self) -> str | None:
        """The first group of a channel-wise layer's channels (None if it is none's)."""
        return self.channel_groups[0] if self.channel_groups else None

    def groups(self) -> set[str]:
        """Every group whose kept count changes this layer's cost."""
        return {*self.in_groups, *self.channel_groups} | ({self.out_group} if self.out_group else set())

    def cost(self, kept: Callable[[str], int], units: Mapping[str, int]) -> tuple[float, float]:
        """(parameters, MACs) when group g keeps ``kept(g)`` of its ``units[g]`` units."""

        def fraction(groups: tuple[str, ...], width: int) -> float:
            if not groups:
                return 1.0
            total = sum(units[g] for g in groups)
            width = width or total
            return (width - total + sum(kept(g) for g in groups)) / width

        r_in = fraction(self.in_groups, self.in_width)
        r_out = fraction((self.out_group,), 0) if self.out_group else 1.0
        r_ch = fraction(self.channel_groups, self.channel_width)
        scale, bias = r_in * r_out * r_ch, self.bias_params
        if self.new_bias and r_in < 1.0:
            bias += self.new_bias
        return self.weight_params * scale + bias * r_out * r_ch, self.macs * scale


@dataclass(frozen=True)
class CostModel:
    """Per-layer costs plus constants for what no plan changes."""

    layers: tuple[LayerCost, ...]
    other_params: int
    other_macs: float
    units: Mapping[str, int] = field(default_factory=dict)

    def evaluate(self, keep: Mapping[str, int] | None = None) -> tuple[int, float]:
        """(parameters, MACs) when every group g keeps ``keep[g]`` units (all units if absent)."""
        keep = keep or {}
        units = self.units

        def kept(group: str) -> int:
            return keep.get(group, units[group])

        params, macs = float(self.other_params), self.other_macs
        for layer in self.layers:
            layer_params, layer_macs = layer.cost(kept, units)
            params += layer_params
            macs += layer_macs
        return round(params), macs

    def saving(self, keep: Mapping[str, int], group: str, new_k: int) -> tuple[float, float]:
        """(parameters, MACs) saved when ``group`` goes from its count in ``keep`` to ``new_k`` units;
        only the layers that touch the group are visited, so greedy allocation stays fast."""
        units = self.units

        def before(name: str) -> int:
            return keep.get(name, units[name])

        def after(name: str) -> int:
            return new_k if name == group else keep.get(name, units[name])

        params = macs = 0.0
        for layer in self._layers_of().get(group, ()):
            for sign, kept in ((1.0, before), (-1.0, after)):
                layer_params, layer_macs = layer.cost(kept, units)
                params += sign * layer_params
                macs += sign * layer_macs
        return params, macs

    def _layers_of(self) -> dict[str, list[LayerCost]]:
        index = self.__dict__.get("_index")
        if index is None:
            index = {}
            for layer in self.layers:
                for group in layer.groups():
                    index.setdefault(group, []).append(layer)
            object.__setattr__(self, "_index", index)  # a cache on a frozen dataclass
        return index

    @property
    def params(self) -> int:
        return self.evaluate()[0]

    @property
    def macs(self) -> float:
        return self.evaluate()[1]


def _channels(module: nn.Module) -> int:
    """The channels of a BatchNorm, a depthwise conv or a layer norm over a stream's channels."""
    if isinstance(module, nn.LayerNorm):
        return int(module.normalized_shape[-1])
    return module.num_features if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d) else module.out_channels


def _layer_macs(module: nn.Module, output: torch.Tensor) -> float:
    # the model runs on one sample; some layers see it split along the first dimension (Swin's
    # windows), so the whole output counts
    per_sample = output.numel()
    if isinstance(module, nn.Conv2d):
        kernel = module.kernel_size[0] * module.kernel_size[1]
        return per_sample * module.in_channels // module.groups * kernel
    if isinstance(module, nn.Linear):
        return per_sample * module.in_features
    return 0.0  # BatchNorm folds into the preceding layer at inference


def total_macs(model: nn.Module, example_input: torch.Tensor) -> float:
    """All MACs of one sample, attention included (see :func:`snp_engine.flops.total_macs`)."""
    return flops.total_macs(model, example_input)


def _attention_costs(group: UnitGroup, projected: tuple[str, int, bool], costs: dict[str, LayerCost]) -> Callable:
    """A pre-hook on an attention layer that adds what its heads cost beyond the linear layers that
    forward hooks see: a torchvision layer's q/k/v projection (a bare parameter, 3·H·d·E MACs per
    token) and, for every layer, the two attention products q kᵀ and softmax(·) v (2·T·S·H·d MACs
    for T query and S key tokens) with Swin's relative position bias table (a column per head).
    Both scale with the kept heads. ``projected`` is :func:`snp_engine.heads.projection` of the layer."""
    qkv, params, hooked = projected
    width = group.channels

    def hook(module, inputs, *_):
        if f"{group.name}:attention" in costs:
            return
        projecting, products = product_macs(module, inputs)
        if not hooked:
            bias = 3 * width if getattr(module, "in_proj_bias", None) is not None else 0
            costs[qkv] = LayerCost(qkv, projecting, params - bias, bias, out_group=group.name)
        extra, _ = per_head_parameters(module)  # Swin: a bias-table column per head
        costs[f"{group.name}:attention"] = LayerCost(
            f"{group.name}:attention", products, extra, 0, out_group=group.name
        )

    return hook


def build_cost_model(
    model: nn.Module,
    groups: Sequence[UnitGroup],
    example_input: torch.Tensor,
    norms: Mapping[str, str] | None = None,
) -> CostModel:
    """Measure per-layer costs of ``model`` for one input sample. ``norms`` (reader → the BatchNorm
    after it, :func:`snp_engine.activations.following_norms`) tells which readers compensation gives
    a new bias: those with neither a bias nor a BatchNorm to fold the constant into."""
    role: dict[str, dict] = {}
    for group in groups:
        for producer in group.all_producers:
            role.setdefault(producer, {})["out_group"] = group.name
        for reader in group.readers:
            entry = role.setdefault(reader.consumer, {})
            entry["in_groups"] = (*entry.get("in_groups", ()), group.name)
            entry["in_width"] = reader.width
            consumer = model.get_submodule(reader.consumer)
            if norms is not None and consumer.bias is None and reader.consumer not in norms:
                entry["new_bias"] = units_of(consumer)
        for name in group.channelwise:
            entry = role.setdefault(name, {})
            entry["channel_groups"] = (*entry.get("channel_groups", ()), group.name)
            entry["channel_width"] = _channels(model.get_submodule(name))

    heads = [g for g in groups if g.kind == "heads"]
    projections = {g.name: projection(model, g.name) for g in heads}
    for group in heads:
        qkv, _, hooked = projections[group.name]
        if hooked:  # timm's fused q/k/v layer: its output channels are the heads' channels
            role.setdefault(qkv, {})["out_group"] = group.name
        _, per_head = per_head_parameters(model.get_submodule(group.name))
        if per_head is not None:  # a layer with one output per head (Swin V2's position-bias MLP)
            role.setdefault(f"{group.name}.{per_head}", {})["out_group"] = group.name

    costs: dict[str, LayerCost] = {}
    handles = []
    model.eval()
    with explicit_attention(model):  # torchvision attention calls its output projection as a module
        for name, module in model.named_modules():
            # a layer norm over a stream's channels (ConvNeXt) loses γ and β with the stream's units
            if isinstance(module, _COUNTED) or (isinstance(module, nn.LayerNorm) and name in role):

                def hook(mod, _inputs, output, name=name):
                    if name in costs:
                        return
                    weight = mod.weight.numel() if mod.weight is not None else 0
                    bias = mod.bias.numel() if mod.bias is not None else 0
                    costs[name] = LayerCost(name, _layer_macs(mod, output), weight, bias, **role.get(name, {}))

                handles.append(module.register_forward_hook(hook))
        for group in heads:
            handles.append(
                model.get_submodule(group.name).register_forward_pre_hook(
                    _attention_costs(group, projections[group.name], costs)
                )
            )
        try:
            with torch.inference_mode():
                model(example_input[:1])
        finally:
            for handle in handles:
                handle.remove()
    for group in groups:
        for name, size in layer_scales(model, group):
            costs.setdefault(
                name, LayerCost(name, 0.0, size, 0, channel_groups=(group.name,), channel_width=group.units)
            )
    all_params = sum(p.numel() for p in model.parameters())
    counted_params = sum(c.weight_params + c.bias_params for c in costs.values())
    counted_macs = sum(c.macs for c in costs.values())
    other_macs = max(total_macs(model, example_input) - counted_macs, 0.0)
    return CostModel(tuple(costs.values()), all_params - counted_params, other_macs, {g.name: g.units for g in groups})


def layer_scales(model: nn.Module, group: UnitGroup) -> list[tuple[str, int]]:
    """The per-channel layer-scale vectors of a layer-norm stream (ConvNeXt's ``layer_scale`` /
    timm's ``gamma``): parameters of ``units`` entries held by a block that contains one of the
    stream's producers (its nearest ancestor with such a parameter), as (name, entries)."""
    if not stream_norms(model, group):
        return []
    found: dict[str, int] = {}
    for producer in group.all_producers:
        path = producer.split(".")
        for depth in range(len(path) - 1, max(len(path) - 4, 0), -1):
            holder = ".".join(path[:depth])
            own = [
                (f"{holder}.{name}", p.numel())
                for name, p in model.get_submodule(holder)._parameters.items()
                if p is not None and p.numel() == group.units
            ]
            if own:
                found.update(own)
                break
    return list(found.items())


def count(model: nn.Module, example_input: torch.Tensor) -> tuple[int, float]:
    """(parameters, MACs per sample) of a model as it is (see :func:`snp_engine.flops.count`)."""
    return flops.count(model, example_input)

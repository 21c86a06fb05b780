"""Parameters and FLOPs (multiply–accumulates) of a network and of any pruning plan for it.

One forward pass with hooks records, per conv / linear / BatchNorm layer, its MACs and parameter
count. A plan changes a layer's cost by simple ratios: a conv or linear layer's MACs and weights
scale with (kept inputs / inputs) · (kept outputs / outputs); a BatchNorm or depthwise conv inside
a group scales with that group's kept fraction; biases scale with the kept outputs. This is exact
for these layers, so plans can be costed in microseconds while the user drags a marker. Parameters
of other layers (embeddings, attention, layer norms) and the FLOPs torch's counter attributes to
other operations (attention matmuls, …) are carried as a constant.

FLOPs here are multiply–accumulates (MACs), the convention of most pruning papers and of
torch-pruning's counter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from snp_engine import flops
from snp_engine.groups import UnitGroup

_COUNTED = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class LayerCost:
    name: str
    macs: float
    weight_params: int
    bias_params: int
    in_group: str | None = None
    out_group: str | None = None
    channel_group: str | None = None


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

        def fraction(group: str | None) -> float:
            if group is None:
                return 1.0
            return keep.get(group, self.units[group]) / self.units[group]

        params, macs = float(self.other_params), self.other_macs
        for layer in self.layers:
            r_in, r_out, r_ch = fraction(layer.in_group), fraction(layer.out_group), fraction(layer.channel_group)
            scale = r_in * r_out * r_ch
            macs += layer.macs * scale
            params += layer.weight_params * scale + layer.bias_params * r_out * r_ch
        return round(params), macs

    def saving(self, keep: Mapping[str, int], group: str, new_k: int) -> tuple[float, float]:
        """(parameters, MACs) saved when ``group`` goes from its count in ``keep`` to ``new_k`` units;
        only the layers that touch the group are visited, so greedy allocation stays fast."""
        units = self.units

        def fraction(name: str | None, moved: bool) -> float:
            if name is None:
                return 1.0
            return (new_k if moved else keep.get(name, units[name])) / units[name]

        params = macs = 0.0
        for layer in self._layers_of().get(group, ()):
            for sign, moved in ((1.0, False), (-1.0, True)):
                r_in = fraction(layer.in_group, moved and layer.in_group == group)
                r_out = fraction(layer.out_group, moved and layer.out_group == group)
                r_ch = fraction(layer.channel_group, moved and layer.channel_group == group)
                macs += sign * layer.macs * r_in * r_out * r_ch
                params += sign * (layer.weight_params * r_in * r_out * r_ch + layer.bias_params * r_out * r_ch)
        return params, macs

    def _layers_of(self) -> dict[str, list[LayerCost]]:
        index = self.__dict__.get("_index")
        if index is None:
            index = {}
            for layer in self.layers:
                for group in {layer.in_group, layer.out_group, layer.channel_group} - {None}:
                    index.setdefault(group, []).append(layer)
            object.__setattr__(self, "_index", index)  # a cache on a frozen dataclass
        return index

    @property
    def params(self) -> int:
        return self.evaluate()[0]

    @property
    def macs(self) -> float:
        return self.evaluate()[1]


def _layer_macs(module: nn.Module, output: torch.Tensor) -> float:
    per_sample = output[0].numel()
    if isinstance(module, nn.Conv2d):
        kernel = module.kernel_size[0] * module.kernel_size[1]
        return per_sample * module.in_channels // module.groups * kernel
    if isinstance(module, nn.Linear):
        return per_sample * module.in_features
    return 0.0  # BatchNorm folds into the preceding layer at inference


def total_macs(model: nn.Module, example_input: torch.Tensor) -> float:
    """All MACs of one sample, attention included (see :func:`snp_engine.flops.total_macs`)."""
    return flops.total_macs(model, example_input)


def build_cost_model(model: nn.Module, groups: Sequence[UnitGroup], example_input: torch.Tensor) -> CostModel:
    """Measure per-layer costs of ``model`` for one input sample."""
    role: dict[str, dict[str, str]] = {}
    for group in groups:
        for producer in group.all_producers:
            role.setdefault(producer, {})["out_group"] = group.name
        for reader in group.readers:
            role.setdefault(reader.consumer, {})["in_group"] = group.name
        for name in group.channelwise:
            role.setdefault(name, {})["channel_group"] = group.name

    costs: dict[str, LayerCost] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, _COUNTED):

            def hook(mod, _inputs, output, name=name):
                if name in costs:
                    return
                weight = mod.weight.numel() if mod.weight is not None else 0
                bias = mod.bias.numel() if mod.bias is not None else 0
                costs[name] = LayerCost(name, _layer_macs(mod, output), weight, bias, **role.get(name, {}))

            handles.append(module.register_forward_hook(hook))
    try:
        model.eval()
        with torch.inference_mode():
            model(example_input[:1])
    finally:
        for handle in handles:
            handle.remove()
    all_params = sum(p.numel() for p in model.parameters())
    counted_params = sum(c.weight_params + c.bias_params for c in costs.values())
    counted_macs = sum(c.macs for c in costs.values())
    other_macs = max(total_macs(model, example_input) - counted_macs, 0.0)
    return CostModel(tuple(costs.values()), all_params - counted_params, other_macs, {g.name: g.units for g in groups})


def count(model: nn.Module, example_input: torch.Tensor) -> tuple[int, float]:
    """(parameters, MACs per sample) of a model as it is (see :func:`snp_engine.flops.count`)."""
    return flops.count(model, example_input)

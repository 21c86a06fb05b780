"""Find the prunable unit groups of any network built from standard layers.

A *unit group* is a set of channels/neurons produced by one layer (conv or linear), possibly
passed through channel-wise layers (BatchNorm, activations, pooling, depthwise convs, a flatten)
and read by exactly one consumer (conv or linear). SNP measures the units at the consumer's
input, removes them from the producer and compensates the consumer.

torch-pruning's dependency graph (DepGraph) tells which layers are coupled by a channel
dimension. Groups it reports that do not fit the pattern are listed as *excluded* with a reason:
the network output, residual-stream channels that are coupled across blocks (summed by skip
connections), channels read by several layers, or channels that pass through a non-channel-wise
operation (attention, layer norm, concatenation, …).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

# grad_fn names (substrings) of operations that act on each channel on its own.
_CHANNELWISE_OPS = (
    "Relu",
    "Gelu",
    "Hardtanh",
    "Silu",
    "Hardswish",
    "Sigmoid",
    "Tanh",
    "Elu",
    "Softplus",
    "MaxPool",
    "AvgPool",
    "AdaptiveAvgPool",
    "Dropout",
    "Clone",
    "Mish",
    "Threshold",
    # global average pooling written as a spatial mean (MobileNet, EfficientNet)
    "Mean",
    # the weight transpose and matmul of a linear layer applied to token sequences
    "TBackward",
    "Addmm",
    "View",
)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class UnitGroup:
    """One prunable group: ``units`` outputs of ``producer`` read by ``consumer``."""

    name: str  # the producing layer's module name, which users refer to
    consumer: str
    units: int
    layout: str  # "conv" (conv consumer), "linear" (linear consumer, any leading dims), "flatten"
    channelwise: tuple[str, ...] = ()  # BatchNorm / depthwise conv modules carried along

    @property
    def producer(self) -> str:
        return self.name


@dataclass(frozen=True)
class ExcludedGroup:
    """Units that are not pruned, and why."""

    name: str
    units: int
    reason: str


def _is_prunable_linear_op(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def build_dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of ``model`` traced on ``example_input``."""
    # torch-pruning calls model(*example_inputs) first: a bare tensor would be unpacked along its batch
    # dimension, so a one-image batch would be traced as an unbatched input (and a failed first try
    # leaves its modules counted as reused). Passing a 1-tuple makes that call model(example_input).
    inputs = (example_input,) if isinstance(example_input, torch.Tensor) else example_input
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch-pruning warns about unwrapped parameters (ViT tokens)
        return tp.DependencyGraph().build_dependency(model, example_inputs=inputs)


def _classify(dependencies, names: dict[nn.Module, str], graph_units: int):
    producers, consumers, channelwise, blockers = [], [], [], []
    for dep, _ in dependencies:
        module, handler = dep.target.module, dep.handler.__name__
        name = names.get(module)
        if isinstance(module, _BATCHNORM) or _is_depthwise(module):
            if name not in channelwise:
                channelwise.append(name)
        elif _is_prunable_linear_op(module):
            (producers if handler.endswith("out_channels") else consumers).append(name)
        elif type(module).__name__ == "_ElementWiseOp":
            op = dep.target.grad_fn.name() if dep.target.grad_fn is not None else "unknown"
            if not any(key in op for key in _CHANNELWISE_OPS):
                blockers.append(op.replace("Backward0", "").replace("Backward1", ""))
        elif type(module).__name__ in ("_ReshapeOp", "_FlattenOp"):
            continue
        else:
            blockers.append(type(module).__name__ if name is None else f"{name} ({type(module).__name__})")
    return producers, consumers, channelwise, blockers


def _units_of(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def find_groups(model: nn.Module, example_input: torch.Tensor) -> tuple[list[UnitGroup], list[ExcludedGroup]]:
    """All prunable unit groups of ``model`` and the excluded ones with their reasons."""
    model.eval()
    graph = build_dependency_graph(model, example_input)
    names = {module: name for name, module in model.named_modules()}
    groups, excluded, seen = [], [], set()
    for group in graph.get_all_groups(root_module_types=[nn.Conv2d, nn.Linear]):
        producers, consumers, channelwise, blockers = _classify(group, names, 0)
        producers = [p for p in producers if p is not None]
        if not producers or producers[0] in seen:
            continue
        seen.update(producers)
        module = model.get_submodule(producers[0])
        units = _units_of(module)
        label = producers[0]
        if len(producers) > 1:
            excluded.append(
                ExcludedGroup(
                    label,
                    units,
                    f"residual stream: channels coupled across {len(producers)} layers ({', '.join(producers[:4])}"
                    + (", …)" if len(producers) > 4 else ")"),
                )
            )
        elif blockers:
            excluded.append(ExcludedGroup(label, units, f"passes through {', '.join(sorted(set(blockers)))}"))
        elif not consumers:
            excluded.append(ExcludedGroup(label, units, "network output"))
        elif len(consumers) > 1:
            excluded.append(ExcludedGroup(label, units, f"read by several layers ({', '.join(consumers)})"))
        else:
            consumer = model.get_submodule(consumers[0])
            if isinstance(consumer, nn.Conv2d):
                layout = "conv"
            elif consumer.in_features == units:
                layout = "linear"
            else:
                layout = "flatten"
            groups.append(UnitGroup(label, consumers[0], units, layout, tuple(c for c in channelwise if c)))
    return groups, excluded


def execution_order(model: nn.Module, groups: list[UnitGroup], example_input: torch.Tensor) -> list[UnitGroup]:
    """``groups`` sorted by when their consumer runs in a forward pass (front to back)."""
    first_call: dict[str, int] = {}
    handles = []
    for group in groups:

        def hook(_module, _inputs, name=group.consumer):
            first_call.setdefault(name, len(first_call))

        handles.append(model.get_submodule(group.consumer).register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return sorted(groups, key=lambda g: first_call.get(g.consumer, len(first_call)))

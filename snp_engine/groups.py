"""Find the prunable unit groups of any network built from standard layers.

A *unit group* is a set of channels/neurons with one index: unit i is channel i of every tensor
the group couples. It is produced by one or more layers (conv or linear), passed through
channel-wise operations (BatchNorm, activations, pooling, depthwise convs, a flatten, and the sums
and products of skip connections and squeeze-excitation gates, which combine channel i only with
channel i) and read by one or more *readers* (conv or linear layers). SNP measures the units at
every reader's input, removes them from every producer and compensates every reader.

The simple case is one producer and one reader (a VGG layer, a ResNet block's inner channels).
*Coupled* groups have more:

- a residual stream x_b = x_{b-1} + f_b(x_{b-1}): producers are the stem and each block's last
  conv (and a downsample), readers each block's first conv, the next downsample and the
  classifier; removing channel i removes it from every x_b at once;
- a squeeze-excitation gate x ⊙ σ(W₂ δ(W₁ pool(x))): the gate's expand layer W₂ is a producer of
  the gated channels, the reduce layer W₁ one of their readers;
- channels read by several layers (the branches of an inception block);
- grouped convolutions (ResNeXt, RegNet): a grouped conv reads (or produces) the units in equal
  parts, one per conv group; every part keeps the same number of units (``parts``), and a grouped
  reader is compensated within each of its groups (its weights stay block-diagonal);
- a concatenation (DenseNet, SqueezeNet's fire modules, GoogLeNet/Inception): a branch's units are
  a contiguous slice of each reader's input, channels ``start`` to ``start + units`` of ``width``;
  the reader's other input channels belong to other groups (or to none) and stay as they are.
- a residual stream read through layer norms over its channels (ConvNeXt, torchvision and timm;
  MaxViT, whose stream also passes through the permutes and transposes of its window and grid
  partitions): the norms (``LayerNorm`` after a permute, ``LayerNorm2d``) are listed with the
  channel-wise modules; they are not channel-wise, and :mod:`snp_engine.layernorm_streams` says how
  they are restricted to the kept channels and how the readers after them are refitted. Per-channel
  layer-scale vectors and the permutes around the norms come along;
- attention heads (torchvision and timm ViTs, Swin, MaxViT): the units of a *head group* are the
  heads of one multi-head attention layer, each ``block`` = head-width channels of the output
  projection's input (``kind == "heads"``, see :mod:`snp_engine.heads`).

Each reader r sees its own tensor x_r (the stream after a different number of blocks), so the
statistics, the least-squares compensation x_r ≈ c_r + A_r x_{r,K} and the consumer metric M_r
are per reader; the ordering and the curve combine the readers (see :mod:`snp_engine.subspace`).

torch-pruning's dependency graph (DepGraph) tells which layers are coupled by a channel
dimension. Groups it reports that do not fit the pattern are listed as *excluded* with a reason:
the network output, or channels that pass through an operation that mixes channels (attention,
a layer norm over other channels than the group's, a split, …).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from snp_engine.adapters import traceable
from snp_engine.errors import AnalysisError, SnpError
from snp_engine.guard import bounded
from snp_engine.heads import attention_layers, explicit_attention, per_head_parameters
from snp_engine.subspace import block_units

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
    "Hardsigmoid",
    # a batch norm inside another module (timm's BatchNormAct2d: batch norm, then activation)
    "BatchNorm",
    # a skip connection's sum and a squeeze-excitation gate's product combine channel i with channel i
    "Add",
    "Mul",
)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class Reader:
    """A layer that reads a group's units, and how its input is laid out: ``"conv"`` (a conv
    reader), ``"linear"`` (a linear reader, any leading dims) or ``"flatten"`` (a linear reader of a
    flattened map). Behind a concatenation the units are input channels ``start`` … ``start + units
    − 1`` of ``width`` channels (``width`` 0: the input is the group's units alone). A grouped
    convolution reads its input in ``groups`` equal parts, each output from one part only."""

    consumer: str
    layout: str
    start: int = 0
    width: int = 0
    groups: int = 1  # a grouped conv reader: its least-squares maps stay within each of its groups

    def span(self, units: int) -> tuple[int, int]:
        """(first channel, channels in all) of this reader's input for a group of ``units``."""
        return self.start, self.width or units


@dataclass(frozen=True)
class UnitGroup:
    """One prunable group: ``units`` outputs of ``producer`` read by ``consumer`` (the first reader
    in execution order) and, for coupled groups, by ``more_readers`` and produced by ``producers``."""

    name: str  # the (first) producing layer's module name, which users refer to
    consumer: str
    units: int
    layout: str  # the first reader's layout, see Reader
    channelwise: tuple[str, ...] = ()  # BatchNorm / depthwise conv / stream layer-norm modules carried along
    more_readers: tuple[Reader, ...] = ()
    producers: tuple[str, ...] = ()  # every producing layer, ``name`` first; empty means (name,)
    start: int = 0  # the first reader's slice of its input (see Reader)
    width: int = 0
    groups: int = 1  # the first reader's conv groups (see Reader)
    parts: int = 1  # grouped convs read or produce the units in this many equal parts: each keeps as many
    block: int = 1  # channels per unit at the readers' input (an attention head: its width)
    kind: str = "channels"  # or "heads": the units are the heads of attention layer ``name``

    @property
    def channels(self) -> int:
        """The channels the units occupy at each reader's input (``units · block``)."""
        return self.units * self.block

    def channel_indices(self, kept: torch.Tensor) -> torch.Tensor:
        """The reader-input channels of units ``kept`` (unit u is channels u·block … u·block + block − 1)."""
        return block_units(torch.as_tensor(kept, dtype=torch.long), self.block)

    @property
    def producer(self) -> str:
        return self.name

    @property
    def readers(self) -> tuple[Reader, ...]:
        """Every reader, the first (``consumer``) first."""
        return (Reader(self.consumer, self.layout, self.start, self.width, self.groups), *self.more_readers)

    @property
    def all_producers(self) -> tuple[str, ...]:
        return self.producers or (self.name,)

    @property
    def coupling(self) -> str:
        """In words, what couples the group ('' for one producer and one reader of its units alone)."""
        producers, readers = len(self.all_producers), len(self.readers)
        words = []
        if producers > 1:
            words.append(f"produced by {producers} layers, read by {readers}")
        elif readers > 1:
            words.append(f"read by {readers} layers")
        if any(r.width for r in self.readers):
            words.append("a slice of a concatenation")
        if self.parts > 1:
            words.append(f"kept evenly over {self.parts} conv groups")
        return ", ".join(words)

    @property
    def unit_word(self) -> str:
        """What one unit is called: 'heads' for attention heads, else 'units'."""
        return "heads" if self.kind == "heads" else "units"

    @property
    def coupled(self) -> bool:
        """True for a group with several producers or readers (a residual stream, a gate, …), read
        as a slice of a concatenation or split over conv groups."""
        return bool(self.more_readers) or len(self.all_producers) > 1 or bool(self.coupling)


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
        # … and about its shape inference running too deep, after which it may never finish
        warnings.filterwarnings("error", message="Maximum recursive depth")
        return tp.DependencyGraph().build_dependency(model, example_inputs=inputs)


_UNTRACEABLE = (
    "snp cannot trace this architecture's channel couplings (the patterns it knows: conv/linear layers, "
    "BatchNorm, depthwise convs, skip connections, gates)"
)


@contextlib.contextmanager
def tracing(model: nn.Module) -> Iterator[None]:
    """Run torch-pruning on ``model`` within bounds (:func:`snp_engine.guard.bounded`), turning its
    internal errors into one :class:`AnalysisError` that names the architecture."""
    what = f"tracing the layers of {type(model).__name__}"
    try:
        with bounded(what, hint=_UNTRACEABLE):
            yield
    except SnpError:
        raise
    except Exception as exc:  # RecursionError included
        detail = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise AnalysisError(
            f"{what} failed inside torch-pruning ({type(exc).__name__}{': ' + detail if detail else ''}); "
            + _UNTRACEABLE
        ) from None


_UNMAPPED = "passes through a channel split or shuffle whose channels snp cannot map"


def _all_groups(graph: tp.DependencyGraph, names: dict[nn.Module, str]) -> tuple[list, dict[str, int]]:
    """Every group of coupled channels, one per conv/linear layer that produces channels not seen in
    an earlier group (as torch-pruning's ``get_all_groups``), and the producers whose group
    torch-pruning fails to map (a channel split or shuffle it cannot follow, e.g. ShuffleNetV2's):
    those are excluded alone instead of the whole network being refused."""
    found, unmapped, visited = [], {}, set()
    for module in list(graph.module2node):
        if not isinstance(module, nn.Conv2d | nn.Linear) or module in visited:
            continue
        pruner = graph.get_pruner_of_module(module)
        width = pruner.get_out_channels(module) if pruner is not None else None
        if width is None:
            continue
        try:
            group = graph.get_pruning_group(module, pruner.prune_out_channels, list(range(width)))
        except (IndexError, ZeroDivisionError, KeyError, ValueError, RuntimeError):
            unmapped[names[module]] = int(width)
            visited.add(module)
            continue
        for dep, _ in group:
            if graph.is_out_channel_pruning_fn(dep.handler):
                visited.add(dep.target.module)
        found.append(group)
    return found, unmapped


def _classify(dependencies, names: dict[nn.Module, str]):
    """Split torch-pruning's dependencies of one group into producers, readers (with the input
    columns each reads), channel-wise modules and blockers."""
    producers, consumers, channelwise, blockers = [], {}, [], []
    for dep, idxs in dependencies:
        module, handler = dep.target.module, dep.handler.__name__
        name = names.get(module)
        if isinstance(module, _BATCHNORM) or _is_depthwise(module):
            if name not in channelwise:
                channelwise.append(name)
        elif _is_prunable_linear_op(module) or isinstance(module, nn.Conv2d):  # grouped convs too
            if handler.endswith("out_channels"):
                producers.append(name)
            else:
                consumers.setdefault(name, [int(i) for i in idxs])
        elif type(module).__name__ == "_ElementWiseOp":
            op = dep.target.grad_fn.name() if dep.target.grad_fn is not None else "unknown"
            if not any(key in op for key in _CHANNELWISE_OPS):
                blockers.append(op.replace("Backward0", "").replace("Backward1", ""))
        elif type(module).__name__ in ("_ReshapeOp", "_FlattenOp", "_ConcatOp"):
            continue  # a concatenation only moves the units to a slice of the readers' input
        else:
            blockers.append(type(module).__name__ if name is None else f"{name} ({type(module).__name__})")
    return producers, consumers, channelwise, blockers


# what a residual stream read through layer norms over its channels passes through besides them
# (ConvNeXt: the permutes around a channels-last layer norm, the norm's own op, the layer scale, and
# the reshapes of pooling a map to one position; MaxViT: the permutes, reshapes and the transpose of
# its window and grid partitions, which move positions, never channels)
_STREAM_NORM_OPS = ("NativeLayerNorm", "Permute", "Transpose", "AsStrided", "Parameter", "View", "Reshape")


def _stream_norms(
    model: nn.Module, dependencies, names: dict[nn.Module, str], units: int, blockers: list[str]
) -> tuple[list[str], list[str]]:
    """The layer norms over a group's ``units`` channels and the blockers left without them.

    A group whose only blockers are layer norms over exactly its channels (and the permutes,
    reshapes and per-channel layer-scale vectors around them) is a layer-norm stream (see
    :mod:`snp_engine.layernorm_streams`): its norms are returned and its blockers become empty.
    Any other group is returned as it is, with no norms."""
    norms = []
    for dep, _ in dependencies:
        module = dep.target.module
        if isinstance(module, nn.LayerNorm) and names.get(module) not in norms:
            if tuple(module.normalized_shape) != (units,):
                return [], blockers
            norms.append(names.get(module))
        elif isinstance(module, nn.Parameter) and module.numel() != units:
            return [], blockers
    if not norms:
        return [], blockers
    left = [
        b
        for b in blockers
        if not any(key in b for key in _STREAM_NORM_OPS) and not (" (" in b and b.split(" (")[0] in norms)
    ]
    return (norms, []) if not left else ([], blockers)


def _conv_groups(module: nn.Module) -> int:
    """A producer's conv groups (1 for a linear layer or an ordinary conv)."""
    return module.groups if isinstance(module, nn.Conv2d) else 1


def units_of(module: nn.Module) -> int:
    """The output units of a conv (channels) or linear layer (features)."""
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def _reader(model: nn.Module, consumer: str, columns: list[int], units: int) -> Reader | str:
    """The reader ``consumer`` of a group of ``units`` whose units it reads as input ``columns``
    (torch-pruning's indices), or what stops it, in words."""
    module = model.get_submodule(consumer)
    first, count = min(columns, default=0), len(columns)
    if sorted(columns) != list(range(first, first + count)) or count == 0 or count % units:
        return f"{consumer} (channel reordering)"
    taps = count // units
    if isinstance(module, nn.Conv2d):
        if taps != 1:
            return f"{consumer} (channel reordering)"
        layout, start, width = "conv", first, module.in_channels
        if module.groups > 1 and (width != units or units % module.groups):
            return f"{consumer} (grouped convolution reading a concatenation)"
        if module.groups > 1:
            return Reader(consumer, layout, 0, 0, module.groups)
    else:
        if first % taps or module.in_features % taps:
            return f"{consumer} (channel reordering)"
        layout = "linear" if taps == 1 else "flatten"
        start, width = first // taps, module.in_features // taps
    if width == units:
        start, width = 0, 0  # the reader reads the group's units alone
    return Reader(consumer, layout, start, width)


# what stops a group, in words a user knows: (substring of torch-pruning's op or grad_fn name, words)
_BLOCKER_WORDS = (
    ("Attention", "attention"),
    ("LayerNorm", "a layer norm"),
    ("GroupNorm", "a group norm"),
    ("Concat", "a concatenation"),
    ("Cat", "a concatenation"),
    ("reordering", "a channel reordering"),
    ("Split", "a channel split"),
    ("Unbind", "a channel split"),
    ("Slice", "a channel slice"),
    ("Expand", "a broadcast"),
    ("Parameter", "a learned tensor outside a layer"),
    ("grouped", "a grouped convolution"),
    ("Permute", "a reshape"),
    ("Transpose", "a reshape"),
    ("Select", "a reshape"),
    ("Squeeze", "a reshape"),
    ("AsStrided", "a reshape"),
)


def _describe_blockers(blockers: list[str]) -> str:
    """The operations that stop a group, in words a user knows (not torch-pruning's op classes),
    followed by the layers involved where the operation is a layer."""
    described, layers = [], []
    for blocker in blockers:
        # a layer is known by its kind, not its name ("grid_attention.mlp_layer.0 (LayerNorm)" is a norm)
        kind = blocker.split(" (", 1)[1] if " (" in blocker else blocker
        words = next((text for key, text in _BLOCKER_WORDS if key.lower() in kind.lower()), None)
        if words is None:  # "layer (Kind)" or a bare op name
            kind = blocker.split(" (")[1].rstrip(")") if " (" in blocker else blocker
            words = f"a {kind} operation"
        if words not in described:
            described.append(words)
        if " (" in blocker and blocker.split(" (")[0] not in layers:
            layers.append(blocker.split(" (")[0])
    if len(described) > 1 and "a reshape" in described:
        described.remove("a reshape")  # only worth saying when nothing else stops the group
    rank = [text for _, text in _BLOCKER_WORDS]
    described.sort(key=lambda text: rank.index(text) if text in rank else len(rank))
    where = f" ({', '.join(layers[:3])}{', …' if len(layers) > 3 else ''})" if layers else ""
    return ", ".join(described) + where


def find_groups(
    model: nn.Module, example_input: torch.Tensor, *, coupled: bool = True
) -> tuple[list[UnitGroup], list[ExcludedGroup]]:
    """All prunable unit groups of ``model``, front to back (by when their first reader runs), and
    the excluded ones with their reasons.

    ``coupled=False`` keeps only groups with one producer and one reader (the behaviour of
    pruning that leaves residual streams and gates alone).
    """
    model.eval()
    if isinstance(model, torch.jit.ScriptModule):
        return [], []  # compiled: nothing to trace (the workflows say why, see no_groups_reason)
    layers = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    calls = call_order(model, layers, example_input)
    names = {module: name for name, module in model.named_modules()}
    with tracing(model), traceable(model):  # e.g. Swin's projections as layers
        graph = build_dependency_graph(model, example_input)
        found, unmapped = _all_groups(graph, names)
    groups, excluded, seen = [], [], set(unmapped)
    excluded += [ExcludedGroup(name, units, _UNMAPPED) for name, units in unmapped.items()]
    for group in found:
        producers, columns, channelwise, blockers = _classify(group, names)
        producers = sorted(
            (p for p in dict.fromkeys(producers) if p is not None), key=lambda p: calls.get(p, len(calls))
        )
        consumers = sorted((c for c in columns if c is not None), key=lambda c: calls.get(c, len(calls)))
        if not producers or producers[0] in seen:
            continue
        seen.update(producers)
        if set(producers) & set(unmapped):  # coupled with channels torch-pruning could not map
            excluded.append(ExcludedGroup(producers[0], units_of(model.get_submodule(producers[0])), _UNMAPPED))
            continue
        units = units_of(model.get_submodule(producers[0]))
        label = producers[0]
        norms, blockers = _stream_norms(model, group, names, units, blockers)
        channelwise += [n for n in norms if n not in channelwise]
        readers = [_reader(model, c, columns[c], units) for c in consumers]
        blockers += [r for r in readers if isinstance(r, str)]
        # a producer whose output is only a slice of the group (concatenated, then summed with a stream)
        blockers += [f"{p} (Concatenation)" for p in producers if units_of(model.get_submodule(p)) != units]
        reaches_output = any("_OutputOp" in b for b in blockers)
        blockers = [b for b in blockers if "_OutputOp" not in b]
        if reaches_output and not blockers:
            excluded.append(ExcludedGroup(label, units, "network output"))
        elif blockers:
            excluded.append(ExcludedGroup(label, units, f"passes through {_describe_blockers(blockers)}"))
        elif not consumers:
            excluded.append(ExcludedGroup(label, units, "network output"))
        elif not coupled and len(producers) > 1:
            listed = ", ".join(producers[:4]) + (", …" if len(producers) > 4 else "")
            excluded.append(ExcludedGroup(label, units, f"coupled across {len(producers)} layers ({listed})"))
        elif not coupled and len(consumers) > 1:
            excluded.append(ExcludedGroup(label, units, f"read by several layers ({', '.join(consumers)})"))
        else:
            first = readers[0]
            grouped = [r.groups for r in readers] + [_conv_groups(model.get_submodule(p)) for p in producers]
            groups.append(
                UnitGroup(
                    label,
                    first.consumer,
                    units,
                    first.layout,
                    tuple(c for c in channelwise if c),
                    tuple(readers[1:]),
                    tuple(producers) if len(producers) > 1 else (),
                    first.start,
                    first.width,
                    first.groups,
                    math.lcm(*grouped),
                )
            )
    groups, excluded = _with_heads(model, groups, excluded)
    groups.sort(key=lambda g: calls.get(g.consumer, len(calls)))  # front to back, as execution_order
    return groups, excluded


def _with_heads(
    model: nn.Module, groups: list[UnitGroup], excluded: list[ExcludedGroup]
) -> tuple[list[UnitGroup], list[ExcludedGroup]]:
    """``groups`` plus one group of heads per multi-head attention layer (see
    :mod:`snp_engine.heads`); the fused q/k/v layers they cover are no longer listed as excluded,
    attention layers whose heads cannot be pruned are, with the reason, and so are the hidden layers of
    a Swin V2 position-bias MLP (``cpb_mlp.0``: its input is the fixed window coordinates, not the
    data, so there are no activations to analyse; its outputs are pruned with the heads)."""
    covered, hidden = set(), []
    for layer in attention_layers(model):
        if layer.refused is not None:
            excluded.append(ExcludedGroup(layer.name, layer.heads, layer.refused))
            continue
        groups.append(UnitGroup(layer.name, layer.reader, layer.heads, "linear", block=layer.head_dim, kind="heads"))
        _, per_head = per_head_parameters(model.get_submodule(layer.name))
        covered.update(name for name in (layer.qkv, per_head and f"{layer.name}.{per_head}") if name)
        parent, _, last = (per_head or "").rpartition(".")
        mlp = model.get_submodule(f"{layer.name}.{parent}") if parent else None
        for name, module in mlp.named_children() if isinstance(mlp, nn.Sequential) else ():
            if name == last:
                break
            if isinstance(module, nn.Linear):
                hidden.append(ExcludedGroup(f"{layer.name}.{parent}.{name}", module.out_features, _POSITION_BIAS))
    listed = {g.name for g in groups} | {e.name for e in excluded}
    excluded = [e for e in excluded if e.name not in covered] + [e for e in hidden if e.name not in listed]
    return groups, excluded


_POSITION_BIAS = (
    "hidden units of the position-bias MLP: computed from the fixed window coordinates, not from the "
    "images, so there are no activations to analyse (its outputs are pruned with the heads)"
)


def call_order(model: nn.Module, modules: Sequence[str], example_input: torch.Tensor) -> dict[str, int]:
    """The position at which each of ``modules`` is first called in a forward pass of
    ``example_input`` (modules that are never called are missing)."""
    first_call: dict[str, int] = {}
    handles = []
    for name in dict.fromkeys(modules):

        def hook(_module, _inputs, name=name):
            first_call.setdefault(name, len(first_call))

        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        with torch.inference_mode(), explicit_attention(model):
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return first_call


def execution_order(model: nn.Module, groups: list[UnitGroup], example_input: torch.Tensor) -> list[UnitGroup]:
    """``groups`` sorted by when their first reader runs in a forward pass (front to back)."""
    first_call = call_order(model, [g.consumer for g in groups], example_input)
    return sorted(groups, key=lambda g: first_call.get(g.consumer, len(first_call)))

"""The network as a graph for drawing: its layers in execution order with their shapes, the data flow
between them, and what each layer is to the pruning (a producer or carrier of a unit group, a reader,
or excluded with a reason).

:func:`architecture` runs one forward pass of a zero example with hooks on every module. A node is
one call of a module that calls no other module (a layer; a module called twice, like a shared
ReLU, is two nodes). Edges follow the autograd graph: the input of a call is traced back through
functional operations (sums, concatenations, flattening) to the calls whose outputs it was made
from, so skip connections and branches are edges too. :meth:`Architecture.columns` gives a layered
layout (each node one column after the latest of its inputs).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from snp_engine.activations import model_dtype
from snp_engine.api import Analysis
from snp_engine.errors import SnpError
from snp_engine.runtime import resolve_device

INPUT = "input"
MAX_NODES = 5000  # more calls than this are not drawn (a recurrent loop unrolled, say)


@dataclass(frozen=True)
class GroupLinks:
    """The layers a unit group ties together: every producer, every reader, the channel-wise layers."""

    name: str
    units: int
    producers: tuple[str, ...]
    readers: tuple[str, ...]
    channelwise: tuple[str, ...]

    @property
    def coupled(self) -> bool:
        return len(self.producers) > 1 or len(self.readers) > 1


@dataclass(frozen=True)
class Node:
    """One call of a layer. ``module`` is its module name (``id`` adds ``#2``, ``#3`` for later calls).

    ``group``: the unit group whose units this layer produces or carries (``role`` ``"producer"`` or
    ``"channelwise"``); ``reads``: the groups whose units it reads; ``excluded``: why the units it
    produces are not pruned, when they are not.
    """

    id: str
    module: str
    type: str
    order: int
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None
    block: str = ""
    group: str | None = None
    role: str = ""
    reads: tuple[str, ...] = ()
    excluded: str | None = None

    @property
    def label(self) -> str:
        """The module's last name part (with the block it is in shown apart)."""
        return self.module.rpartition(".")[2] or self.module


@dataclass(frozen=True)
class Architecture:
    """Nodes in execution order (the input first), data-flow edges ``(from id, to id)``, the groups, and
    ``blocks``: every module that holds layers of the graph (its name → its type, e.g. ``"layer1.0"`` →
    ``"Bottleneck"``), outermost first."""

    nodes: tuple[Node, ...]
    edges: tuple[tuple[str, str], ...]
    groups: Mapping[str, GroupLinks] = field(default_factory=dict)
    blocks: Mapping[str, str] = field(default_factory=dict)

    def members(self, block: str) -> list[Node]:
        """The layer calls inside the module ``block``, in execution order."""
        prefix = block + "."
        return [node for node in self.nodes if node.id != INPUT and node.module.startswith(prefix)]

    def node(self, node_id: str) -> Node:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    def of_group(self, group: str) -> list[Node]:
        """The nodes that produce or carry ``group``'s units."""
        return [node for node in self.nodes if node.group == group]

    def columns(self) -> dict[str, int]:
        """A layered layout: the input in column 0, every other node one column after its latest input."""
        inputs: dict[str, list[str]] = {node.id: [] for node in self.nodes}
        for source, target in self.edges:
            inputs[target].append(source)
        column: dict[str, int] = {}
        for node in self.nodes:  # execution order is a topological order of the data flow
            column[node.id] = 1 + max((column[s] for s in inputs[node.id] if s in column), default=-1)
        return column


def _tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    return []


def _sources(
    tensors: Iterable[torch.Tensor],
    made_by: Mapping[object, str],
    streams: Mapping[object, tuple[tuple[str, ...], tuple[str, ...]]] | None = None,
    whole: bool = True,
) -> list[str]:
    """The calls whose outputs ``tensors`` were computed from, by walking back the autograd graph.

    ``streams``: the sums finished blocks returned (a residual stream, ``x + f(x)``), each with the layer
    calls inside that block summed into it and (``whole``) those of the block before it too: the walk
    stops there, so a pre-norm transformer's layer reads the two blocks before it (the skip over one)
    rather than every block since the first.
    """
    found: list[str] = []
    todo = [t.grad_fn for t in tensors if t.grad_fn is not None]
    seen: set[int] = set()
    while todo:
        fn = todo.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        if fn in made_by:
            found.append(made_by[fn])
            continue
        if streams is not None and fn in streams:
            found.extend(streams[fn][1 if whole else 0])
            continue
        todo.extend(next_fn for next_fn, _ in fn.next_functions if next_fn is not None)
    return list(dict.fromkeys(found))


def _shape(tensors: Sequence[torch.Tensor]) -> tuple[int, ...] | None:
    return tuple(int(s) for s in tensors[0].shape[1:]) if tensors else None


def architecture(
    model: nn.Module,
    input_shape: Sequence[int],
    analysis: Analysis | None = None,
    *,
    device: str | torch.device = "cpu",
) -> Architecture:
    """The graph of ``model`` at ``input_shape`` (without the batch dimension), with each layer's
    part in ``analysis``'s unit groups when one is given."""
    device = resolve_device(device)
    model = model.to(device).eval()
    if isinstance(model, torch.jit.ScriptModule):
        raise SnpError("a TorchScript program: its layers are compiled and cannot be drawn")
    names = {module: name for name, module in model.named_modules()}
    calls: dict[str, int] = {}
    stack: list[list] = []  # per open call: module name, its input sources, input shape, whether a child ran
    nodes: list[Node] = []
    edges: list[tuple[str, str]] = []
    made_by: dict[object, str] = {}
    streams: dict[object, tuple[tuple[str, ...], tuple[str, ...]]] = {}  # a block's returned sum → (its own
    # layers summed into it, those and the previous block's)
    module_of: dict[str, str] = {INPUT: INPUT}

    def before(module: nn.Module, args: tuple) -> None:
        if stack:
            stack[-1][3] = True
        inputs = _tensors(args)
        sources = _sources(inputs, made_by, streams)
        stack.append([names.get(module, type(module).__name__), sources, _shape(inputs), False])

    def after(module: nn.Module, _args: tuple, output: object) -> None:
        name, sources, shape_in, has_child = stack.pop()
        if has_child:  # a block: a sum it returns is a residual stream, read as this block's own layers
            for tensor in _tensors(output):
                fn = tensor.grad_fn
                fresh = fn is not None and fn not in made_by and fn not in streams  # the innermost block's
                if fresh and type(fn).__name__.startswith("AddBackward"):
                    summed = _sources([tensor], made_by, streams, whole=False)
                    inside = tuple(s for s in summed if module_of[s].startswith(name + "."))
                    if inside:
                        streams[fn] = (inside, tuple(summed))
            return
        if len(nodes) >= MAX_NODES:
            raise SnpError(f"the network makes more than {MAX_NODES} layer calls; too many to draw")
        calls[name] = calls.get(name, 0) + 1
        node_id = name if calls[name] == 1 else f"{name}#{calls[name]}"
        outputs = _tensors(output)
        nodes.append(Node(node_id, name, type(module).__name__, len(nodes), shape_in, _shape(outputs)))
        module_of[node_id] = name
        edges.extend((source, node_id) for source in sources if source != node_id)
        for tensor in outputs:
            if tensor.grad_fn is not None:
                made_by[tensor.grad_fn] = node_id

    handles = []
    for module in names:
        if module is model and any(True for _ in model.children()):
            continue
        handles.append(module.register_forward_pre_hook(before))
        handles.append(module.register_forward_hook(after))
    base = torch.zeros((1, *input_shape), device=device, dtype=model_dtype(model), requires_grad=True)
    try:
        with torch.enable_grad():
            example = base.clone()
            made_by[example.grad_fn] = INPUT
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    first = Node(INPUT, INPUT, "Input", -1, None, tuple(int(s) for s in input_shape))
    types = {name: type(module).__name__ for module, name in names.items()}
    holders = {".".join(n.module.split(".")[:depth]) for n in nodes for depth in range(1, n.module.count(".") + 1)}
    blocks = {name: types.get(name, "") for name in sorted(holders, key=lambda b: (b.count("."), b))}
    return _with_roles(Architecture((first, *nodes), tuple(dict.fromkeys(edges)), blocks=blocks), analysis)


def _with_roles(graph: Architecture, analysis: Analysis | None) -> Architecture:
    """Each node's block, group, role, the groups it reads and why its units are excluded."""
    if analysis is None:
        groups: dict[str, GroupLinks] = {}
    else:
        groups = {
            g.name: GroupLinks(
                g.name,
                g.units,
                tuple(g.group.all_producers),
                tuple(r.consumer for r in g.group.readers),
                tuple(g.group.channelwise),
            )
            for g in analysis.groups
        }
    role: dict[str, tuple[str, str]] = {}
    reads: dict[str, list[str]] = {}
    for links in groups.values():
        for name in links.channelwise:
            role.setdefault(name, (links.name, "channelwise"))
        for name in links.producers:
            role[name] = (links.name, "producer")
        for name in links.readers:
            reads.setdefault(name, []).append(links.name)
    excluded = {e.name: e.reason for e in analysis.excluded} if analysis is not None else {}
    nodes = []
    for node in graph.nodes:
        group, part = role.get(node.module, (None, ""))
        nodes.append(
            Node(
                node.id,
                node.module,
                node.type,
                node.order,
                node.input_shape,
                node.output_shape,
                node.module.rpartition(".")[0] if node.id != INPUT else "",
                group,
                part,
                tuple(reads.get(node.module, ())),
                excluded.get(node.module),
            )
        )
    return Architecture(tuple(nodes), graph.edges, groups, graph.blocks)


__all__ = ["INPUT", "Architecture", "GroupLinks", "Node", "architecture"]

"""Cached network segments for sequential calibration: each stretch of the network runs once.

Sequential calibration fits the readers front to back; the fit of reader r needs, for every
calibration image, r's input on the partly pruned network and on the dense one. Computed from the
images each time (two forward passes up to r per reader), the early layers run once per reader.
This module runs them once in all:

* the network is traced with ``torch.fx`` (each reader and each attention layer a leaf call), so it
  can be run node by node and started from any point; a reader inside an attention layer (its
  output projection) gets its input by running that layer up to it, from the cut before the layer;
* for each batch it keeps the *cut* at the last reader asked for: the values of every node before
  that reader's call that a later node still uses (the reader's input, the skip connections and
  concatenated branches still open). The next reader's input is computed from that cut, running only
  the nodes in between, and the cut moves there;
* the cut of the partly pruned network is valid because a fit only rewrites the reader just fitted
  (and the BatchNorm after it), which sit at or after the cut: every node before the cut computes
  what it computed when the cut was taken. This is checked, not assumed: before each reader the
  parameters and buffers read by every node (their identity and version counter, which any in-place
  change bumps) are compared with those when the cut was taken, and a batch whose cut lies after a
  changed node is recomputed from its images;
* up to the first rewritten reader the partly pruned network *is* the dense one (a deep copy), so
  its values there are shared instead of computed twice; from there on it gets its own copy;
* each batch's images are kept and compared with the loader's batch: a loader that shuffles or
  augments gives other images, and those are computed from the images as before;
* the cut values (and images) of all batches stay within a memory budget; a batch over it is
  computed from its images, as without the cache.

The values are therefore the ones a full forward pass computes: the same operations on the same
tensors, node for node (on CPU bit for bit; on a GPU with non-deterministic kernels, to the
round-off those kernels already have from one pass to the next). Before the first use the traced
graph is run on two random images against the module's own forward, the outputs and the input of
every layer compared exactly; a network that does not trace, calls a reader twice, or whose graph
fails or differs there is computed the previous way (see
:func:`snp_engine.activations.collect_joint_folds`). Progress, cancelling (between batches) and
the distributed shards are those of the passes it replaces: the loader is still read batch by batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import fx, nn

from snp_engine.heads import attention_layers, explicit_attention

# the default budget for the cached cuts of all batches, both networks together
DEFAULT_CACHE_MB = 512.0


class _Tracer(fx.Tracer):
    """torch.nn layers and the readers are leaves (a reader of a custom class too)."""

    def __init__(self, leaves: set[str]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return qualified_name in self.leaves or super().is_leaf_module(module, qualified_name)


@dataclass
class _Entry:
    """One batch's cut: where it is (node index), its images, the values of both networks."""

    position: int
    images: torch.Tensor
    version: int | None  # the images' version counter when taken (an in-place change bumps it)
    dense: dict
    pruned: dict | None  # None: the same values as ``dense`` (nothing before the cut was rewritten)
    nbytes: int


def _nbytes(value, seen: set[int]) -> int:
    """Bytes held by ``value`` (tensors in nested tuples/lists/dicts), each storage counted once."""
    if isinstance(value, torch.Tensor):
        storage = value.untyped_storage()
        key = storage.data_ptr()
        if key in seen or value.is_meta:
            return 0
        seen.add(key)
        return storage.nbytes()
    if isinstance(value, list | tuple):
        return sum(_nbytes(v, seen) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v, seen) for v in value.values())
    return 0


def _state(model: nn.Module, node: fx.Node, constants: dict) -> tuple:
    """What a node reads from the model: (identity, version) of its parameters and buffers."""
    if node.op == "call_module":
        module = model.get_submodule(node.target)
        tensors = [*module.parameters(), *module.buffers()]
    elif node.op == "get_attr":
        tensors = [_fetch(model, node, constants)]
    else:
        return ()
    return tuple((id(t), t._version) if isinstance(t, torch.Tensor) else (id(t), 0) for t in tensors)


def _attribute(model: nn.Module, target: str):
    owner, _, name = target.rpartition(".")
    return getattr(model.get_submodule(owner) if owner else model, name)


def _fetch(model: nn.Module, node: fx.Node, constants: dict):
    """A get_attr node's value: a constant the tracer took out of the forward, or the attribute."""
    return constants[node.target] if node.target in constants else _attribute(model, node.target)


def _evaluate(model: nn.Module, node: fx.Node, values: dict):
    """One call node of the graph on the values of its inputs (modules looked up in ``model``)."""
    args = fx.node.map_arg(node.args, values.__getitem__)
    kwargs = fx.node.map_arg(node.kwargs, values.__getitem__)
    if node.op == "call_module":
        return model.get_submodule(node.target)(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    return getattr(args[0], node.target)(*args[1:], **kwargs)  # call_method


def _owner(consumer: str, calls) -> str | None:
    """The module whose call in the graph runs ``consumer``: itself, or the innermost layer holding
    it that the graph calls as a whole (an attention layer)."""
    name = consumer
    while name:
        if name in calls:
            return name
        name = name.rpartition(".")[0]
    return None


class _StopForward(Exception):
    """Ends a layer's forward once the reader inside it got its input."""


def _first_difference(a: Sequence, b: Sequence) -> int:
    for index, (x, y) in enumerate(zip(a, b, strict=True)):
        if x != y:
            return index
    return len(a)


class SegmentCache:
    """The inputs of the readers of a partly pruned network and its dense original, per batch,
    each network segment computed once (see the module docstring).

    Use :meth:`build`; call :meth:`begin` before each pass over the batches (it checks what changed
    since the previous one) and :meth:`inputs` for each batch of that pass.
    """

    def __init__(
        self,
        graph: fx.Graph,
        pruned: nn.Module,
        dense: nn.Module,
        constants: dict,
        budget_bytes: int,
    ) -> None:
        self.pruned, self.dense, self.constants = pruned, dense, constants
        self.nodes = list(graph.nodes)
        self.index = {node: i for i, node in enumerate(self.nodes)}
        self.last_use = [max((self.index[u] for u in node.users), default=i) for i, node in enumerate(self.nodes)]
        self.placeholder = next(n for n in self.nodes if n.op == "placeholder")  # the images; others: defaults
        self.calls: dict[str, fx.Node] = {}  # each module's first call
        for node in self.nodes:
            if node.op == "call_module":
                self.calls.setdefault(node.target, node)
        self.budget = budget_bytes
        self.entries: dict[int, _Entry] = {}
        self.used = 0
        self._cuts: dict[int, list[fx.Node]] = {}
        self._pruned_state = self._states(pruned)
        self._dense_state = self._states(dense)
        self._built_pruned_state = self._pruned_state
        # up to this node index the partly pruned network equals the dense one
        self.shared_until = self._identical_prefix()

    @classmethod
    def build(
        cls,
        pruned: nn.Module,
        dense: nn.Module,
        consumers: Sequence[str],
        example: torch.Tensor,
        *,
        budget_mb: float | None = DEFAULT_CACHE_MB,
    ) -> SegmentCache | None:
        """The cache for ``pruned`` (a deep copy of ``dense``, before any fit) and ``dense``, whose
        readers are the modules ``consumers``. None where the budget is zero, or the network does not
        trace into a graph with one input that calls each reader once, or the graph computes other
        values than the forward on ``example`` (a batch of the model's input)."""
        if budget_mb is not None and budget_mb <= 0:
            return None
        before = set(vars(dense))
        try:
            with explicit_attention(dense):
                # attention layers are leaves: their forwards do not trace; a reader inside one is
                # reached by running that layer (see ``_owner``)
                leaves = set(consumers) | {layer.name for layer in attention_layers(dense)}
                graph = _Tracer(leaves).trace(dense)
        except Exception:  # any network fx cannot trace is computed the previous way
            return None
        finally:
            # the tracer stores tensor constants of the forward on the traced module: move them here
            constants = {name: vars(dense)[name] for name in set(vars(dense)) - before}
            for name in constants:
                delattr(dense, name)
        nodes = list(graph.nodes)
        inputs = [n for n in nodes if n.op == "placeholder"]
        if not inputs or any(not n.args for n in inputs[1:]):  # one input; further ones keep their defaults
            return None
        calls: dict[str, int] = {}
        for node in nodes:
            if node.op == "call_module":
                calls[node.target] = calls.get(node.target, 0) + 1
        for consumer in consumers:
            owner = _owner(consumer, calls)
            if owner is None or calls[owner] != 1:
                return None
            node = next(n for n in nodes if n.op == "call_module" and n.target == owner)
            if owner == consumer and (not node.args or not isinstance(node.args[0], fx.Node)):
                return None
        budget = int(budget_mb * 2**20) if budget_mb is not None else 2**62
        cache = cls(graph, pruned, dense, constants, budget)
        pruned.eval()
        dense.eval()
        with torch.inference_mode(), explicit_attention(pruned), explicit_attention(dense):
            try:
                same = cache._verify(example)
            except Exception:  # a graph that does not even run is computed the previous way
                same = False
        return cache if same else None

    # ------------------------------------------------------------------------------------------
    # parameter states

    def _states(self, model: nn.Module) -> list[tuple]:
        with explicit_attention(model):
            return [_state(model, node, self.constants) for node in self.nodes]

    def _identical_prefix(self) -> int:
        """The first node whose parameters differ between the two networks (their values)."""
        with explicit_attention(self.pruned), explicit_attention(self.dense):
            for index, node in enumerate(self.nodes):
                if node.op not in ("call_module", "get_attr"):
                    continue
                if node.op == "get_attr":
                    continue  # the same attribute of both (constants are shared)
                a = self.pruned.get_submodule(node.target)
                b = self.dense.get_submodule(node.target)
                ours = [*a.parameters(), *a.buffers()]
                theirs = [*b.parameters(), *b.buffers()]
                if len(ours) != len(theirs) or not all(
                    x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y)
                    for x, y in zip(ours, theirs, strict=True)
                ):
                    return index
        return len(self.nodes)

    def begin(self) -> None:
        """Before a pass: drop the cuts that lie after a node whose parameters changed since they
        were taken (a fit rewrites only the reader just fitted, so normally none)."""
        pruned, dense = self._states(self.pruned), self._states(self.dense)
        changed = min(_first_difference(pruned, self._pruned_state), _first_difference(dense, self._dense_state))
        self.shared_until = min(self.shared_until, _first_difference(pruned, self._built_pruned_state))
        self._pruned_state, self._dense_state = pruned, dense
        for key in [k for k, e in self.entries.items() if e.position > changed]:
            self._drop(key)

    def _drop(self, key: int) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.used -= entry.nbytes

    # ------------------------------------------------------------------------------------------
    # running the graph

    def _cut(self, position: int) -> list[fx.Node]:
        """The nodes before ``position`` whose values a node at or after it still uses."""
        if position not in self._cuts:
            self._cuts[position] = [
                n
                for i, n in enumerate(self.nodes[:position])
                if self.last_use[i] >= position and not self._constant(n) and n.op != "output"
            ]
        return self._cuts[position]

    def _constant(self, node: fx.Node) -> bool:
        """A node whose value is read afresh on every run: an attribute (a parameter, a buffer, a
        constant of the forward), or a further input of the forward, which keeps its default."""
        return node.op == "get_attr" or (node.op == "placeholder" and node is not self.placeholder)

    def _value(self, model: nn.Module, node: fx.Node):
        return _fetch(model, node, self.constants) if node.op == "get_attr" else node.args[0]

    def _run(self, model: nn.Module, env: dict, start: int, stop: int) -> dict:
        """Run nodes ``start`` … ``stop − 1`` of ``model`` from ``env`` (the cut at ``start``);
        returns the cut at ``stop``. ``env`` is consumed."""
        for i, node in enumerate(self.nodes[:stop]):  # parameters and constants read after ``start``
            if self._constant(node) and self.last_use[i] >= start:
                env[node] = self._value(model, node)
        for i in range(start, stop):
            node = self.nodes[i]
            if node.op in ("placeholder", "get_attr"):
                continue
            env[node] = _evaluate(model, node, env)
            for used in node.all_input_nodes:
                if self.last_use[self.index[used]] == i:
                    env.pop(used, None)
            if not node.users:
                env.pop(node, None)
        return {n: env[n] for n in self._cut(stop)}

    def _verify(self, images: torch.Tensor) -> bool:
        """The traced graph computes what the module's forward computes: the output and every
        module's input, exactly."""
        x = images
        for model in (self.pruned, self.dense):
            captured: dict[str, torch.Tensor] = {}
            handles = []
            for name in self.calls:

                def hook(_module, inputs, name=name, captured=captured):
                    if inputs and isinstance(inputs[0], torch.Tensor):
                        captured.setdefault(name, inputs[0].clone())

                handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
            try:
                expected = model(x)
            finally:
                for handle in handles:
                    handle.remove()
            values: dict = {}
            checked: set[str] = set()
            for node in self.nodes:
                if node is self.placeholder:
                    values[node] = x
                elif self._constant(node):
                    values[node] = self._value(model, node)
                elif node.op == "output":
                    if not _same(fx.node.map_arg(node.args[0], values.__getitem__), expected):
                        return False
                else:
                    if node.op == "call_module" and node.target in captured and node.target not in checked:
                        checked.add(node.target)
                        first = values.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
                        if not _same(first, captured[node.target]):
                            return False
                    values[node] = _evaluate(model, node, values)
        return True

    def inputs(self, key: int, images: torch.Tensor, consumer: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The input of ``consumer`` on the partly pruned and on the dense network for batch ``key``
        (its position in the pass) of ``images``. Call within ``torch.inference_mode`` and the
        models' :func:`~snp_engine.heads.explicit_attention`, as the forward passes it replaces."""
        call = self.calls[_owner(consumer, self.calls)]
        stop = self.index[call]
        entry = self.entries.get(key)
        if entry is not None and (
            entry.position > stop or not _same(entry.images, images) or entry.version != _version(images)
        ):
            self._drop(key)
            entry = None
        if entry is None:
            start, dense_env, pruned_env = 0, {self.placeholder: images}, None
        else:
            start, dense_env, pruned_env = entry.position, dict(entry.dense), entry.pruned
            pruned_env = dict(pruned_env) if pruned_env is not None else None
        shared = pruned_env is None and stop <= self.shared_until
        if pruned_env is None and not shared:  # the networks part here: a copy of its own
            pruned_env = {n: _copy(v) for n, v in dense_env.items()}
        version = _version(images)  # before the run, so that a forward changing its input in place shows
        dense_cut = self._run(self.dense, dense_env, start, stop)
        pruned_cut = None if shared else self._run(self.pruned, pruned_env, start, stop)
        dense_input = self._input(self.dense, call, consumer, dense_cut)
        pruned_input = dense_input if shared else self._input(self.pruned, call, consumer, pruned_cut)
        self._keep(key, _Entry(stop, images, version, dense_cut, pruned_cut, 0))
        return pruned_input, dense_input

    def _input(self, model: nn.Module, call: fx.Node, consumer: str, cut: dict) -> torch.Tensor:
        """The input of ``consumer`` from the cut before ``call``: the call's first argument, or,
        for a reader inside the called layer, what reaches it when that layer runs (stopped there)."""
        if call.target == consumer:
            return cut[call.args[0]]
        captured = []

        def capture(_module, inputs):
            captured.append(inputs[0])
            raise _StopForward

        handle = model.get_submodule(consumer).register_forward_pre_hook(capture)
        try:
            with contextlib.suppress(_StopForward):
                constants = {n: self._value(model, n) for n in call.all_input_nodes if self._constant(n)}
                _evaluate(model, call, {**cut, **constants})
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"{consumer} was not called by {call.target}")
        return captured[0]

    def _keep(self, key: int, entry: _Entry) -> None:
        self._drop(key)
        seen: set[int] = set()
        entry.nbytes = _nbytes(entry.images, seen) + _nbytes(list(entry.dense.values()), seen)
        if entry.pruned is not None:
            entry.nbytes += _nbytes(list(entry.pruned.values()), seen)
        if self.used + entry.nbytes <= self.budget:
            self.entries[key] = entry
            self.used += entry.nbytes


def _version(tensor: torch.Tensor) -> int | None:
    """A tensor's version counter (None for inference tensors, which have none)."""
    try:
        return tensor._version
    except RuntimeError:
        return None


def _copy(value):
    """A copy of a cut value that shares no tensor with it (in-place ops stay in their network)."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, list | tuple):
        return type(value)(_copy(v) for v in value)
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


def _same(a, b) -> bool:
    """Exactly equal values (tensors: same shape, dtype and elements, NaNs where the other has NaNs)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and a.device == b.device
            and bool(torch.equal(a, b) or torch.equal(torch.nan_to_num(a), torch.nan_to_num(b)))
        )
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b) if not isinstance(a, nn.Module) else a is b


__all__ = ["DEFAULT_CACHE_MB", "SegmentCache"]

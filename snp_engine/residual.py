"""Module plumbing for residual blocks: find them by a forward probe, replace them by the identity,
and stream their inputs and outputs into moments. :mod:`snp_engine.blocks` holds the equations and
says what counts as a block.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from snp_engine.activations import images_of
from snp_engine.distributed import Numbering
from snp_engine.distributed import numbering as numbers_of
from snp_engine.progress import Reporter
from snp_engine.statistics import Moments, to_samples

# Element-wise activations that may follow a block's residual addition (autograd node names).
_ELEMENTWISE = ("Relu", "Gelu", "Silu", "Hardswish", "Hardtanh", "LeakyRelu", "Elu", "Sigmoid", "Mish", "Clone")
_LAYOUTS = {4: "conv", 3: "tokens", 2: "linear"}


@dataclass(frozen=True)
class Block:
    """A removable residual block: its module name, input (= output) shape without the batch,
    how its samples are laid out (``"conv"``, ``"tokens"``, ``"linear"``) and its channel count."""

    name: str
    shape: tuple[int, ...]
    layout: str
    units: int


# ----------------------------------------------------------------------------------------------
# Finding blocks


def _strip_elementwise(node):
    """The autograd node below any element-wise activations at the top of a block's output."""
    while node is not None and type(node).__name__.split("Backward")[0] in _ELEMENTWISE:
        children = [child for child, _ in node.next_functions if child is not None]
        if len(children) != 1:
            return None
        node = children[0]
    return node


def _adds_input(node, leaf: torch.Tensor, depth: int = 0) -> bool:
    """Whether ``node`` is an addition with ``leaf`` as an operand, directly or through further additions."""
    if node is None or depth > 16 or not type(node).__name__.startswith("AddBackward"):
        return False
    for child, _ in node.next_functions:
        if child is None:
            continue
        if getattr(child, "variable", None) is leaf or _adds_input(child, leaf, depth + 1):
            return True
    return False


def _candidates(model: nn.Module) -> list[str]:
    """Submodules (not the root, not a conv/linear layer) that contain a conv or linear layer."""
    layers = (nn.Conv2d, nn.Linear)
    return [
        name
        for name, module in model.named_modules()
        if name and not isinstance(module, layers) and any(isinstance(m, layers) for m in module.modules())
    ]


def _residual_modules(model: nn.Module, example: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """(name, input shape) of every candidate whose output is its input plus a branch, in call order.

    Each candidate's input is replaced by a fresh leaf tensor (same values) in a forward pre-hook,
    so its output's autograd graph shows whether that very tensor is added back.
    """
    leaves: dict[str, torch.Tensor] = {}
    found: list[tuple[str, tuple[int, ...]]] = []
    handles = []
    for name in _candidates(model):
        module = model.get_submodule(name)

        def before(_module, args, name=name):
            if name in leaves or len(args) != 1 or not isinstance(args[0], torch.Tensor):
                return None
            if not args[0].is_floating_point():
                return None
            leaves[name] = args[0].detach().requires_grad_(True)
            return (leaves[name],)

        def after(_module, _args, output, name=name):
            leaf = leaves.get(name)
            if leaf is None or any(name == done for done, _ in found) or not isinstance(output, torch.Tensor):
                return
            if output.shape == leaf.shape and _adds_input(_strip_elementwise(output.grad_fn), leaf):
                found.append((name, tuple(leaf.shape[1:])))

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    training = model.training
    try:
        model.eval()
        with torch.enable_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    return found


def _runs_without(model: nn.Module, name: str, example: torch.Tensor, expected: torch.Size) -> bool:
    """Whether the network still runs, with outputs of the same shape, with ``name`` as the identity."""
    parent, child = _parent(model, name)
    original = getattr(parent, child)
    setattr(parent, child, nn.Identity())
    try:
        with torch.inference_mode():
            output = model(example)
        return isinstance(output, torch.Tensor) and output.shape == expected
    except Exception:  # any failure means the block cannot simply be skipped
        return False
    finally:
        setattr(parent, child, original)


def find_blocks(model: nn.Module, example: torch.Tensor) -> list[Block]:
    """Every removable residual block of ``model`` (see the module docstring), in call order."""
    model.eval()
    with torch.inference_mode():
        output = model(example)
    if not isinstance(output, torch.Tensor):
        return []
    found = _residual_modules(model, example)
    names = [name for name, _ in found]
    blocks = []
    for name, shape in found:
        if any(other.startswith(name + ".") for other in names):
            continue  # an outer module around a block: the inner blocks are the units
        layout = _LAYOUTS.get(len(shape) + 1)
        if layout is None or not _runs_without(model, name, example, output.shape):
            continue
        blocks.append(Block(name, shape, layout, int(shape[0] if layout == "conv" else shape[-1])))
    return blocks


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def replace_blocks(model: nn.Module, names: Iterable[str]) -> nn.Module:
    """Replace each named submodule of ``model`` by ``nn.Identity`` (in place) and return the model.

    Raises ``AttributeError`` for a name that is not a submodule and ``ValueError`` for the empty name.
    """
    for name in names:
        if not name:
            raise ValueError("the network itself cannot be replaced by the identity")
        parent, child = _parent(model, name)
        getattr(parent, child)  # AttributeError for an unknown name
        if child not in parent._modules:
            raise AttributeError(f"'{name}' is not a submodule")
        setattr(parent, child, nn.Identity())
    return model


# ----------------------------------------------------------------------------------------------
# Hooks


def collect_block_moments(
    model: nn.Module,
    blocks: Sequence[Block],
    batches: Iterable,
    *,
    folds: int,
    numbering: Numbering | None = None,
    device: torch.device | str = "cpu",
    total_batches: int | None = None,
    reporter: Reporter | None = None,
) -> dict[str, list[Moments]]:
    """One pass over ``batches``: per block, the moments of z = [x; y] (input; output) split into
    ``folds`` parts, image i going to fold i mod ``folds`` with all its positions or tokens.

    i is the image's number in the whole set (``numbering``, default
    :func:`~snp_engine.distributed.numbering` of ``batches``: a process's shard knows its images'
    numbers), so each image lands in the same fold however the images are spread over processes and
    the folds' moments, summed over the processes, are those of one process reading every image.
    The moments stay on ``device``."""
    reporter = reporter or Reporter()
    numbering = numbering or numbers_of(batches)
    parts = {b.name: [Moments.zeros(2 * b.units, device) for _ in range(folds)] for b in blocks}
    inputs: dict[str, torch.Tensor] = {}
    fold_of_image: list[torch.Tensor] = [torch.zeros(0, dtype=torch.long)]
    handles = []
    for block in blocks:

        def before(_module, args, block=block):
            inputs[block.name] = to_samples(args[0], block.layout, block.units).clone()

        def after(_module, _args, output, block=block):
            x = inputs.pop(block.name, None)
            if x is None:
                return
            samples = torch.cat([x, to_samples(output, block.layout, block.units)], dim=1)
            fold = fold_of_image[0].to(samples.device)
            fold = fold.repeat_interleave(samples.shape[0] // max(fold.shape[0], 1))
            for index, part in enumerate(parts[block.name]):
                part.update(samples[fold == index] if folds > 1 else samples, block.name)

        module = model.get_submodule(block.name)
        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    seen = 0
    try:
        model.eval()
        with torch.inference_mode():
            for index, batch in enumerate(batches):
                reporter.check()
                images = images_of(batch).to(device)
                fold_of_image[0] = numbering.of(seen, images.shape[0]) % folds
                model(images)
                seen += images.shape[0]
                done = f"batch {index + 1}" + (f"/{total_batches}" if total_batches else "")
                reporter.update((index + 1) / total_batches if total_batches else 0.0, f"block statistics: {done}")
    finally:
        for handle in handles:
            handle.remove()
    return parts


def first_calls(model: nn.Module, names: Sequence[str], example: torch.Tensor) -> dict[str, tuple[int, tuple]]:
    """For each of ``names`` that runs: (position of its first call, its first input's shape)."""
    calls: dict[str, tuple[int, tuple]] = {}
    handles = []
    for name in dict.fromkeys(names):

        def hook(_module, args, name=name):
            if name not in calls:
                shape = tuple(args[0].shape) if args and isinstance(args[0], torch.Tensor) else ()
                calls[name] = (len(calls), shape)

        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return calls


__all__ = ["Block", "collect_block_moments", "find_blocks", "first_calls", "replace_blocks"]

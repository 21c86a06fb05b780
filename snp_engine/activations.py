"""Forward hooks that stream consumer inputs into :class:`~snp_engine.statistics.Moments`.

Hooks sit at the *input* of each reader of a group, so the statistics describe exactly the
tensor that layer reads (after BatchNorm, activation and pooling of the producer, and for a
residual stream after the skip connections summed so far).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import nn

from snp_engine.distributed import Numbering
from snp_engine.distributed import numbering as numbers_of
from snp_engine.groups import Reader, UnitGroup
from snp_engine.heads import explicit_attention
from snp_engine.progress import Reporter
from snp_engine.segments import SegmentCache
from snp_engine.statistics import Moments, to_samples


class _StopForward(Exception):
    """Ends a forward pass early once the last needed activation was captured."""


def images_of(batch) -> torch.Tensor:
    """The images of a batch that may be (images, labels) or images alone."""
    return batch[0] if isinstance(batch, list | tuple) else batch


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype inputs must have for ``model`` (its first parameter's; float32 without parameters)."""
    param = next(model.parameters(), None)
    return param.dtype if param is not None else torch.float32


def _subsample(samples: torch.Tensor, layout: str, max_positions: int | None, images: int, gen) -> torch.Tensor:
    """Keep at most ``max_positions`` random spatial positions per image (conv features only)."""
    if max_positions is None or layout != "conv":
        return samples
    per_image = samples.shape[0] // max(images, 1)
    if per_image <= max_positions:
        return samples
    keep = torch.randperm(samples.shape[0], generator=gen)[: max_positions * images]
    return samples[keep.to(samples.device)]


def batch_seed(seed: int, first_image: int) -> int:
    """The seed of the positions drawn for the batch whose first image is ``first_image`` of the set."""
    return (seed * 1_000_003 + first_image) % (1 << 63)


def collect_moments(
    model: nn.Module,
    groups: list[UnitGroup],
    batches: Iterable,
    *,
    device: torch.device | str = "cpu",
    total_batches: int | None = None,
    max_positions: int | None = None,
    reporter: Reporter | None = None,
    seed: int = 0,
) -> tuple[dict[tuple[str, str], Moments], dict[str, tuple[int, ...]]]:
    """One pass over ``batches``: the moments of every reader's input, keyed by (group name,
    reader's module name) — a layer behind a concatenation reads several groups, each its own
    slice — and each reader's input shape (without the batch dimension, from the first batch),
    keyed by the reader's module name.

    ``max_positions`` positions per image are drawn batch by batch from ``seed`` and the number in
    the whole set of the batch's first image (:func:`~snp_engine.distributed.numbering`), so a
    process reading a shard of whole batches draws what one process reading every image draws."""
    reporter = reporter or Reporter()
    readers = [(g, reader) for g in groups for reader in g.readers]
    moments = {(g.name, reader.consumer): Moments.zeros(g.channels, device) for g, reader in readers}
    shapes: dict[str, tuple[int, ...]] = {}
    gen = torch.Generator().manual_seed(seed)
    handles = []
    for group, reader in readers:

        def hook(_module, inputs, reader=reader, group=group):
            x = inputs[0]
            name, layout = reader.consumer, reader.layout
            shapes.setdefault(name, tuple(x.shape[1:]))
            samples = to_samples(x, layout, group.channels, reader.start, reader.width)
            samples = _subsample(samples, layout, max_positions, x.shape[0], gen)
            moments[group.name, name].update(samples, name)

        handles.append(model.get_submodule(reader.consumer).register_forward_pre_hook(hook))
    try:
        model.eval()
        with torch.inference_mode(), explicit_attention(model):
            numbered, seen = numbers_of(batches) if max_positions is not None else None, 0
            for index, batch in enumerate(batches):
                reporter.check()
                images = images_of(batch)
                if max_positions is not None:
                    gen.manual_seed(batch_seed(seed, int(numbered.of(seen, 1)[0])))
                model(images.to(device))
                seen += images.shape[0]
                done = f"batch {index + 1}" + (f"/{total_batches}" if total_batches else "")
                reporter.update((index + 1) / total_batches if total_batches else 0.0, f"statistics: {done}")
    finally:
        for handle in handles:
            handle.remove()
    return moments, shapes


def collect_joint_moments(
    pruned: nn.Module,
    dense: nn.Module,
    reader: Reader,
    units: int,
    batches: Iterable,
    *,
    device: torch.device | str = "cpu",
    reporter: Reporter | None = None,
) -> Moments:
    """Moments of z = [x̃; x] at one reader's input: x̃ from the partly pruned network, x from the
    dense one, on the same images. Both passes stop at that reader."""
    return collect_joint_folds(pruned, dense, reader, units, batches, folds=1, device=device, reporter=reporter)[0]


def collect_joint_folds(
    pruned: nn.Module,
    dense: nn.Module,
    reader: Reader,
    units: int,
    batches: Iterable,
    *,
    folds: int,
    numbering: Numbering | None = None,
    device: torch.device | str = "cpu",
    reporter: Reporter | None = None,
    segments: SegmentCache | None = None,
) -> list[Moments]:
    """:func:`collect_joint_moments` split into ``folds`` parts: image i goes to fold i mod ``folds``
    with all its positions/tokens, so the parts are disjoint sets of images whose moments sum to
    those of all images. Every part takes the shift of the first batch (its rows of every fold;
    inside :func:`~snp_engine.statistics.shifts_of_process_zero`, process 0's), so the parts add up
    without conversion. i is the image's number in the whole set (``numbering``, default
    :func:`~snp_engine.distributed.numbering` of ``batches``: a process's shard knows its images'
    numbers), so folds agree however the images are spread over processes.

    With ``segments`` (a :class:`~snp_engine.segments.SegmentCache` of these two networks) the two
    inputs come from its cached cuts, which compute the same values with each network segment run
    once over all readers; without it (or where the cache does not apply) both passes run from the
    images and stop at the reader."""
    reporter = reporter or Reporter()
    numbering = numbering or numbers_of(batches)
    parts = [Moments.zeros(2 * units, device) for _ in range(folds)]
    seen = 0
    captured: dict[str, torch.Tensor] = {}

    def capture(key):
        def hook(_module, inputs):
            captured[key] = to_samples(inputs[0], reader.layout, units, reader.start, reader.width)
            raise _StopForward

        return hook

    handles = (
        [
            pruned.get_submodule(reader.consumer).register_forward_pre_hook(capture("pruned")),
            dense.get_submodule(reader.consumer).register_forward_pre_hook(capture("dense")),
        ]
        if segments is None
        else []
    )
    try:
        pruned.eval()
        dense.eval()
        with torch.inference_mode(), explicit_attention(pruned), explicit_attention(dense):
            if segments is not None:
                segments.begin()
            for index, batch in enumerate(batches):
                reporter.check()
                images = images_of(batch).to(device)
                if segments is not None:
                    for key, x in zip(
                        ("pruned", "dense"), segments.inputs(index, images, reader.consumer), strict=True
                    ):
                        captured[key] = to_samples(x, reader.layout, units, reader.start, reader.width)
                else:
                    for model in (pruned, dense):
                        with contextlib.suppress(_StopForward):
                            model(images)
                samples = torch.cat([captured["pruned"], captured["dense"]], dim=1)
                if folds == 1:
                    parts[0].update(samples, reader.consumer)
                else:
                    if seen == 0:  # one shift for every fold: their sums then add without conversion
                        shift = parts[0].fix_shift(samples)
                        for part in parts[1:]:
                            part.start_from(shift)
                    per_image = samples.shape[0] // images.shape[0]  # rows are grouped image by image
                    fold = numbering.of(seen, images.shape[0]).to(samples.device) % folds
                    fold = fold.repeat_interleave(per_image)
                    rows = samples[torch.argsort(fold, stable=True)].split(
                        torch.bincount(fold, minlength=folds).tolist()
                    )
                    for part, own in zip(parts, rows, strict=True):
                        part.update(own, reader.consumer)
                seen += images.shape[0]
    finally:
        for handle in handles:
            handle.remove()
    return parts


def following_norms(model: nn.Module, consumers: list[str], example_input: torch.Tensor) -> dict[str, str]:
    """For each consumer, the BatchNorm that directly normalises its output, if any (found by tracing
    which tensor each BatchNorm receives)."""
    # id -> (consumer, output, version): holding the output keeps its id from being reused by a later
    # tensor; the version counter tells whether an in-place op (ReLU(inplace=True)) changed it since
    outputs: dict[int, tuple[str, torch.Tensor, int]] = {}
    found: dict[str, str] = {}
    names = {module: name for name, module in model.named_modules()}
    handles = []
    for consumer in consumers:

        def remember(_module, _inputs, output, consumer=consumer):
            outputs[id(output)] = (consumer, output, output._version)

        handles.append(model.get_submodule(consumer).register_forward_hook(remember))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):

            def check(mod, inputs):
                entry = outputs.get(id(inputs[0]))
                if entry is not None and entry[1] is inputs[0] and entry[2] == inputs[0]._version:
                    found.setdefault(entry[0], names[mod])

            handles.append(module.register_forward_pre_hook(check))
    try:
        model.eval()
        with torch.no_grad(), explicit_attention(model):  # not inference_mode: no version counters there
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return found

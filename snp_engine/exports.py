"""snp's own model file: a pruned model as one self-describing ``.safetensors`` file.

The file holds the weights plus a JSON header naming the base architecture, the input shape,
which residual blocks were replaced by the identity and which units of each group were kept.
Loading rebuilds the base architecture, replaces the same blocks, removes the same units and loads
the weights, so no pickle (and no code from the file) is ever executed. The header
is validated field by field before anything is built from it: a crafted or damaged header is one
:class:`~snp_engine.errors.ModelLoadError` naming the file. Writing goes through
:func:`~snp_engine.atomic.atomic_write` and is verified by reloading the file.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from snp_engine.activations import model_dtype
from snp_engine.architectures import (
    LoadedModel,
    build_architecture,
    check_exportable,
    constructor_kwargs,
    state_dict_mismatches,
    with_versions,
)
from snp_engine.atomic import atomic_write
from snp_engine.errors import ModelLoadError, SnpError
from snp_engine.groups import find_groups
from snp_engine.headers import (
    METADATA_KEY,
    FieldReader,
    describe,
    parse_json,
    read_safetensors_metadata,
    shorten,
    to_json,
)
from snp_engine.progress import Reporter
from snp_engine.residual import replace_blocks
from snp_engine.results import Pruned, PruningRecord
from snp_engine.surgery import remove_units
from snp_engine.verification import EXPORT_TOLERANCE, check_close, cpu_eval_copy, first_output, random_batch
from snp_engine.version import __version__

FORMAT_KEY = "snp_format"
FORMAT_VERSION = 2  # the newest format this snp reads
# Files without removed blocks are written as format 1, which every snp reads; a file with removed
# blocks is format 2, so an snp that does not know blocks refuses it instead of misreading it.
BLOCKS_FORMAT = 2

# Limits on what a header may ask for. They are far above any real network (ImageNet-21k has
# 21,843 classes; the widest torchvision layer has a few thousand units) and keep a crafted header
# from making snp allocate terabytes.
MAX_CLASSES = 100_000
MAX_UNITS = 1 << 20
MAX_GROUPS = 100_000
MAX_INPUT_SIDE = 8192
MAX_INPUT_VALUES = 1 << 24  # channels x height x width of one input
_MAX_ARGUMENTS = 64
_MAX_ARGUMENT = 1 << 20  # any whole number among the constructor arguments


# ----------------------------------------------------------------------------------------------
# Writing


def export_model(
    model: nn.Module | Pruned,
    path: str | Path,
    *,
    arch: str,
    num_classes: int,
    input_shape: Sequence[int],
    settings: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    pruning: PruningRecord | None = None,
    base: Mapping[str, Any] | None = None,
    reporter: Reporter | None = None,
) -> Path:
    """Write ``model`` (typically pruned) as a self-describing safetensors file and verify it.

    ``pruning`` is the record of how ``model`` was pruned (taken from a :class:`Pruned`), ``base``
    the header of the snp export it was loaded from, if any (its units were removed before: the
    kept indices are composed so the new file refers to the base architecture).
    ``arch`` is the base architecture (``demo-vgg``, ``torchvision:resnet18``, …);
    ``arch_kwargs`` overrides the constructor arguments that are otherwise derived from the model
    (class count, ViT image size, …). The file is reloaded with :func:`load_exported` before it
    replaces anything at ``path``; if the reloaded model's outputs differ, nothing is written.
    ``reporter`` may cancel between writing and verifying; the earlier file then stays as it was.
    """
    reporter = reporter or Reporter()
    if isinstance(model, Pruned):
        model, pruning = model.model, pruning or model.record
    path = Path(path)
    input_shape = tuple(int(s) for s in input_shape)
    check_exportable(arch)
    _check_input_shape(input_shape)
    earlier = dict(base or {})
    if arch_kwargs is None and earlier.get("arch") == arch and earlier.get("num_classes") == num_classes:
        arch_kwargs = earlier.get("arch_kwargs")
    pruning = _relative_to_base(pruning.to_dict() if pruning else {}, earlier.get("pruning") or {})
    if arch_kwargs is not None:
        kwargs = dict(arch_kwargs)
    else:
        kwargs = constructor_kwargs(model, arch, num_classes, pruning.get("units"))
    reference = cpu_eval_copy(model)
    stored = reference
    if pruning and not pruning.get("physical", True):
        stored = _physically_pruned(reference, pruning, input_shape)
    derived = {key: pruning[key] for key in ("ordering", "threshold", "compensation") if key in pruning}
    if pruning.get("fits"):
        derived["fits"] = pruning["fits"]  # per group: sequential or one-shot fit, ridge, held-out error
    blocks = [str(name) for name in pruning.get("blocks") or []]
    version = BLOCKS_FORMAT if blocks else 1
    header = {
        "format": version,
        "snp_version": __version__,
        "arch": arch,
        "arch_kwargs": kwargs,
        "num_classes": int(num_classes),
        "input_shape": list(input_shape),
        "pruning": {
            **({"blocks": blocks} if blocks else {}),
            "groups": list(pruning.get("groups", [])),
            "units": {k: int(v) for k, v in pruning.get("units", {}).items()},
            "kept": {k: [int(i) for i in v] for k, v in pruning.get("kept", {}).items()},
        },
        "settings": {**derived, **dict(settings or {})},
        "metrics": dict(metrics or {}),
    }
    metadata = {FORMAT_KEY: str(version), METADATA_KEY: to_json(header), "format": "pt"}
    state = _plain_state_dict(stored)

    def write(temp: Path) -> None:
        from safetensors.torch import save_file

        reporter.check()
        reporter.update(0.0, f"writing {path.name}")
        save_file(state, str(temp), metadata=metadata)
        reporter.check()
        reporter.update(0.5, f"verifying {path.name}")
        _verify_export(reference, temp, input_shape)
        reporter.check()
        reporter.update(1.0, f"written {path.name}")

    return atomic_write(path, write)


def _check_input_shape(shape: tuple[int, ...]) -> None:
    """Refuse to write an input shape that :func:`load_exported` would refuse to read."""
    if len(shape) != 3 or min(shape) < 1 or max(shape) > MAX_INPUT_SIDE or math.prod(shape) > MAX_INPUT_VALUES:
        raise SnpError(
            f"cannot export a model for inputs of shape {list(shape)}: snp exports (channels, height, width) "
            f"inputs of at most {MAX_INPUT_SIDE:,} a side and {MAX_INPUT_VALUES:,} values"
        )


def _relative_to_base(pruning: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    """Kept indices relative to the base architecture, also when an export was pruned again.

    Pruning a loaded export records indices into its already smaller layers; composing them with
    the export's own kept indices gives indices into the base network, which is what loading needs.
    """
    pruning = dict(pruning)
    earlier_blocks = [str(name) for name in base.get("blocks") or []]
    if earlier_blocks:  # blocks removed before stay removed; the new ones come after them
        pruning["blocks"] = list(dict.fromkeys([*earlier_blocks, *(pruning.get("blocks") or [])]))
    base_kept = base.get("kept") or {}
    if not base_kept:
        return pruning
    base_units = base.get("units") or {}
    kept = {name: list(indices) for name, indices in base_kept.items()}
    units = {name: int(n) for name, n in base_units.items()}
    for name, indices in (pruning.get("kept") or {}).items():
        current = int((pruning.get("units") or {}).get(name, len(indices)))
        earlier = base_kept.get(name)
        if earlier is not None and len(earlier) == current:
            kept[name] = [int(earlier[i]) for i in indices]
        else:
            kept[name] = list(indices)
            units[name] = current
    names = list(base.get("groups") or [])
    names += [name for name in pruning.get("groups") or [] if name not in names]
    pruning.update({"kept": kept, "units": units, "groups": names})
    return pruning


def _physically_pruned(model: nn.Module, pruning: Mapping[str, Any], input_shape: tuple[int, ...]) -> nn.Module:
    """A physically smaller copy of a functionally pruned model (zeroed columns → removed units)."""
    smaller = copy.deepcopy(model)
    example = torch.zeros((1, *input_shape), dtype=model_dtype(smaller))
    found = {g.name: g for g in find_groups(smaller, example)[0]}
    groups = [found[name] for name in pruning.get("groups", []) if name in found]
    removed = {g.name: sorted(set(range(g.units)) - set(pruning["kept"].get(g.name, range(g.units)))) for g in groups}
    remove_units(smaller, groups, removed, example)
    return smaller.eval()


def _plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies: safetensors refuses views and tensors that share storage."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def _verify_export(reference: nn.Module, path: Path, input_shape: tuple[int, ...]) -> None:
    reloaded = load_exported(path).model
    example = random_batch(input_shape, model_dtype(reference))
    with torch.inference_mode():
        expected = first_output(reference(example))
        actual = first_output(reloaded(example))
    check_close(expected, actual, EXPORT_TOLERANCE, "the reloaded export")


# ----------------------------------------------------------------------------------------------
# Reading


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON header of an snp export (architecture, pruning, settings, metrics).

    Only its form is checked here (valid JSON, an object, not too deeply nested);
    :func:`load_exported` checks every field it uses.
    """
    path = Path(path)
    raw = read_safetensors_metadata(path)
    _check_format(path, raw)
    header = parse_json(raw.get(METADATA_KEY), path, "the snp metadata")
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path}: the snp metadata is not a JSON object but {describe(header)}")
    return header


def load_exported(path: str | Path) -> LoadedModel:
    """Rebuild a model written by :func:`export_model`; no pickle, no code from the file.

    The base architecture is built with its stored arguments, the same units as at pruning time
    are removed, then the weights are loaded strictly. The :class:`LoadedModel` brings the pruning
    record (kept indices per group and settings) and the whole header as ``metadata``.
    """
    from safetensors.torch import load_file

    path = Path(path)
    header = _validated(path, read_metadata(path))
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise ModelLoadError(f"{path}: the weights cannot be read, the file is damaged or truncated ({exc})") from None
    model = build_architecture(header.arch, header.arch_kwargs, path)
    _replace_blocks(model, header.blocks, path)
    try:
        example = torch.zeros((1, *header.input_shape))
        if any(len(header.kept.get(name, ())) < header.units.get(name, 0) for name in header.groups):
            _remove_complement(model, header.groups, header.units, header.kept, example, path)
        _add_missing_biases(model, state)
        dtype = _floating_dtype(state)
        if dtype is not None:
            model.to(dtype)
    except SnpError:
        raise
    except Exception as exc:  # metadata that does not describe this architecture fails in many places
        raise ModelLoadError(
            f"{path}: the snp metadata does not fit {header.arch} ({type(exc).__name__}: {exc})"
        ) from None
    _load_state(model, state, header.arch, path)
    model.eval()
    settings = header.settings
    record = PruningRecord(
        kept={name: tuple(kept) for name, kept in header.kept.items()},
        units=dict(header.units),
        groups=tuple(header.groups),
        ordering=settings.get("ordering"),
        threshold=settings.get("threshold"),
        compensation=settings.get("compensation"),
        input_shape=tuple(header.input_shape),
        blocks=tuple(header.blocks),
    )
    rule = "fixed" if isinstance(getattr(model, "image_size", None), int) else "recorded"
    return LoadedModel(
        model, str(path), header.arch, header.num_classes, header.input_shape, str(path), rule, record, header.raw
    )


def _check_format(path: Path, raw: Mapping[str, str]) -> None:
    if FORMAT_KEY not in raw:
        raise ModelLoadError(
            f"{path}: not a model exported by snp (no snp metadata); bare weights load as torchvision:ARCH@{path}"
        )
    try:
        version = int(raw[FORMAT_KEY])
    except ValueError:
        raise ModelLoadError(f"{path}: unreadable snp format version '{shorten(raw[FORMAT_KEY])}'") from None
    if version > FORMAT_VERSION:
        raise ModelLoadError(
            f"{path}: written by a newer snp (file format {shorten(str(version))}; this snp {__version__} "
            f"reads format {FORMAT_VERSION} and older); upgrade snp to load it"
        )
    if version < 1:
        raise ModelLoadError(f"{path}: unknown snp format version {version}")


@dataclass(frozen=True)
class _Header:
    """The fields of an export header that loading uses, each checked for type and size."""

    arch: str
    arch_kwargs: dict[str, Any]
    num_classes: int
    input_shape: tuple[int, int, int]
    groups: list[str]
    units: dict[str, int]
    kept: dict[str, list[int]]
    blocks: list[str]
    settings: dict[str, Any]
    raw: dict[str, Any]  # the whole header, with settings and metrics as objects


def _validated(path: Path, header: Mapping[str, Any]) -> _Header:
    """Every field that loading reads, with its type and a sane size checked."""
    read = FieldReader(path)
    missing = [key for key in ("arch", "num_classes", "input_shape") if key not in header]
    if missing:
        raise ModelLoadError(f"{path}: incomplete snp metadata (no {', '.join(missing)})")
    arch = read.text(header["arch"], "arch", longest=200)
    kwargs = read.mapping(header.get("arch_kwargs"), "arch_kwargs", longest=_MAX_ARGUMENTS, optional=True)
    if "num_classes" in kwargs:
        read.integer(kwargs["num_classes"], "arch_kwargs.num_classes", low=1, high=MAX_CLASSES, what="classes")
    for key, value in kwargs.items():
        _check_argument(read, f"arch_kwargs.{key}", value)
    num_classes = read.integer(header["num_classes"], "num_classes", low=1, high=MAX_CLASSES, what="classes")
    shape = read.integers(header["input_shape"], "input_shape", low=1, high=MAX_INPUT_SIDE, longest=3)
    if len(shape) != 3:
        raise read.fail("input_shape", f"must be [channels, height, width], not {len(shape)} numbers")
    if math.prod(shape) > MAX_INPUT_VALUES:
        raise read.fail(
            "input_shape", f"{shape} has {math.prod(shape):,} values; snp accepts at most {MAX_INPUT_VALUES:,}"
        )
    pruning = read.mapping(header.get("pruning"), "pruning", optional=True)
    names = read.sequence(pruning.get("groups"), "pruning.groups", longest=MAX_GROUPS, optional=True)
    groups = [read.text(name, f"pruning.groups[{index}]") for index, name in enumerate(names)]
    counts = read.mapping(pruning.get("units"), "pruning.units", longest=MAX_GROUPS, optional=True)
    units = {
        name: read.integer(count, f"pruning.units.{name}", low=1, high=MAX_UNITS, what="units")
        for name, count in counts.items()
    }
    indices = read.mapping(pruning.get("kept"), "pruning.kept", longest=MAX_GROUPS, optional=True)
    kept = {
        name: read.integers(value, f"pruning.kept.{name}", high=MAX_UNITS - 1, longest=MAX_UNITS)
        for name, value in indices.items()
    }
    listed = read.sequence(pruning.get("blocks"), "pruning.blocks", longest=MAX_GROUPS, optional=True)
    blocks = [read.text(name, f"pruning.blocks[{index}]", longest=1000) for index, name in enumerate(listed)]
    settings = read.mapping(header.get("settings"), "settings", optional=True)
    read.optional_text(settings.get("ordering"), "settings.ordering", longest=100)
    read.optional_text(settings.get("compensation"), "settings.compensation", longest=100)
    read.optional_number(settings.get("threshold"), "settings.threshold")
    metrics = read.mapping(header.get("metrics"), "metrics", optional=True)
    raw = {**header, "settings": settings, "metrics": metrics}
    shape3 = (shape[0], shape[1], shape[2])
    return _Header(arch, kwargs, num_classes, shape3, groups, units, kept, blocks, settings, raw)


def _check_argument(read: FieldReader, field: str, value: Any) -> None:
    """A constructor argument: null, true/false, a number, a short string or a short list of them."""
    if isinstance(value, list):
        read.sequence(value, field, longest=_MAX_ARGUMENTS)
        for index, item in enumerate(value):
            where = f"{field}[{index}]"
            if isinstance(item, list | dict):
                raise read.fail(where, f"must be a number, a string, true/false or null, not {describe(item)}")
            _check_argument(read, where, item)
    elif isinstance(value, dict):
        raise read.fail(field, "must be a number, a string, true/false, null or a list of them, not an object")
    elif isinstance(value, str):
        read.text(value, field, longest=200)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        read.integer(value, field, low=-_MAX_ARGUMENT, high=_MAX_ARGUMENT)
    else:
        read.number(value, field)


def _replace_blocks(model: nn.Module, names: Sequence[str], path: Path) -> None:
    """Replace the recorded residual blocks by the identity, as when the file was written."""
    for name in names:
        try:
            replace_blocks(model, [name])
        except (AttributeError, ValueError):
            where = f"{path}: removed block '{shorten(name)}'"
            raise ModelLoadError(f"{where} is not a module of the base architecture") from None


def _remove_complement(
    model: nn.Module,
    names: Sequence[str],
    units: Mapping[str, int],
    kept: Mapping[str, Sequence[int]],
    example: torch.Tensor,
    path: Path,
) -> None:
    """Delete, group by group in the stored order, every unit that was not kept."""
    found, _ = find_groups(model, example)
    by_name = {g.name: g for g in found}
    groups, removed = [], {}
    for name in names:
        group = by_name.get(name)
        if group is None:
            raise ModelLoadError(f"{path}: pruned layer '{name}' is not a prunable layer of the base architecture")
        total = units.get(name, group.units)
        if total != group.units:
            raise ModelLoadError(f"{path}: layer '{name}' has {group.units} units, the file expects {total}")
        keep = set(kept.get(name, range(total)))
        if not keep or min(keep) < 0 or max(keep) >= total:
            raise ModelLoadError(f"{path}: kept units of '{name}' are out of range 0..{total - 1}")
        groups.append(group)
        removed[name] = sorted(set(range(total)) - keep)
    try:
        remove_units(model, groups, removed, example)
    except Exception as exc:  # torch-pruning fails in many ways on inconsistent indices
        raise ModelLoadError(f"{path}: cannot remove the pruned units ({type(exc).__name__}: {exc})") from None


def _add_missing_biases(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Compensation may have given a bias-free conv/linear consumer a bias; recreate it."""
    expected = model.state_dict()
    for key, value in state.items():
        if key in expected or not key.endswith(".bias"):
            continue
        try:
            module = model.get_submodule(key.removesuffix(".bias"))
        except AttributeError:
            continue
        if isinstance(module, nn.Conv2d | nn.Linear) and module.bias is None and value.ndim == 1:
            module.bias = nn.Parameter(torch.zeros_like(value, dtype=module.weight.dtype))


def _load_state(model: nn.Module, state: Mapping[str, torch.Tensor], arch: str, path: Path) -> None:
    problems = state_dict_mismatches(model, state)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ModelLoadError(f"{path}: the weights do not fit the pruned {arch}: {shown}")
    try:
        model.load_state_dict(with_versions(model, state), strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{path}: the weights do not fit the pruned {arch} ({exc})") from None


def _floating_dtype(state: Mapping[str, torch.Tensor]) -> torch.dtype | None:
    return next((v.dtype for k, v in state.items() if k.endswith("weight") and v.is_floating_point()), None)


__all__ = [
    "FORMAT_KEY",
    "FORMAT_VERSION",
    "MAX_CLASSES",
    "MAX_GROUPS",
    "MAX_INPUT_SIDE",
    "MAX_INPUT_VALUES",
    "MAX_UNITS",
    "METADATA_KEY",
    "check_exportable",
    "export_model",
    "load_exported",
    "read_metadata",
]

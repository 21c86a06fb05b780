"""Files written and read by snp: pruned models, analysis statistics and deployment formats.

A pruned model is stored as one self-describing ``.safetensors`` file: the weights plus a JSON
header naming the base architecture, the input shape and which units of each group were kept.
Loading rebuilds the base architecture, removes the same units and loads the weights, so no
pickle (and no code from the file) is ever executed. Every writer goes through
:func:`atomic_write`, so an interrupted or failed write never leaves a half-written file behind
or destroys an earlier good one.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from snp_engine import __version__
from snp_engine.activations import model_dtype
from snp_engine.errors import ModelLoadError, SnpError
from snp_engine.progress import Reporter

if TYPE_CHECKING:
    from snp_engine.api import Analysis
    from snp_engine.models import LoadedModel

FORMAT_KEY = "snp_format"
METADATA_KEY = "snp"
FORMAT_VERSION = 1
ANALYSIS_KEY = "snp_analysis"
ANALYSIS_VERSION = 1
# Outputs of a reloaded model must match the written one to this relative tolerance.
EXPORT_TOLERANCE = 1e-5
# ONNX runtimes fuse and reorder operations, so their outputs get a looser tolerance.
ONNX_TOLERANCE = 1e-4


# ----------------------------------------------------------------------------------------------
# Atomic writes


def check_writable(path: str | Path) -> Path:
    """Refuse a target that cannot be written (missing folder, a folder, no permission) up front;
    returns the folder the file will live in."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise SnpError(f"cannot write {path}: the folder {folder} does not exist")
    if path.is_dir():
        raise SnpError(f"cannot write {path}: it is a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SnpError(f"cannot write {path}: no permission to write in {folder}")
    return folder


def atomic_write(path: str | Path, write_fn: Callable[[Path], None]) -> Path:
    """Let ``write_fn`` write a temporary file beside ``path``, then move it into place.

    The temporary file is fsynced and renamed with ``os.replace``, which is atomic on one file
    system: readers see either the earlier file or the complete new one. On any exception
    (including Ctrl-C and :class:`~snp_engine.progress.Cancelled`) the temporary file is removed
    and an earlier file at ``path`` is left untouched. OS errors become :class:`SnpError` naming
    the path. A process killed outright (SIGKILL) cannot remove its temporary file, so a stray
    ``.<name>.<random>.tmp`` may remain; the file at ``path`` is still the earlier one.
    """
    path = Path(path)
    folder = check_writable(path)
    try:
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise _write_error(path, exc) from None
    os.close(handle)
    temp = Path(name)
    try:
        write_fn(temp)
        _fsync_file(temp)
        _set_default_mode(temp)
        os.replace(temp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from None
        raise
    _fsync_folder(folder)
    return path


def _write_error(path: Path, exc: OSError) -> SnpError:
    folder = path.parent if str(path.parent) else Path(".")
    if exc.errno == errno.ENOSPC:
        return SnpError(f"cannot write {path}: no space left on the disk")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return SnpError(f"cannot write {path}: no permission to write in {folder}")
    if exc.errno == errno.EROFS:
        return SnpError(f"cannot write {path}: {folder} is on a read-only file system")
    if exc.errno == errno.ENOENT:
        return SnpError(f"cannot write {path}: the folder {folder} does not exist")
    if exc.errno == errno.EISDIR:
        return SnpError(f"cannot write {path}: it is a folder")
    return SnpError(f"cannot write {path}: {exc.strerror or exc}")


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; not possible on every platform, so best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _set_default_mode(path: Path) -> None:
    """mkstemp creates owner-only files; give the result the permissions a normal file gets."""
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o666 & ~umask)


# ----------------------------------------------------------------------------------------------
# Pruned models


def export_model(
    model: nn.Module,
    path: str | Path,
    *,
    arch: str,
    num_classes: int,
    input_shape: Sequence[int],
    settings: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    reporter: Reporter | None = None,
) -> Path:
    """Write ``model`` (typically pruned) as a self-describing safetensors file and verify it.

    ``arch`` is the base architecture (``demo-vgg``, ``torchvision:resnet18``, …);
    ``arch_kwargs`` overrides the constructor arguments that are otherwise derived from the model
    (class count, ViT image size, …). The file is reloaded with :func:`load_exported` before it
    replaces anything at ``path``; if the reloaded model's outputs differ, nothing is written.
    ``reporter`` may cancel between writing and verifying; the earlier file then stays as it was.
    """
    reporter = reporter or Reporter()
    path = Path(path)
    input_shape = tuple(int(s) for s in input_shape)
    check_exportable(arch)
    earlier = getattr(model, "snp_metadata", None) or {}
    if arch_kwargs is None and earlier.get("arch") == arch and earlier.get("num_classes") == num_classes:
        arch_kwargs = earlier.get("arch_kwargs")
    kwargs = dict(arch_kwargs) if arch_kwargs is not None else _arch_kwargs(model, arch, num_classes)
    reference = _cpu_eval_copy(model)
    pruning = _relative_to_base(getattr(model, "snp_pruning", None) or {}, earlier.get("pruning") or {})
    stored = reference
    if pruning and not pruning.get("physical", True):
        stored = _physically_pruned(reference, pruning, input_shape)
    derived = {key: pruning[key] for key in ("ordering", "threshold", "compensation") if key in pruning}
    header = {
        "format": FORMAT_VERSION,
        "snp_version": __version__,
        "arch": arch,
        "arch_kwargs": kwargs,
        "num_classes": int(num_classes),
        "input_shape": list(input_shape),
        "pruning": {
            "groups": list(pruning.get("groups", [])),
            "units": {k: int(v) for k, v in pruning.get("units", {}).items()},
            "kept": {k: [int(i) for i in v] for k, v in pruning.get("kept", {}).items()},
        },
        "settings": {**derived, **dict(settings or {})},
        "metrics": dict(metrics or {}),
    }
    metadata = {FORMAT_KEY: str(FORMAT_VERSION), METADATA_KEY: json.dumps(header, default=_jsonable), "format": "pt"}
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


def _relative_to_base(pruning: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    """Kept indices relative to the base architecture, also when an export was pruned again.

    Pruning a loaded export records indices into its already smaller layers; composing them with
    the export's own kept indices gives indices into the base network, which is what loading needs.
    """
    pruning = dict(pruning)
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


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON header of an snp export (architecture, pruning, settings, metrics)."""
    path = Path(path)
    raw = _read_header(path)
    _check_format(path, raw)
    try:
        header = json.loads(raw[METADATA_KEY])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: the snp metadata is missing or not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path}: the snp metadata is not a JSON object")
    return header


def load_exported(path: str | Path) -> LoadedModel:
    """Rebuild a model written by :func:`export_model`; no pickle, no code from the file.

    The base architecture is built with its stored arguments, the same units as at pruning time
    are removed, then the weights are loaded strictly. The model carries ``snp_pruning`` (kept
    indices per group and settings) and ``snp_metadata`` (the whole header) again.
    """
    from safetensors.torch import load_file

    from snp_engine.models import LoadedModel

    path = Path(path)
    header = read_metadata(path)
    try:
        arch = str(header["arch"])
        kwargs = dict(header.get("arch_kwargs") or {})
        num_classes = int(header["num_classes"])
        input_shape = tuple(int(s) for s in header["input_shape"])
        pruning = header.get("pruning") or {}
        group_names = [str(n) for n in pruning.get("groups", [])]
        units = {str(k): int(v) for k, v in (pruning.get("units") or {}).items()}
        kept = {str(k): [int(i) for i in v] for k, v in (pruning.get("kept") or {}).items()}
        if not input_shape or min(input_shape) < 1:
            raise ValueError(f"input shape {list(input_shape)} has no positive size")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a value of the wrong JSON type
        raise ModelLoadError(f"{path}: incomplete snp metadata ({type(exc).__name__}: {exc})") from None
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise ModelLoadError(f"{path}: the weights cannot be read, the file is damaged or truncated ({exc})") from None
    model = _build_architecture(arch, kwargs, path)
    try:
        example = torch.zeros((1, *input_shape))
        if any(len(kept.get(name, ())) < units.get(name, 0) for name in group_names):
            _remove_complement(model, group_names, units, kept, example, path)
        _add_missing_biases(model, state)
        dtype = _floating_dtype(state)
        if dtype is not None:
            model.to(dtype)
    except SnpError:
        raise
    except Exception as exc:  # metadata that does not describe this architecture fails in many places
        raise ModelLoadError(f"{path}: the snp metadata does not fit {arch} ({type(exc).__name__}: {exc})") from None
    _load_state(model, state, arch, path)
    model.eval()
    settings = header.get("settings")
    settings = settings if isinstance(settings, Mapping) else {}
    model.snp_pruning = {
        "kept": kept,
        "units": units,
        "groups": group_names,
        "ordering": settings.get("ordering"),
        "threshold": settings.get("threshold"),
        "compensation": settings.get("compensation"),
        "input_shape": list(input_shape),
        "physical": True,
    }
    model.snp_metadata = header
    return LoadedModel(model, str(path), arch, num_classes, input_shape, str(path))  # type: ignore[arg-type]


def _read_header(path: Path, what: str = "an snp export") -> dict[str, str]:
    from safetensors import safe_open

    from snp_engine.models import sniff_format

    if not path.is_file():
        raise ModelLoadError(f"model file '{path}' does not exist")
    kind = sniff_format(path)
    if kind == "empty":
        raise ModelLoadError(f"{path}: the file is empty (0 bytes)")
    if kind in ("zip", "pickle", "torchscript", "damaged-zip"):
        raise ModelLoadError(f"{path}: a PyTorch file, not {what} (snp writes safetensors files)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for malformed files
        what = "a damaged or truncated safetensors file" if kind == "safetensors" else "not a readable safetensors file"
        raise ModelLoadError(f"{path}: {what} ({exc})") from None


def _check_format(path: Path, raw: Mapping[str, str]) -> None:
    if FORMAT_KEY not in raw:
        raise ModelLoadError(
            f"{path}: not a model exported by snp (no snp metadata); bare weights load as torchvision:ARCH@{path}"
        )
    try:
        version = int(raw[FORMAT_KEY])
    except ValueError:
        raise ModelLoadError(f"{path}: unreadable snp format version '{raw[FORMAT_KEY]}'") from None
    if version > FORMAT_VERSION:
        raise ModelLoadError(
            f"{path}: written by a newer snp (file format {version}; this snp {__version__} reads format "
            f"{FORMAT_VERSION} and older); upgrade snp to load it"
        )
    if version < 1:
        raise ModelLoadError(f"{path}: unknown snp format version {version}")


def check_exportable(arch: str) -> None:
    """Refuse early (before pruning or training) an architecture that an export could not rebuild."""
    from snp_engine.models import DEMO_MODELS, TORCHVISION_PREFIX

    if arch not in DEMO_MODELS and not arch.startswith(TORCHVISION_PREFIX):
        raise SnpError(
            f"cannot export a model of architecture '{arch}': only the demo models and torchvision "
            "architectures can be rebuilt from an export (a pickled model has no rebuildable architecture)"
        )


def _arch_kwargs(model: nn.Module, arch: str, num_classes: int) -> dict[str, Any]:
    """Constructor arguments that the base architecture needs to come out with the same shapes."""
    from snp_engine.models import DEMO_MODELS, DemoResNet

    kwargs: dict[str, Any] = {"num_classes": int(num_classes)}
    if arch in DEMO_MODELS:
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if first is not None:
            kwargs["in_channels"] = int(first.in_channels)
        if isinstance(model, DemoResNet):
            # conv1 and each stage's output are residual streams, which are never pruned
            kwargs["widths"] = [
                int(model.conv1.out_channels),
                int(model.layer2[0].conv2.out_channels),
                int(model.layer3[0].conv2.out_channels),
            ]
        return kwargs
    if isinstance(getattr(model, "image_size", None), int):
        kwargs["image_size"] = int(model.image_size)
    if arch.removeprefix("torchvision:") in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = bool(getattr(model, "aux_logits", False))
        kwargs["init_weights"] = False
    return kwargs


def _build_architecture(arch: str, kwargs: Mapping[str, Any], path: Path) -> nn.Module:
    """A randomly initialised base network: its weights are all overwritten by the file's."""
    from snp_engine.models import DEMO_MODELS, TORCHVISION_PREFIX, _torchvision_names

    kwargs = dict(kwargs)
    try:
        if arch in DEMO_MODELS:
            if "widths" in kwargs:
                kwargs["widths"] = tuple(kwargs["widths"])
            return DEMO_MODELS[arch].builder(**kwargs)
        if arch.startswith(TORCHVISION_PREFIX):
            import torchvision

            name = arch.removeprefix(TORCHVISION_PREFIX)
            if name not in _torchvision_names():
                raise ModelLoadError(f"{path}: base architecture '{arch}' is not available in this torchvision")
            return torchvision.models.get_model(name, weights=None, **kwargs)
    except SnpError:
        raise
    except Exception as exc:  # constructors reject odd arguments with TypeError, ValueError, RuntimeError, …
        raise ModelLoadError(f"{path}: cannot build base architecture {arch} with {kwargs} ({exc})") from None
    raise ModelLoadError(f"{path}: unknown base architecture '{arch}'")


def _remove_complement(
    model: nn.Module,
    names: Sequence[str],
    units: Mapping[str, int],
    kept: Mapping[str, Sequence[int]],
    example: torch.Tensor,
    path: Path,
) -> None:
    """Delete, group by group in the stored order, every unit that was not kept."""
    from snp_engine.groups import find_groups
    from snp_engine.surgery import remove_units

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


def _physically_pruned(model: nn.Module, pruning: Mapping[str, Any], input_shape: tuple[int, ...]) -> nn.Module:
    """A physically smaller copy of a functionally pruned model (zeroed columns → removed units)."""
    from snp_engine.groups import find_groups
    from snp_engine.surgery import remove_units

    smaller = copy.deepcopy(model)
    example = torch.zeros((1, *input_shape), dtype=model_dtype(smaller))
    found = {g.name: g for g in find_groups(smaller, example)[0]}
    groups = [found[name] for name in pruning.get("groups", []) if name in found]
    removed = {g.name: sorted(set(range(g.units)) - set(pruning["kept"].get(g.name, range(g.units)))) for g in groups}
    remove_units(smaller, groups, removed, example)
    return smaller.eval()


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
    from snp_engine.models import _state_dict_mismatches

    problems = _state_dict_mismatches(model, state)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ModelLoadError(f"{path}: the weights do not fit the pruned {arch}: {shown}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{path}: the weights do not fit the pruned {arch} ({exc})") from None


def _floating_dtype(state: Mapping[str, torch.Tensor]) -> torch.dtype | None:
    return next((v.dtype for k, v in state.items() if k.endswith("weight") and v.is_floating_point()), None)


def _cpu_eval_copy(model: nn.Module) -> nn.Module:
    """A CPU copy in eval mode, for exact comparisons; the caller's model keeps its device and mode."""
    on_cpu = all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()])
    if on_cpu and not model.training:
        return model
    return copy.deepcopy(model).cpu().eval()


def _plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies: safetensors refuses views and tensors that share storage."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def _verify_export(reference: nn.Module, path: Path, input_shape: tuple[int, ...]) -> None:
    reloaded = load_exported(path).model
    example = _random_batch(input_shape, model_dtype(reference))
    with torch.inference_mode():
        expected = _first_output(reference(example))
        actual = _first_output(reloaded(example))
    _check_close(expected, actual, EXPORT_TOLERANCE, "the reloaded export")


def _random_batch(input_shape: Sequence[int], dtype: torch.dtype = torch.float32, batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn((batch, *input_shape), generator=generator).to(dtype)


def _first_output(output: Any) -> torch.Tensor:
    """The logits of models that return a tuple or named tuple (e.g. with auxiliary heads)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        return _first_output(next(iter(output.values())))
    if isinstance(output, Sequence) and output:
        return _first_output(output[0])
    raise SnpError(f"cannot compare model outputs of type {type(output).__name__}")


def _check_close(expected: torch.Tensor, actual: torch.Tensor, tolerance: float, what: str) -> None:
    expected, actual = expected.detach().double().cpu(), torch.as_tensor(actual).detach().double().cpu()
    if expected.shape != actual.shape:
        raise SnpError(
            f"verification failed: {what} gives outputs of shape {tuple(actual.shape)}, "
            f"expected {tuple(expected.shape)}; nothing was written"
        )
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    diff = float((expected - actual).abs().max()) if expected.numel() else 0.0
    if not diff <= tolerance * scale:
        raise SnpError(
            f"verification failed: {what} differs from the model by {diff:.3g} "
            f"(allowed {tolerance * scale:.3g}); nothing was written"
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


# ----------------------------------------------------------------------------------------------
# Analysis statistics


def save_analysis(analysis: Analysis, path: str | Path) -> Path:
    """Write an analysis's statistics so a later run can plan and prune without a forward pass.

    Tensors (moments, consumer metric, filter norms, coverage) go into safetensors; groups, cost
    model and settings into its JSON header. Orderings and curves are recomputed on loading.
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    groups = []
    for index, g in enumerate(analysis.groups):
        prefix = f"group.{index}."
        for key, value in g.moments.state().items():
            tensors[prefix + key] = value.reshape(-1) if key == "count" else value
        tensors[prefix + "metric"] = g.metric
        tensors[prefix + "weight_l1"] = g.weight_l1
        if g.coverage is not None:
            tensors[prefix + "coverage"] = g.coverage
        groups.append(
            {**asdict(g.group), "input_shape": list(g.input_shape), "norm": g.norm, "coverage": g.coverage is not None}
        )
    costs = analysis.costs
    header = {
        "format": ANALYSIS_VERSION,
        "snp_version": __version__,
        "groups": groups,
        "excluded": [asdict(e) for e in analysis.excluded],
        "costs": {
            "layers": [asdict(layer) for layer in costs.layers],
            "other_params": int(costs.other_params),
            "other_macs": float(costs.other_macs),
            "units": dict(costs.units),
        },
        "input_shape": list(analysis.input_shape),
        "ordering": analysis.ordering,
        "curve": analysis.curve_kind,
        "seed": analysis.seed,
        "info": analysis.info,
    }
    metadata = {ANALYSIS_KEY: str(ANALYSIS_VERSION), METADATA_KEY: json.dumps(header, default=_jsonable)}
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    return atomic_write(path, lambda temp: save_file(state, str(temp), metadata=metadata))


def load_analysis(path: str | Path, **kwargs: Any) -> Analysis:
    """Rebuild an :class:`~snp_engine.api.Analysis` saved by :func:`save_analysis`.

    ``kwargs`` (``ordering``, ``curve``, ``seed``, ``reporter``) override what was stored.
    """
    from safetensors.torch import load_file

    from snp_engine.api import Analysis, GroupAnalysis
    from snp_engine.costs import CostModel, LayerCost
    from snp_engine.groups import ExcludedGroup, UnitGroup
    from snp_engine.statistics import Moments

    path = Path(path)
    if not path.is_file():
        raise SnpError(f"statistics file '{path}' does not exist")
    try:
        raw = _read_header(path, "an snp statistics file")
    except ModelLoadError as exc:
        raise SnpError(str(exc)) from None
    if ANALYSIS_KEY not in raw:
        raise SnpError(f"{path}: not an snp statistics file (write one with 'snp analyze --out')")
    try:
        version = int(raw[ANALYSIS_KEY])
    except ValueError:
        raise SnpError(f"{path}: unreadable snp statistics format version '{raw[ANALYSIS_KEY]}'") from None
    if version > ANALYSIS_VERSION:
        raise SnpError(
            f"{path}: written by a newer snp (statistics format {version}; this snp {__version__} reads "
            f"format {ANALYSIS_VERSION} and older); upgrade snp"
        )
    try:
        header = json.loads(raw[METADATA_KEY])
        tensors = load_file(str(path))
        groups = []
        for index, entry in enumerate(header["groups"]):
            prefix = f"group.{index}."
            unit = UnitGroup(
                entry["name"],
                entry["consumer"],
                int(entry["units"]),
                entry["layout"],
                tuple(entry.get("channelwise", ())),
            )
            moments = Moments.from_state(
                {
                    "count": tensors[prefix + "count"].reshape(()),
                    "total": tensors[prefix + "total"],
                    "outer": tensors[prefix + "outer"],
                }
            )
            coverage = tensors[prefix + "coverage"] if entry.get("coverage") else None
            groups.append(
                GroupAnalysis(
                    unit,
                    moments,
                    tuple(entry["input_shape"]),
                    tensors[prefix + "metric"],
                    tensors[prefix + "weight_l1"],
                    entry.get("norm"),
                    coverage,
                )
            )
        excluded = [ExcludedGroup(e["name"], int(e["units"]), e["reason"]) for e in header["excluded"]]
        cost = header["costs"]
        costs = CostModel(
            tuple(LayerCost(**layer) for layer in cost["layers"]),
            int(cost["other_params"]),
            float(cost["other_macs"]),
            {k: int(v) for k, v in cost["units"].items()},
        )
        options = {"ordering": header["ordering"], "curve": header["curve"], "seed": int(header["seed"])}
    except SnpError:
        raise
    except Exception as exc:  # any damage to the header or tensors
        raise SnpError(f"{path}: damaged snp statistics file ({type(exc).__name__}: {exc})") from None
    options.update({k: v for k, v in kwargs.items() if v is not None})
    return Analysis(groups, excluded, costs, tuple(header["input_shape"]), info=header.get("info"), **options)


def check_analysis_fits(analysis: Analysis, model: nn.Module, input_shape: Sequence[int]) -> None:
    """Refuse statistics that were measured on another network or another input size."""
    from snp_engine.groups import find_groups

    input_shape = tuple(int(s) for s in input_shape)
    if tuple(analysis.input_shape) != input_shape:
        raise SnpError(
            f"the statistics were measured on inputs of shape {tuple(analysis.input_shape)}, "
            f"but the data now has shape {input_shape}; re-run snp analyze or use --input-size"
        )
    example = torch.zeros((1, *input_shape), dtype=model_dtype(model), device=next(model.parameters()).device)
    found = {(g.name, g.consumer, g.units) for g in find_groups(model, example)[0]}
    stored = {(g.group.name, g.group.consumer, g.units) for g in analysis.groups}
    if stored != found:
        missing = sorted(f"{name} ({units} units)" for name, _, units in stored - found)
        detail = f"; not in the model: {', '.join(missing[:4])}" if missing else ""
        raise SnpError(f"the statistics do not belong to this model: its prunable layers differ{detail}")


# ----------------------------------------------------------------------------------------------
# Deployment formats


def export_torchscript(model: nn.Module, path: str | Path, example: torch.Tensor) -> Path:
    """Trace ``model`` on ``example`` and save it for ``torch.jit.load``; verified before it is kept."""
    import warnings

    reference = _cpu_eval_copy(model)
    example = example.detach().cpu().to(model_dtype(reference))
    with torch.inference_mode():
        expected = _first_output(reference(example))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings about constant shapes
        try:
            traced = torch.jit.trace(reference, example, check_trace=False)
        except Exception as exc:  # tracing fails in many ways on data-dependent control flow
            raise SnpError(f"cannot export to TorchScript: tracing failed ({type(exc).__name__}: {exc})") from None

    def write(temp: Path) -> None:
        traced.save(str(temp))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated in favour of torch.export
            loaded = torch.jit.load(str(temp), map_location="cpu")
        with torch.inference_mode():
            _check_close(expected, _first_output(loaded(example)), EXPORT_TOLERANCE, "the TorchScript file")

    return atomic_write(path, write)


def export_onnx(model: nn.Module, path: str | Path, example: torch.Tensor, *, opset: int = 17) -> Path:
    """Export ``model`` to ONNX with a dynamic batch dimension, checked by ``onnx.checker`` and,
    where onnxruntime is installed, by running it and comparing outputs."""
    try:
        import onnx
    except ImportError:
        raise SnpError("ONNX export needs the onnx package: pip install onnx") from None
    import warnings

    reference = _cpu_eval_copy(model)
    example = example.detach().cpu().to(model_dtype(reference))
    with torch.inference_mode():
        expected = _first_output(reference(example))

    def write(temp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    reference,
                    (example,),
                    str(temp),
                    input_names=["input"],
                    output_names=["logits"],
                    dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                    opset_version=opset,
                    dynamo=False,
                )
            except OSError:
                raise
            except Exception as exc:  # the exporter reports unsupported operators in many ways
                raise SnpError(f"cannot export to ONNX ({type(exc).__name__}: {exc})") from None
        try:
            onnx.checker.check_model(str(temp))
        except Exception as exc:  # onnx.checker.ValidationError and friends
            raise SnpError(f"the ONNX file failed onnx.checker ({exc}); nothing was written") from None
        _run_onnx(temp, example, expected)

    return atomic_write(path, write)


def _run_onnx(path: Path, example: torch.Tensor, expected: torch.Tensor) -> None:
    """Compare onnxruntime's outputs with the model's, where onnxruntime is installed."""
    try:
        import onnxruntime
    except ImportError:
        return
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    actual = session.run(None, {name: example.numpy()})[0]
    _check_close(expected, torch.from_numpy(np.asarray(actual)), ONNX_TOLERANCE, "the ONNX file (onnxruntime)")


__all__ = [
    "FORMAT_VERSION",
    "atomic_write",
    "check_analysis_fits",
    "check_exportable",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "load_analysis",
    "load_exported",
    "read_metadata",
    "save_analysis",
]

"""Reading checkpoint files: state dicts, pickled modules and TorchScript, each judged by content.

Nothing here unpickles arbitrary objects unless the caller passes ``trust=True``, because a
pickle can run code while it is being read.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from snp_engine.architectures import DemoResNet, DemoVGG, state_dict_mismatches, with_versions
from snp_engine.errors import ModelLoadError
from snp_engine.headers import safetensors_metadata, sniff_format


def num_classes_of(model: nn.Module) -> int:
    """Output size of the last Linear/Conv2d; for TorchScript (whose submodules are not those
    classes) the first dimension of the last matrix or kernel."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    if last:
        return int(last[-1].out_features if isinstance(last[-1], nn.Linear) else last[-1].out_channels)
    weights = [p for p in model.parameters() if p.ndim >= 2]
    if not weights:
        raise ModelLoadError(f"{type(model).__name__} has no linear or convolution layer")
    return int(weights[-1].shape[0])


def default_input_shape(model: nn.Module) -> tuple[int, int, int]:
    """Demo nets take 8x8; ViTs have a fixed size; other torchvision classifiers default to 224."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None:
        channels = first.in_channels
    else:
        kernel = next((p for p in model.parameters() if p.ndim == 4), None)
        channels = int(kernel.shape[1]) if kernel is not None else 3
    if isinstance(model, DemoVGG | DemoResNet):
        return (channels, 8, 8)
    size = int(getattr(model, "image_size", 224))
    return (channels, size, size)


def bare_state_dict_error(path: Path) -> ModelLoadError:
    return ModelLoadError(
        f"{path} holds bare weights without an architecture; load it as torchvision:ARCH@{path} or "
        f"timm:NAME@{path}, or, for a network of your own, save the whole model (torch.save(model) or "
        "TorchScript) and pass --trust"
    )


# Keys training scripts keep a state dict under, most common first (PyTorch's own tutorials save
# model_state_dict; Lightning and many repositories state_dict; others model, net, ...).
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "state", "weights", "params")
# Prefixes that wrappers add to every key: DataParallel/DDP, torch.compile, both.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def read_state_dict(path: Path, trust: bool) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors or PyTorch file (sniffed, whatever its suffix); a state dict may
    sit under state_dict/model."""
    if not path.is_file():
        raise ModelLoadError(f"weights file '{path}' does not exist")
    kind = sniff_format(path)
    if kind == "safetensors":
        from safetensors.torch import load_file

        safetensors_metadata(path)  # turns a malformed file into a clear error
        try:
            return strip_prefix(load_file(str(path)), "module.")
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise ModelLoadError(
                f"{path}: the weights cannot be read, the file is damaged or truncated ({exc})"
            ) from None
    if kind == "torchscript":
        return dict(load_torchscript(path, trust).state_dict())
    refuse_unreadable(path, kind)
    obj = torch_load(path, trust)
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        inner = _wrapped_state(obj)
        if isinstance(inner, nn.Module):
            return inner.state_dict()
        obj = inner
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, Mapping) else {}
    if not tensors:
        found = ", ".join(str(k) for k in list(obj)[:8]) if isinstance(obj, Mapping) else type(obj).__name__
        raise ModelLoadError(
            f"{path}: no state dict found (expected a dict of tensors, or one under "
            f"{', '.join(STATE_DICT_KEYS[:3])}, ...; found: {found or 'an empty dict'})"
        )
    return strip_prefix(tensors, "module.")


def _wrapped_state(obj: Mapping) -> Mapping | nn.Module:
    """The state dict inside a training checkpoint: the mapping under one of
    :data:`STATE_DICT_KEYS`, else the only mapping of tensors among its values; ``obj`` itself
    when its own values are tensors."""
    if any(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for key in STATE_DICT_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping | nn.Module):
            return inner
    nested = [
        v for v in obj.values() if isinstance(v, Mapping) and any(isinstance(t, torch.Tensor) for t in v.values())
    ]
    return nested[0] if len(nested) == 1 else obj


def strip_prefix(state: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Undo the prefixes that wrappers give every key: ``module.`` (DataParallel/DDP) and
    ``_orig_mod.`` (torch.compile), in any order and combination; ``prefix`` is kept for callers."""
    prefixes = dict.fromkeys((prefix, *WRAPPER_PREFIXES))
    stripped = True
    while state and stripped:
        stripped = False
        for known in prefixes:
            if all(k.startswith(known) for k in state):
                state = {k.removeprefix(known): v for k, v in state.items()}
                stripped = True
    return state


def torch_load(path: Path, trust: bool) -> object:
    """Read a torch file with the restricted unpickler; the full one only when trusted.

    The file is passed as an open handle because ``torch.load`` picks its reader from a
    ``.safetensors`` name, which would misread a renamed ``torch.save`` archive.
    """
    try:
        with open(path, "rb") as handle:
            return torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust:
            raise ModelLoadError(
                f"{path} is not plain weights (a pickled model or other objects). Unpickling can run "
                "arbitrary code, so it was not opened; if you trust its source, pass --trust "
                "(trust=True) to load it"
            ) from exc
    except Exception as exc:  # a damaged archive fails in the unpickler or the zip reader in many ways
        raise ModelLoadError(f"{path}: not a readable PyTorch file ({type(exc).__name__}: {exc})") from exc
    try:
        with open(path, "rb") as handle:
            return torch.load(handle, map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError) as exc:  # the model's class is not importable here
        raise ModelLoadError(f"{path}: {_class_not_found(exc)}") from None
    except Exception as exc:  # arbitrary unpickling can fail in arbitrary ways
        raise ModelLoadError(f"{path}: could not be unpickled ({type(exc).__name__}: {exc})") from exc


SAVE_INSTEAD = "save the model as TorchScript instead (torch.jit.script(model).save(PATH))"


def _class_not_found(exc: Exception) -> str:
    """A pickle names its model's class by module and name; say which one is missing and what helps."""
    import re

    if isinstance(exc, ModuleNotFoundError):
        return (
            f"the pickled model's class comes from module '{exc.name}', which cannot be imported here; add its "
            f"folder to PYTHONPATH or {SAVE_INSTEAD}"
        )
    found = re.search(r"attribute '([^']+)' on <module '([^']+)'", str(exc))
    if found and found.group(2) == "__main__":
        return (
            f"the pickled model's class {found.group(1)} was defined in the script that saved it (__main__), so "
            f"it cannot be found when loading; {SAVE_INSTEAD}, or define the class in a module of its own"
        )
    if found:
        return f"the pickled model's class {found.group(1)} is not in module '{found.group(2)}' here; {SAVE_INSTEAD}"
    return f"could not be unpickled ({type(exc).__name__}: {exc})"


def refuse_unreadable(path: Path, kind: str) -> None:
    """One clear sentence for files that are not a PyTorch archive or pickle at all."""
    if kind == "zip" and _is_npz(path):
        raise ModelLoadError(f"{path}: a NumPy .npz archive (data, not a model); give it as --data npz:{path}")
    if kind in ("zip", "pickle"):
        return
    reasons = {
        "empty": "the file is empty (0 bytes)",
        "damaged-zip": "a damaged or truncated PyTorch file (its zip archive cannot be read)",
        "numpy": "a NumPy array file, not a model",
    }
    reason = reasons.get(kind, "not a model file snp can read (neither safetensors nor a PyTorch file)")
    raise ModelLoadError(f"{path}: {reason}")


def _is_npz(path: Path) -> bool:
    """A zip archive of ``.npy`` members only (what numpy.savez writes)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False
    return bool(names) and all(name.endswith(".npy") for name in names)


def load_torchscript(path: Path, trust: bool) -> nn.Module:
    """A TorchScript program runs its own code, so like a pickle it needs ``trust``."""
    if not trust:
        raise ModelLoadError(
            f"{path} is a TorchScript program, which can run arbitrary code, so it was not opened; if you "
            "trust its source, pass --trust (trust=True) to load it"
        )
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated
            return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # TorchScript deserialisation fails in many ways
        raise ModelLoadError(f"{path}: could not be loaded as TorchScript ({type(exc).__name__}: {exc})") from None


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], arch: str, path: Path) -> None:
    """``load_state_dict(strict=True)`` with a short, readable list of what does not fit."""
    problems = state_dict_mismatches(model, state)
    expected = model.state_dict()
    if problems and state and not set(state) & set(expected):
        theirs = ", ".join(list(state)[:3])
        ours = ", ".join(list(expected)[:3])
        raise ModelLoadError(
            f"{path} does not fit {arch}: none of its {len(state)} keys ({theirs}, ...) is one of the "
            f"architecture's ({ours}, ...); it holds the weights of another network"
        )
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ModelLoadError(f"{path} does not fit {arch}: {shown}")
    model.load_state_dict(with_versions(model, state), strict=True)

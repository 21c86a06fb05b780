"""Model loading: the bundled demo networks, torchvision architectures and checkpoint files.

Everything funnels into :func:`load_model`, which returns a :class:`LoadedModel` in eval mode
together with the facts the rest of the engine needs (class count, expected input shape, where
the weights came from). Loading never unpickles arbitrary objects unless the caller opts in with
``trust=True``, because a pickle can run code while it is being read.

The networks themselves (demo models, the torchvision registry, :class:`LoadedModel`) live in
:mod:`snp_engine.architectures`, snp's own export format in :mod:`snp_engine.exports`; the names
that used to be defined here are re-exported.
"""

from __future__ import annotations

import difflib
import functools
import math
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from snp_engine.architectures import (
    DEMO_MODELS,
    DEMO_RESULTS_FILE,
    RESOURCES,
    TORCHVISION_PREFIX,
    DemoModel,
    DemoResNet,
    DemoVGG,
    LoadedModel,
    demo_results,
    state_dict_mismatches,
    torchvision_names,
)
from snp_engine.errors import ModelLoadError
from snp_engine.exports import FORMAT_KEY, load_exported
from snp_engine.headers import safetensors_metadata, sniff_format

# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def list_architectures() -> list[str]:
    """Names accepted by :func:`load_model`: the demo models, then torchvision classifiers."""
    return [*DEMO_MODELS, *(TORCHVISION_PREFIX + n for n in torchvision_names())]


def load_model(spec: str, *, trust: bool = False) -> LoadedModel:
    """Load ``demo-vgg``/``demo-resnet``, ``torchvision:ARCH[@PATH]`` or an exported model file.

    ``trust=True`` additionally allows a pickled full ``nn.Module``; without it such files are
    refused before anything in them is executed.
    """
    spec = spec.strip()
    if spec in DEMO_MODELS:
        return _load_demo(DEMO_MODELS[spec])
    if spec.startswith(TORCHVISION_PREFIX):
        arch, _, path = spec.removeprefix(TORCHVISION_PREFIX).partition("@")
        return _load_torchvision(spec, arch.strip(), Path(path) if path else None, trust)
    path = Path(spec)
    if path.is_file():
        return _load_file(spec, path, trust)
    if path.is_dir():
        raise ModelLoadError(f"model '{spec}' is a folder, not a model file")
    if path.suffix or "/" in spec or "\\" in spec:
        raise ModelLoadError(f"model file '{spec}' does not exist")
    raise ModelLoadError(
        f"model '{spec}' not found: use {', '.join(DEMO_MODELS)}, torchvision:ARCH, "
        "torchvision:ARCH@WEIGHTS.pth or a path to an exported model file"
    )


# ---------------------------------------------------------------------------------------------
# Demo and torchvision loading
# ---------------------------------------------------------------------------------------------


def _load_demo(info: DemoModel) -> LoadedModel:
    from safetensors.torch import load_file

    if not info.weights_path.is_file():
        raise ModelLoadError(f"weights for {info.name} are missing ({info.weights_path}); run scripts/train_demo.py")
    model = info.builder()
    _load_strict(model, load_file(str(info.weights_path)), info.name, info.weights_path)
    return LoadedModel(model.eval(), info.name, info.name, info.num_classes, info.input_shape, str(info.weights_path))


def _load_torchvision(spec: str, arch: str, path: Path | None, trust: bool) -> LoadedModel:
    """Random init, or the weights in ``path`` with the class count/image size read from them."""
    import torchvision

    names = torchvision_names()
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=5) or names[:8]
        raise ModelLoadError(f"unknown torchvision architecture '{arch}'; did you mean: {', '.join(close)}?")
    if path is None:
        model = torchvision.models.get_model(arch, weights=None, **_quiet_kwargs(arch, random_init=True))
        return LoadedModel(
            model.eval(), spec, f"torchvision:{arch}", _num_classes_of(model), _input_shape(model), "random init"
        )
    state = _read_state_dict(path, trust)
    kwargs = _architecture_kwargs(arch, state, path)
    model = torchvision.models.get_model(arch, weights=None, **kwargs)
    _load_strict(model, state, f"torchvision:{arch}", path)
    return LoadedModel(model.eval(), spec, f"torchvision:{arch}", kwargs["num_classes"], _input_shape(model), str(path))


def _architecture_kwargs(arch: str, state: Mapping[str, torch.Tensor], path: Path) -> dict:
    """Constructor arguments that the checkpoint's shapes pin down (classes, ViT size, aux heads)."""
    kwargs: dict = {"num_classes": _classes_from_state(state, arch, path)}
    if arch.startswith("vit_") and "encoder.pos_embedding" in state and "conv_proj.weight" in state:
        patch = int(state["conv_proj.weight"].shape[-1])
        side = math.isqrt(int(state["encoder.pos_embedding"].shape[1]) - 1)
        kwargs["image_size"] = patch * side
    if arch in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = any(k.startswith(("aux1.", "AuxLogits.")) for k in state)
    kwargs.update(_quiet_kwargs(arch, random_init=False))
    return kwargs


def _classes_from_state(state: Mapping[str, torch.Tensor], arch: str, path: Path) -> int:
    """The class count is the output size of the architecture's final classifier weight."""
    key = _classifier_key(arch)
    if key in state:
        return int(state[key].shape[0])
    # Not there: guess from the last layer in file order; the strict load then reports what differs.
    weights = [v for k, v in state.items() if k.endswith("weight") and v.ndim >= 2]
    if not weights:
        raise ModelLoadError(f"{path}: no layer weights found, so it is not a model state dict")
    return int(weights[-1].shape[0])


@functools.lru_cache(maxsize=32)
def _classifier_key(arch: str) -> str:
    """Name of the last matrix/conv weight in module order.

    Taken from a freshly built model rather than the checkpoint because safetensors files store
    their keys sorted by name, which loses the layer order.
    """
    import torchvision

    kwargs = _quiet_kwargs(arch, random_init=False)
    try:
        with torch.device("meta"):  # no memory or init cost for large models
            model = torchvision.models.get_model(arch, weights=None, **kwargs)
    except (NotImplementedError, RuntimeError):  # a few constructors compute with real tensors
        model = torchvision.models.get_model(arch, weights=None, **kwargs)
    return [k for k, v in model.state_dict().items() if k.endswith("weight") and v.ndim >= 2][-1]


def _quiet_kwargs(arch: str, *, random_init: bool) -> dict:
    """GoogLeNet/Inception warn unless told how to initialise; say so explicitly."""
    return {"init_weights": random_init} if arch in ("googlenet", "inception_v3") else {}


def _num_classes_of(model: nn.Module) -> int:
    """Output size of the last Linear/Conv2d; for TorchScript (whose submodules are not those
    classes) the first dimension of the last matrix or kernel."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    if last:
        return int(last[-1].out_features if isinstance(last[-1], nn.Linear) else last[-1].out_channels)
    weights = [p for p in model.parameters() if p.ndim >= 2]
    if not weights:
        raise ModelLoadError(f"{type(model).__name__} has no linear or convolution layer")
    return int(weights[-1].shape[0])


def _input_shape(model: nn.Module) -> tuple[int, int, int]:
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


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _load_file(spec: str, path: Path, trust: bool) -> LoadedModel:
    """An exported snp model, or (only with ``trust``) a pickled full module or TorchScript file.

    The content decides, not the file name: people rename files, and a ``.pth`` that really holds
    safetensors (or the reverse) should load like what it is.
    """
    kind = sniff_format(path)
    if kind == "safetensors":
        if FORMAT_KEY in safetensors_metadata(path):
            return load_exported(path)
        raise _bare_state_dict_error(path)
    if kind == "torchscript":
        model = _load_torchscript(path, trust)
        arch = f"torchscript:{getattr(model, 'original_name', 'module')}"
        return LoadedModel(model, spec, arch, _num_classes_of(model), _input_shape(model), str(path))
    _refuse_unreadable(path, kind)
    obj = _torch_load(path, trust)
    if isinstance(obj, nn.Module):
        model = obj.cpu().eval()
        return LoadedModel(
            model, spec, f"pickle:{type(model).__name__}", _num_classes_of(model), _input_shape(model), str(path)
        )
    if isinstance(obj, Mapping):
        raise _bare_state_dict_error(path)
    raise ModelLoadError(f"{path}: holds a {type(obj).__name__}, not a model")


def _bare_state_dict_error(path: Path) -> ModelLoadError:
    return ModelLoadError(f"{path} holds bare weights without an architecture; load it as torchvision:ARCH@{path}")


def _read_state_dict(path: Path, trust: bool) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors or PyTorch file (sniffed, whatever its suffix); a state dict may
    sit under state_dict/model."""
    if not path.is_file():
        raise ModelLoadError(f"weights file '{path}' does not exist")
    kind = sniff_format(path)
    if kind == "safetensors":
        from safetensors.torch import load_file

        safetensors_metadata(path)  # turns a malformed file into a clear error
        try:
            return _strip_prefix(load_file(str(path)), "module.")
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise ModelLoadError(
                f"{path}: the weights cannot be read, the file is damaged or truncated ({exc})"
            ) from None
    if kind == "torchscript":
        return dict(_load_torchscript(path, trust).state_dict())
    _refuse_unreadable(path, kind)
    obj = _torch_load(path, trust)
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
            if isinstance(inner, nn.Module):
                return inner.state_dict()
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, Mapping) else {}
    if not tensors:
        raise ModelLoadError(f"{path}: no state dict found (expected a dict of tensors)")
    return _strip_prefix(tensors, "module.")


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Undo the ``module.`` prefix that DataParallel/DDP checkpoints carry."""
    if state and all(k.startswith(prefix) for k in state):
        return {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def _torch_load(path: Path, trust: bool) -> object:
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
    except Exception as exc:  # arbitrary unpickling can fail in arbitrary ways
        raise ModelLoadError(f"{path}: could not be unpickled ({type(exc).__name__}: {exc})") from exc


def _refuse_unreadable(path: Path, kind: str) -> None:
    """One clear sentence for files that are not a PyTorch archive or pickle at all."""
    if kind in ("zip", "pickle"):
        return
    reasons = {
        "empty": "the file is empty (0 bytes)",
        "damaged-zip": "a damaged or truncated PyTorch file (its zip archive cannot be read)",
        "numpy": "a NumPy array file, not a model",
    }
    reason = reasons.get(kind, "not a model file snp can read (neither safetensors nor a PyTorch file)")
    raise ModelLoadError(f"{path}: {reason}")


def _load_torchscript(path: Path, trust: bool) -> nn.Module:
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


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], arch: str, path: Path) -> None:
    """``load_state_dict(strict=True)`` with a short, readable list of what does not fit."""
    problems = state_dict_mismatches(model, state)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ModelLoadError(f"{path} does not fit {arch}: {shown}")
    model.load_state_dict(state, strict=True)


__all__ = [
    "DEMO_MODELS",
    "DEMO_RESULTS_FILE",
    "RESOURCES",
    "TORCHVISION_PREFIX",
    "DemoModel",
    "DemoResNet",
    "DemoVGG",
    "LoadedModel",
    "demo_results",
    "list_architectures",
    "load_model",
    "sniff_format",
]

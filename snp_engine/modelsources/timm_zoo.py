"""timm models: ``timm:NAME`` (random weights) or ``timm:NAME@WEIGHTS`` (a state dict; the class
count and input channels are read from its shapes).

timm is optional: without it the engine works as before and a ``timm:`` spec says how to install
it. Nothing is ever downloaded: models are built with ``pretrained=False`` and only names of timm's
local registry are accepted (no ``hf-hub:`` or ``local-dir:`` names, whose config timm would fetch).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from snp_engine.architectures import (
    TIMM_PREFIX,
    LoadedModel,
    build_timm,
    check_timm_name,
    import_timm,
    timm_names,
)
from snp_engine.errors import ModelLoadError
from snp_engine.modelsources.base import register
from snp_engine.modelsources.checkpoints import default_input_shape, load_strict, num_classes_of, read_state_dict


def load_timm(spec: str, name: str, path: Path | None, trust: bool) -> LoadedModel:
    """Random init, or the weights in ``path`` with the class count/input channels read from them."""
    timm = import_timm(spec)
    check_name(timm, name)
    arch = f"{TIMM_PREFIX}{name}"
    if path is None:
        model = build_timm(timm, name, {})
        source = "random init"
        num_classes = int(getattr(model, "num_classes", 0) or 0) or num_classes_of(model)
    else:
        state = read_state_dict(path, trust)
        kwargs = _architecture_kwargs(timm, name, state, path)
        model = build_timm(timm, name, kwargs)
        load_strict(model, state, arch, path)
        source = str(path)
        num_classes = kwargs["num_classes"]
    shape, rule = input_shape_of(model)
    return LoadedModel(model.eval(), spec, arch, num_classes, shape, source, rule)


def check_name(timm, name: str) -> None:
    """Refuse names timm does not know (with close matches) and hub/folder names."""
    if check_timm_name(timm, name):
        return
    if not name:
        raise ModelLoadError("timm: needs a model name, e.g. timm:resnet18 or timm:resnet18@weights.pth")
    if ":" in name or "/" in name or "\\" in name:
        raise ModelLoadError(
            f"timm:{name}: only names of timm's own registry are accepted (snp never downloads a model or "
            "its config); give a model name such as timm:resnet18 and the weights as timm:NAME@WEIGHTS.pth"
        )
    names = timm_names(timm)
    base, dot, _ = name.partition(".")
    if dot and timm.is_model(base):
        tags = [n for n in timm.list_pretrained() if n.startswith(base + ".")]
        close = difflib.get_close_matches(name, tags, n=5) or tags[:5] or [base]
        raise ModelLoadError(f"unknown timm model tag '{name}'; did you mean: {', '.join(close)}?")
    close = (timm.list_models(name)[:8] if "*" in name else []) or difflib.get_close_matches(name, names, n=5)
    close = close or names[:8]
    raise ModelLoadError(f"unknown timm model '{name}'; did you mean: {', '.join(close)}?")


def input_shape_of(model: nn.Module) -> tuple[tuple[int, int, int], str]:
    """timm's default input size; ``fixed`` where the model takes only that size (ViT-like), else
    ``any`` (a default: like torchvision's CNNs, the data's own size is used)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    channels, height, width = default_input_shape(model)
    size = cfg.get("input_size")
    if isinstance(size, tuple | list) and len(size) == 3:
        height, width = int(size[1]), int(size[2])
    return (channels, height, width), "fixed" if cfg.get("fixed_input_size") else "any"


def _architecture_kwargs(timm, name: str, state: Mapping[str, torch.Tensor], path: Path) -> dict:
    """Constructor arguments that the checkpoint's shapes pin down: classes and input channels."""
    classifier, first_conv = _layer_keys(name)
    if classifier in state:
        kwargs: dict = {"num_classes": int(state[classifier].shape[0])}
    else:  # guess from the last layer in file order; the strict load then reports what differs
        weights = [v for k, v in state.items() if k.endswith("weight") and v.ndim >= 2]
        if not weights:
            raise ModelLoadError(f"{path}: no layer weights found, so it is not a model state dict")
        kwargs = {"num_classes": int(weights[-1].shape[0])}
    conv = state.get(first_conv) if first_conv else None
    if conv is not None and conv.ndim == 4 and int(conv.shape[1]) != 3:
        kwargs["in_chans"] = int(conv.shape[1])
    return kwargs


@functools.lru_cache(maxsize=32)
def _layer_keys(name: str) -> tuple[str, str | None]:
    """The state-dict keys of the classifier weight and of the first convolution's weight.

    Taken from a model built on the meta device (no memory, no init cost) because safetensors
    files store their keys sorted by name, which loses the layer order.
    """
    timm = import_timm(f"{TIMM_PREFIX}{name}")
    try:
        with torch.device("meta"):
            model = build_timm(timm, name, {})
    except (NotImplementedError, RuntimeError):  # a few constructors compute with real tensors
        model = build_timm(timm, name, {})
    cfg = getattr(model, "pretrained_cfg", None) or {}
    keys = [k for k, v in model.state_dict().items() if k.endswith("weight") and v.ndim >= 2]
    classifier = cfg.get("classifier")
    classifier = f"{classifier}.weight" if isinstance(classifier, str) else keys[-1]
    first = cfg.get("first_conv")
    kernels = [k for k, v in model.state_dict().items() if k.endswith("weight") and v.ndim == 4]
    first_conv = f"{first}.weight" if isinstance(first, str) else next(iter(kernels), None)
    return classifier, first_conv


class TimmSource:
    """Any model of timm's registry (timm is optional; without it the spec says how to install it)."""

    name = "timm"
    syntax = "timm:NAME[@WEIGHTS]"
    summary = "a timm model (pip install timm), random or with your state dict (.pth or .safetensors)"
    label = "timm model"
    needs_trust = False
    rebuilds = "timm"

    def matches(self, spec: str) -> bool:
        return spec.strip().startswith(TIMM_PREFIX)

    def load(self, spec: str, trust: bool) -> LoadedModel:
        spec = spec.strip()
        name, at, path = spec.removeprefix(TIMM_PREFIX).partition("@")
        if at and not path.strip():
            raise ModelLoadError(f"model '{spec}': no weights file after '@' (timm:NAME@WEIGHTS.pth)")
        return load_timm(spec, name.strip(), Path(path.strip()) if path.strip() else None, trust)


register(TimmSource())

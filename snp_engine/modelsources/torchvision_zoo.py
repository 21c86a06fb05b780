"""torchvision classifiers: ``torchvision:ARCH`` (random weights) or ``torchvision:ARCH@WEIGHTS``
(a state dict; the class count and a ViT's image size are read from its shapes)."""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Mapping
from pathlib import Path

import torch

from snp_engine.architectures import TORCHVISION_PREFIX, LoadedModel, torchvision_names
from snp_engine.errors import ModelLoadError
from snp_engine.modelsources.base import register, size_rule_of
from snp_engine.modelsources.checkpoints import default_input_shape, load_strict, num_classes_of, read_state_dict


def load_torchvision(spec: str, arch: str, path: Path | None, trust: bool) -> LoadedModel:
    """Random init, or the weights in ``path`` with the class count/image size read from them."""
    import torchvision

    names = torchvision_names()
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=5) or names[:8]
        raise ModelLoadError(f"unknown torchvision architecture '{arch}'; did you mean: {', '.join(close)}?")
    if path is None:
        model = torchvision.models.get_model(arch, weights=None, **_quiet_kwargs(arch, random_init=True))
        return LoadedModel(
            model.eval(),
            spec,
            f"torchvision:{arch}",
            num_classes_of(model),
            default_input_shape(model),
            "random init",
            size_rule_of(model),
        )
    state = read_state_dict(path, trust)
    kwargs = _architecture_kwargs(arch, state, path)
    model = torchvision.models.get_model(arch, weights=None, **kwargs)
    load_strict(model, state, f"torchvision:{arch}", path)
    return LoadedModel(
        model.eval(),
        spec,
        f"torchvision:{arch}",
        kwargs["num_classes"],
        default_input_shape(model),
        str(path),
        size_rule_of(model),
    )


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


class TorchvisionSource:
    """Any classifier of torchvision's model registry."""

    name = "torchvision"
    syntax = "torchvision:ARCH[@WEIGHTS]"
    summary = "a torchvision classifier, random or with your state dict (.pth or .safetensors)"
    label = "torchvision architecture"
    needs_trust = False
    rebuilds = "torchvision"

    def matches(self, spec: str) -> bool:
        return spec.strip().startswith(TORCHVISION_PREFIX)

    def load(self, spec: str, trust: bool) -> LoadedModel:
        spec = spec.strip()
        arch, at, path = spec.removeprefix(TORCHVISION_PREFIX).partition("@")
        if at and not path.strip():
            raise ModelLoadError(f"model '{spec}': no weights file after '@' (torchvision:ARCH@WEIGHTS.pth)")
        return load_torchvision(spec, arch.strip(), Path(path.strip()) if path else None, trust)


register(TorchvisionSource())

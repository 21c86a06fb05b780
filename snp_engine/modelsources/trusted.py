"""Other model files: a pickled ``nn.Module`` or a TorchScript program (both only with ``trust``),
and clear refusals for everything else (bare weights, damaged or foreign files)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import nn

from snp_engine.architectures import LoadedModel
from snp_engine.errors import ModelLoadError
from snp_engine.headers import sniff_format
from snp_engine.inputs import runnable_shape
from snp_engine.modelsources.base import register, size_rule_of
from snp_engine.modelsources.checkpoints import (
    bare_state_dict_error,
    default_input_shape,
    load_torchscript,
    num_classes_of,
    refuse_unreadable,
    torch_load,
)


def load_file(spec: str, path: Path, trust: bool) -> LoadedModel:
    """A pickled full module or TorchScript file (only with ``trust``); the content decides, not the
    file name: people rename files."""
    kind = sniff_format(path)
    if kind == "safetensors":
        raise bare_state_dict_error(path)
    if kind == "torchscript":
        model = load_torchscript(path, trust)
        arch = f"torchscript:{getattr(model, 'original_name', 'module')}"
        shape = runnable_shape(model, default_input_shape(model))
        return LoadedModel(model, spec, arch, num_classes_of(model), shape, str(path), size_rule_of(model))
    refuse_unreadable(path, kind)
    obj = torch_load(path, trust)
    if isinstance(obj, nn.Module):
        model = obj.cpu().eval()
        arch = f"pickle:{type(model).__name__}"
        shape = runnable_shape(model, default_input_shape(model))
        return LoadedModel(model, spec, arch, num_classes_of(model), shape, str(path), size_rule_of(model))
    if isinstance(obj, Mapping):
        raise bare_state_dict_error(path)
    raise ModelLoadError(f"{path}: holds a {type(obj).__name__}, not a model")


class TrustedFileSource:
    """Whole pickled modules and TorchScript programs; they can run code, so they need ``--trust``."""

    name = "trusted-file"
    syntax = "FILE.pt --trust"
    summary = "a pickled nn.Module or a TorchScript file (runs code from the file: only with --trust)"
    label = "Pickled model (trusted)"
    needs_trust = True
    rebuilds = None  # a pickled class or a TorchScript program has no architecture snp can rebuild

    def matches(self, spec: str) -> bool:
        return Path(spec.strip()).is_file()

    def load(self, spec: str, trust: bool) -> LoadedModel:
        return load_file(spec.strip(), Path(spec.strip()), trust)


register(TrustedFileSource())

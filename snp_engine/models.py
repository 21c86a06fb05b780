"""Model loading: one entry point over the model sources in :mod:`snp_engine.modelsources`.

:func:`load_model` finds the source for a spec (demo network, torchvision classifier, snp export,
trusted pickle/TorchScript) and returns a :class:`LoadedModel` in eval mode with the facts the rest
of the engine needs (class count, input shape and how strictly it holds, where the weights came
from). Loading never unpickles arbitrary objects unless the caller opts in with ``trust=True``.
"""

from __future__ import annotations

from pathlib import Path

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
    torchvision_names,
)
from snp_engine.errors import ModelLoadError
from snp_engine.headers import sniff_format
from snp_engine.modelsources import MODEL_SOURCES, find_source


def list_architectures() -> list[str]:
    """Names accepted by :func:`load_model`: the demo models, then torchvision classifiers."""
    return [*DEMO_MODELS, *(TORCHVISION_PREFIX + n for n in torchvision_names())]


def models_help() -> str:
    """The accepted model specs, one per source, for help texts."""
    return "; ".join(f"{s.syntax}: {s.summary.rstrip('.')}" for s in MODEL_SOURCES.values())


def load_model(spec: str, *, trust: bool = False) -> LoadedModel:
    """Load a model with the first source that recognises ``spec``.

    ``trust=True`` additionally allows a pickled full ``nn.Module`` or TorchScript program;
    without it such files are refused before anything in them is executed.
    """
    spec = spec.strip()
    source = find_source(spec)
    if source is not None:
        return source.load(spec, trust)
    path = Path(spec)
    if path.is_dir():
        raise ModelLoadError(f"model '{spec}' is a folder, not a model file")
    if path.suffix or "/" in spec or "\\" in spec:
        raise ModelLoadError(f"model file '{spec}' does not exist")
    raise ModelLoadError(
        f"model '{spec}' not found: use {', '.join(DEMO_MODELS)}, torchvision:ARCH, "
        "torchvision:ARCH@WEIGHTS.pth or a path to an exported model file"
    )


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
    "models_help",
    "sniff_format",
]

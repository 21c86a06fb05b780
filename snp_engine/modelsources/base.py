"""What every model source provides, and the registry sources add themselves to.

A source recognises its specs (``demo-vgg``, ``torchvision:ARCH@weights.pth``, a file, …),
describes itself for help texts and the app's chooser, and loads a spec into a
:class:`~snp_engine.architectures.LoadedModel`. A new kind of model is one new module in this
package that calls :func:`register`.
"""

from __future__ import annotations

from typing import Protocol

from snp_engine.architectures import LoadedModel


class ModelSource(Protocol):
    """One kind of model."""

    name: str  # registry key
    syntax: str  # how a spec of this kind is written
    summary: str  # one line for help texts
    label: str  # short name for the app's chooser
    needs_trust: bool  # loading can run code from the file
    rebuilds: str | None  # the architecture family an export of its networks is rebuilt with (None: cannot)

    def matches(self, spec: str) -> bool: ...

    def load(self, spec: str, trust: bool) -> LoadedModel: ...


MODEL_SOURCES: dict[str, ModelSource] = {}


def register(source: ModelSource) -> ModelSource:
    """Add a source; the first registered source whose ``matches`` accepts a spec loads it."""
    MODEL_SOURCES[source.name] = source
    return source


def find_source(spec: str) -> ModelSource | None:
    for source in MODEL_SOURCES.values():
        if source.matches(spec):
            return source
    return None


def size_rule_of(model) -> str:
    """``fixed`` for architectures that only take one input size (torchvision ViT), else ``any``."""
    return "fixed" if isinstance(getattr(model, "image_size", None), int) else "any"

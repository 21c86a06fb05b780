"""Files written by snp (safetensors + a JSON header): rebuilt without running any code."""

from __future__ import annotations

from pathlib import Path

from snp_engine.architectures import LoadedModel
from snp_engine.exports import FORMAT_KEY, load_exported
from snp_engine.headers import safetensors_metadata, sniff_format
from snp_engine.modelsources.base import register


class SnpFileSource:
    """An exported (possibly pruned) network; it runs at the input size it was pruned at."""

    name = "snp-file"
    syntax = "FILE.safetensors"
    summary = "a network exported by snp (safe: rebuilt from its header, no code is run)"
    label = "Exported snp file"
    needs_trust = False
    rebuilds = None  # an export names its base architecture, which its own family rebuilds

    def matches(self, spec: str) -> bool:
        path = Path(spec.strip())
        return path.is_file() and sniff_format(path) == "safetensors" and FORMAT_KEY in safetensors_metadata(path)

    def load(self, spec: str, trust: bool) -> LoadedModel:
        return load_exported(Path(spec.strip()))


register(SnpFileSource())

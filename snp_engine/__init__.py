"""snp_engine: Subspace Node Pruning for vision networks, without any Qt dependency.

The public entry points live in :mod:`snp_engine.api` and are re-exported here lazily so that
importing a submodule (e.g. ``snp_engine.subspace``) stays cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"

_API_NAMES = (
    "analyze",
    "prune",
    "evaluate",
    "load",
    "export",
    "Analysis",
    "Plan",
)


def __getattr__(name: str):
    if name in _API_NAMES:
        from snp_engine import api

        return getattr(api, name)
    raise AttributeError(f"module 'snp_engine' has no attribute {name!r}")

"""snp_engine: Subspace Node Pruning for vision networks, without any Qt dependency.

The public entry points live in :mod:`snp_engine.api` and are re-exported here lazily so that
importing a submodule (e.g. ``snp_engine.subspace``) stays cheap. Engine modules take the version
from :mod:`snp_engine.version`, never from this package, so that nothing imports back into it.
"""

from __future__ import annotations

from snp_engine.version import __version__

_API_NAMES = (
    "analyze",
    "prune",
    "evaluate",
    "load",
    "export",
    "Analysis",
    "Plan",
    "Pruned",
)

__all__ = ["__version__", *_API_NAMES]


def __getattr__(name: str):
    if name in _API_NAMES:
        from snp_engine import api  # lazy: importing the package must not import torch and everything else

        return getattr(api, name)
    raise AttributeError(f"module 'snp_engine' has no attribute {name!r}")

"""The version of snp, in a module of its own so that any engine module can name it without importing
the package itself (which lazily imports :mod:`snp_engine.api`)."""

from __future__ import annotations

__version__ = "0.1.0"

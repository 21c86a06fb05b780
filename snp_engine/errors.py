"""User-facing errors. Anything raised as :class:`SnpError` is shown as one clear line (CLI exit 2,
a message in the GUI), never as a traceback."""

from __future__ import annotations


class SnpError(Exception):
    """A problem with the user's input (file, data, setting) that the user can fix."""


class ModelLoadError(SnpError):
    """A model file or model spec could not be loaded."""


class DataError(SnpError):
    """A dataset spec or data file could not be used."""


class AnalysisError(SnpError):
    """The analysis could not be carried out (e.g. NaN activations)."""


class OutOfMemoryError(AnalysisError):
    """The device ran out of memory; a smaller batch or another device may succeed."""


def reason_of(exc: BaseException, limit: int = 200) -> str:
    """An exception's message as one line: its last non-empty line (TorchScript puts its
    interpreter's traceback first, the reason last), at most ``limit`` characters."""
    lines = [" ".join(line.split()) for line in str(exc).splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:limit]

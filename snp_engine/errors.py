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

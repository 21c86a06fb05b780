"""Compatibility façade for snp's files; new code imports from the modules that do the work.

``from snp_engine import io`` and ``from snp_engine.io import ...`` keep working with every public
name this module had before it was split by idea:

* :mod:`snp_engine.atomic`: ``check_writable``, ``atomic_write`` (a file is the new one or the earlier one)
* :mod:`snp_engine.exports`: ``export_model``, ``read_metadata``, ``load_exported``, ``check_exportable``
* :mod:`snp_engine.analysis` / :mod:`snp_engine.statsfile`: ``save_analysis``, ``load_analysis``,
  ``check_analysis_fits`` (statistics files)
* :mod:`snp_engine.deploy`: ``export_torchscript``, ``export_onnx``
* :mod:`snp_engine.verification`: the tolerances every written model is checked to
"""

from __future__ import annotations

import tempfile  # noqa: F401  (tests patch io.tempfile.mkstemp, i.e. the tempfile module that atomic_write uses)

from snp_engine.activations import model_dtype
from snp_engine.analysis import check_analysis_fits, load_analysis, save_analysis
from snp_engine.atomic import atomic_write, check_writable
from snp_engine.deploy import export_onnx, export_torchscript
from snp_engine.errors import ModelLoadError, SnpError
from snp_engine.exports import FORMAT_KEY, FORMAT_VERSION, check_exportable, export_model, load_exported, read_metadata
from snp_engine.headers import METADATA_KEY
from snp_engine.progress import Reporter
from snp_engine.statsfile import ANALYSIS_KEY, ANALYSIS_VERSION
from snp_engine.verification import EXPORT_TOLERANCE, ONNX_TOLERANCE

__all__ = [
    "ANALYSIS_KEY",
    "ANALYSIS_VERSION",
    "EXPORT_TOLERANCE",
    "FORMAT_KEY",
    "FORMAT_VERSION",
    "METADATA_KEY",
    "ONNX_TOLERANCE",
    "ModelLoadError",
    "Reporter",
    "SnpError",
    "atomic_write",
    "check_analysis_fits",
    "check_exportable",
    "check_writable",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "load_analysis",
    "load_exported",
    "model_dtype",
    "read_metadata",
    "save_analysis",
]

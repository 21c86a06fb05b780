"""``snp_engine.api``, ``snp_engine.io`` and ``snp_engine.models`` keep every name they had before the
engine was split into layers, so code written against them (the CLI, the GUI, scripts) still works."""

from __future__ import annotations

import importlib

import pytest

# Every name (other than imported modules) that the single-module api defined or imported.
API_NAMES = [
    "Analysis",
    "AnalysisError",
    "CURVES",
    "CostModel",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_ORDERING",
    "DataError",
    "ExcludedGroup",
    "GroupAnalysis",
    "LayerCost",
    "Moments",
    "ORDERINGS",
    "OrderingInputs",
    "OutOfMemoryError",
    "Plan",
    "Reporter",
    "Scaled",
    "SnpError",
    "UnitGroup",
    "_Cast",
    "_OUT_OF_MEMORY_MARKERS",
    "_as_dataset",
    "_check_forward",
    "_check_labels",
    "_example",
    "_fit_sequential",
    "_is_out_of_memory",
    "_out_of_memory_as_error",
    "analyze",
    "apply_reconstruction",
    "batches_of",
    "build_cost_model",
    "collect_joint_moments",
    "collect_moments",
    "compensation_ridge",
    "consumer_metric",
    "drop_columns",
    "evaluate",
    "execution_order",
    "explained_curve",
    "export",
    "fidelity",
    "find_groups",
    "following_norms",
    "images_of",
    "keep_for_budget",
    "keep_for_threshold",
    "load",
    "model_dtype",
    "one_shot_reconstruction",
    "order_units",
    "producer_l1",
    "prune",
    "reconstruction",
    "remove_units",
    "resolve_device",
    "subspace_curve",
    "tap_coverage",
    "validate_keep",
    "weight_taps",
]

# The public names of the single-module io (``tempfile`` because tests patch io.tempfile.mkstemp).
IO_NAMES = [
    "ANALYSIS_KEY",
    "ANALYSIS_VERSION",
    "EXPORT_TOLERANCE",
    "FORMAT_KEY",
    "FORMAT_VERSION",
    "METADATA_KEY",
    "ModelLoadError",
    "ONNX_TOLERANCE",
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
    "tempfile",
]

# The public names of models before the architectures moved out of it.
MODELS_NAMES = [
    "DEMO_MODELS",
    "DEMO_RESULTS_FILE",
    "DemoModel",
    "DemoResNet",
    "DemoVGG",
    "LoadedModel",
    "ModelLoadError",
    "RESOURCES",
    "TORCHVISION_PREFIX",
    "demo_results",
    "list_architectures",
    "load_model",
    "sniff_format",
]


@pytest.mark.parametrize(
    ("module", "names"),
    [("snp_engine.api", API_NAMES), ("snp_engine.io", IO_NAMES), ("snp_engine.models", MODELS_NAMES)],
    ids=["api", "io", "models"],
)
def test_earlier_names_stay_importable(module, names):
    imported = importlib.import_module(module)
    missing = [name for name in names if not hasattr(imported, name)]
    assert not missing, f"{module} lost {missing}"


@pytest.mark.parametrize("module", ["snp_engine.api", "snp_engine.io", "snp_engine.models"])
def test_all_lists_only_real_names(module):
    imported = importlib.import_module(module)
    assert imported.__all__ and all(hasattr(imported, name) for name in imported.__all__)


def test_facades_hand_out_the_implementations():
    from snp_engine import analysis, api, architectures, deploy, evaluation, exports, io, models, pruning, runtime

    assert api.Analysis is analysis.Analysis and api.prune is pruning.prune and api.evaluate is evaluation.evaluate
    assert api.resolve_device is runtime.resolve_device and api._check_forward is runtime.check_forward
    assert io.export_model is exports.export_model and io.export_onnx is deploy.export_onnx
    assert io.load_analysis is analysis.load_analysis and models.LoadedModel is architectures.LoadedModel
    assert io.tempfile is importlib.import_module("tempfile")


def test_package_exposes_the_api_lazily():
    import snp_engine
    from snp_engine import api
    from snp_engine.version import __version__

    assert snp_engine.__version__ == __version__
    assert snp_engine.analyze is api.analyze and snp_engine.Plan is api.Plan
    with pytest.raises(AttributeError):
        _ = snp_engine.not_an_api_name

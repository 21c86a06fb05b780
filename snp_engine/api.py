"""The public Python API of snp: analyse a network, plan keep counts, prune, evaluate, export.

    analysis = snp_engine.analyze(model, calibration_dataset)          # one forward pass
    plan = analysis.plan(variance=0.99)          # or flops_reduction=0.5 / params_reduction=… / keep={…}
    pruned = snp_engine.prune(model, analysis, plan, data=calibration_dataset)  # .model, .record
    snp_engine.export(pruned, "small.safetensors", arch=…, num_classes=…, input_shape=…)
    same = snp_engine.load("small.safetensors")

This module is a façade; ``__all__`` is the public API. The work is done in
:mod:`snp_engine.analysis` (statistics, orderings, plans), :mod:`snp_engine.pruning`,
:mod:`snp_engine.evaluation`, :mod:`snp_engine.runtime` (batches, devices, out-of-memory) and
:mod:`snp_engine.exports` (snp's model file). The other names imported here were defined in, or
imported by, this module before it was split, and stay importable from it for existing code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from snp_engine.activations import collect_joint_moments as collect_joint_moments
from snp_engine.activations import collect_moments as collect_moments
from snp_engine.activations import following_norms as following_norms
from snp_engine.activations import images_of as images_of
from snp_engine.activations import model_dtype as model_dtype
from snp_engine.analysis import CURVES, Analysis, analyze
from snp_engine.compensation import compensation_ridge as compensation_ridge
from snp_engine.compensation import consumer_metric as consumer_metric
from snp_engine.compensation import one_shot_reconstruction as one_shot_reconstruction
from snp_engine.compensation import reconstruction as reconstruction
from snp_engine.compensation import tap_coverage as tap_coverage
from snp_engine.costs import CostModel, LayerCost
from snp_engine.costs import build_cost_model as build_cost_model
from snp_engine.errors import AnalysisError as AnalysisError
from snp_engine.errors import DataError as DataError
from snp_engine.errors import OutOfMemoryError as OutOfMemoryError
from snp_engine.errors import SnpError as SnpError
from snp_engine.evaluation import check_labels, evaluate, fidelity
from snp_engine.exports import export_model, load_exported
from snp_engine.groups import ExcludedGroup as ExcludedGroup
from snp_engine.groups import UnitGroup as UnitGroup
from snp_engine.groups import execution_order as execution_order
from snp_engine.groups import find_groups as find_groups
from snp_engine.progress import Reporter as Reporter
from snp_engine.progress import Scaled as Scaled
from snp_engine.pruning import _fit_sequential as _fit_sequential
from snp_engine.pruning import prune
from snp_engine.ratios import keep_for_budget as keep_for_budget
from snp_engine.ratios import keep_for_threshold as keep_for_threshold
from snp_engine.ratios import validate_keep as validate_keep
from snp_engine.results import GroupAnalysis, Plan, Pruned, PruningRecord
from snp_engine.runtime import DEFAULT_BATCH_SIZE as DEFAULT_BATCH_SIZE
from snp_engine.runtime import (
    OUT_OF_MEMORY_MARKERS,
    CastImages,
    as_dataset,
    batches_of,
    check_forward,
    first_example,
    is_out_of_memory,
    out_of_memory_as_error,
    resolve_device,
)
from snp_engine.statistics import Moments as Moments
from snp_engine.subspace import DEFAULT_ORDERING as DEFAULT_ORDERING
from snp_engine.subspace import ORDERINGS as ORDERINGS
from snp_engine.subspace import OrderingInputs as OrderingInputs
from snp_engine.subspace import explained_curve as explained_curve
from snp_engine.subspace import order_units as order_units
from snp_engine.subspace import subspace_curve as subspace_curve
from snp_engine.surgery import apply_reconstruction as apply_reconstruction
from snp_engine.surgery import drop_columns as drop_columns
from snp_engine.surgery import producer_l1 as producer_l1
from snp_engine.surgery import remove_units as remove_units
from snp_engine.surgery import weight_taps as weight_taps


def export(model: nn.Module | Pruned, path: str | Path, **metadata: Any) -> Path:
    """Write a pruned model (the :class:`Pruned` that :func:`prune` returns, which brings its record)
    to snp's self-describing safetensors file (see :mod:`snp_engine.exports`)."""
    return export_model(model, path, **metadata)


def load(path: str | Path, *, trust: bool = False) -> nn.Module:
    """Rebuild a model from a file exported by snp — no code is executed (safetensors + JSON)."""
    return load_exported(path).model


# The private helpers of the single-module api, under their earlier names (the CLI uses _check_forward).
_Cast = CastImages
_OUT_OF_MEMORY_MARKERS = OUT_OF_MEMORY_MARKERS
_as_dataset = as_dataset
_check_forward = check_forward
_check_labels = check_labels
_example = first_example
_is_out_of_memory = is_out_of_memory
_out_of_memory_as_error = out_of_memory_as_error

__all__ = [
    "CURVES",
    "Analysis",
    "CostModel",
    "GroupAnalysis",
    "LayerCost",
    "Plan",
    "Pruned",
    "PruningRecord",
    "analyze",
    "batches_of",
    "evaluate",
    "export",
    "fidelity",
    "load",
    "prune",
    "resolve_device",
]

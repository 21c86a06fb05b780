"""Preparing a job: load the model and data, fit the data to the model's input, check both.

Near-chance accuracy of the unpruned model on the first calibration images means the
preprocessing, normalisation or input size differs from training; it is said loudly before any
long work, and so is a class count that does not match the data's labels.
"""

from __future__ import annotations

import dataclasses
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Subset

from snp_engine.activations import model_dtype
from snp_engine.data import DataBundle, load_data, make_loader
from snp_engine.distributed import own_shard, shard, shard_batch
from snp_engine.errors import ModelLoadError, SnpError
from snp_engine.inputs import FittedData, fit_data, resolve_input_shape
from snp_engine.metrics import scores
from snp_engine.models import LoadedModel
from snp_engine.models import load_model as _load_model
from snp_engine.progress import Reporter
from snp_engine.runtime import check_forward, resolve_device

DENSE_CHECK_SAMPLES = 256
CHANCE_FACTOR = 1.5  # dense top-1 below this many times chance means "the inputs are not what it was trained on"


@dataclass(frozen=True)
class DenseCheck:
    """The unpruned model's accuracy on the first calibration images, before any long work."""

    top1: float
    samples: int
    classes: int

    @property
    def chance(self) -> float:
        return 100.0 / self.classes

    @property
    def near_chance(self) -> bool:
        return self.top1 < CHANCE_FACTOR * self.chance

    def warning(self) -> str | None:
        if not self.near_chance:
            return None
        return (
            f"the unpruned model scores only {self.top1:.1f}% top-1 on the first {self.samples} calibration images "
            f"(chance: {self.chance:.1f}%): the preprocessing, normalisation, input size or label numbering "
            "probably differs from its training (see --input-size); accuracies and pruning results will not mean much"
        )


@dataclass(frozen=True)
class Prepared:
    """A model and its data, fitted to each other and checked; the input of every job."""

    model: LoadedModel
    data: DataBundle | None  # calibration data, adapted to the model's input
    evaluation: DataBundle | None  # where accuracies are measured (the calibration data unless given)
    input_shape: tuple[int, int, int]
    notes: tuple[str, ...] = ()  # what was adapted, one line each
    warnings: tuple[str, ...] = ()
    dense: DenseCheck | None = None
    evaluation_label: str = "no data"

    @property
    def messages(self) -> tuple[str, ...]:
        return (*self.notes, *self.warnings)

    def require_data(self) -> DataBundle:
        if self.data is None:
            raise SnpError("this needs data: load a dataset first")
        return self.data


def load_model(spec: str, *, trust: bool = False, reporter: Reporter | None = None) -> LoadedModel:
    """A model from any source; readers of damaged files that fail oddly still give one clear error."""
    (reporter or Reporter()).update(0.0, f"loading {spec}")
    try:
        return _load_model(spec.strip(), trust=trust)
    except SnpError:
        raise
    except Exception as exc:  # readers of damaged files fail in many ways; all mean "not a usable model"
        traceback.print_exc(file=sys.stderr)
        raise ModelLoadError(f"{spec}: could not be read as a model ({type(exc).__name__}: {exc})") from None


def open_data(spec: str, *, seed: int = 0) -> DataBundle:
    """Data from any source at its own size and channels."""
    return load_data(spec, seed=seed)


def fit(loaded: LoadedModel, bundle: DataBundle, input_size: int | None = None) -> FittedData:
    """``bundle`` adapted to the input shape the one rule picks for ``loaded``."""
    rule = loaded.size_rule
    shape, reason = resolve_input_shape(
        loaded.model,
        loaded.input_shape,
        rule,
        bundle.image_size,
        input_size,
        name=loaded.arch,
        common_size=bundle.common_size,
    )
    return fit_data(bundle, shape, reason)


def input_shape_of(loaded: LoadedModel, input_size: int | None = None) -> tuple[int, int, int]:
    """The input shape without data: the model's own, or ``input_size`` (checked against a fixed size)."""
    rule = loaded.size_rule
    shape, _ = resolve_input_shape(loaded.model, loaded.input_shape, rule, None, input_size, name=loaded.arch)
    return shape


def check_runs(model: nn.Module, shape: Sequence[int]) -> None:
    """One zero image through the model, so a model/input mismatch is one clear sentence."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    check_forward(model, torch.zeros((1, *shape), device=device, dtype=model_dtype(model)))


def class_warnings(loaded: LoadedModel, bundle: DataBundle, *, require: bool) -> list[str]:
    """Labels the model cannot predict: an error when accuracies or training need them
    (``require``), a warning otherwise; a model with many more classes than the data: a warning."""
    classes = bundle.num_classes
    if classes is None:
        return []
    if classes > loaded.num_classes:
        message = (
            f"the data '{bundle.name}' has labels 0..{classes - 1} but the model predicts "
            f"{loaded.num_classes} classes (labels 0..{loaded.num_classes - 1})"
        )
        if require:
            raise SnpError(message)
        return [message + "; accuracies will be meaningless"]
    if loaded.num_classes > classes:
        return [
            f"the model predicts {loaded.num_classes} classes but the data '{bundle.name}' has {classes}; "
            f"accuracies assume its labels 0..{classes - 1} are the model's first {classes} classes"
        ]
    return []


def check_dense(
    model: nn.Module,
    bundle: DataBundle,
    *,
    device: str | torch.device = "cpu",
    limit: int = DENSE_CHECK_SAMPLES,
    distributed: bool = False,
) -> DenseCheck | None:
    """Top-1 of the dense model on the first ``limit`` calibration images (``None`` without labels);
    with ``distributed``, each process scores its shard of them and the counts are summed."""
    if bundle.num_classes is None or bundle.num_classes < 2:
        return None
    device = resolve_device(device)
    model = model.to(device)
    if distributed:
        first = Subset(bundle.calibration, range(min(limit, len(bundle.calibration))))  # type: ignore[arg-type]
        loader = make_loader(own_shard(first, "calibration"), min(limit, 64))
        found = scores(model, loader, device, distributed=True)
    else:
        loader = make_loader(bundle.calibration, min(limit, 64), limit=limit)
        found = scores(model, loader, device, limit=limit)
    return DenseCheck(found.top1, found.samples, max(bundle.num_classes, 2))


def prepare(
    model: str | LoadedModel,
    data: str | DataBundle | None = None,
    *,
    eval_data: str | DataBundle | None = None,
    input_size: int | None = None,
    trust: bool = False,
    seed: int = 0,
    require_labels: bool = False,
    dense_check: bool = True,
    device: str | torch.device = "cpu",
    reporter: Reporter | None = None,
    distributed: bool = False,
) -> Prepared:
    """Load (or take) the model and data, fit the data to the model's input, check both.

    ``require_labels``: accuracies or training follow, so labels the model cannot predict are an
    error (before any long work) rather than a warning. ``distributed``: the dense check's images
    are shared over the ``torch.distributed`` processes.
    """
    reporter = reporter or Reporter()
    loaded = model if isinstance(model, LoadedModel) else load_model(model, trust=trust, reporter=reporter)
    if data is None:
        return Prepared(loaded, None, None, input_shape_of(loaded, input_size))
    reporter.update(0.3, "reading the data")
    bundle = data if isinstance(data, DataBundle) else open_data(data, seed=seed)
    fitted = fit(loaded, bundle, input_size)
    check_runs(loaded.model, fitted.shape)
    notes = [fitted.note] if fitted.note else []
    evaluation = fitted.bundle
    label = evaluation.evaluation_label
    warnings = _skipped(bundle)
    if eval_data is not None:
        other = eval_data if isinstance(eval_data, DataBundle) else open_data(eval_data, seed=seed)
        fitted_eval = fit_data(other, fitted.shape, "the calibration data's input size")
        evaluation = fitted_eval.bundle
        label = evaluation.evaluation_label if evaluation.held_out else f"the evaluation data {evaluation.name}"
        notes += [fitted_eval.note] if fitted_eval.note else []
        warnings += _skipped(other)
    warnings += class_warnings(loaded, evaluation, require=require_labels)
    if eval_data is not None and evaluation.num_classes != fitted.bundle.num_classes:
        warnings += class_warnings(loaded, fitted.bundle, require=False)
    dense = None
    if dense_check and not (fitted.bundle.num_classes or 0) > loaded.num_classes:
        reporter.update(0.6, "checking the unpruned model on the data")
        dense = check_dense(loaded.model, fitted.bundle, device=device, distributed=distributed)
        if dense is not None and dense.warning():
            warnings.append(dense.warning())
    reporter.update(1.0, "ready")
    return Prepared(loaded, fitted.bundle, evaluation, fitted.shape, tuple(notes), tuple(warnings), dense, label)


def sharded(prepared: Prepared, rank: int, world: int, samples: int | None = None, batch_size: int = 1) -> Prepared:
    """This process's shard of the calibration images: the first ``samples`` of them (all by
    default), in whole batches of ``batch_size`` (batch k on process k mod ``world``, see
    :func:`~snp_engine.distributed.shard`; a smaller batch when there are fewer batches than
    processes), so each batch is one that one process reading every image would read. The
    evaluation data stays whole here: the measuring functions shard it themselves when told
    ``distributed`` (and sum what they count)."""
    data = prepared.require_data()
    calibration = data.calibration
    if samples is not None:
        calibration = Subset(calibration, range(min(samples, len(calibration))))  # type: ignore[arg-type]
    size = len(calibration)  # type: ignore[arg-type]
    if size < world:
        raise SnpError(f"{size} calibration image(s) cannot be shared by {world} processes")
    part = shard(calibration, rank, world, shard_batch(size, world, batch_size))
    shared = dataclasses.replace(data, calibration=part)  # .test: see the docstring
    evaluation = shared if prepared.evaluation is data else prepared.evaluation
    return dataclasses.replace(prepared, data=shared, evaluation=evaluation)


def _skipped(bundle: DataBundle) -> list[str]:
    return [f"skipped {bundle.skipped} unreadable image file(s) in {bundle.name}"] if bundle.skipped else []

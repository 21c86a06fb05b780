"""Every job snp does, once: the command line and the desktop app both call these functions.

    prepared = prepare("torchvision:resnet18@w.pth", "npz:calib.npz")   # model + data + input + checks
    analysis = analyse(prepared, AnalysisOptions())
    plan = make_plan(analysis, PlanTarget.parse("flops", 0.5))
    pruned = prune(prepared, analysis, plan)
    result = compare(prepared, pruned)                                   # top-1/5, fidelity, params, FLOPs
    export(prepared, pruned, "small.safetensors", settings={...}, metrics=result.metrics())

``prepare`` applies the one input-size rule (:mod:`snp_engine.inputs`), says what it adapted, checks
the labels against the model's classes, and evaluates the dense model on the first calibration
images: near-chance accuracy there means the preprocessing, normalisation or input size differs
from training, which is said loudly before any long work. Jobs take a
:class:`~snp_engine.progress.Reporter` for progress and cancel, and return frozen results.
"""

from __future__ import annotations

import copy
import enum
import statistics
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from snp_engine import api, io
from snp_engine.activations import model_dtype
from snp_engine.costs import count
from snp_engine.data import DataBundle, load_data, make_loader
from snp_engine.errors import ModelLoadError, SnpError
from snp_engine.inputs import FittedData, fit_data, resolve_input_shape
from snp_engine.latency import measure_latency
from snp_engine.metrics import Scores, scores
from snp_engine.models import LoadedModel
from snp_engine.models import load_model as _load_model
from snp_engine.progress import Reporter, Scaled
from snp_engine.results import Pruned, PruningRecord
from snp_engine.runtime import check_forward, first_example, out_of_memory_as_error, resolve_device
from snp_engine.subspace import DEFAULT_ORDERING
from snp_engine.training import train

DENSE_CHECK_SAMPLES = 256
CHANCE_FACTOR = 1.5  # dense top-1 below this many times chance means "the inputs are not what it was trained on"
LATENCY_ROUNDS = 3


# ----------------------------------------------------------------------------------------------
# Registries of the choices a job takes


class Compensation(str, enum.Enum):
    """How the consumers of pruned units are repaired."""

    NONE = "none"
    ONE_SHOT = "one-shot"
    SEQUENTIAL = "sequential"


# compensation -> (short label, one-line explanation), for help texts and the app's chooser
COMPENSATION_HELP = {
    Compensation.SEQUENTIAL: (
        "Sequential (best)",
        "Prune layer by layer and refit each next layer on the partly pruned network, so it also absorbs "
        "earlier errors. Needs the calibration data.",
    ),
    Compensation.ONE_SHOT: (
        "One-shot",
        "Refit every next layer from the analysis statistics at once; fast, no data pass",
    ),
    Compensation.NONE: (
        "None",
        "Just remove the units without adjusting the next layers (a plain structured-pruning baseline)",
    ),
}
ALLOCATIONS = ("greedy", "threshold")


@dataclass(frozen=True)
class PlanTarget:
    """What a plan aims for: a variance threshold, a FLOPs or parameter reduction, or keep counts."""

    kind: str  # one of TARGET_KINDS
    value: float | None = None
    keep: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, kind: str, value: float | Mapping[str, int]) -> PlanTarget:
        if kind not in TARGET_KINDS:
            raise SnpError(f"unknown plan target '{kind}'; choose one of {', '.join(TARGET_KINDS)}")
        if kind == "keep":
            return cls("keep", None, dict(value))  # type: ignore[arg-type]
        return cls(kind, float(value))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {"keep": dict(self.keep)} if self.kind == "keep" else {TARGET_KINDS[self.kind]: self.value}

    def describe(self) -> str:
        if self.kind == "keep":
            return f"keep counts for {len(self.keep)} layer(s)"
        return {"variance": "explained variance {:.1%}", "flops": "FLOPs -{:.1%}", "params": "parameters -{:.1%}"}[
            self.kind
        ].format(self.value)


# plan target kind -> the keyword of Analysis.plan
TARGET_KINDS = {"variance": "variance", "flops": "flops_reduction", "params": "params_reduction", "keep": "keep"}


@dataclass(frozen=True)
class AnalysisOptions:
    """Settings of the forward pass that gathers the statistics."""

    samples: int | None = None
    batch_size: int = api.DEFAULT_BATCH_SIZE
    ordering: str = DEFAULT_ORDERING
    curve: str = "variance"
    max_positions: int | None = None
    seed: int = 0


# ----------------------------------------------------------------------------------------------
# Preparing: model + data + input shape + checks


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
            f"(chance: {self.chance:.1f}%): the preprocessing, normalisation or input size probably differs from "
            "its training (see --input-size); accuracies and pruning results will not mean much"
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
        loaded.model, loaded.input_shape, rule, bundle.image_size, input_size, name=loaded.arch
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
    model: nn.Module, bundle: DataBundle, *, device: str | torch.device = "cpu", limit: int = DENSE_CHECK_SAMPLES
) -> DenseCheck | None:
    """Top-1 of the dense model on the first ``limit`` calibration images (``None`` without labels)."""
    if bundle.num_classes is None or bundle.num_classes < 2:
        return None
    device = resolve_device(device)
    model = model.to(device)
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
) -> Prepared:
    """Load (or take) the model and data, fit the data to the model's input, check both.

    ``require_labels``: accuracies or training follow, so labels the model cannot predict are an
    error (before any long work) rather than a warning.
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
        dense = check_dense(loaded.model, fitted.bundle, device=device)
        if dense is not None and dense.warning():
            warnings.append(dense.warning())
    reporter.update(1.0, "ready")
    return Prepared(loaded, fitted.bundle, evaluation, fitted.shape, tuple(notes), tuple(warnings), dense, label)


def _skipped(bundle: DataBundle) -> list[str]:
    return [f"skipped {bundle.skipped} unreadable image file(s) in {bundle.name}"] if bundle.skipped else []


# ----------------------------------------------------------------------------------------------
# Analyse, plan, prune


def no_groups_reason(model: nn.Module) -> str:
    """Why a model has no unit groups at all, in words."""
    if isinstance(model, torch.jit.ScriptModule):
        return (
            "a TorchScript program: its layers are compiled, so they cannot be traced, analysed or pruned; "
            "load the original network (torchvision:ARCH@WEIGHTS or a trusted pickle) instead"
        )
    return "no conv or linear layer whose output units could be removed was found"


def analyse(
    prepared: Prepared,
    options: AnalysisOptions = AnalysisOptions(),
    *,
    device: str | torch.device = "cpu",
    reporter: Reporter | None = None,
    info: Mapping[str, Any] | None = None,
) -> api.Analysis:
    """Stream the calibration data through the dense model once and analyse every unit group."""
    if isinstance(prepared.model.model, torch.jit.ScriptModule):
        raise SnpError(f"{prepared.model.spec} is {no_groups_reason(prepared.model.model)}")
    return api.analyze(
        prepared.model.model,
        prepared.require_data(),
        samples=options.samples,
        batch_size=options.batch_size,
        device=device,
        ordering=options.ordering,
        curve=options.curve,
        max_positions=options.max_positions,
        seed=options.seed,
        reporter=reporter,
        info={"model": prepared.model.spec, "data": prepared.require_data().name, **(info or {})},
    )


def make_plan(analysis: api.Analysis, target: PlanTarget, *, round_to: int = 1, allocation: str = "greedy") -> api.Plan:
    """Keep counts for ``target``."""
    if allocation not in ALLOCATIONS:
        raise SnpError(f"unknown allocation '{allocation}'; choose one of {', '.join(ALLOCATIONS)}")
    if target.kind == "keep":
        return analysis.plan(keep=target.keep, round_to=round_to)
    keyword = TARGET_KINDS[target.kind]
    extra = {"allocation": allocation} if target.kind in ("flops", "params") else {}
    return analysis.plan(**{keyword: target.value}, round_to=round_to, **extra)


def prune(
    prepared: Prepared,
    analysis: api.Analysis,
    plan: api.Plan,
    *,
    compensation: Compensation | str = Compensation.SEQUENTIAL,
    batch_size: int = api.DEFAULT_BATCH_SIZE,
    samples: int | None = None,
    physical: bool = True,
    device: str | torch.device = "cpu",
    reporter: Reporter | None = None,
) -> Pruned:
    """A pruned copy of the prepared model and its record (sequential calibration needs the
    calibration data)."""
    compensation = Compensation(compensation)
    sequential = compensation is Compensation.SEQUENTIAL
    return api.prune(
        prepared.model.model,
        analysis,
        plan,
        data=prepared.require_data() if sequential else None,
        compensate=compensation is not Compensation.NONE,
        sequential=sequential,
        physical=physical,
        batch_size=batch_size,
        samples=samples,
        device=device,
        reporter=reporter,
    )


# ----------------------------------------------------------------------------------------------
# Measuring


def score(
    model: nn.Module,
    bundle: DataBundle,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    reporter: Reporter | None = None,
) -> Scores:
    """Top-1/top-5 and loss of ``model`` on the bundle's evaluation part (its test split)."""
    device = resolve_device(device)
    loader = make_loader(bundle.test, batch_size)
    model = model.to(device)
    with out_of_memory_as_error("the evaluation", device, batch_size):
        check_forward(model, first_example(loader, device, model_dtype(model)))
        return scores(model, loader, device, reporter=reporter, total=len(loader))


def cost(model: nn.Module, shape: Sequence[int], device: str | torch.device = "cpu") -> tuple[int, float]:
    """(parameters, MACs per image) of ``model`` at ``shape``."""
    device = resolve_device(device)
    model = model.to(device)
    return count(model, torch.zeros((1, *shape), device=device, dtype=model_dtype(model)))


def latencies(
    dense: nn.Module,
    pruned: nn.Module,
    shape: Sequence[int],
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    repeats: int = 30,
    reporter: Reporter | None = None,
) -> tuple[float, float]:
    """Median per-pass time (ms) of both networks, timed in alternating rounds so that whatever else
    the machine is doing affects both alike."""
    reporter = reporter or Reporter()
    device = resolve_device(device)
    times: tuple[list[float], list[float]] = ([], [])
    per_round = max(1, repeats // LATENCY_ROUNDS)
    for round_index in range(LATENCY_ROUNDS):
        for net, found in zip((dense, pruned), times, strict=True):
            reporter.check()
            result = measure_latency(
                net, shape, device, batch_size=batch_size, warmup=3 if round_index == 0 else 1, repeats=per_round
            )
            found.append(result["ms_mean"])
        reporter.update((round_index + 1) / LATENCY_ROUNDS, "timing both networks")
    return statistics.median(times[0]), statistics.median(times[1])


@dataclass(frozen=True)
class Comparison:
    """The dense and the pruned network side by side, on one evaluation set."""

    before: Scores
    after: Scores
    fidelity: float | None
    params_before: int
    params_after: int
    flops_before: float
    flops_after: float
    evaluation: str
    latency_before_ms: float | None = None
    latency_after_ms: float | None = None

    def metrics(self) -> dict[str, Any]:
        """The flat dictionary written to JSON, export headers and the app's summary."""
        values = {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "flops_before": self.flops_before,
            "flops_after": self.flops_after,
            "top1_before": self.before.top1,
            "top1_after": self.after.top1,
            "top5_before": self.before.top5,
            "top5_after": self.after.top5,
            "fidelity": self.fidelity,
            "eval_data": self.evaluation,
            "eval_samples": self.after.samples,
        }
        if self.latency_before_ms is not None:
            values.update(latency_before_ms=self.latency_before_ms, latency_after_ms=self.latency_after_ms)
        return values


def fidelity(dense: nn.Module, pruned: nn.Module, bundle: DataBundle, *, device: str | torch.device = "cpu") -> float:
    """Relative logit error of ``pruned`` against ``dense`` on the bundle's evaluation part."""
    return api.fidelity(dense, pruned, bundle.test, device=device)


def compare(
    prepared: Prepared,
    pruned: nn.Module | Pruned,
    *,
    device: str | torch.device = "cpu",
    baseline: Scores | None = None,
    with_fidelity: bool = True,
    latency: Mapping[str, int] | None = None,
    reporter: Reporter | None = None,
) -> Comparison:
    """Accuracy (dense ``baseline`` reused when given), logit fidelity, parameters, FLOPs and,
    with ``latency={"batch_size": B, "repeats": R}``, measured latency of both networks."""
    reporter = reporter or Reporter()
    pruned = pruned.model if isinstance(pruned, Pruned) else pruned
    evaluation = prepared.evaluation or prepared.require_data()
    dense = prepared.model.model
    if baseline is None:
        reporter.update(0.0, "scoring the original network")
        baseline = score(dense, evaluation, device=device, reporter=Scaled(reporter, 0.0, 0.3))
    reporter.update(0.3, "scoring the pruned network")
    after = score(pruned, evaluation, device=device, reporter=Scaled(reporter, 0.3, 0.6))
    reporter.check()
    error = fidelity(dense, pruned, evaluation, device=device) if with_fidelity else None
    params_before, flops_before = cost(dense, prepared.input_shape, device)
    params_after, flops_after = cost(pruned, prepared.input_shape, device)
    times: tuple[float | None, float | None] = (None, None)
    if latency is not None:
        times = latencies(
            dense, pruned, prepared.input_shape, device=device, reporter=Scaled(reporter, 0.7, 1.0), **latency
        )
    reporter.update(1.0, "evaluated")
    return Comparison(
        baseline,
        after,
        error,
        params_before,
        params_after,
        flops_before,
        flops_after,
        prepared.evaluation_label,
        *times,
    )


# ----------------------------------------------------------------------------------------------
# Sweep, fine-tune, export


def sweep(
    prepared: Prepared,
    analysis: api.Analysis,
    reductions: Sequence[float],
    *,
    baseline: str = "l1",
    compensation: Compensation | str = Compensation.SEQUENTIAL,
    batch_size: int = api.DEFAULT_BATCH_SIZE,
    samples: int | None = None,
    device: str | torch.device = "cpu",
    on_point: Callable[[str, float, float], None] | None = None,
    reporter: Reporter | None = None,
) -> dict[tuple[str, float], float]:
    """Top-1 against FLOPs reduction for the analysis' ordering and a baseline ordering; every
    point goes to ``on_point(series, reduction, top1)`` as soon as it is measured."""
    reporter = reporter or Reporter()
    on_point = on_point or (lambda *point: None)
    evaluation = prepared.evaluation or prepared.require_data()
    dense = score(prepared.model.model, evaluation, device=device).top1
    orderings = list(dict.fromkeys([analysis.ordering, baseline]))
    steps, done, results = len(orderings) * len(reductions), 0, {}
    for ordering in orderings:
        current = analysis if ordering == analysis.ordering else analysis.reorder(ordering)
        label = f"SNP ({ordering})" if ordering == analysis.ordering else f"{ordering} (baseline)"
        on_point(label, 0.0, dense)
        for reduction in reductions:
            reporter.check()
            part = Scaled(reporter, done / steps, (done + 1) / steps)
            plan = current.plan(flops_reduction=reduction)
            pruned = prune(
                prepared,
                current,
                plan,
                compensation=compensation,
                batch_size=batch_size,
                samples=samples,
                physical=False,
                device=device,
                reporter=part,
            ).model
            top1 = score(pruned, evaluation, device=device).top1
            results[(label, reduction)] = top1
            on_point(label, reduction, top1)
            done += 1
    return results


@dataclass(frozen=True)
class FineTuned:
    """A fine-tuned copy of a network and how training went."""

    model: nn.Module
    split: str  # "train" or "calibration"
    before: Scores
    after: Scores
    history: tuple[dict, ...]
    record: PruningRecord | None = None  # how the network was pruned before training, if it was

    @property
    def pruned(self) -> Pruned | None:
        return Pruned(self.model, self.record) if self.record is not None else None


def finetune(
    prepared: Prepared,
    model: nn.Module | Pruned,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 64,
    optimizer: str = "sgd",
    seed: int = 0,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[int, Scores], None] | None = None,
    reporter: Reporter | None = None,
) -> FineTuned:
    """Train a copy of ``model`` on the train split (the calibration data when there is none),
    scoring the evaluation data before, after every epoch (``on_epoch``) and at the end."""
    if lr <= 0:
        raise SnpError(f"the learning rate must be positive, got {lr}")
    reporter = reporter or Reporter()
    record = model.record if isinstance(model, Pruned) else None
    model = model.model if isinstance(model, Pruned) else model
    data = prepared.require_data()
    evaluation = prepared.evaluation or data
    device = resolve_device(device)
    model = copy.deepcopy(model).to(device)  # a cancelled run must not leave half-trained weights behind
    split = "train" if data.train is not None else "calibration"
    loader = make_loader(
        data.train if data.train is not None else data.calibration, batch_size, shuffle=True, seed=seed
    )
    before = score(model, evaluation, device=device)
    if on_epoch is not None:
        on_epoch(0, before)
    epoch = [0]

    class _EpochEnd:
        def __len__(self) -> int:
            return len(loader)

        def __iter__(self):
            yield from loader
            epoch[0] += 1
            if on_epoch is not None:
                on_epoch(epoch[0], score(model, evaluation, device=device))

    history = train(
        model,
        _EpochEnd(),
        epochs=epochs,
        lr=lr,
        device=device,
        optimizer=optimizer,  # type: ignore[arg-type]
        reporter=Scaled(reporter, 0.0, 0.95),
    )
    after = score(model, evaluation, device=device)
    reporter.update(1.0, "fine-tuned")
    return FineTuned(model.eval(), split, before, after, tuple(history), record)


def export(
    prepared: Prepared,
    model: nn.Module | Pruned,
    path: str | Path,
    *,
    settings: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    torchscript: str | Path | None = None,
    onnx: str | Path | None = None,
    reporter: Reporter | None = None,
) -> dict[str, Path]:
    """Write ``model`` as an snp file (plus optional TorchScript/ONNX copies), each verified on
    reload and written atomically. Returns the paths by kind."""
    reporter = reporter or Reporter()
    reporter.check()
    loaded, shape = prepared.model, prepared.input_shape
    record = model.record if isinstance(model, Pruned) else None
    cpu_model = (model.model if isinstance(model, Pruned) else model).cpu()
    written = {
        "snp": io.export_model(
            cpu_model,
            path,
            arch=loaded.arch,
            num_classes=loaded.num_classes,
            input_shape=shape,
            settings=dict(settings or {}),
            metrics=dict(metrics or {}),
            pruning=record,
            base=loaded.metadata,
            reporter=Scaled(reporter, 0.0, 0.7),
        )
    }
    example = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0))
    if torchscript:
        reporter.update(0.75, "writing TorchScript")
        written["torchscript"] = io.export_torchscript(cpu_model, torchscript, example)
    if onnx:
        reporter.update(0.9, "writing ONNX")
        written["onnx"] = io.export_onnx(cpu_model, onnx, example)
    reporter.update(1.0, "exported")
    return written


__all__ = [
    "ALLOCATIONS",
    "COMPENSATION_HELP",
    "TARGET_KINDS",
    "AnalysisOptions",
    "Comparison",
    "Compensation",
    "DenseCheck",
    "FineTuned",
    "PlanTarget",
    "Prepared",
    "Pruned",
    "PruningRecord",
    "analyse",
    "check_dense",
    "check_runs",
    "class_warnings",
    "compare",
    "cost",
    "export",
    "finetune",
    "fit",
    "input_shape_of",
    "latencies",
    "load_model",
    "make_plan",
    "no_groups_reason",
    "open_data",
    "prepare",
    "prune",
    "score",
    "sweep",
]

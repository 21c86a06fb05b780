"""The long jobs: analyse, plan, prune, fine-tune and export a prepared model (sweeps: :mod:`.sweeps`)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from snp_engine import api, io
from snp_engine.activations import model_dtype
from snp_engine.data import make_loader
from snp_engine.errors import SnpError
from snp_engine.groups import ExcludedGroup, UnitGroup, find_groups
from snp_engine.metrics import Scores
from snp_engine.progress import Reporter, Scaled
from snp_engine.ratios import Constraints
from snp_engine.results import Pruned, PruningRecord
from snp_engine.runtime import resolve_device
from snp_engine.training import train
from snp_engine.workflows.choices import ALLOCATIONS, TARGET_KINDS, AnalysisOptions, Compensation, PlanTarget
from snp_engine.workflows.measuring import cost, score
from snp_engine.workflows.preparation import Prepared, check_runs


@dataclass(frozen=True)
class Inspection:
    """A model's unit groups (in execution order), the layers left out with why, and its cost."""

    groups: tuple[UnitGroup, ...]
    excluded: tuple[ExcludedGroup, ...]
    params: int
    flops: float
    warnings: tuple[str, ...]


def inspect(prepared: Prepared, *, device: str | torch.device = "cpu", reporter: Reporter | None = None) -> Inspection:
    """Find the prunable unit groups of the prepared model and count its parameters and MACs."""
    reporter = reporter or Reporter()
    device = resolve_device(device)
    shape = prepared.input_shape
    model = prepared.model.model.to(device).eval()
    check_runs(model, shape)
    reporter.update(0.0, "finding prunable layers")
    example = torch.zeros((1, *shape), device=device, dtype=model_dtype(model))
    groups, excluded = find_groups(model, example)
    params, flops = cost(model, shape, device)
    reporter.update(1.0, "done")
    warnings = () if groups or excluded else (no_groups_reason(model),)
    return Inspection(tuple(groups), tuple(excluded), params, flops, warnings)


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
    options: AnalysisOptions | None = None,
    *,
    device: str | torch.device = "cpu",
    reporter: Reporter | None = None,
    info: Mapping[str, Any] | None = None,
    distributed: bool = False,
) -> api.Analysis:
    """Stream the calibration data through the dense model once and analyse every unit group."""
    options = options or AnalysisOptions()
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
        distributed=distributed,
        coupled=options.coupled,
        reporter=reporter,
        info={"model": prepared.model.spec, "data": prepared.require_data().name, **(info or {})},
    )


def make_plan(
    analysis: api.Analysis,
    target: PlanTarget,
    *,
    round_to: int = 1,
    allocation: str = "greedy",
    constraints: Constraints | None = None,
) -> api.Plan:
    """Keep counts for ``target``, within the per-layer ``constraints`` (locks, minimums, rounding)."""
    if allocation not in ALLOCATIONS:
        raise SnpError(f"unknown allocation '{allocation}'; choose one of {', '.join(ALLOCATIONS)}")
    if target.kind == "keep":
        return analysis.plan(keep=target.keep, round_to=round_to, constraints=constraints)
    keyword = TARGET_KINDS[target.kind]
    extra = {"allocation": allocation} if target.kind in ("flops", "params") else {}
    return analysis.plan(**{keyword: target.value}, round_to=round_to, constraints=constraints, **extra)


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
    distributed: bool = False,
) -> Pruned:
    """A pruned copy of the prepared model and its record (sequential calibration needs the
    calibration data). One-shot gets the calibration data too when there is some: only residual
    streams read through layer norms use it (their fit from data instead of the linearised norm,
    see :mod:`snp_engine.layernorm_streams`); every other fit comes from the analysis' statistics."""
    compensation = Compensation(compensation)
    sequential = compensation is Compensation.SEQUENTIAL
    return api.prune(
        prepared.model.model,
        analysis,
        plan,
        data=prepared.require_data() if sequential else prepared.data,
        compensate=compensation is not Compensation.NONE,
        sequential=sequential,
        physical=physical,
        batch_size=batch_size,
        samples=samples,
        device=device,
        reporter=reporter,
        distributed=distributed,
    )


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


TORCHSCRIPT_SUFFIXES = (".pt", ".ts", ".torchscript")


def output_kind(path: str | Path) -> str:
    """What a main output file is, by its suffix: ``onnx`` (.onnx), ``torchscript`` (.pt, .ts,
    .torchscript: a traced module for ``torch.jit.load``) or ``snp`` (.safetensors and anything
    else: the snp file, which rebuilds the architecture and records the pruning). A network whose
    architecture cannot be rebuilt from an snp file (one's own class, loaded from a pickle or
    TorchScript) is written in one of the other two, which load without its code."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    return "torchscript" if suffix in TORCHSCRIPT_SUFFIXES else "snp"


def rebuildable(arch: str) -> bool:
    """Whether an snp file can rebuild ``arch`` (demo, torchvision and timm architectures; not a
    class of one's own from a pickle or TorchScript file, which TorchScript or ONNX copies carry)."""
    try:
        io.check_exportable(arch)
    except SnpError:
        return False
    return True


def export(
    prepared: Prepared,
    model: nn.Module | Pruned,
    path: str | Path | None,
    *,
    settings: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    torchscript: str | Path | None = None,
    onnx: str | Path | None = None,
    reporter: Reporter | None = None,
) -> dict[str, Path]:
    """Write ``model`` as an snp file at ``path`` (none for None) plus optional TorchScript/ONNX
    copies, each verified on reload and written atomically. Returns the paths by kind."""
    reporter = reporter or Reporter()
    reporter.check()
    loaded, shape = prepared.model, prepared.input_shape
    record = model.record if isinstance(model, Pruned) else None
    cpu_model = (model.model if isinstance(model, Pruned) else model).cpu()
    written = {}
    if path is not None:
        written["snp"] = io.export_model(
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
    example = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0))
    if torchscript:
        reporter.update(0.75, "writing TorchScript")
        written["torchscript"] = io.export_torchscript(cpu_model, torchscript, example)
    if onnx:
        reporter.update(0.9, "writing ONNX")
        written["onnx"] = io.export_onnx(cpu_model, onnx, example)
    reporter.update(1.0, "exported")
    return written

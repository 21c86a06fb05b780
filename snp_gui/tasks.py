"""Task bodies the session runs on its :class:`~snp_gui.workers.TaskRunner`: prune, evaluate, sweep, fine-tune, export.

They run in the worker thread, so they only see the snapshot they were given (a :class:`PruneJob`);
the work itself is :mod:`snp_engine.workflows`, the same functions the command line calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from snp_engine import workflows
from snp_engine.api import Analysis, Plan
from snp_engine.blocks import BlockScore
from snp_engine.errors import SnpError
from snp_engine.metrics import Scores
from snp_engine.progress import Reporter, Scaled
from snp_engine.workflows import Prepared, Pruned
from snp_engine.workflows.blockjobs import WithoutBlocks, without_blocks
from snp_gui.settings import Options


@dataclass(frozen=True)
class PruneJob:
    """Everything a prune needs, captured in the GUI thread when the task starts."""

    prepared: Prepared
    analysis: Analysis
    plan: Plan
    options: Options
    blocks: tuple[str, ...] = ()  # residual blocks removed as well (compensated), in network order
    scores: tuple[BlockScore, ...] = ()  # their scores, when known (saves scoring them again)

    @property
    def key(self) -> tuple:
        """Identifies the pruned network this job produces, so results can be reused."""
        o = self.options
        return (
            id(self.analysis),
            tuple(sorted(self.plan.keep.items())),
            self.analysis.ordering,
            o.compensation,
            o.samples,
            o.batch_size,
            id(self.prepared.data.calibration),
            self.blocks,
        )

    @property
    def baseline_key(self) -> tuple:
        return (id(self.prepared.model.model), id(self.prepared.evaluation.test), self.options.device)


def analysis_options(job: PruneJob, ordering: str) -> workflows.AnalysisOptions:
    """The job's settings for analysing the network that remains when its residual blocks are removed."""
    o = job.options
    return workflows.AnalysisOptions(
        samples=o.samples, batch_size=o.batch_size, ordering=ordering, curve=o.curve, coupled=o.coupled == "prune"
    )


def prune_for(
    job: PruneJob,
    reporter: Reporter,
    analysis: Analysis | None = None,
    plan: Plan | None = None,
    physical: bool = True,
    without: WithoutBlocks | None = None,
) -> Pruned:
    """The pruned copy of the job's model with the chosen compensation, and its record; without the
    job's residual blocks, if it removes any (the channels of what remains analysed again, unless
    ``without`` is that removal already)."""
    o = job.options
    return workflows.prune_with_blocks(
        job.prepared,
        analysis or job.analysis,
        plan or job.plan,
        job.blocks,
        options=analysis_options(job, (analysis or job.analysis).ordering),
        scores=job.scores or None,
        compensation=o.compensation,
        physical=physical,
        batch_size=o.batch_size,
        samples=o.samples,
        device=o.device,
        reporter=reporter,
        without=without,
    )


def evaluate_plan(job: PruneJob, baseline: Scores | None, pruned: Pruned | None, reporter: Reporter) -> dict:
    """Prune (unless ``pruned`` is given), then top-1/top-5, output fidelity and latency of the original and
    the pruned network; ``baseline`` holds the original's scores when they are already known."""
    o = job.options
    if pruned is None:
        pruned = prune_for(job, Scaled(reporter, 0.0, 0.5))
    latency = {"batch_size": o.latency_batch, "repeats": o.latency_repeats}
    comparison = workflows.compare(
        job.prepared, pruned, device=o.device, baseline=baseline, latency=latency, reporter=Scaled(reporter, 0.5, 1.0)
    )
    metrics = {**comparison.metrics(), "latency_batch": o.latency_batch, "device": o.device}
    return {"pruned": pruned, "baseline": comparison.before, "metrics": metrics, "keys": (job.key, job.baseline_key)}


def measure_plans(jobs: list[tuple[str, PruneJob]], baseline: Scores | None, reporter: Reporter) -> tuple:
    """Evaluate each named plan in turn (as :func:`evaluate_plan`); each plan's numbers are handed over as
    ``(name, keep counts, removed blocks, metrics)`` as soon as they are measured. Gives the original network's scores
    with their key, so that later evaluations reuse them. Plans that remove the same residual blocks share
    one removal of them (:func:`~snp_engine.workflows.blockjobs.without_blocks`)."""
    key, removals = None, {}
    for index, (name, job) in enumerate(jobs):
        reporter.check()
        part = Scaled(reporter, index / len(jobs), (index + 1) / len(jobs))
        part.update(0.0, f"plan '{name}' ({index + 1} of {len(jobs)})")
        pruned = None
        if job.blocks:
            o = job.options
            if job.blocks not in removals:
                removals[job.blocks] = without_blocks(
                    job.prepared,
                    job.blocks,
                    options=analysis_options(job, job.analysis.ordering),
                    compensation=o.compensation,
                    scores=job.scores or None,
                    batch_size=o.batch_size,
                    samples=o.samples,
                    device=o.device,
                    reporter=Scaled(part, 0.0, 0.3),
                )
            pruned = prune_for(job, Scaled(part, 0.3, 0.5), without=removals[job.blocks])
        result = evaluate_plan(job, baseline, pruned, part)
        baseline, key = result["baseline"], result["keys"][1]
        reporter.partial((name, dict(job.plan.keep), job.blocks, result["metrics"]))
    return key, baseline


def sweep(job: PruneJob, reductions: list[float], baseline: str, reporter: Reporter) -> dict:
    """Top-1 against FLOPs reduction for the current ordering and a baseline ordering, every point without
    the job's residual blocks (pruned as :func:`prune_for` prunes).

    Each point is handed over as soon as it is measured, so the plot fills in while it runs.
    """
    o = job.options
    return workflows.sweep(
        job.prepared,
        job.analysis,
        reductions,
        baseline=baseline,
        blocks=job.blocks,
        block_scores=job.scores or None,
        options=analysis_options(job, job.analysis.ordering),
        compensation=o.compensation,
        batch_size=o.batch_size,
        samples=o.samples,
        device=o.device,
        on_point=lambda *point: reporter.partial(point),
        reporter=reporter,
    )


def _history_point(found: Scores) -> dict[str, float]:
    return {"test top-1 %": found.top1, "test loss": found.loss}


class EpochProgress(Reporter):
    """Fine-tuning progress as epochs done / epochs asked; the engine's own messages ("epoch 2/3 loss …")
    go through, its fractions (of its own scale, scoring included) do not.

    Until the first epoch starts (pruning, scoring the untrained network) it reports 0, which also
    starts the runner's clock for the time left afresh.
    """

    def __init__(self, parent: Reporter, epochs: int) -> None:
        self._parent, self._epochs, self.done = parent, max(int(epochs), 1), 0

    def update(self, fraction: float, message: str = "") -> None:
        self._parent.update(self.done / self._epochs, message)

    def epoch_done(self, epoch: int) -> None:
        self.done = min(int(epoch), self._epochs)
        self._parent.update(self.done / self._epochs, f"epoch {self.done}/{self._epochs} done")

    def cancel_requested(self) -> bool:
        return self._parent.cancel_requested()


class _Preparing(Reporter):
    """Work before the first epoch: its messages at 0 %, so the bar never runs backwards."""

    def __init__(self, parent: Reporter, what: str) -> None:
        self._parent, self._what = parent, what

    def update(self, fraction: float, message: str = "") -> None:
        self._parent.update(0.0, f"{self._what}: {message}" if message else self._what)

    def cancel_requested(self) -> bool:
        return self._parent.cancel_requested()


def finetune(job: PruneJob, pruned: Pruned | None, epochs: int, lr: float, reporter: Reporter) -> dict:
    """A short fine-tune of (a copy of) the pruned network, reporting test numbers every epoch."""
    o = job.options
    if pruned is None:
        pruned = prune_for(job, _Preparing(reporter, "pruning"))
    progress = EpochProgress(reporter, epochs)

    def on_epoch(epoch: int, found: Scores) -> None:
        progress.epoch_done(epoch)
        reporter.partial((epoch, _history_point(found)))

    tuned = workflows.finetune(
        job.prepared,
        pruned,
        epochs=epochs,
        lr=lr,
        batch_size=o.batch_size,
        device=o.device,
        on_epoch=on_epoch,
        reporter=progress,
    )
    # Training rescales the logits, so their distance to the original's no longer measures damage: drop it.
    metrics = {"top1_after": tuned.after.top1, "top5_after": tuned.after.top5, "fidelity": None}
    # the trained network keeps its pruning record, so an export of it still describes the removed units
    model = tuned.pruned or tuned.model
    return {"model": model, "key": job.key, "epochs": epochs, "metrics": metrics, "history": list(tuned.history)}


def export(
    job: PruneJob,
    pruned: Pruned | nn.Module | None,
    metrics: dict,
    path: str,
    torchscript: bool,
    onnx: bool,
    reporter: Reporter,
) -> list[Path]:
    """Write the pruned network (and optional deployment copies); each file is verified on reload."""
    o = job.options
    if pruned is None:
        pruned = prune_for(job, Scaled(reporter, 0.0, 0.6))
    reporter.check()
    reporter.update(0.6, "writing and verifying the snp file")
    prepared = job.prepared
    settings = {
        "ordering": job.analysis.ordering,
        "curve": job.analysis.curve_kind,
        "compensation": o.compensation,
        "samples": o.samples,
        "model": prepared.model.spec,
        "data": prepared.require_data().name,
        "threshold": job.plan.threshold,
        "input_shape": list(prepared.input_shape),
        **({"removed_blocks": list(job.blocks)} if job.blocks else {}),
    }
    target = Path(path)
    arch = prepared.model.arch
    rebuildable = workflows.rebuildable(arch)
    if not rebuildable and not (torchscript or onnx):
        raise SnpError(
            f"no snp file can rebuild this network's architecture ('{arch}', a class of its own): tick "
            "'Also write TorchScript' or 'Also write ONNX', which load without its code"
        )
    written = workflows.export(
        prepared,
        pruned,
        target if rebuildable else None,
        settings=settings,
        metrics=metrics,
        torchscript=target.with_suffix(".pt") if torchscript else None,
        onnx=target.with_suffix(".onnx") if onnx else None,
        reporter=Scaled(reporter, 0.6, 1.0),
    )
    return list(written.values())

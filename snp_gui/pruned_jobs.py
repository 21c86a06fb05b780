"""The session's actions on the pruned network: evaluate, sweep, fine-tune and export, and their results.

:class:`PrunedJobs` is part of :class:`~snp_gui.state.Session` (which defines the state and the
signals it uses); it is kept in its own module so each file reads on its own. The work runs in
:mod:`snp_gui.tasks` on the session's task runner.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from snp_engine.errors import SnpError
from snp_gui import tasks
from snp_gui.settings import parse_reductions
from snp_gui.workers import Task

if TYPE_CHECKING:
    from snp_gui.state import Session


class PrunedJobs:
    """Evaluation, sweeps, fine-tuning and export; the pruned network is reused while the plan stays."""

    def mark_stale(self: Session) -> None:
        """The plan or an option changed after the metrics were measured: show them as outdated."""
        if self.metrics and not self.stale:
            self.stale = True
            self.stale_changed.emit(True)

    def set_metrics(self: Session, metrics: dict) -> None:
        self.metrics, self.stale = dict(metrics), False
        self.metrics_changed.emit(self.metrics)
        self.stale_changed.emit(False)

    def evaluate(self: Session) -> None:
        def prepare():
            job = self._job()
            baseline = self._baseline[1] if self._baseline and self._baseline[0] == job.baseline_key else None
            pruned, epochs = self._cached(job)
            return lambda reporter: {**tasks.evaluate_plan(job, baseline, pruned, reporter), "epochs": epochs}

        self.runner.submit(Task("evaluation", prepare, on_finished=self._evaluated))

    def _evaluated(self: Session, result: dict) -> None:
        job_key, baseline_key = result["keys"]
        epochs = result["epochs"]
        self._pruned, self._baseline = (job_key, result["pruned"], epochs), (baseline_key, result["baseline"])
        m = result["metrics"]
        if epochs:  # training rescales the logits, so their distance to the original's means little
            m.update(fidelity=None, finetuned_epochs=epochs)
        self.set_metrics(m)
        error = f", output error {100 * m['fidelity']:.2f} %" if m["fidelity"] is not None else ""
        self.message.emit(
            f"Evaluated: top-1 {m['top1_before']:.2f} % → {m['top1_after']:.2f} %{error}, "
            f"latency {m['latency_before_ms']:.1f} → {m['latency_after_ms']:.1f} ms"
        )

    def sweep(self: Session, reductions: list[float] | None = None, baseline: str | None = None) -> None:
        """Top-1 against FLOPs reduction; without arguments, the reductions and baseline of the options."""
        if reductions is None:
            reductions = parse_reductions(self.options.sweep_reductions)
            if reductions is None:
                self.error_occurred.emit("sweep", "write FLOPs reductions between 0 and 1, e.g. 0.3, 0.5, 0.7")
                return
        self.update_options(
            sweep_reductions=", ".join(f"{r:g}" for r in reductions),
            sweep_baseline=baseline or self.options.sweep_baseline,
        )
        baseline = self.options.sweep_baseline

        def prepare():
            job = self._job()
            return lambda reporter: tasks.sweep(job, reductions, baseline, reporter)

        self._clear_results("sweep")
        self.runner.submit(Task("sweep", prepare, on_partial=self._sweep_point))

    def _sweep_point(self: Session, point: tuple[str, float, float]) -> None:
        series, reduction, top1 = point
        values = self.sweep_results.setdefault(series, {})
        values[reduction] = top1
        xs = sorted(values)
        self.sweep_point.emit(series, xs, [values[x] for x in xs])

    def finetune(self: Session, epochs: int | None = None, lr: float | None = None) -> None:
        """A short fine-tune of the pruned network; without arguments, the epochs and rate of the options."""
        self.update_options(
            finetune_epochs=epochs if epochs is not None else self.options.finetune_epochs,
            finetune_lr=lr if lr is not None else self.options.finetune_lr,
        )
        epochs, lr = self.options.finetune_epochs, self.options.finetune_lr

        def prepare():
            job = self._job()
            pruned, done = self._cached(job)
            return lambda reporter: {**tasks.finetune(job, pruned, epochs, lr, reporter), "epochs": done + epochs}

        self._clear_results("history")
        self.runner.submit(Task("fine-tuning", prepare, on_finished=self._finetuned, on_partial=self._history_point))

    def _history_point(self: Session, point: tuple[int, dict]) -> None:
        self.history.append(point)
        self.history_point.emit(*point)

    def _finetuned(self: Session, result: dict) -> None:
        self._pruned = (result["key"], result["model"], result["epochs"])
        self.set_metrics({**self.metrics, **result["metrics"], "finetuned_epochs": result["epochs"]})
        top1 = result["metrics"]["top1_after"]
        self.message.emit(f"Fine-tuned for {result['epochs']} epoch(s) in all: top-1 {top1:.2f} %")

    def export(self: Session, path: str, torchscript: bool = False, onnx: bool = False) -> None:
        def prepare():
            job = self._job()
            pruned, _epochs = self._cached(job)
            metrics = {} if self.stale else dict(self.metrics)
            return lambda reporter: tasks.export(job, pruned, metrics, path, torchscript, onnx, reporter)

        def exported(paths) -> None:
            self.message.emit("Exported and verified: " + ", ".join(str(p) for p in paths))

        self.runner.submit(Task("export", prepare, on_finished=exported))

    def _job(self: Session) -> tasks.PruneJob:
        """A snapshot of everything a prune needs, taken in the GUI thread."""
        if self.analysis is None or self.model is None:
            raise SnpError("run an analysis first")
        return tasks.PruneJob(
            self.prepared(), self.analysis, self.plan(), self.options.copy(), self.removed_blocks, self.block_scores()
        )

    def pruning_fits(self: Session) -> dict:
        """Each group's fit (:attr:`~snp_engine.results.PruningRecord.fits`) in the network pruned for
        the measured metrics; ``{}`` when there is none or the plan changed since."""
        if self._pruned is None or self.stale:
            return {}
        record = getattr(self._pruned[1], "record", None)
        return dict(record.fits) if record is not None else {}

    def _cached(self: Session, job: tasks.PruneJob) -> tuple[torch.nn.Module | None, int]:
        """The network pruned (and maybe fine-tuned) for exactly this job, if there is one."""
        if self._pruned is not None and self._pruned[0] == job.key:
            return self._pruned[1], self._pruned[2]
        return None, 0

"""The application state and every action on it, kept apart from the widgets that show it.

The controller owns the loaded model and data, the current analysis and the keep counts, and
starts all slow work on a :class:`~snp_gui.workers.TaskRunner`. Widgets call its methods and
listen to its signals; they never call the engine themselves.
"""

from __future__ import annotations

import torch
from PySide6.QtCore import QObject, Signal

from snp_engine import workflows
from snp_engine.api import Analysis, Plan
from snp_engine.data import DataBundle
from snp_engine.errors import SnpError
from snp_engine.metrics import Scores
from snp_engine.models import LoadedModel
from snp_engine.workflows import AnalysisOptions, Prepared
from snp_gui import workers
from snp_gui.settings import Options, default_device
from snp_gui.workers import FINISHED, Task, TaskRunner


class Controller(QObject):
    """State plus actions; results arrive through signals in the GUI thread."""

    modelChanged = Signal(object)  # LoadedModel
    dataChanged = Signal(object)  # DataBundle
    preparedChanged = Signal(object)  # Prepared (data fitted to the model, notes, warnings, dense check) or None
    analysisChanged = Signal(object)  # Analysis or None: new curves
    keepChanged = Signal(dict, bool)  # keep counts, final (False while a marker is dragged)
    metricsChanged = Signal(dict)
    staleChanged = Signal(bool)
    sweepPoint = Signal(str, list, list)  # series name, FLOPs reductions, top-1
    historyPoint = Signal(int, dict)  # epoch, numbers
    message = Signal(str)
    errorOccurred = Signal(str, str)  # task name, one-line message

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.runner = TaskRunner(self)
        self.runner.ended.connect(self._task_ended)
        self.options = Options(device=default_device())
        self.model: LoadedModel | None = None
        self.model_trusted = False
        self.data: DataBundle | None = None
        self.data_spec: str | None = None
        self.analysis: Analysis | None = None
        self.keep: dict[str, int] = {}
        self.threshold: float | None = None
        self.overridden = False  # keep counts were edited by hand after the last threshold change
        self.metrics: dict = {}
        self.stale = False
        self._pruned: tuple[tuple, torch.nn.Module, int] | None = None  # job key, network, fine-tuned epochs
        self._baseline: tuple[tuple, Scores] | None = None
        self._prepared: tuple[tuple, Prepared] | None = None
        self.sweep_results: dict[str, dict[float, float]] = {}

    # -- loading ----------------------------------------------------------------------------------
    def load_model(self, spec: str, trust: bool = False) -> None:
        spec = spec.strip()
        if not spec:
            self.errorOccurred.emit("load model", "choose a model first")
            return
        self.runner.submit(
            Task(
                "load model",
                lambda: lambda reporter: workflows.load_model(spec, trust=trust, reporter=reporter),
                on_finished=lambda loaded: self._set_model(loaded, trust),
            )
        )

    def _set_model(self, loaded: LoadedModel, trust: bool) -> None:
        self.model, self.model_trusted = loaded, trust
        self._reset_analysis()
        self.modelChanged.emit(loaded)
        self.message.emit(f"Loaded {loaded.arch} ({loaded.num_classes} classes, input {_shape(loaded.input_shape)})")
        self.check_data()

    def load_data(self, spec: str) -> None:
        spec = spec.strip()
        if not spec:
            self.errorOccurred.emit("load data", "choose a dataset first")
            return
        self.runner.submit(
            Task(
                "load data",
                lambda: lambda reporter: workflows.open_data(spec),
                on_finished=lambda bundle: self._set_data(spec, bundle),
            )
        )

    def _set_data(self, spec: str, bundle: DataBundle) -> None:
        self.data, self.data_spec = bundle, spec
        self._baseline = None
        self.dataChanged.emit(bundle)
        skipped = f", {bundle.skipped} unreadable file(s) skipped" if bundle.skipped else ""
        use = (
            f"{len(bundle.calibration)} calibration / {len(bundle.test)} test images"
            if bundle.held_out
            else f"{len(bundle.calibration)} images (calibration and evaluation)"
        )
        self.message.emit(f"Loaded data {bundle.name}: {use}{skipped}")
        self.check_data()

    def _prepared_key(self) -> tuple:
        return (id(self.model), id(self.data), self.options.input_size or None)

    def check_data(self) -> None:
        """Fit the data to the model and score the unpruned model on it (in the background); the
        data panel shows what was adapted and any warning, e.g. near-chance accuracy."""
        if self.model is None or self.data is None:
            self.preparedChanged.emit(None)
            return

        def prepare():
            key, model, data, opts = self._prepared_key(), self.model, self.data, self.options.copy()

            def run(reporter):
                prepared = workflows.prepare(
                    model, data, input_size=opts.input_size or None, device=opts.device, reporter=reporter
                )
                return key, prepared

            return run

        self.runner.submit(Task("check data", prepare, on_finished=self._set_prepared))

    def _set_prepared(self, result: tuple[tuple, Prepared]) -> None:
        key, prepared = result
        if key != self._prepared_key():
            return  # the model, data or input size changed meanwhile; a newer check is queued
        self._prepared = result
        self.preparedChanged.emit(prepared)
        for warning in prepared.warnings:
            self.message.emit(f"Warning: {warning}")

    def prepared(self) -> Prepared:
        """The model and data fitted to each other (the checked result when it is there)."""
        if self.model is None:
            raise SnpError("load a model first")
        if self.data is None:
            raise SnpError("load a dataset first")
        key = self._prepared_key()
        if self._prepared is None or self._prepared[0] != key:  # reuse it, so cached baselines stay valid
            input_size = self.options.input_size or None
            self._prepared = (key, workflows.prepare(self.model, self.data, input_size=input_size, dense_check=False))
        return self._prepared[1]

    def model_data(self) -> DataBundle:
        """The calibration data adapted to the model's input (channels, size)."""
        return self.prepared().require_data()

    # -- analysis ---------------------------------------------------------------------------------
    def analyse(self) -> None:
        def prepare():
            prepared, opts = self.prepared(), self.options.copy()
            options = AnalysisOptions(
                samples=opts.samples, batch_size=opts.batch_size, ordering=opts.ordering, curve=opts.curve
            )
            return lambda reporter: workflows.analyse(prepared, options, device=opts.device, reporter=reporter)

        self.runner.submit(Task("analysis", prepare, on_finished=self.set_analysis))

    def set_analysis(self, analysis: Analysis, keep: dict[str, int] | None = None) -> None:
        self.analysis, self._pruned = analysis, None
        self.options.ordering, self.options.curve = analysis.ordering, analysis.curve_kind
        self.analysisChanged.emit(analysis)
        if keep is not None:
            self.set_keep(keep, final=True)
        else:
            self.set_threshold(self.options.threshold_mode, self.options.threshold_value)
        samples = analysis.info.get("samples", "?")
        self.message.emit(f"Analysed {len(analysis.groups)} prunable layers on {samples} images")

    def replot(self, ordering: str | None = None, curve: str | None = None) -> None:
        """Another ordering or curve kind from the stored statistics (no forward pass)."""
        if ordering:
            self.options.ordering = ordering
        if curve:
            self.options.curve = curve
        if self.analysis is None:
            return

        def prepare():
            analysis, opts = self.analysis, self.options
            return lambda reporter: analysis.reorder(opts.ordering, opts.curve, reporter=reporter)

        keep = dict(self.keep) if self.overridden else None
        self.runner.submit(Task("re-plot", prepare, on_finished=lambda new: self.set_analysis(new, keep)))

    def _reset_analysis(self) -> None:
        self.analysis, self.keep, self._pruned, self._baseline = None, {}, None, None
        self.analysisChanged.emit(None)
        self.set_metrics({})

    # -- keep counts ------------------------------------------------------------------------------
    def set_threshold(self, mode: str, value: float) -> None:
        """Re-plan every layer from one global setting: explained variance or a FLOPs/params cut."""
        self.options.threshold_mode, self.options.threshold_value = mode, float(value)
        if self.analysis is None:
            return
        try:
            plan = self.analysis.plan(**{_PLAN_KEYS[mode]: float(value)})
        except SnpError as exc:
            self.message.emit(str(exc))
            return
        self.threshold, self.overridden = plan.threshold, False
        self._apply_keep(plan.keep, final=True)

    def set_layer_keep(self, name: str, count: int, final: bool = True) -> None:
        """One layer overridden by hand (a marker drag or a table edit)."""
        if self.analysis is None or name not in self.keep:
            return
        count = max(1, min(int(count), self.analysis.units[name]))
        if count == self.keep[name] and not final:
            return
        self.overridden = True
        self._apply_keep({**self.keep, name: count}, final)

    def set_keep(self, keep: dict[str, int], final: bool = True) -> None:
        if self.analysis is None:
            return
        units = self.analysis.units
        self.overridden = True
        self._apply_keep({n: max(1, min(int(keep.get(n, u)), u)) for n, u in units.items()}, final)

    def _apply_keep(self, keep: dict[str, int], final: bool) -> None:
        changed = keep != self.keep
        self.keep = keep
        if changed and self.metrics and not self.stale:
            self.stale = True
            self.staleChanged.emit(True)
        self.keepChanged.emit(dict(keep), final)

    def plan(self) -> Plan:
        if self.analysis is None:
            raise SnpError("run an analysis first")
        return self.analysis.plan_for(self.keep, self.threshold if not self.overridden else None)

    def explained(self) -> dict[str, float]:
        analysis = self.analysis
        return {} if analysis is None else {n: float(analysis.group(n).curve[k]) for n, k in self.keep.items()}

    def costs(self) -> tuple[int, int, float, float]:
        """Parameters and FLOPs before and after the current keep counts (microseconds to compute)."""
        if self.analysis is None:
            return 0, 0, 0.0, 0.0
        (params_before, flops_before), (params_after, flops_after) = self.analysis.cost(), self.analysis.cost(self.keep)
        return params_before, params_after, flops_before, flops_after

    # -- evaluation, sweep, fine-tuning, export ---------------------------------------------------
    def evaluate(self) -> None:
        def prepare():
            job = self._job()
            baseline = self._baseline[1] if self._baseline and self._baseline[0] == job.baseline_key else None
            pruned, epochs = self._cached(job)
            return lambda reporter: {**workers.evaluate_plan(job, baseline, pruned, reporter), "epochs": epochs}

        self.runner.submit(Task("evaluation", prepare, on_finished=self._evaluated))

    def _cached(self, job: workers.PruneJob) -> tuple[torch.nn.Module | None, int]:
        """The network pruned (and maybe fine-tuned) for exactly this job, if there is one."""
        if self._pruned is not None and self._pruned[0] == job.key:
            return self._pruned[1], self._pruned[2]
        return None, 0

    def _evaluated(self, result: dict) -> None:
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

    def set_metrics(self, metrics: dict) -> None:
        self.metrics, self.stale = dict(metrics), False
        self.metricsChanged.emit(self.metrics)
        self.staleChanged.emit(False)

    def sweep(self, reductions: list[float], baseline: str = "l1") -> None:
        def prepare():
            job = self._job()
            return lambda reporter: workers.sweep(job, reductions, baseline, reporter)

        self.sweep_results = {}
        self.runner.submit(Task("sweep", prepare, on_partial=self._sweep_point))

    def _sweep_point(self, point: tuple[str, float, float]) -> None:
        series, reduction, top1 = point
        values = self.sweep_results.setdefault(series, {})
        values[reduction] = top1
        xs = sorted(values)
        self.sweepPoint.emit(series, xs, [values[x] for x in xs])

    def finetune(self, epochs: int, lr: float) -> None:
        def prepare():
            job = self._job()
            pruned, done = self._cached(job)
            return lambda reporter: {**workers.finetune(job, pruned, epochs, lr, reporter), "epochs": done + epochs}

        self.runner.submit(
            Task(
                "fine-tuning",
                prepare,
                on_finished=self._finetuned,
                on_partial=lambda point: self.historyPoint.emit(*point),
            )
        )

    def _finetuned(self, result: dict) -> None:
        self._pruned = (result["key"], result["model"], result["epochs"])
        self.set_metrics({**self.metrics, **result["metrics"], "finetuned_epochs": result["epochs"]})
        top1 = result["metrics"]["top1_after"]
        self.message.emit(f"Fine-tuned for {result['epochs']} epoch(s) in all: top-1 {top1:.2f} %")

    def export(self, path: str, torchscript: bool = False, onnx: bool = False) -> None:
        def prepare():
            job = self._job()
            pruned, _epochs = self._cached(job)
            metrics = {} if self.stale else dict(self.metrics)
            return lambda reporter: workers.export(job, pruned, metrics, path, torchscript, onnx, reporter)

        self.runner.submit(
            Task(
                "export",
                prepare,
                on_finished=lambda paths: self.message.emit(
                    "Exported and verified: " + ", ".join(str(p) for p in paths)
                ),
            )
        )

    def _job(self) -> workers.PruneJob:
        """A snapshot of everything a prune needs, taken in the GUI thread."""
        if self.analysis is None or self.model is None:
            raise SnpError("run an analysis first")
        return workers.PruneJob(self.prepared(), self.analysis, self.plan(), self.options.copy())

    # -- running ----------------------------------------------------------------------------------
    def cancel(self) -> None:
        self.runner.cancel()

    def shutdown(self, timeout_ms: int = 10_000) -> bool:
        """Cancel whatever runs and wait for the worker thread (the window is closing)."""
        self.runner.cancel()
        return self.runner.wait(timeout_ms)

    def _task_ended(self, name: str, outcome: str, text: str) -> None:
        if outcome == FINISHED:
            return
        if outcome == "cancelled":
            self.message.emit(f"{name.capitalize()} cancelled; nothing was changed")
        else:
            self.message.emit(f"{name.capitalize()} failed: {text}")
            self.errorOccurred.emit(name, text)


_PLAN_KEYS = {"variance": "variance", "flops": "flops_reduction", "params": "params_reduction"}


def _shape(shape) -> str:
    return "×".join(str(s) for s in shape)

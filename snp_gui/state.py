"""The GUI session: the one object that holds the state of a piece of work, and every action on it.

:class:`Session` owns the loaded model and data, the data check, the analysis, the keep counts and
threshold, the selected layer, the run options, the measured metrics and the sweep and fine-tuning
results. It runs all slow work on a :class:`~snp_gui.workers.TaskRunner`. Panels call its methods
and follow its snake_case signals; they never talk to each other and never call the engine.
Loading models and data, the data check and session files are in :mod:`snp_gui.opening`;
evaluation, sweeps, fine-tuning and export in :mod:`snp_gui.pruned_jobs`, undo and redo of the plan in
:mod:`snp_gui.undo`, named plans in :mod:`snp_gui.plans`, per-layer sensitivity in
:mod:`snp_gui.sensitivity_jobs`, the architecture graph in :mod:`snp_gui.architecture_jobs` and whole
residual blocks removed with the plan in :mod:`snp_gui.block_jobs` (all parts of Session).

Per-layer constraints (:class:`~snp_engine.ratios.Constraints`: locks, minimums, round-to) are held
here too: threshold and budget plans respect them, and hand edits of a layer are fitted to its rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from PySide6.QtCore import QObject, Signal, SignalInstance

from snp_engine import workflows
from snp_engine.api import Analysis, Plan
from snp_engine.data import DataBundle
from snp_engine.errors import SnpError
from snp_engine.metrics import Scores
from snp_engine.models import LoadedModel
from snp_engine.ratios import NO_CONSTRAINTS, Constraints
from snp_engine.workflows import AnalysisOptions, PlanTarget, Prepared
from snp_gui.architecture_jobs import ArchitectureJobs
from snp_gui.block_jobs import BlockJobs
from snp_gui.layer_rows import layer_costs
from snp_gui.opening import Opening
from snp_gui.plans import NamedPlans
from snp_gui.pruned_jobs import PrunedJobs
from snp_gui.sensitivity_jobs import SensitivityJobs
from snp_gui.settings import Options, default_device, threshold_problem
from snp_gui.undo import PlanHistory
from snp_gui.workers import FINISHED, Task, TaskRunner

RESULT_VIEWS = ("all", "sweep", "history")  # what ``reset`` clears


class Session(QObject, PrunedJobs, Opening, PlanHistory, NamedPlans, SensitivityJobs, ArchitectureJobs, BlockJobs):
    """State plus actions; results arrive through signals in the GUI thread."""

    model_requested = Signal(str, str)  # spec, kind: about to be loaded (the model panel shows it)
    weights_requested = Signal(str)  # a weights file for the architecture chosen in the model panel
    model_changed = Signal(object)  # LoadedModel
    data_requested = Signal(str)  # spec about to be loaded
    data_changed = Signal(object)  # DataBundle
    prepared_changed = Signal(object)  # Prepared (data fitted to the model, notes, warnings, dense check) or None
    analysis_changed = Signal(object)  # Analysis or None: new curves and table rows
    keep_changed = Signal(dict, bool)  # keep counts, final (False while a marker is dragged)
    undo_changed = Signal(bool, bool)  # whether undo and redo can go anywhere
    threshold_note = Signal(str)  # why a threshold was refused, or a warning about its plan; "" when none
    keep_note = Signal(str)  # why a hand edit of a layer was fitted to its constraints; "" when it was not
    constraints_changed = Signal(object)  # Constraints: locks, minimums and round-to of the layers
    constraint_note = Signal(str)  # why a constraint was refused; "" when the last one was taken
    plans_changed = Signal(list)  # the named plans (NamedPlan), in the order they were kept
    selection_changed = Signal(str)  # the focused layer, "" when there is none
    sensitivity_changed = Signal(dict, set)  # LayerSensitivity by layer (measured so far), the stale layers
    sensitivity_note = Signal(str)  # why relaxing was refused; "" when it was done
    architecture_changed = Signal(object)  # Architecture of the analysed network, or None
    blocks_changed = Signal(list, list)  # BlockRow of each removable block, the names of those removed
    blocks_note = Signal(str)  # why a block was not ticked or unticked; "" when it was
    options_changed = Signal(object)  # Options, after anything changed them (a threshold: once it is final)
    metrics_changed = Signal(dict)
    stale_changed = Signal(bool)
    sweep_point = Signal(str, list, list)  # series name, FLOPs reductions, top-1
    history_point = Signal(int, dict)  # epoch, numbers
    reset = Signal(str)  # result views to clear: one of RESULT_VIEWS
    session_file_changed = Signal(str)  # the session file just opened or saved
    message = Signal(str)
    error_occurred = Signal(str, str)  # task name, one-line message

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.runner = TaskRunner(self)
        self.runner.ended.connect(self._task_ended)
        self.options = Options(device=default_device())
        # asked before a pickle is unpickled; the window puts a dialog here, the default refuses
        self.confirm_trust: Callable[[str], bool] = lambda _path: False
        self.model: LoadedModel | None = None
        self.model_trusted = False
        self.data: DataBundle | None = None
        self.data_spec: str | None = None
        self.checked: Prepared | None = None  # the last data check shown (with the unpruned model's accuracy)
        self.analysis: Analysis | None = None
        self.keep: dict[str, int] = {}
        self.threshold: float | None = None
        self.overridden = False  # keep counts were edited by hand after the last threshold change
        self._planned: dict[str, int] = {}  # the keep counts the threshold alone gives
        self.constraints: Constraints = NO_CONSTRAINTS
        self._fitted: tuple[str, int, int] = ("", 0, 0)  # the last hand edit: layer, asked, given (a drag's end)
        self._init_history()
        self._init_plans()
        self._init_sensitivity()
        self._init_architecture()
        self._init_blocks()
        self.selected: str | None = None
        self.metrics: dict = {}
        self.stale = False
        self.sweep_results: dict[str, dict[float, float]] = {}
        self.history: list[tuple[int, dict]] = []
        self.session_path: str | None = None
        self._pruned: tuple[tuple, torch.nn.Module, int] | None = None  # job key, network, fine-tuned epochs
        self._baseline: tuple[tuple, Scores] | None = None
        self._prepared: tuple[tuple, Prepared] | None = None

    @property
    def keepChanged(self) -> SignalInstance:
        """The earlier name of ``keep_changed``, still used by benchmarks/gui_latency.py."""
        return self.keep_changed

    # -- analysis ---------------------------------------------------------------------------------
    def analyse(self) -> None:
        def prepare():
            prepared, opts = self.prepared(), self.options.copy()
            options = AnalysisOptions(
                samples=opts.samples,
                batch_size=opts.batch_size,
                ordering=opts.ordering,
                curve=opts.curve,
                coupled=opts.coupled == "prune",
            )
            return lambda reporter: workflows.analyse(prepared, options, device=opts.device, reporter=reporter)

        note = self.samples_note()
        if note:
            self.message.emit(f"Analysing: {note}")
        self.runner.submit(Task("analysis", prepare, on_finished=self.set_analysis))

    def samples_note(self) -> str:
        """A warning when more calibration images are asked for than the data has, with how many are used."""
        if self.data is None:
            return ""
        have, asked = len(self.data.calibration), self.options.samples
        if asked <= have:
            return ""
        return f"{asked} calibration images asked for, but {self.data.name} has {have}: all {have} are used"

    def set_analysis(
        self, analysis: Analysis, keep: dict[str, int] | None = None, constraints: Constraints | None = None
    ) -> None:
        """Show a new analysis: curves and rows first, then the constraints and keep counts, then the
        selected layer. Constraints (the current ones unless given) that do not fit its layers are dropped."""
        self.analysis, self._pruned = analysis, None
        self.options.ordering, self.options.curve = analysis.ordering, analysis.curve_kind
        self.options_changed.emit(self.options)
        self.analysis_changed.emit(analysis)
        self._set_constraints(self._fitting(constraints if constraints is not None else self.constraints))
        self._planned = {}
        if keep is not None:
            self._planned = self._threshold_plan() or {}
            self.set_keep(keep, final=True)
        else:
            self.set_threshold(self.options.threshold_mode, self.options.threshold_value)
        self.clear_history()  # steps of another analysis would not describe these curves
        names = analysis.names
        self.selected = self.selected if self.selected in names else (names[0] if names else None)
        self.selection_changed.emit(self.selected or "")  # always: the views were rebuilt
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
        self.analysis, self.keep, self.selected, self._pruned, self._baseline = None, {}, None, None, None
        self._planned = {}
        self._set_constraints(NO_CONSTRAINTS)  # they name the layers of another network
        self.clear_plans()
        self.clear_history()
        self.analysis_changed.emit(None)
        self.selection_changed.emit("")
        self.set_metrics({})

    def _clear_results(self, view: str) -> None:
        if view in ("all", "sweep"):
            self.sweep_results = {}
        if view in ("all", "history"):
            self.history = []
        self.reset.emit(view)

    # -- keep counts and selection ----------------------------------------------------------------
    def set_threshold(self, mode: str, value: float, final: bool = True) -> None:
        """Re-plan every layer from one global setting: explained variance or a FLOPs/params cut.

        An invalid value (0 % explained variance, a 100 % reduction) or one the engine refuses changes
        nothing, not even the options: ``threshold_note`` says why and the controls show the old value.
        While the slider is held (``final`` False) the plan follows; one undo step covers the whole move.
        """
        problem = threshold_problem(mode, value)
        plan = None
        if problem is None and self.analysis is not None:
            try:
                plan = self._plan_from(mode, value, self.constraints)
            except SnpError as exc:
                problem = str(exc)
        if problem is not None:
            self.options_changed.emit(self.options)  # the controls go back to the value in use, then say why
            self.threshold_note.emit(problem)
            self.message.emit(f"Threshold not changed: {problem}")
            return
        self._begin_edit()
        self.options.threshold_mode, self.options.threshold_value = mode, float(value)
        if plan is None:  # nothing analysed yet: only the setting
            self._pending = None
            return
        self.threshold, self.overridden, self._planned = plan.threshold, False, dict(plan.keep)
        self._apply_keep(plan.keep, final=True)
        if final:
            self._end_edit()
            self.options_changed.emit(self.options)  # a threshold set from code (Relax, blocks) reaches the controls
        self.threshold_note.emit(self._plan_warning())

    def _threshold_plan(self) -> dict[str, int] | None:
        """What the current threshold alone gives, None when it gives nothing (no analysis, refused)."""
        if self.analysis is None or threshold_problem(self.options.threshold_mode, self.options.threshold_value):
            return None
        try:
            return dict(
                self._plan_from(self.options.threshold_mode, self.options.threshold_value, self.constraints).keep
            )
        except SnpError:
            return None

    def _plan_from(
        self, mode: str, value: float, constraints: Constraints | None = None, blocks: tuple[str, ...] | None = None
    ) -> Plan:
        """The plan one global setting gives within ``constraints`` with the residual ``blocks`` removed
        (the current ones unless given); without blocks the same path as the command line."""
        constraints = self.constraints if constraints is None else constraints
        blocks = self.removed_blocks if blocks is None else blocks
        return workflows.plan_with_blocks(
            self.analysis, PlanTarget(mode, float(value)), blocks, constraints=constraints
        )

    def _plan_warning(self) -> str:
        """A warning when the plan is surely not what anyone wants (every layer cut to a single unit)."""
        units = self.analysis.units if self.analysis is not None else {}
        if self.keep and all(k == 1 for k in self.keep.values()) and any(units[n] > 1 for n in self.keep):
            return "every layer keeps only 1 unit at this threshold: the pruned network will hardly work"
        return ""

    def is_custom(self) -> bool:
        """The keep counts were edited away from what the threshold gives."""
        return bool(self.keep) and self.keep != self._planned

    def set_layer_keep(self, name: str, count: int, final: bool = True) -> None:
        """One layer overridden by hand (a marker drag or a table edit); one undo step per drag or edit.

        The count is fitted to the layer's minimum and round-to (``keep_note`` says why when it was); a
        locked layer's lock moves with it (only the global threshold cannot move a locked layer).
        """
        if self.analysis is None or name not in self.keep:
            return
        # the user's rules and what the network demands (grouped convs keep multiples of their groups)
        units, rule = self.analysis.units[name], self.analysis.structural(self.constraints).of(name)
        free = replace(rule, locked=None)
        asked = int(count)
        if self._fitted[:2] == (name, asked):  # the end of a drag repeats its last position: fitted already
            count = self._fitted[2]
        else:
            count = free.fit(asked, units, down=asked < self.keep[name])  # a lowered count rounds down
        self._fitted = (name, asked, count) if not final else ("", 0, 0)
        reason = free.why(asked, count, units)
        self.keep_note.emit(f"{name}: {asked} became {count}, {reason}" if reason else "")
        if count == self.keep[name] and not final:
            return
        self._begin_edit()
        self.overridden = True
        if rule.locked is not None and rule.locked != count:
            self._set_constraints(self.constraints.with_group(name, locked=count))
        self._apply_keep({**self.keep, name: count}, final)
        if final:
            self._end_edit()

    # -- per-layer constraints --------------------------------------------------------------------
    def lock_layer(self, name: str, locked: bool) -> bool:
        """Lock a layer at the units it keeps now (the threshold no longer moves it), or unlock it."""
        if self.analysis is None or name not in self.keep:
            return False
        return self.set_constraint(name, locked=self.keep[name] if locked else None)

    def set_constraint(self, name: str, **changes: int | None) -> bool:
        """Change a layer's ``locked``, ``min_units`` or ``round_to`` (``None`` or 1 clears a minimum or
        rounding); one undo step. A plan from the threshold is made again within the new rules; a hand-edited
        plan keeps its counts, fitted to them. Refused (``constraint_note`` says why, nothing changes) when
        the rule does not fit the layer or the threshold's target can no longer be met."""
        if self.analysis is None or name not in self.analysis.units:
            return False
        changes = {key: (None if key != "locked" and value == 1 else value) for key, value in changes.items()}
        try:
            new = self.constraints.with_group(name, **changes).check(self.analysis.units)
        except (ValueError, TypeError) as exc:
            return self._refuse_constraint(str(exc))
        if new == self.constraints:
            self.constraint_note.emit("")
            return True
        planned = None
        if not self.overridden:
            try:
                planned = dict(self._plan_from(self.options.threshold_mode, self.options.threshold_value, new).keep)
            except SnpError as exc:
                return self._refuse_constraint(str(exc))
        self._begin_edit()
        self._set_constraints(new)
        if planned is not None:
            self._planned = planned
            self._apply_keep(planned, final=True)
        else:
            units = self.analysis.units
            fitted = {n: new.of(n).fit(k, units[n]) for n, k in self.keep.items()}
            self._planned = self._threshold_plan() or {}
            self._apply_keep(fitted, final=True)
        self._end_edit()
        self.constraint_note.emit("")
        return True

    def _refuse_constraint(self, reason: str) -> bool:
        self.constraint_note.emit(reason)
        self.message.emit(f"Constraint not changed: {reason}")
        self.constraints_changed.emit(self.constraints)  # the controls go back to the rules in use
        return False

    def _set_constraints(self, constraints: Constraints) -> None:
        if constraints != self.constraints:
            self.constraints = constraints
            self.constraints_changed.emit(constraints)

    def _fitting(self, constraints: Constraints) -> Constraints:
        """The rules of ``constraints`` that fit the current analysis's layers (others are dropped)."""
        if self.analysis is None:
            return NO_CONSTRAINTS
        units, kept = self.analysis.units, {}
        for name in constraints:
            try:
                Constraints({name: constraints.of(name)}).check(units)
            except ValueError as exc:
                self.message.emit(f"Constraint dropped: {exc}")
                continue
            kept[name] = constraints.of(name)
        return Constraints(kept)

    def set_keep(self, keep: dict[str, int], final: bool = True) -> None:
        """Load keep counts for every layer (a saved plan); layers missing from ``keep`` keep every unit."""
        if self.analysis is None:
            return
        units = self.analysis.units
        self._begin_edit()
        self.overridden = True
        self._apply_keep({n: max(1, min(int(keep.get(n, u)), u)) for n, u in units.items()}, final)
        if final:
            self._end_edit()
        self.threshold_note.emit(self._plan_warning())

    def _apply_keep(self, keep: dict[str, int], final: bool) -> None:
        if keep != self.keep:
            self.mark_stale()
        self.keep = keep
        self.keep_changed.emit(dict(keep), final)

    def select_layer(self, name: str) -> None:
        """Focus one prunable layer (a click on its curve or its table row); every view follows."""
        if self.analysis is None or name not in self.analysis.units or name == self.selected:
            return
        self.selected = name
        self.selection_changed.emit(name)

    def plan(self) -> Plan:
        if self.analysis is None:
            raise SnpError("run an analysis first")
        return self.analysis.plan_for(self.keep, self.threshold if not self.overridden else None)

    def explained(self) -> dict[str, float]:
        analysis = self.analysis
        return {} if analysis is None else {n: float(analysis.group(n).curve[k]) for n, k in self.keep.items()}

    def costs(self) -> tuple[int, int, float, float]:
        """Parameters and FLOPs before and after the current keep counts and removed residual blocks
        (microseconds to compute)."""
        if self.analysis is None:
            return 0, 0, 0.0, 0.0
        (params_before, flops_before), (params_after, flops_after) = self.analysis.cost(), self.analysis.cost(self.keep)
        params_saved, flops_saved = workflows.blocks_cost(self.analysis, self.removed_blocks, self.keep)
        return params_before, params_after - params_saved, flops_before, flops_after - flops_saved

    def layer_costs(self) -> tuple[dict[str, int], dict[str, float]]:
        """Parameters and FLOPs of each layer under the current keep counts (for the table)."""
        return layer_costs(self.analysis, self.keep)

    # -- options ----------------------------------------------------------------------------------
    def set_options(self, options: Options) -> None:
        """Replace every option (saved settings, a reopened session); the panels show the new ones."""
        self.options = options
        self.options_changed.emit(options)

    def set_option(self, key: str, value: object) -> None:
        self.update_options(**{key: value})

    def update_options(self, **values: object) -> None:
        """Change run options; re-plots, re-checks the data or marks the metrics stale as the change needs."""
        changed = set()
        for key, value in values.items():
            old = getattr(self.options, key)  # an unknown key is a programming error: AttributeError
            new = type(old)(value)
            if new != old:
                setattr(self.options, key, new)
                changed.add(key)
        if changed & {"ordering", "curve"}:
            self.replot()
        if "input_size" in changed:
            self.check_data()  # fit the data to the new input size and check the model on it again
        if changed & {"device", "compensation"}:
            self.mark_stale()  # measured with another device or compensation
        if changed:
            self.options_changed.emit(self.options)

    # -- running ----------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.runner.busy

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
            self.error_occurred.emit(name, text)

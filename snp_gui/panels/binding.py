"""Each view bound to the session, in both directions: the view's requests go to the session's methods,
the session's signals update the view.

Every ``bind_*`` function receives one view and the session, nothing else, so no view can reach
another: a layer selected in the table reaches the curves only as the session's ``selection_changed``.
"""

from __future__ import annotations

from collections.abc import Callable

from snp_gui.layer_rows import fit_texts, layer_rows
from snp_gui.layer_table import LayerTable
from snp_gui.panels.analysis_panel import AnalysisPanel
from snp_gui.panels.architecture_panel import ArchitecturePanel
from snp_gui.panels.blocks_panel import BlocksPanel
from snp_gui.panels.common import select_data
from snp_gui.panels.data_panel import DataPanel, show_samples_note
from snp_gui.panels.evaluate_panel import EvaluatePanel, FinetunePanel
from snp_gui.panels.model_panel import ModelPanel
from snp_gui.panels.plans_panel import PlansPanel
from snp_gui.panels.sensitivity_panel import SensitivityPanel
from snp_gui.panels.status import ProgressStatus
from snp_gui.plots.curves import CurvesWidget
from snp_gui.settings import Options
from snp_gui.state import Session
from snp_gui.summary import SummaryBar
from snp_gui.threshold import ThresholdControl


def on_state_change(session: Session, update: Callable[[], None]) -> None:
    """Call ``update`` whenever what may be run changes: busy or idle, model, data or analysis."""
    session.runner.busyChanged.connect(lambda _busy: update())
    session.runner.ended.connect(lambda *_: update())
    for signal in (session.model_changed, session.data_changed, session.analysis_changed):
        signal.connect(lambda *_: update())
    update()


def _set_if_different(widget, value) -> None:
    """Programmatic updates must not move a cursor or re-emit an edit the user is making."""
    if widget.value() != value:
        widget.blockSignals(True)
        widget.setValue(value)
        widget.blockSignals(False)


# -- setup panels -----------------------------------------------------------------------------------


def bind_model_panel(panel: ModelPanel, session: Session) -> None:
    panel.loadRequested.connect(session.open_model)
    session.model_requested.connect(lambda spec, kind: panel.set_spec(spec, kind) if spec else None)
    session.weights_requested.connect(lambda path: (panel.set_weights_file(path), panel.request_load()))
    session.model_changed.connect(panel.show_loaded)
    on_state_change(session, lambda: panel.setEnabled(not session.busy))


def bind_data_panel(panel: DataPanel, session: Session) -> None:
    panel.loadRequested.connect(session.open_data)
    panel.optionsChanged.connect(lambda: session.update_options(**panel.values()))
    session.options_changed.connect(lambda o: panel.set_values(o.samples, o.batch_size, o.input_size))
    panel.set_values(session.options.samples, session.options.batch_size, session.options.input_size)
    session.data_requested.connect(panel.set_spec)
    session.data_changed.connect(panel.show_loaded)
    session.prepared_changed.connect(panel.show_prepared)
    for signal in (session.data_changed, session.options_changed):
        signal.connect(lambda *_: show_samples_note(panel, session.samples_note()))
    on_state_change(session, lambda: panel.setEnabled(not session.busy))


def bind_analysis_panel(panel: AnalysisPanel, session: Session) -> None:
    panel.changed.connect(session.set_option)
    panel.analyseRequested.connect(session.analyse)

    def show(options: Options) -> None:
        for key in panel.combos:
            if not panel.set_value(key, getattr(options, key)):
                session.set_option(key, panel.value(key))  # e.g. a GPU that is gone: use what is there

    session.options_changed.connect(show)
    show(session.options)

    def enable() -> None:
        panel.setEnabled(not session.busy)
        panel.analyse_button.setEnabled(not session.busy and session.model is not None and session.data is not None)

    on_state_change(session, enable)


# -- the plan: threshold, curves, table, summary ----------------------------------------------------


def bind_threshold(control: ThresholdControl, session: Session) -> None:
    control.valueChanged.connect(lambda mode, value: session.set_threshold(mode, value, final=False))
    control.valueChangeFinished.connect(lambda mode, value: session.set_threshold(mode, value, final=True))
    session.threshold_note.connect(control.show_note)
    session.keep_changed.connect(lambda _keep, _final: control.set_custom(session.is_custom()))
    session.analysis_changed.connect(lambda analysis: None if analysis else control.set_custom(False))

    def show(options: Options) -> None:
        if (control.mode(), control.value()) != (options.threshold_mode, options.threshold_value):
            control.set_value(options.threshold_mode, options.threshold_value)

    session.options_changed.connect(show)
    show(session.options)


def bind_curves(curves: CurvesWidget, session: Session) -> None:
    curves.keepChanged.connect(lambda name, k: session.set_layer_keep(name, k, final=False))
    curves.keepChangeFinished.connect(lambda name, k: session.set_layer_keep(name, k, final=True))
    curves.layerSelected.connect(session.select_layer)
    session.keep_note.connect(curves.show_note)

    def show_analysis(analysis) -> None:
        curves.show_note("")
        if analysis is None:
            curves.clear()
        else:
            words = {g.name: g.group.unit_word for g in analysis.groups}
            curves.set_curves(analysis.curves, dict(analysis.units), words)

    def show_keep(keep: dict[str, int], _final: bool) -> None:
        curves.set_keep(keep)
        curves.set_threshold(session.threshold)

    session.analysis_changed.connect(show_analysis)
    session.keep_changed.connect(show_keep)
    session.selection_changed.connect(lambda name: curves.set_selected(name) if name else None)


def bind_table(table: LayerTable, session: Session) -> None:
    table.keepEdited.connect(lambda name, k: session.set_layer_keep(name, k, final=True))
    table.layerSelected.connect(session.select_layer)
    table.notice.connect(session.message)  # why an edit was clamped, in the status bar too
    table.lockEdited.connect(session.lock_layer)
    table.constraintEdited.connect(lambda name, key, value: session.set_constraint(name, **{key: value}))
    session.constraint_note.connect(table.show_notice)
    session.constraints_changed.connect(table.set_constraints)

    def show_analysis(analysis) -> None:
        model = session.model.model if session.model else None
        table.set_rows([] if analysis is None else layer_rows(analysis, model))
        table.set_constraints(session.constraints)
        show_fits()

    def show_keep(keep: dict[str, int], _final: bool) -> None:
        table.update_keep(keep, session.explained(), *session.layer_costs())

    def show_fits(*_changed) -> None:  # how the last pruning fitted each layer, while its metrics are current
        table.set_fits(fit_texts(session.pruning_fits()))

    session.analysis_changed.connect(show_analysis)
    session.keep_changed.connect(show_keep)
    session.metrics_changed.connect(show_fits)
    session.stale_changed.connect(show_fits)
    session.selection_changed.connect(lambda name: table.select(name) if name else table.clearSelection())
    session.sensitivity_changed.connect(lambda layers, _stale: table.set_sensitivity(layers))


def bind_summary(bar: SummaryBar, session: Session) -> None:
    session.analysis_changed.connect(lambda analysis: None if analysis else bar.set_costs(0, 0, 0.0, 0.0))
    session.keep_changed.connect(lambda _keep, _final: bar.set_costs(*session.costs()))

    def show_heads(*_changed) -> None:
        heads = [g for g in session.analysis.groups if g.group.kind == "heads"] if session.analysis else []
        bar.set_heads(sum(g.units for g in heads), sum(session.keep.get(g.name, g.units) for g in heads))

    session.analysis_changed.connect(show_heads)
    session.keep_changed.connect(show_heads)
    session.metrics_changed.connect(bar.set_metrics)
    session.stale_changed.connect(bar.mark_stale)


# -- results: evaluation, sweep, fine-tuning, progress ----------------------------------------------


def bind_evaluate_panel(panel: EvaluatePanel, session: Session) -> None:
    panel.evaluateRequested.connect(session.evaluate)
    panel.sweepRequested.connect(session.sweep)
    panel.latencyBatchChanged.connect(lambda value: session.set_option("latency_batch", value))

    def reductions_edited() -> None:
        if panel.check_reductions() is not None:  # only valid reductions become an option (and a setting)
            session.set_option("sweep_reductions", panel.reductions.text().strip())

    panel.reductions.editingFinished.connect(reductions_edited)
    panel.baseline.activated.connect(lambda _index: session.set_option("sweep_baseline", panel.baseline.currentData()))

    def show(options: Options) -> None:
        _set_if_different(panel.latency_batch, options.latency_batch)
        if panel.reductions.text().strip() != options.sweep_reductions:
            panel.reductions.setText(options.sweep_reductions)
        select_data(panel.baseline, options.sweep_baseline)

    session.options_changed.connect(show)
    show(session.options)
    session.metrics_changed.connect(panel.show_metrics)
    session.sweep_point.connect(lambda name, xs, ys: panel.sweep_plot.set_series(name, [100 * x for x in xs], ys))
    session.plans_changed.connect(lambda plans: panel.sweep_plot.set_plans(plan_points(plans)))
    session.reset.connect(lambda view: panel.sweep_plot.clear() if view in ("all", "sweep") else None)

    def enable() -> None:
        ready = not session.busy and session.analysis is not None
        panel.evaluate_button.setEnabled(ready)
        panel.sweep_button.setEnabled(ready)

    on_state_change(session, enable)


def bind_finetune_panel(panel: FinetunePanel, session: Session) -> None:
    panel.finetuneRequested.connect(session.finetune)
    panel.epochs.valueChanged.connect(lambda value: session.set_option("finetune_epochs", value))
    panel.lr.valueChanged.connect(lambda value: session.set_option("finetune_lr", value))

    def show(options: Options) -> None:
        _set_if_different(panel.epochs, options.finetune_epochs)
        _set_if_different(panel.lr, options.finetune_lr)

    session.options_changed.connect(show)
    show(session.options)
    session.history_point.connect(panel.history.add_point)
    session.reset.connect(lambda view: panel.history.clear() if view in ("all", "history") else None)
    on_state_change(session, lambda: panel.start_button.setEnabled(not session.busy and session.analysis is not None))


def plan_points(plans: list) -> list[tuple[str, float, float]]:
    """The measured named plans as (name, FLOPs reduction in %, top-1 in %) for the sweep plot."""
    return [
        (plan.name, 100 * plan.flops_reduction(), float(plan.metrics["top1_after"]))
        for plan in plans
        if isinstance(plan.metrics.get("top1_after"), (int, float))
    ]


def bind_plans_panel(panel: PlansPanel, session: Session) -> None:
    panel.keepRequested.connect(lambda name: panel.show_note(session.keep_plan(name)))
    panel.switchRequested.connect(session.load_plan)
    panel.removeRequested.connect(session.remove_plan)
    panel.measureRequested.connect(lambda: session.measure_plans())
    session.plans_changed.connect(lambda plans: panel.set_plans(plans, session.current_plan_name()))
    session.keep_changed.connect(lambda _keep, _final: panel.mark_current(session.current_plan_name()))
    on_state_change(session, lambda: panel.set_ready(not session.busy and session.analysis is not None))


def bind_sensitivity_panel(panel: SensitivityPanel, session: Session) -> None:
    panel.measureRequested.connect(session.measure_sensitivity)
    panel.relaxRequested.connect(session.relax_sensitive)
    panel.plot.layerSelected.connect(session.select_layer)
    session.sensitivity_note.connect(panel.show_note)

    def show_relax() -> None:
        panel.plot.set_relax(session.relax_preview(panel.count.value()))

    def show_values(layers: dict, stale: set) -> None:
        panel.set_values(layers, stale, session.layers_in_removed_blocks())
        show_relax()

    panel.countChanged.connect(lambda _count: show_relax())
    session.sensitivity_changed.connect(show_values)
    session.constraints_changed.connect(lambda _constraints: show_relax())
    session.analysis_changed.connect(lambda analysis: panel.set_layers(analysis.names if analysis else []))
    session.selection_changed.connect(panel.plot.set_selected)
    on_state_change(session, lambda: panel.set_ready(not session.busy and session.analysis is not None))


def bind_architecture_panel(panel: ArchitecturePanel, session: Session) -> None:
    """The graph is traced when the panel is in view and there is none for the current analysis."""

    def want() -> None:
        if panel.isVisible() and session.architecture is None and session.analysis is not None:
            session.build_architecture()
            panel.set_graph(None, waiting=True)

    def show_graph(graph) -> None:
        panel.set_graph(graph, session.keep)
        panel.view.set_removed(session.removed_blocks)
        panel.view.set_selected(session.selected or "")
        if graph is None:
            want()

    panel.shown.connect(want)
    panel.view.layerSelected.connect(session.select_layer)
    session.architecture_changed.connect(show_graph)
    session.analysis_changed.connect(lambda analysis: None if analysis else panel.set_graph(None))
    session.keep_changed.connect(lambda keep, _final: panel.view.set_keep(keep))
    session.blocks_changed.connect(lambda _rows, removed: panel.view.set_removed(removed))
    session.selection_changed.connect(panel.view.set_selected)


def bind_blocks_panel(panel: BlocksPanel, session: Session) -> None:
    """Rows follow the session's blocks; a tick asks the session, which may refuse (the box goes back)."""
    panel.scoreRequested.connect(session.score_blocks)
    panel.removeToggled.connect(session.set_block_removed)
    session.blocks_note.connect(panel.show_note)

    def show(*_args) -> None:
        panel.set_blocks(session.blocks, session.removed_blocks, session.block_flops())

    session.blocks_changed.connect(show)
    session.keep_changed.connect(lambda _keep, final: show() if final else None)
    on_state_change(
        session, lambda: panel.set_ready(not session.busy and session.model is not None and session.data is not None)
    )


def bind_progress(progress: ProgressStatus, session: Session) -> None:
    runner = session.runner
    runner.started.connect(progress.start)
    runner.progress.connect(progress.update_progress)
    runner.cancelling.connect(lambda _name: progress.cancelling())
    runner.busyChanged.connect(lambda busy: None if busy else progress.finish())
    progress.cancelRequested.connect(session.cancel)

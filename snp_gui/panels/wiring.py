"""Signal connections between the main window's widgets and the controller, in both directions."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import TYPE_CHECKING

from snp_engine.api import Analysis
from snp_engine.models import LoadedModel
from snp_gui.panels.common import select_data
from snp_gui.settings import Options
from snp_gui.workers import FAILED

if TYPE_CHECKING:
    from snp_gui.main_window import MainWindow


def connect_all(w: MainWindow) -> None:
    _controller_to_widgets(w)
    _widgets_to_controller(w)
    _progress(w)


def _controller_to_widgets(w: MainWindow) -> None:
    c = w.controller
    c.modelChanged.connect(lambda loaded: _model_loaded(w, loaded))
    c.dataChanged.connect(lambda bundle: _data_loaded(w, bundle))
    c.preparedChanged.connect(lambda prepared: w.data_panel.show_prepared(prepared))
    c.analysisChanged.connect(lambda analysis: _analysis_changed(w, analysis))
    c.keepChanged.connect(lambda keep, final: _keep_changed(w, keep))
    c.metricsChanged.connect(w.summary.set_metrics)
    c.metricsChanged.connect(w.evaluate_panel.show_metrics)
    c.staleChanged.connect(w.summary.mark_stale)
    c.sweepPoint.connect(lambda name, xs, ys: w.evaluate_panel.sweep_plot.set_series(name, [100 * x for x in xs], ys))
    c.historyPoint.connect(w.finetune_panel.history.add_point)
    c.message.connect(w.statusBar().showMessage)
    c.errorOccurred.connect(w.show_error)


def _widgets_to_controller(w: MainWindow) -> None:
    c = w.controller
    w.model_panel.loadRequested.connect(w.load_model_spec)
    w.data_panel.loadRequested.connect(c.load_data)
    w.data_panel.optionsChanged.connect(lambda: _data_options(w))
    w.analysis_panel.changed.connect(lambda key, value: _option_changed(w, key, value))
    w.analysis_panel.analyseRequested.connect(c.analyse)
    w.threshold.valueChanged.connect(c.set_threshold)
    w.threshold.valueChangeFinished.connect(c.set_threshold)
    w.curves.keepChanged.connect(lambda name, k: c.set_layer_keep(name, k, final=False))
    w.curves.keepChangeFinished.connect(lambda name, k: c.set_layer_keep(name, k, final=True))
    w.curves.layerSelected.connect(w.table.select)
    w.table.layerSelected.connect(w.curves.set_selected)
    w.table.keepEdited.connect(lambda name, k: c.set_layer_keep(name, k, final=True))
    w.evaluate_panel.evaluateRequested.connect(c.evaluate)
    w.evaluate_panel.sweepRequested.connect(lambda values, baseline: _sweep(w, values, baseline))
    w.evaluate_panel.latencyBatchChanged.connect(lambda value: setattr(c.options, "latency_batch", value))
    w.finetune_panel.finetuneRequested.connect(lambda epochs, lr: _finetune(w, epochs, lr))


def _progress(w: MainWindow) -> None:
    runner = w.controller.runner
    runner.started.connect(w.progress.start)
    runner.progress.connect(w.progress.update_progress)
    runner.busyChanged.connect(lambda busy: (w.update_actions(), None if busy else w.progress.finish()))
    runner.ended.connect(lambda name, outcome, text: w.update_actions())
    w.progress.cancelRequested.connect(w.cancel)
    for signal in (w.controller.modelChanged, w.controller.dataChanged, w.controller.analysisChanged):
        signal.connect(lambda *_: w.update_actions())
    runner.ended.connect(lambda name, outcome, text: _recent_failed(w, name, outcome))


# -- controller → widgets ---------------------------------------------------------------------------


def _model_loaded(w: MainWindow, loaded: LoadedModel) -> None:
    w.model_panel.show_loaded(loaded)
    w.data_panel.show_loaded(w.controller.data)
    w.settings.add_recent("models", loaded.spec)
    w.refresh_recent()
    w.setWindowTitle(f"snp — {loaded.arch}")


def _data_loaded(w: MainWindow, bundle) -> None:
    w.data_panel.show_loaded(bundle)
    if w.controller.data_spec:
        w.settings.add_recent("data", w.controller.data_spec)
        w.refresh_recent()


def _analysis_changed(w: MainWindow, analysis: Analysis | None) -> None:
    if analysis is None:
        w.curves.clear()
        w.table.set_rows([])
        w.summary.set_costs(0, 0, 0.0, 0.0)
        return
    w.curves.set_curves(analysis.curves, {name: units for name, units in analysis.units.items()})
    model = w.controller.model.model if w.controller.model else None
    params, flops = layer_costs(analysis, {})  # unpruned; excluded rows keep these numbers
    rows = [
        {
            "name": g.name,
            "type": _layer_type(model, g.name, g.group.layout),
            "units": g.units,
            "kept": g.units,
            "explained": 1.0,
            "params": params.get(g.name, 0),
            "flops": flops.get(g.name, 0.0),
        }
        for g in analysis.groups
    ]
    rows += [
        {
            "name": e.name,
            "type": _layer_type(model, e.name, ""),
            "units": e.units,
            "kept": e.units,
            "explained": None,
            "params": params.get(e.name, 0),
            "flops": flops.get(e.name, 0.0),
            "excluded_reason": e.reason,
        }
        for e in analysis.excluded
    ]
    w.table.set_rows(rows)
    w.analysis_panel.set_value("ordering", analysis.ordering)
    w.analysis_panel.set_value("curve", analysis.curve_kind)


def _keep_changed(w: MainWindow, keep: dict[str, int]) -> None:
    c = w.controller
    w.curves.set_keep(keep)
    w.curves.set_threshold(c.threshold)
    params, flops = layer_costs(c.analysis, c.keep)
    w.table.update_keep(keep, c.explained(), params, flops)
    w.summary.set_costs(*c.costs())


def _layer_type(model, name: str, fallback: str) -> str:
    try:
        return type(model.get_submodule(name)).__name__ if model is not None else fallback
    except AttributeError:
        return fallback


def _recent_failed(w: MainWindow, name: str, outcome: str) -> None:
    """Loading failed: leave the panels showing what is actually loaded."""
    if outcome == FAILED and name == "load model":
        w.model_panel.show_loaded(w.controller.model)
    elif outcome == FAILED and name == "load data":
        w.data_panel.show_loaded(w.controller.data)


# -- widgets → controller ---------------------------------------------------------------------------


def _data_options(w: MainWindow) -> None:
    c = w.controller
    old_size = c.options.input_size
    for key, value in w.data_panel.values().items():
        setattr(c.options, key, value)
    if c.options.input_size != old_size:
        c.check_data()  # fit the data to the new input size and check the model on it again


def _option_changed(w: MainWindow, key: str, value: str) -> None:
    c = w.controller
    if key in ("ordering", "curve"):
        c.replot(**{key: value})
    else:
        setattr(c.options, key, value)
        if c.metrics and not c.stale:  # measured with another device or compensation
            c.stale = True
            c.staleChanged.emit(True)


def _sweep(w: MainWindow, reductions: list[float], baseline: str) -> None:
    w.controller.options.sweep_reductions = ", ".join(f"{r:g}" for r in reductions)
    w.controller.options.sweep_baseline = baseline
    w.controller.sweep(reductions, baseline)


def _finetune(w: MainWindow, epochs: int, lr: float) -> None:
    w.controller.options.finetune_epochs, w.controller.options.finetune_lr = epochs, lr
    w.finetune_panel.history.clear()
    w.controller.finetune(epochs, lr)


# -- options remembered between runs ----------------------------------------------------------------


def show_options(w: MainWindow) -> None:
    """Put the controller's options into the panels; a device that is gone falls back to what is there."""
    o = w.controller.options
    w.data_panel.set_values(o.samples, o.batch_size, o.input_size)
    for key in ("device", "ordering", "curve", "compensation"):
        if not w.analysis_panel.set_value(key, getattr(o, key)):
            setattr(o, key, w.analysis_panel.value(key))  # e.g. a GPU that is gone
    w.threshold.set_value(o.threshold_mode, o.threshold_value)
    w.evaluate_panel.latency_batch.setValue(o.latency_batch)
    w.finetune_panel.epochs.setValue(o.finetune_epochs)
    w.finetune_panel.lr.setValue(o.finetune_lr)
    w.evaluate_panel.reductions.setText(o.sweep_reductions)
    select_data(w.evaluate_panel.baseline, o.sweep_baseline)


def store_options(w: MainWindow, load: bool) -> None:
    """Read the last-used options from the settings (``load``) or write them back."""
    c = w.controller
    if not load:
        for key, value in asdict(c.options).items():
            w.settings.set_value(f"options/{key}", value)
        return
    saved = {f.name: w.settings.value(f"options/{f.name}") for f in fields(Options)}
    device = c.options.device  # a fresh start prefers the best device found now
    c.options = Options.from_dict({k: v for k, v in saved.items() if v is not None})
    if not w.settings.value("options/device"):
        c.options.device = device
    w.apply_options()


def layer_costs(analysis: Analysis | None, keep: dict[str, int]) -> tuple[dict[str, int], dict[str, float]]:
    """Parameters and FLOPs of each group's own layers (producer and its norm) and of each excluded
    layer, under ``keep`` (``{}`` gives the unpruned costs); for the table, so microseconds matter."""
    params: dict[str, int] = {}
    flops: dict[str, float] = {}
    if analysis is None:
        return params, flops
    model = analysis.costs
    owners = set(model.units) | {e.name for e in analysis.excluded}

    def kept(group: str | None) -> float:
        return 1.0 if group is None else keep.get(group, model.units[group]) / model.units[group]

    for layer in model.layers:
        owner = layer.channel_group or (layer.name if layer.name in owners else None)
        if owner is None:
            continue
        scale = kept(layer.in_group) * kept(layer.out_group) * kept(layer.channel_group)
        bias = kept(layer.out_group) * kept(layer.channel_group)
        params[owner] = params.get(owner, 0) + round(layer.weight_params * scale + layer.bias_params * bias)
        flops[owner] = flops.get(owner, 0.0) + layer.macs * scale
    return params, flops

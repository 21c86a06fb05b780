"""Plot, table, summary and threshold widgets of the main window, driven with plain numpy data."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import time

import numpy as np
import pytest
from PySide6.QtCore import QModelIndex, QPointF, Qt
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QStyleOptionViewItem

from snp_gui.layer_table import COLUMNS, KEPT, LayerTable
from snp_gui.plots.curves import CurvesWidget
from snp_gui.plots.history import HistoryPlot, SweepPlot
from snp_gui.summary import DASH, STALE_TIP, SummaryBar, human_count
from snp_gui.threshold import ThresholdControl

GROUPS = 50


def monotone_curves(count: int = GROUPS, seed: int = 0) -> dict[str, np.ndarray]:
    """Concave explained-variance curves from 0 to 1, like those of real layers."""
    rng = np.random.default_rng(seed)
    curves = {}
    for index in range(count):
        n = int(rng.integers(8, 512))
        spectrum = np.sort(rng.exponential(1.0, n) ** 3)[::-1]
        curves[f"block{index}.conv"] = np.concatenate([[0.0], np.cumsum(spectrum) / spectrum.sum()])
    return curves


def rows_for(curves: dict[str, np.ndarray], keep: dict[str, int]) -> list[dict]:
    rows = [
        {
            "name": name,
            "type": "Conv2d",
            "units": len(c) - 1,
            "kept": keep[name],
            "explained": float(c[keep[name]]),
            "params": 9 * 64 * keep[name],
            "flops": 1e6 * keep[name],
        }
        for name, c in curves.items()
    ]
    rows.insert(
        3,
        {
            "name": "fc",
            "type": "Linear",
            "units": 1000,
            "kept": 1000,
            "explained": None,
            "params": 513_000,
            "flops": 5.13e5,
            "excluded_reason": "output layer",
        },
    )
    return rows


@pytest.fixture
def curves() -> dict[str, np.ndarray]:
    return monotone_curves()


@pytest.fixture
def keep(curves) -> dict[str, int]:
    return {name: max(1, (len(c) - 1) // 2) for name, c in curves.items()}


@pytest.fixture
def widget(qtbot, curves, keep) -> CurvesWidget:
    w = CurvesWidget()
    qtbot.addWidget(w)
    w.set_curves(curves, keep)
    return w


@pytest.fixture
def table(qtbot, curves, keep) -> LayerTable:
    t = LayerTable()
    qtbot.addWidget(t)
    t.set_rows(rows_for(curves, keep))
    return t


# ------------------------------------------------------------------------------------------- curves


def test_set_curves_makes_one_curve_and_marker_per_group(widget, curves, keep):
    assert widget.keep() == keep
    for name in curves:
        assert widget.marker(name).value() == pytest.approx(keep[name])
        assert len(widget.curve(name).getData()[0]) == len(curves[name])
    assert widget.selected() == next(iter(curves))


def test_set_keep_moves_markers_without_emitting(qtbot, widget, curves):
    target = {name: 1 + i % 5 for i, name in enumerate(curves)}
    with qtbot.assertNotEmitted(widget.keepChanged), qtbot.assertNotEmitted(widget.keepChangeFinished):
        widget.set_keep(target)
    assert widget.keep() == target
    assert all(widget.marker(name).value() == pytest.approx(k) for name, k in target.items())
    assert widget.focus_marker.value() == pytest.approx(target[widget.selected()])


def test_dragging_a_marker_emits_snapped_keep(qtbot, widget, curves, keep):
    name = list(curves)[4]
    k = keep[name] - 3
    with qtbot.waitSignal(widget.keepChanged, timeout=1000) as blocker:
        widget.marker(name).setValue(k + 0.4)
    assert blocker.args == [name, k]
    assert widget.marker(name).value() == k  # the line itself snaps to the whole unit
    with qtbot.assertNotEmitted(widget.keepChanged):
        widget.marker(name).setValue(k - 0.3)  # same whole unit: nothing to report


def test_dragging_clamps_to_one_and_n(qtbot, widget, curves):
    name = list(curves)[7]
    n = len(curves[name]) - 1
    with qtbot.waitSignal(widget.keepChanged, timeout=1000) as blocker:
        widget.marker(name).setValue(n + 25)
    assert blocker.args == [name, n]
    with qtbot.waitSignal(widget.keepChanged, timeout=1000) as blocker:
        widget.marker(name).setValue(-10)
    assert blocker.args == [name, 1]


def test_drag_end_and_focus_marker(qtbot, widget, curves, keep):
    name = list(curves)[2]
    widget.set_selected(name)
    with qtbot.waitSignal(widget.keepChanged, timeout=1000) as blocker:
        widget.focus_marker.setValue(keep[name] + 1.2)
    assert blocker.args == [name, keep[name] + 1]
    assert widget.marker(name).value() == keep[name] + 1  # mirrored in the overlay
    with qtbot.waitSignal(widget.keepChangeFinished, timeout=1000) as blocker:
        widget.marker(name).sigPositionChangeFinished.emit(widget.marker(name))
    assert blocker.args == [name, keep[name] + 1]


def test_set_selected_updates_focused_curve_and_threshold(qtbot, widget, curves, keep):
    name = list(curves)[10]
    with qtbot.assertNotEmitted(widget.layerSelected):
        widget.set_selected(name)
    _x, y = widget.focus_curve.getData()
    np.testing.assert_allclose(y, curves[name])
    assert widget.focus.getPlotItem().titleLabel.text == name
    assert widget.focus_marker.value() == keep[name]
    widget.set_threshold(0.95)
    assert widget.overlay_threshold.isVisible() and widget.focus_threshold.isVisible()
    assert widget.overlay_threshold.value() == pytest.approx(0.95)
    widget.set_threshold(None)
    assert not widget.focus_threshold.isVisible()


def test_clicking_a_curve_selects_it(qtbot, widget, curves):
    name = list(curves)[5]
    with qtbot.waitSignal(widget.layerSelected, timeout=1000) as blocker:
        widget.curve(name).sigClicked.emit(widget.curve(name), None)
    assert blocker.args == [name]
    assert widget.selected() == name


def test_fraction_axis_and_hover_readout(qtbot, widget, curves, keep):
    name = next(iter(curves))
    widget.resize(900, 400)
    widget.show()
    qtbot.waitExposed(widget)
    widget.x_axis.setCurrentIndex(1)
    n = len(curves[name]) - 1
    assert widget.marker(name).value() == pytest.approx(keep[name] / n)
    with qtbot.waitSignal(widget.keepChanged, timeout=1000) as blocker:
        widget.marker(name).setValue(3.2 / n)
    assert blocker.args == [name, 3]
    view = widget.focus.getPlotItem().vb
    widget._hover_focus(view.mapViewToScene(QPointF(10 / n, 0.5)))
    assert widget.focus_readout.text().startswith(f"{name} — 10 units kept: {100 * curves[name][10]:.1f} % explained")
    view = widget.overlay.getPlotItem().vb
    widget._hover_overlay(view.mapViewToScene(QPointF(0.0, 1.02)))  # above every curve: nothing to read
    assert not widget.hover_dot.isVisible() and "Hover" in widget.overlay_readout.text()
    widget.clear()
    assert widget.keep() == {} and widget.selected() is None


def test_curves_follow_the_palette(qtbot, widget, curves):
    palette = QPalette()
    palette.setColor(QPalette.ColorRole.Base, QColor("#1e1e1e"))
    palette.setColor(QPalette.ColorRole.Text, QColor("#e0e0e0"))
    name = next(iter(curves))
    before = widget.curve(name).opts["pen"].color().name()
    widget.setPalette(palette)
    assert widget.overlay.backgroundBrush().color().name() == "#1e1e1e"
    assert widget.curve(name).opts["pen"].color().name() != before  # lifted off the dark base


# -------------------------------------------------------------------------------------------- table


def test_table_rows_and_excluded_last(table, curves):
    model = table.layer_model
    assert model.rowCount() == len(curves) + 1 and model.columnCount() == len(COLUMNS)
    last = model.rowCount() - 1
    assert model.name_at(last) == "fc"
    assert not model.flags(model.index(last, KEPT)) & Qt.ItemFlag.ItemIsEditable
    assert "output layer" in model.data(model.index(last, 0), Qt.ItemDataRole.ToolTipRole)
    assert model.data(model.index(last, 5)) == DASH
    assert model.flags(model.index(0, KEPT)) & Qt.ItemFlag.ItemIsEditable
    assert not model.setData(model.index(last, KEPT), 3)


def test_editing_kept_emits_clamped_int(qtbot, table, curves):
    model = table.layer_model
    name = model.name_at(1)
    n = len(curves[name]) - 1
    with qtbot.waitSignal(table.keepEdited, timeout=1000) as blocker:
        assert model.setData(model.index(1, KEPT), n + 100)
    assert blocker.args == [name, n]
    assert model.data(model.index(1, KEPT)) == str(n)
    with qtbot.waitSignal(model.keepEdited, timeout=1000) as blocker:
        model.setData(model.index(1, KEPT), 0)
    assert blocker.args == [name, 1]


def test_kept_spin_box_delegate(qtbot, table, curves):
    model = table.layer_model
    index = model.index(0, KEPT)
    delegate = table.itemDelegateForColumn(KEPT)
    editor = delegate.createEditor(table.viewport(), QStyleOptionViewItem(), index)
    delegate.setEditorData(editor, index)
    assert (editor.minimum(), editor.maximum()) == (1, len(curves[model.name_at(0)]) - 1)
    assert editor.value() == int(model.data(index))
    editor.setValue(3)
    with qtbot.waitSignal(table.keepEdited, timeout=1000) as blocker:
        delegate.setModelData(editor, model, index)
    assert blocker.args == [model.name_at(0), 3]


def test_update_keep_changes_only_changed_cells(qtbot, table, curves):
    model = table.layer_model
    name = model.name_at(2)
    changed: list[tuple[int, int, int]] = []
    model.dataChanged.connect(lambda a, b, _roles=(): changed.append((a.row(), a.column(), b.column())))
    table.update_keep({name: 2}, {name: 0.5}, {name: 1234}, {name: 2.5e6})
    assert changed == [(2, 3, 7)]
    assert [model.data(model.index(2, c)) for c in range(3, 8)] == [
        "2",
        f"{200 / (len(curves[name]) - 1):.1f} %",
        "50.0 %",
        "1.23 k",
        "2.50 M",
    ]
    changed.clear()
    table.update_keep({name: 2}, {name: 0.5})
    assert changed == []


def test_selection_signals_and_sorting(qtbot, table):
    model = table.layer_model
    with qtbot.waitSignal(table.layerSelected, timeout=1000) as blocker:
        table.selectRow(4)
    assert blocker.args == [model.name_at(4)]
    with qtbot.assertNotEmitted(table.layerSelected):
        table.select(model.name_at(9))
    selected = model.name_at(9)
    assert table.selected() == selected
    table.sortByColumn(2, Qt.SortOrder.DescendingOrder)
    units = [int(model.data(model.index(r, 2))) for r in range(model.rowCount() - 1)]
    assert units == sorted(units, reverse=True) and model.name_at(model.rowCount() - 1) == "fc"
    assert table.selected() == selected  # selection follows the layer
    assert model.rowCount(model.index(0, 0)) == 0 and not model.data(QModelIndex())


# ------------------------------------------------------------------------------------ summary, human


def test_human_count():
    assert [human_count(x) for x in (11.2e6, 37_000, 1.82e9, 512, 999_960)] == [
        "11.2 M",
        "37.0 k",
        "1.82 G",
        "512",
        "1.00 M",
    ]


def test_summary_bar(qtbot):
    bar = SummaryBar()
    qtbot.addWidget(bar)
    bar.set_costs(11_200_000, 5_600_000, 1.82e9, 0.91e9)
    text = bar.text()
    assert "11.2 M → 5.60 M (−50.0 %)" in text and "1.82 G → 910 M (−50.0 %)" in text
    assert "2.00× (est.)" in text
    bar.set_metrics({"top1_before": 69.76, "top1_after": 68.1, "fidelity": 0.0231, "latency_before_ms": 12.0})
    assert "69.76 % → 68.10 %" in bar.text() and "2.31 %" in bar.text() and "12.0 ms → —" in bar.text()
    bar.set_metrics({"top1_before": 69.76, "top1_after": 68.1, "eval_data": "the calibration data npz:c.npz"})
    assert "measured on the calibration data npz:c.npz" in bar.values["top1"].toolTip()
    bar.mark_stale(True)
    assert STALE_TIP in bar.values["top1"].toolTip() and bar.is_stale()
    assert "measured on the calibration data" in bar.values["top1"].toolTip()
    bar.mark_stale(False)
    assert STALE_TIP not in bar.values["top1"].toolTip()
    bar.set_metrics({})
    assert all(bar.values[key].text() == DASH for key in ("top1", "fidelity", "latency"))
    bar.set_costs(0, 0, 0.0, 0.0)  # no analysis
    assert all(bar.values[key].text() == DASH for key in ("params", "flops", "speedup"))


# ---------------------------------------------------------------------------------------- threshold


def test_threshold_defaults_and_sync(qtbot):
    control = ThresholdControl()
    qtbot.addWidget(control)
    assert (control.mode(), control.value()) == ("variance", pytest.approx(0.99))
    assert control.slider.value() == 990 and control.spin.value() == pytest.approx(99.0)
    control.slider.setSliderDown(True)
    with (
        qtbot.waitSignal(control.valueChanged, timeout=1000) as blocker,
        qtbot.assertNotEmitted(control.valueChangeFinished),
    ):
        control.slider.setValue(955)
    assert blocker.args == ["variance", pytest.approx(0.955)]
    assert control.spin.value() == pytest.approx(95.5)
    with qtbot.waitSignal(control.valueChangeFinished, timeout=1000) as blocker:
        control.slider.setSliderDown(False)
    assert blocker.args == ["variance", pytest.approx(0.955)]
    with qtbot.waitSignals([control.valueChanged, control.valueChangeFinished], timeout=1000):
        control.spin.setValue(90.0)
    assert control.slider.value() == 900


def test_threshold_set_value_and_modes(qtbot):
    control = ThresholdControl()
    qtbot.addWidget(control)
    with qtbot.assertNotEmitted(control.valueChanged), qtbot.assertNotEmitted(control.valueChangeFinished):
        control.set_value("flops", 0.3)
    assert (control.mode(), control.slider.value(), control.spin.value()) == ("flops", 300, pytest.approx(30.0))
    with qtbot.waitSignal(control.valueChangeFinished, timeout=1000) as blocker:
        control.mode_combo.setCurrentIndex(0)
    assert blocker.args == ["variance", pytest.approx(0.99)]
    with qtbot.waitSignal(control.valueChanged, timeout=1000) as blocker:
        control.mode_combo.setCurrentIndex(2)
    assert blocker.args == ["params", pytest.approx(0.5)]
    assert "parameters" in control.slider.toolTip()
    with pytest.raises(ValueError):
        control.set_value("latency", 0.5)


# ------------------------------------------------------------------------------------ history, sweep


def test_history_and_sweep_plots(qtbot):
    history = HistoryPlot()
    qtbot.addWidget(history)
    for epoch in range(5):
        history.add_point(epoch, {"train_loss": 1 / (epoch + 1), "val_loss": 1.2 / (epoch + 1), "val_top1": 60 + epoch})
    assert history.series("val_top1") == ([0, 1, 2, 3, 4], [60, 61, 62, 63, 64])
    assert len(history.loss_plot.getPlotItem().listDataItems()) == 2
    history.clear()
    assert not history.accuracy_plot.getPlotItem().listDataItems()
    sweep = SweepPlot()
    qtbot.addWidget(sweep)
    sweep.set_series("SNP", [50, 10, 30], [60, 70, 66])
    sweep.set_series("L1", [10, 30, 50], [69, 62, 40])
    sweep.set_series("SNP", [10, 30, 50, 70], [70, 66, 60, 45])
    assert sweep.names() == ["SNP", "L1"]
    assert sweep.series("SNP") == ([10, 30, 50, 70], [70, 66, 60, 45])
    with pytest.raises(ValueError):
        sweep.set_series("bad", [1, 2], [1])
    sweep.clear()
    assert sweep.names() == []


# -------------------------------------------------------------------------------------- performance


def test_keep_updates_are_cheap(qtbot, widget, table, curves):
    rng = np.random.default_rng(1)
    explained = {name: 0.9 for name in curves}
    started = time.perf_counter()
    for _ in range(20):
        keep = {name: int(rng.integers(1, len(c))) for name, c in curves.items()}
        widget.set_keep(keep)
        table.update_keep(keep, {name: float(curves[name][k]) for name, k in keep.items()} or explained)
    average = (time.perf_counter() - started) / 20
    print(f"set_keep + update_keep: {1000 * average:.1f} ms on average")
    assert average < 0.05, f"set_keep + update_keep took {1000 * average:.1f} ms on average"

"""Editing the plan: the threshold refuses values the engine cannot plan with, settings and session files
are checked when read, the keep-count editor says when it clamps, and undo/redo go back and forth."""

from __future__ import annotations

import json
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

from snp_gui.layer_table import KEPT, KeptEditor, LayerTable
from snp_gui.main_window import MainWindow
from snp_gui.settings import Options, Settings, load_options, save_options, threshold_problem
from snp_gui.state import Session
from snp_gui.threshold import ThresholdControl
from snp_gui.workers import FINISHED
from tests.gui.helpers import run

TIMEOUT = 60_000


@pytest.fixture
def window(qtbot, settings) -> MainWindow:
    window = MainWindow(settings=settings)
    qtbot.addWidget(window)
    window.session.update_options(device="cpu", samples=64, batch_size=16, latency_repeats=3)
    window.session.open_demo()
    qtbot.waitUntil(lambda: window.session.data is not None and not window.session.busy, timeout=TIMEOUT)
    assert run(qtbot, window.session, "analysis", window.session.analyse)[0] == FINISHED
    yield window
    window.session.shutdown()


def type_into(spin, text: str) -> None:
    """Select all, type ``text`` and press Enter, as a user does."""
    spin.setFocus()
    spin.selectAll()
    QTest.keyClicks(spin, text)
    QTest.keyClick(spin, Qt.Key.Key_Return)


# -- 1. the threshold -------------------------------------------------------------------------------


def test_threshold_problem_names_the_limits():
    assert "above 0 %" in threshold_problem("variance", 0.0)
    assert threshold_problem("variance", 0.001) is None and threshold_problem("variance", 1.0) is None
    assert threshold_problem("flops", 0.0) is None and "below 100 %" in threshold_problem("flops", 1.0)
    assert "negative" in threshold_problem("params", -0.1)
    assert threshold_problem("variance", float("nan")) is not None


def test_the_control_refuses_zero_variance_and_says_why(qtbot):
    control = ThresholdControl()
    qtbot.addWidget(control)
    control.show()
    control.set_value("variance", 0.95)
    emitted = []
    control.valueChangeFinished.connect(lambda mode, value: emitted.append((mode, value)))
    type_into(control.spin, "0")
    assert emitted == [] and control.value() == pytest.approx(0.95)
    assert control.spin.value() == pytest.approx(95.0)
    assert control.note.isVisible() and "above 0 %" in control.note.text()
    assert control.slider.minimum() > 0  # the slider cannot reach 0 % either
    type_into(control.spin, "80")
    assert emitted == [("variance", pytest.approx(0.8))] and not control.note.isVisible()
    control.mode_combo.setCurrentIndex(1)  # FLOPs reduction: 100 % is refused, 0 % is fine
    type_into(control.spin, "100")
    assert "below 100 %" in control.note.text() and control.value() == pytest.approx(0.5)
    assert control.slider.maximum() < 1000


def test_an_invalid_threshold_changes_neither_plan_nor_options_and_is_never_saved(qtbot, window, settings):
    s = window.session
    keep, value = dict(s.keep), s.options.threshold_value
    s.set_threshold("variance", 0.0)  # what a script or an old binding could still send
    assert s.keep == keep and s.options.threshold_value == value
    assert not window.threshold.note.isHidden() and "above 0 %" in window.threshold.note.text()
    assert window.threshold.value() == pytest.approx(value)
    window.close()
    assert float(settings.value("options/threshold_value")) == pytest.approx(value)


def test_a_threshold_set_from_code_shows_in_the_controls(qtbot, window):
    """Relax, a removed block or a script sets the session's threshold directly: the controls follow."""
    window.session.set_threshold("flops", 0.5)
    assert window.threshold.mode() == "flops" and window.threshold.value() == pytest.approx(0.5)
    assert window.threshold.spin.value() == pytest.approx(50.0)
    assert window.session.plan().flops_reduction >= 0.5 - 1e-9


def test_bad_saved_settings_fall_back_to_defaults_with_a_note(qtbot, tmp_path):
    settings = Settings(tmp_path / "bad.ini")
    for key, value in {"threshold_mode": "variance", "threshold_value": 0, "samples": -5, "curve": "nonsense"}.items():
        settings.set_value(f"options/{key}", value)
    settings.sync()
    notes: list[str] = []
    options = load_options(settings, "cpu", notes)
    assert options.threshold_value == 0.99 and options.samples == Options().samples and options.curve == "variance"
    assert len(notes) == 3 and any("above 0 %" in note for note in notes)
    window = MainWindow(settings=settings)  # opens normally and says what it replaced
    qtbot.addWidget(window)
    assert window.session.options.threshold_value == 0.99
    assert "Settings:" in window.statusBar().currentMessage()
    assert window.threshold.value() == pytest.approx(0.99)
    options.threshold_value = 0.0
    save_options(settings, options)  # an invalid value is never written
    assert float(settings.value("options/threshold_value")) == 0.99
    window.session.shutdown()


def test_a_session_file_with_a_bad_threshold_opens_with_the_default(qtbot, tmp_path):
    path = tmp_path / "hand-edited.snpsession"
    raw = {"format": "snp-gui-session", "version": 1, "options": {"threshold_value": 0.0, "batch_size": "x"}}
    path.write_text(json.dumps(raw), encoding="utf-8")
    session = Session()
    messages = []
    session.message.connect(messages.append)
    session.open_session_file(str(path))
    assert session.options.threshold_value == 0.99 and session.options.batch_size == Options().batch_size
    assert any("hand-edited.snpsession" in m and "above 0 %" in m for m in messages)
    session.shutdown()


def test_a_threshold_that_cuts_every_layer_to_one_unit_is_warned_about(window):
    window.threshold.valueChangeFinished.emit("variance", 0.001)
    assert all(k == 1 for k in window.session.keep.values())
    assert "only 1 unit" in window.threshold.note.text() and not window.threshold.note.isHidden()
    window.threshold.valueChangeFinished.emit("variance", 0.9)
    assert window.threshold.note.isHidden()


# -- 2. the keep-count editor -----------------------------------------------------------------------


def test_typing_more_than_the_units_clamps_visibly(qtbot, window):
    table: LayerTable = window.table
    model = table.layer_model
    window.tabs.setCurrentWidget(table)
    window.show()
    row = 0
    name, units = model.name_at(row), window.session.analysis.units[model.name_at(row)]
    index = model.index(row, KEPT)
    table.setCurrentIndex(index)
    table.edit(index)
    editor = table.findChild(KeptEditor)
    assert editor is not None and (editor.minimum(), editor.maximum()) == (1, units)
    type_into(editor, "999")
    qtbot.waitUntil(lambda: window.session.keep[name] == units, timeout=2000)  # the commit is queued; not 9
    assert f"{units} units" in table.last_notice and "999" in table.last_notice
    assert "999" in window.statusBar().currentMessage()


# -- 3. undo, redo and "custom" ---------------------------------------------------------------------


def test_undo_and_redo_over_edits_drags_and_threshold_moves(qtbot, window):
    s, curves = window.session, window.curves
    undo, redo = window.actions["undo"], window.actions["redo"]
    assert not undo.isEnabled() and not redo.isEnabled()
    planned = dict(s.keep)
    first, second = s.analysis.names[0], s.analysis.names[1]
    assert not window.threshold.is_custom()
    # a drag of many intermediate positions is one step
    for k in (5, 4, 3, 2):
        curves.keepChanged.emit(first, k)
    curves.keepChangeFinished.emit(first, 2)
    assert s.keep[first] == 2 and undo.isEnabled()
    assert window.threshold.is_custom()
    model = window.table.layer_model
    model.setData(model.index(model.row_of(second), KEPT), 3)
    after_edits = dict(s.keep)
    window.threshold.valueChangeFinished.emit("flops", 0.5)
    assert s.options.threshold_mode == "flops" and not window.threshold.is_custom()
    undo.trigger()  # back to the two hand edits, with the old threshold shown
    assert s.keep == after_edits and s.options.threshold_mode == "variance"
    assert window.threshold.mode() == "variance" and window.threshold.is_custom()
    undo.trigger()  # the table edit
    assert s.keep[second] == planned[second] and s.keep[first] == 2
    undo.trigger()  # the whole drag at once
    assert s.keep == planned and not undo.isEnabled() and not window.threshold.is_custom()
    redo.trigger()
    assert s.keep[first] == 2 and s.keep[second] == planned[second]
    redo.trigger()
    redo.trigger()
    assert s.options.threshold_mode == "flops" and not redo.isEnabled()
    assert [k.toString() for k in undo.shortcuts()] == ["Ctrl+Z"]
    assert "Ctrl+Shift+Z" in [k.toString() for k in redo.shortcuts()]
    assert "&Edit" in [menu.title() for menu in window.menuBar().findChildren(type(window.menus["recent_models"]))]


def test_a_slider_drag_is_one_undo_step(qtbot, window):
    s, slider = window.session, window.threshold.slider
    before = dict(s.keep)
    slider.setSliderDown(True)
    for position in (900, 850, 800):
        slider.setValue(position)
    slider.setSliderDown(False)
    window.threshold.slider.sliderReleased.emit()
    assert s.keep != before
    s.undo()
    assert s.keep == before and not s.can_undo()


# -- 4. results of the previous model ---------------------------------------------------------------


def fill_results(window: MainWindow) -> None:
    """Results as a sweep, a fine-tune and an evaluation leave them (through the session's signals)."""
    s = window.session
    s._sweep_point(("SNP", 0.5, 80.0))
    s._history_point((1, {"test top-1 %": 90.0, "test loss": 0.3}))
    s.set_metrics({"top1_before": 99.0, "top1_after": 95.0, "latency_before_ms": 2.0, "latency_after_ms": 1.0})
    assert window.evaluate_panel.sweep_plot.names() and window.finetune_panel.history._points
    assert "95.00" in window.evaluate_panel.results.text() and "95.00" in window.summary.values["top1"].text()


def assert_no_results(window: MainWindow) -> None:
    assert window.evaluate_panel.sweep_plot.names() == []
    assert not window.finetune_panel.history._points
    assert window.finetune_panel.history.loss_plot.getPlotItem().listDataItems() == []
    assert window.evaluate_panel.results.text() == "Not evaluated yet."
    assert window.summary.values["top1"].text() == "—" and window.summary.values["latency"].text() == "—"
    assert window.session.sweep_results == {} and window.session.history == []
    assert window.curves.keep() == {} and window.table.layer_model.rowCount() == 0


def test_another_model_clears_every_result_view(qtbot, window):
    fill_results(window)
    outcome, message = run(qtbot, window.session, "load model", lambda: window.session.open_model("demo-resnet"))
    assert outcome == FINISHED, message
    assert_no_results(window)


def test_opening_a_session_clears_every_result_view(qtbot, window, tmp_path):
    path = tmp_path / "other.snpsession"
    path.write_text(json.dumps({"format": "snp-gui-session", "version": 1, "data_spec": "digits"}), encoding="utf-8")
    fill_results(window)
    window.session.open_session_file(str(path))
    assert_no_results(window)
    qtbot.waitUntil(lambda: not window.session.busy, timeout=TIMEOUT)


# -- 9. odd set-ups ---------------------------------------------------------------------------------


def test_more_calibration_images_than_the_data_has_is_said_with_the_number_used(qtbot, window):
    s, panel = window.session, window.data_panel
    have = len(s.data.calibration)
    assert panel.samples_note.isHidden()
    panel.samples.setValue(have + 700)  # what typing in the spin box does
    assert s.options.samples == have + 700
    assert not panel.samples_note.isHidden() and f"all {have} are used" in panel.samples_note.text()
    messages = []
    s.message.connect(messages.append)
    assert run(qtbot, s, "analysis", s.analyse)[0] == FINISHED
    assert s.analysis.info["samples"] == have  # the engine did use them all
    assert any(f"all {have} are used" in m for m in messages)
    panel.samples.setValue(64)
    assert panel.samples_note.isHidden()

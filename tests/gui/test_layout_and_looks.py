"""How the window looks: a minimum size and a layout that works at 1280x720, plot legends outside the data,
plain axis numbers, the 1.0 tick, readable export headers, toolbar icons on a dark palette, the sweep's
input problem beside the field, and the fine-tune progress counted in epochs."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
from PySide6.QtGui import QImage, QPainter

from snp_gui.app import _dark_palette
from snp_gui.main_window import MINIMUM_SIZE, MainWindow
from snp_gui.panels.actions import lightness
from snp_gui.panels.evaluate_panel import EvaluatePanel
from snp_gui.plots.history import HistoryPlot, SweepPlot
from snp_gui.plots.series import curve_plot
from snp_gui.settings import Settings
from snp_gui.workers import FINISHED

TIMEOUT = 60_000


@pytest.fixture
def window(qtbot, tmp_path, monkeypatch) -> MainWindow:
    monkeypatch.setenv("SNP_GUI_SETTINGS", str(tmp_path / "settings.ini"))
    window = MainWindow(settings=Settings(tmp_path / "settings.ini"))
    qtbot.addWidget(window)
    window.session.update_options(device="cpu", samples=64, batch_size=16, latency_repeats=3)
    window.session.open_demo()
    qtbot.waitUntil(lambda: window.session.data is not None and not window.session.busy, timeout=TIMEOUT)
    with qtbot.waitSignal(window.session.runner.ended, timeout=TIMEOUT) as blocker:
        window.session.analyse()
    assert blocker.args[1] == FINISHED
    yield window
    window.session.shutdown()


def tick_labels(plot, side: str = "left") -> list[str]:
    image = QImage(10, 10, QImage.Format.Format_ARGB32)
    painter = QPainter(image)
    try:
        return [text for _rect, _flags, text in plot.getPlotItem().getAxis(side).generateDrawSpecs(painter)[2]]
    finally:
        painter.end()


def test_a_small_window_keeps_every_number_and_useful_curves(qtbot, window):
    screen = window.screen().availableGeometry()
    assert window.minimumWidth() == min(MINIMUM_SIZE[0], screen.width())
    assert window.minimumHeight() == min(MINIMUM_SIZE[1], screen.height())
    window.resize(1280, 720)
    window.show()
    qtbot.waitExposed(window)
    qtbot.wait(50)
    for key, label in window.summary.values.items():
        assert label.width() >= label.sizeHint().width(), f"summary field {key} is clipped"
    assert window.curves.height() >= 240 and window.curves.overlay.height() >= 150
    assert window.tabs.height() >= 140
    assert window.curves.height() > window.tabs.height()  # the curves are the main view
    window.threshold.spin.setValue(0.0)  # refused: the whole reason shows under the control
    note = window.threshold.note
    qtbot.waitUntil(lambda: note.isVisible() and note.height() >= note.heightForWidth(note.width()), timeout=1000)
    window.tabs.setCurrentWidget(window.finetune_panel)
    history = window.finetune_panel.history  # side by side, so both fit the short tab
    qtbot.waitUntil(lambda: history.accuracy_plot.x() > 0, timeout=1000)
    assert history.loss_plot.y() == history.accuracy_plot.y() and history.loss_plot.x() < history.accuracy_plot.x()


def test_plot_legends_sit_outside_the_data_and_axes_are_not_rescaled(qtbot):
    history = HistoryPlot()
    qtbot.addWidget(history)
    for epoch in range(3):
        history.add_point(epoch, {"test loss": 0.001 / (epoch + 1), "test top-1 %": 90.0 + epoch})
    assert history.loss_plot.getPlotItem().legend is None and history.accuracy_plot.getPlotItem().legend is None
    assert "test loss" in history.legend.text() and "test top-1 %" in history.legend.text()
    axis = history.loss_plot.getPlotItem().getAxis("left")
    assert not axis.autoSIPrefix and "x0.001" not in axis.labelString()
    history.clear()
    assert history.legend.text() == ""
    sweep = SweepPlot()
    qtbot.addWidget(sweep)
    sweep.set_series("SNP", [30.0, 50.0], [90.0, 80.0])
    assert sweep.plot.getPlotItem().legend is None and "SNP" in sweep.legend.text()


def test_the_curve_axis_shows_its_ends_on_a_short_plot(qtbot):
    plot = curve_plot("")
    qtbot.addWidget(plot)
    plot.plot([0, 1, 2], [0.0, 0.6, 1.0])
    plot.resize(400, 180)
    plot.show()
    qtbot.waitExposed(plot)
    labels = tick_labels(plot)
    assert "1.0" in labels and "0.0" in labels


def test_export_table_headers_are_padded(window):
    from snp_gui.dialogs.export import removal_summary

    html = removal_summary(window.session.plan(), window.session.analysis.units, {}, False)
    assert "cellpadding=5" in html and "<th align=right>Removed</th>" in html


def test_toolbar_icons_stay_visible_on_a_dark_palette(qtbot, window):
    light = lightness(window.actions["analyse"].icon())
    window.setPalette(_dark_palette())
    assert lightness(window.actions["analyse"].icon()) > max(light, 128)  # the black play icon is lifted
    assert lightness(window.actions["open_model"].icon()) > 90  # a coloured one keeps its colours


def test_bad_sweep_input_is_explained_beside_the_field(qtbot):
    panel = EvaluatePanel()
    qtbot.addWidget(panel)
    panel.reductions.setText("0.5, 2")
    with qtbot.assertNotEmitted(panel.sweepRequested):
        panel.sweep_button.click()
    assert not panel.reductions_note.isHidden() and "between 0 and 1" in panel.reductions_note.text()
    panel.reductions.setText("30%, 50%")
    with qtbot.waitSignal(panel.sweepRequested, timeout=1000) as blocker:
        panel.sweep_button.click()
    assert blocker.args[0] == [0.3, 0.5] and panel.reductions_note.isHidden()


def test_invalid_sweep_text_never_becomes_an_option(window):
    panel = window.evaluate_panel
    before = window.session.options.sweep_reductions
    panel.reductions.setText("lots")
    panel.reductions.editingFinished.emit()
    assert window.session.options.sweep_reductions == before and not panel.reductions_note.isHidden()


def test_finetune_progress_counts_epochs(qtbot, window):
    s = window.session
    seen: list[tuple[float, str, object]] = []
    s.runner.progress.connect(lambda name, fraction, message, left: seen.append((fraction, message, left)))
    epochs_seen: list[int] = []
    s.history_point.connect(lambda epoch, _values: epochs_seen.append(epoch))
    with qtbot.waitSignal(
        s.runner.ended, timeout=TIMEOUT, check_params_cb=lambda name, *_: name == "fine-tuning"
    ) as blocker:
        s.finetune(2, 0.01)
    assert blocker.args[1] == FINISHED
    fractions = [fraction for fraction, _message, _left in seen]
    assert fractions == sorted(fractions), "the bar never runs backwards"
    assert set(fractions) <= {0.0, 0.5, 1.0} and fractions[-1] == 1.0 and 0.5 in fractions
    assert epochs_seen == [0, 1, 2]


def test_epoch_progress_ignores_the_engines_own_scale():
    from snp_engine.progress import Reporter
    from snp_gui.tasks import EpochProgress

    reported: list[float] = []

    class Parent(Reporter):
        def update(self, fraction: float, message: str = "") -> None:
            reported.append(fraction)

    progress = EpochProgress(Parent(), epochs=4)
    progress.update(0.7, "epoch 1/4 loss 0.3")  # the engine's fraction (0.7 of its 0..0.95 scale)
    progress.epoch_done(1)
    progress.update(0.1)
    progress.epoch_done(4)
    assert reported == [0.0, 0.25, 0.25, 1.0]

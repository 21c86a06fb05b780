"""The main window end to end on the demo network and the digits data, headless (offscreen Qt)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import time

import pytest
import torch
from PySide6.QtCore import QMimeData, QPoint, Qt, QTimer, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QComboBox, QPushButton, QSpinBox, QTextBrowser

import snp_engine
from snp_engine.models import DemoVGG
from snp_gui.main_window import MainWindow
from snp_gui.settings import Settings
from snp_gui.workers import CANCELLED, FAILED, FINISHED
from tests.gui.helpers import run

TIMEOUT = 60_000


def make_window(qtbot, settings: Settings, demo: bool = True) -> MainWindow:
    window = MainWindow(settings=settings)
    qtbot.addWidget(window)
    window.session.options.device = "cpu"
    window.session.options.samples = 64
    window.session.options.batch_size = 16
    window.session.options.latency_repeats = 3
    if demo:
        window.session.open_demo()
        qtbot.waitUntil(lambda: window.session.data is not None and not window.session.busy, timeout=TIMEOUT)
    return window


@pytest.fixture
def window(qtbot, settings) -> MainWindow:
    window = make_window(qtbot, settings)
    yield window
    window.session.shutdown()


@pytest.fixture
def analysed(qtbot, window) -> MainWindow:
    outcome, message = run(qtbot, window, "analysis", window.session.analyse)
    assert outcome == FINISHED, message
    return window


def table_kept(window: MainWindow) -> dict[str, int]:
    model = window.table.layer_model
    return {
        model.name_at(row): int(model.index(row, 3).data(Qt.ItemDataRole.EditRole))
        for row in range(model.rowCount())
        if not model.is_excluded(row)
    }


def test_window_opens_with_the_demo_loaded(window):
    c = window.session
    assert c.model.arch == "demo-vgg"
    assert c.data.name == "digits"
    assert "demo-vgg" in window.model_panel.info.text()
    assert "digits" in window.data_panel.info.text()
    assert window.actions["analyse"].isEnabled()
    assert not window.actions["evaluate"].isEnabled()  # nothing to evaluate before an analysis


def test_analysis_populates_curves_table_and_summary(analysed):
    c = analysed.session
    assert c.analysis is not None and c.analysis.info["samples"] == 64
    assert set(analysed.curves.keep()) == set(c.analysis.names)
    assert analysed.curves.keep() == c.keep
    assert table_kept(analysed) == c.keep
    assert analysed.table.layer_model.rowCount() == len(c.analysis.names) + len(c.analysis.excluded)
    assert "→" in analysed.summary.values["params"].text()
    assert analysed.actions["evaluate"].isEnabled()


def test_cancel_stops_quickly_and_keeps_the_previous_analysis(qtbot, analysed):
    c = analysed.session
    before, keep = c.analysis, dict(c.keep)
    c.options.samples, c.options.batch_size = 300, 1  # hundreds of small batches
    cancelled_at = []

    def cancel_once(name, fraction, message, left):
        if name == "analysis" and "statistics" in message and not cancelled_at:
            cancelled_at.append(time.monotonic())
            analysed.actions["cancel"].trigger()  # the Esc shortcut

    c.runner.progress.connect(cancel_once)
    outcome, _ = run(qtbot, analysed, "analysis", c.analyse)
    assert outcome == CANCELLED
    assert time.monotonic() - cancelled_at[0] < 1.0
    assert c.analysis is before and c.keep == keep
    assert analysed.curves.keep() == keep
    assert "cancelled" in analysed.statusBar().currentMessage()
    qtbot.waitUntil(lambda: not analysed.progress.isVisible())


def test_event_loop_keeps_answering_during_analysis(qtbot, window):
    window.session.options.samples, window.session.options.batch_size = 300, 4
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start()
    outcome, message = run(qtbot, window, "analysis", window.session.analyse)
    timer.stop()
    assert outcome == FINISHED, message
    # it kept answering; how quickly (the longest stall) is measured by benchmarks/gui_latency.py
    assert len(ticks) > 5


def test_threshold_moves_every_marker_and_the_summary(analysed):
    c = analysed.session
    params_text = analysed.summary.values["params"].text()
    analysed.threshold.valueChangeFinished.emit("variance", 0.8)
    assert c.keep == c.analysis.plan(variance=0.8).keep
    assert analysed.curves.keep() == c.keep and table_kept(analysed) == c.keep
    assert analysed.summary.values["params"].text() != params_text
    analysed.threshold.valueChangeFinished.emit("flops", 0.5)
    _params, flops = c.analysis.cost(c.keep)
    assert 1 - flops / c.analysis.cost()[1] == pytest.approx(0.5, abs=0.05)
    assert analysed.curves.keep() == c.keep


def test_marker_drag_updates_table_and_summary_live(analysed):
    c = analysed.session
    name = c.analysis.names[2]
    flops_text = analysed.summary.values["flops"].text()
    analysed.curves.keepChanged.emit(name, 5)  # while dragging
    assert c.keep[name] == 5 and table_kept(analysed)[name] == 5
    assert analysed.summary.values["flops"].text() != flops_text
    analysed.curves.keepChangeFinished.emit(name, 6)
    assert table_kept(analysed)[name] == 6 and c.overridden


def test_table_edit_moves_the_marker(analysed):
    c = analysed.session
    name = c.analysis.names[0]
    model = analysed.table.layer_model
    model.setData(model.index(model.row_of(name), 3), 3, Qt.ItemDataRole.EditRole)
    assert c.keep[name] == 3 and analysed.curves.keep()[name] == 3


def test_ordering_change_replots_without_a_forward_pass(qtbot, analysed, monkeypatch):
    import snp_engine.analysis as analysis

    # the function that streams data through the network, where the analysis calls it
    monkeypatch.setattr(analysis, "collect_moments", lambda *a, **k: pytest.fail("re-plotting must not re-read data"))
    outcome, message = run(qtbot, analysed, "re-plot", lambda: analysed.analysis_panel.changed.emit("ordering", "l1"))
    assert outcome == FINISHED, message
    assert analysed.session.analysis.ordering == "l1"
    assert analysed.curves.keep() == analysed.session.keep


def test_evaluate_reports_accuracy_fidelity_and_latency(qtbot, analysed):
    c = analysed.session
    analysed.threshold.valueChangeFinished.emit("variance", 0.95)
    outcome, message = run(qtbot, analysed, "evaluation", c.evaluate)
    assert outcome == FINISHED, message
    m = c.metrics
    assert 90 < m["top1_before"] <= 100 and 0 <= m["top1_after"] <= 100
    assert m["fidelity"] >= 0 and m["latency_before_ms"] > 0 and m["latency_after_ms"] > 0
    assert "%" in analysed.summary.values["top1"].text()
    assert not analysed.summary.is_stale()
    analysed.curves.keepChangeFinished.emit(c.analysis.names[0], 2)
    assert analysed.summary.is_stale()


def test_sweep_and_finetune_fill_their_plots(qtbot, analysed):
    c = analysed.session
    outcome, message = run(qtbot, analysed, "sweep", lambda: c.sweep([0.5], "l1"))
    assert outcome == FINISHED, message
    assert len(analysed.evaluate_panel.sweep_plot.names()) == 2
    tune = analysed.finetune_panel.finetuneRequested
    outcome, message = run(qtbot, analysed, "fine-tuning", lambda: tune.emit(1, 0.01))
    assert outcome == FINISHED, message
    xs, _ = analysed.finetune_panel.history.series("test top-1 %")
    assert xs == [0.0, 1.0]
    assert c.metrics["finetuned_epochs"] == 1 and c.metrics["top1_after"] > 0
    assert c.metrics["fidelity"] is None  # logits of a trained network are not comparable to the original's
    outcome, message = run(qtbot, analysed, "evaluation", c.evaluate)  # evaluates the fine-tuned weights
    assert outcome == FINISHED, message
    assert c.metrics["finetuned_epochs"] == 1 and c.metrics["latency_after_ms"] > 0


def test_bad_model_file_shows_an_error_and_the_app_stays_usable(qtbot, window, tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"this is not a checkpoint")
    before = window.session.model
    outcome, message = run(qtbot, window, "load model", lambda: window.session.open_path(str(bad)))
    assert outcome == FAILED and "broken.pth" in message and "\n" not in message
    assert window.errors.last == ("load model", message)
    assert "failed" in window.statusBar().currentMessage()
    assert window.session.model is before
    outcome, _ = run(qtbot, window, "analysis", window.session.analyse)
    assert outcome == FINISHED


def test_pickled_model_needs_explicit_trust(qtbot, window, tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(DemoVGG().eval(), path)
    window.session.confirm_trust = lambda _path: False
    window.session.open_model(str(path), "pickle")
    assert not window.session.runner.busy and window.session.model.arch == "demo-vgg"
    assert "not trusted" in window.statusBar().currentMessage()
    window.session.confirm_trust = lambda _path: True
    outcome, message = run(qtbot, window, "load model", lambda: window.session.open_model(str(path), "pickle"))
    assert outcome == FINISHED, message
    assert window.session.model.arch == "pickle:DemoVGG" and window.session.model_trusted


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:FutureWarning")
def test_export_dialog_writes_files_that_reload(qtbot, analysed, tmp_path, monkeypatch):
    from snp_gui.dialogs.export import ExportDialog

    c = analysed.session
    analysed.threshold.valueChangeFinished.emit("variance", 0.95)
    path = tmp_path / "small.safetensors"
    shown = []

    def accept(dialog):  # stands in for the user: check the summary, pick a path and TorchScript, press Export
        shown.append(dialog.findChild(QTextBrowser).toPlainText())
        dialog.path.setText(str(tmp_path / "small"))
        dialog.torchscript.setChecked(True)
        return 1

    monkeypatch.setattr(ExportDialog, "exec", accept)
    outcome, message = run(qtbot, analysed, "export", analysed.actions["export"].trigger)
    assert outcome == FINISHED, message
    assert "units removed" in shown[0] and c.analysis.names[0] in shown[0]
    model = snp_engine.load(path)
    assert sum(p.numel() for p in model.parameters()) == c.analysis.cost(c.keep)[0]
    scripted = torch.jit.load(str(tmp_path / "small.pt"))
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(scripted(x), model(x), rtol=1e-4, atol=1e-5)
    assert "Exported" in analysed.statusBar().currentMessage()

    # the exported file opens again as a model, e.g. when dropped on the window
    outcome, message = run(qtbot, analysed, "load model", lambda: analysed.session.open_path(str(path)))
    assert outcome == FINISHED, message
    assert c.model.spec == str(path) and analysed.model_panel.kind.currentData() == "snp"


def test_damaged_session_file_is_reported(window, tmp_path):
    path = tmp_path / "broken.snpsession"
    path.write_text("{not json", encoding="utf-8")
    window.session.open_session_file(str(path))
    assert window.errors.last[0] == "open session" and "broken.snpsession" in window.errors.last[1]
    assert window.session.model.arch == "demo-vgg"


def test_about_lists_versions():
    from snp_gui.dialogs.about import about_text, versions

    found = versions()
    for name in ("snp", "torch", "PySide6", "pyqtgraph"):
        assert found[name]
    assert found["PySide6"] in about_text()


def test_session_round_trip(qtbot, analysed, settings, tmp_path):
    c = analysed.session
    analysed.threshold.valueChangeFinished.emit("variance", 0.9)
    analysed.curves.keepChangeFinished.emit(c.analysis.names[1], 4)
    keep = dict(c.keep)
    path = tmp_path / "work.snpsession"
    outcome, message = run(qtbot, analysed, "save session", lambda: analysed.session.save_session_file(str(path)))
    assert outcome == FINISHED, message
    assert path.is_file() and (tmp_path / "work.stats.safetensors").is_file()

    other = make_window(qtbot, settings, demo=False)
    outcome, message = run(qtbot, other, "open session", lambda: other.session.open_session_file(str(path)))
    assert outcome == FINISHED, message
    assert other.session.keep == keep
    assert other.curves.keep() == keep and table_kept(other) == keep
    assert other.session.options.threshold_value == pytest.approx(0.9)
    assert other.session.model.arch == "demo-vgg" and other.session.data.name == "digits"
    assert str(path) in settings.recent("sessions")
    other.session.shutdown()


def test_dropping_an_image_folder_loads_it_as_data(qtbot, window, tmp_path):
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for index in range(3):
            Image.new("L", (12, 12), color=40 * index + (100 if label == "b" else 0)).save(
                tmp_path / "images" / label / f"{index}.png"
            )
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(tmp_path / "images"))])
    event = QDropEvent(
        QPoint(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier
    )
    outcome, message = run(qtbot, window, "load data", lambda: window.dropEvent(event))
    assert outcome == FINISHED, message
    bundle = window.session.data  # as found: grey images, one channel, at their own size
    assert bundle.num_classes == 2 and bundle.channels == 1 and bundle.image_size == (12, 12)
    fitted = window.session.model_data()  # decoded again for demo-vgg's 1x8x8 input
    assert fitted.channels == 1 and fitted.image_size == (8, 8) and fitted.calibration[0][0].shape == (1, 8, 8)
    assert window.data_panel.current() == str(tmp_path / "images")


def test_recent_files_and_shortcuts(window, settings):
    assert settings.recent("models")[0] == "demo-vgg"
    assert settings.recent("data")[0] == "digits"
    assert next(a.text() for a in window.menus["recent_models"].actions()) == "demo-vgg"
    shortcuts = {key: [s.toString() for s in action.shortcuts()] for key, action in window.actions.items()}
    assert shortcuts["open_model"] == ["Ctrl+O"] and shortcuts["open_data"] == ["Ctrl+Shift+O"]
    assert shortcuts["analyse"] == ["Ctrl+R", "F5"] and shortcuts["cancel"] == ["Esc"]
    assert shortcuts["evaluate"] == ["Ctrl+E"] and shortcuts["save_session"] == ["Ctrl+S"]
    assert shortcuts["export"] == ["Ctrl+Shift+E"] and shortcuts["quit"] == ["Ctrl+Q"]
    for panel in (window.model_panel, window.data_panel, window.analysis_panel):
        for kind in (QComboBox, QSpinBox, QPushButton):
            for child in panel.findChildren(kind):
                assert child.toolTip(), f"{kind.__name__} in {panel.title()} has no tooltip"


def test_closing_during_analysis_cancels_and_waits(qtbot, settings):
    window = make_window(qtbot, settings)
    c = window.session
    c.options.samples, c.options.batch_size = 300, 1
    width, height = window.minimumWidth(), window.minimumHeight()  # at most the offscreen screen
    window.resize(width, height)  # fits the screen, so restoring needs no clamping
    with qtbot.waitSignal(c.runner.started, timeout=TIMEOUT):
        c.analyse()
    window.close()
    assert not c.runner.busy or c.runner.wait(0)
    assert settings.window_geometry() is not None
    reopened = MainWindow(settings=Settings(settings.path))
    qtbot.addWidget(reopened)
    assert reopened.size().width() == width and reopened.size().height() == height
    assert reopened.session.options.samples == 300

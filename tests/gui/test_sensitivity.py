"""Per-layer sensitivity: measured in the background (progress, cancel), shown as a table column and as bars,
stale when the plan gives a layer another count, cleared with a new analysis; Relax gives the most
sensitive layers units back within the plan's target, as one undo step."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
from PySide6.QtCore import Qt

from snp_gui.layer_table import ALONE
from snp_gui.main_window import MainWindow
from snp_gui.plots.sensitivity import WARNING_COLOUR
from snp_gui.settings import Settings
from snp_gui.workers import CANCELLED, FINISHED
from tests.gui.helpers import run

TIMEOUT = 60_000


@pytest.fixture
def window(qtbot, tmp_path, monkeypatch) -> MainWindow:
    path = tmp_path / "settings.ini"
    monkeypatch.setenv("SNP_GUI_SETTINGS", str(path))
    window = MainWindow(settings=Settings(path))
    qtbot.addWidget(window)
    window.session.update_options(device="cpu", samples=64, batch_size=16)
    window.session.open_demo()
    qtbot.waitUntil(lambda: window.session.data is not None and not window.session.busy, timeout=TIMEOUT)
    assert run(qtbot, window, "analysis", window.session.analyse)[0] == FINISHED
    window.threshold.valueChangeFinished.emit("flops", 0.6)
    yield window
    window.session.shutdown()


def measure(qtbot, window: MainWindow) -> None:
    assert run(qtbot, window, "sensitivity", window.sensitivity_panel.measure_button.click) == (FINISHED, "")


def alone_cell(window: MainWindow, name: str):
    model = window.table.layer_model
    return model.index(model.row_of(name), ALONE)


def test_measuring_fills_the_table_column_and_the_bars(qtbot, window):
    s, panel = window.session, window.sensitivity_panel
    names = s.analysis.names
    assert alone_cell(window, names[0]).data() == "—" and not panel.relax_button.isEnabled()
    progress: list[float] = []
    s.runner.progress.connect(lambda _name, fraction, *_: progress.append(fraction))
    points: list[str] = []
    s.sensitivity_changed.connect(lambda layers, _stale: points.append(len(layers)))
    measure(qtbot, window)
    assert set(s.sensitivity) == set(names) and max(points) == len(names) and progress
    layer = s.sensitivity[names[0]]
    assert layer.keep == s.keep[names[0]] < layer.units and layer.error > 0
    assert alone_cell(window, names[0]).data() == f"{layer.top1:.1f} % / {100 * layer.error:.1f} %"
    assert "pruned alone" in alone_cell(window, names[0]).data(Qt.ItemDataRole.ToolTipRole)
    plot = panel.plot
    assert plot.values(names[0]) == pytest.approx((100 * layer.error, layer.drop))
    assert "alone at" in plot.describe(names[0])
    assert panel.relax_button.isEnabled()


def test_a_layer_given_another_count_is_stale_and_a_new_analysis_clears_all(qtbot, window):
    s, plot = window.session, window.sensitivity_panel.plot
    measure(qtbot, window)
    name, other = s.analysis.names[0], s.analysis.names[1]
    fresh_colour = plot.colour_of(other)
    window.curves.keepChangeFinished.emit(name, s.keep[name] + 2)
    assert s.stale_layers() == {name}
    assert plot.colour_of(name) != fresh_colour and plot.colour_of(other) == fresh_colour
    assert "measure again" in alone_cell(window, name).data(Qt.ItemDataRole.ToolTipRole)
    assert alone_cell(window, name).data(Qt.ItemDataRole.ForegroundRole) is not None
    assert alone_cell(window, other).data(Qt.ItemDataRole.ForegroundRole) is None
    s.undo()  # the count it was measured at: fresh again
    assert s.stale_layers() == set()
    assert run(qtbot, window, "analysis", s.analyse)[0] == FINISHED
    assert s.sensitivity == {} and plot.values(name) is None and alone_cell(window, name).data() == "—"


def test_measuring_can_be_cancelled_and_keeps_the_layers_measured(qtbot, window):
    s = window.session
    with qtbot.waitSignal(s.runner.ended, timeout=TIMEOUT) as ended:
        s.sensitivity_changed.connect(lambda layers, _stale: s.cancel() if len(layers) == 1 else None)
        window.sensitivity_panel.measure_button.click()
    assert ended.args[:2] == ["sensitivity", CANCELLED]
    assert 1 <= len(s.sensitivity) < len(s.analysis.names)
    assert window.sensitivity_panel.measure_button.isEnabled()


def test_relax_gives_the_most_sensitive_layers_units_back_and_keeps_the_target(qtbot, window):
    s, panel = window.session, window.sensitivity_panel
    measure(qtbot, window)
    before = dict(s.keep)
    assert s.options.threshold_mode == "flops"
    flops_target = s.costs()[2] * (1 - s.options.threshold_value)  # what the FLOPs reduction asks for
    ranked = [layer.name for layer in s.fresh_sensitivity().ranked()]
    panel.count.setValue(2)
    assert panel.plot.colour_of(ranked[0]) == WARNING_COLOUR and panel.plot.colour_of(ranked[2]) != WARNING_COLOUR
    panel.relax_button.click()
    for name in ranked[:2]:
        assert s.keep[name] == -(-(before[name] + s.analysis.units[name]) // 2)
        assert s.constraints.of(name).locked == s.keep[name]
    assert s.costs()[3] <= flops_target  # the FLOPs target holds: others gave units up
    assert any(s.keep[n] < before[n] for n in s.keep if n not in ranked[:2])
    assert s.options.threshold_mode == "flops" and not s.is_custom()
    s.undo()
    assert s.keep == before and not s.constraints.locked


def test_relax_without_a_fresh_measurement_is_refused_beside_the_button(qtbot, window):
    s, panel = window.session, window.sensitivity_panel
    assert not s.relax_sensitive(2)
    assert not panel.note.isHidden() and "measure the sensitivity" in panel.note.text()
    measure(qtbot, window)
    for name in s.analysis.names:  # every layer measured at another count now
        window.curves.keepChangeFinished.emit(name, max(1, s.keep[name] - 1))
    before = dict(s.keep)
    assert not s.relax_sensitive(1) and s.keep == before


def test_relax_of_a_hand_edited_plan_changes_only_those_layers(qtbot, window):
    s = window.session
    name = s.analysis.names[-1]
    window.curves.keepChangeFinished.emit(name, 3)
    measure(qtbot, window)
    before = dict(s.keep)
    top = s.fresh_sensitivity().ranked()[0].name
    assert s.relax_sensitive(1)
    assert {n for n in s.keep if s.keep[n] != before[n]} == {top} and s.keep[top] > before[top]


def test_clicking_a_bar_selects_its_layer_everywhere(qtbot, window):
    s, plot = window.session, window.sensitivity_panel.plot
    measure(qtbot, window)
    name = s.analysis.names[2]
    plot.layerSelected.emit(name)
    assert s.selected == name and window.table.selected() == name

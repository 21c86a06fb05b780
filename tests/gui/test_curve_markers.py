"""Markers of many layers stay apart (the selected one bright, the rest dimmed), dragging or nudging a marker
focuses its layer, and the hover read-outs neither linger nor wrap."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest
from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QEnterEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from snp_gui.plots.curves import HINT, CurvesWidget

GROUPS = 60


@pytest.fixture
def curves() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    out = {}
    for index in range(GROUPS):
        spectrum = np.sort(rng.exponential(size=16 + 4 * (index % 5)))[::-1]
        out[f"layer{index}"] = np.concatenate([[0.0], np.cumsum(spectrum) / spectrum.sum()])
    return out


@pytest.fixture
def widget(qtbot, curves) -> CurvesWidget:
    w = CurvesWidget()
    qtbot.addWidget(w)
    w.set_curves(curves, {name: (len(c) - 1) // 2 for name, c in curves.items()})
    w.resize(900, 400)
    w.show()
    qtbot.waitExposed(w)
    return w


def test_the_selected_layer_is_bright_and_the_others_dimmed(widget, curves):
    names = list(curves)
    assert widget.selected() == names[0]
    assert widget.curve(names[0]).opts["pen"].color().alpha() == 255
    assert widget.marker(names[0]).pen.color().alpha() == 255
    for name in names[1:]:
        assert widget.curve(name).opts["pen"].color().alpha() < 128
        assert widget.marker(name).pen.color().alpha() < 128
    widget.set_selected(names[30])
    assert widget.curve(names[30]).opts["pen"].color().alpha() == 255
    assert widget.curve(names[0]).opts["pen"].color().alpha() < 128


def test_dragging_a_marker_focuses_its_layer(qtbot, widget, curves):
    name = list(curves)[42]
    with qtbot.waitSignal(widget.layerSelected, timeout=1000) as selected:
        widget.marker(name).setValue(3)  # a drag of a dimmed layer's marker in the overlay
    assert selected.args == [name] and widget.selected() == name
    assert widget.focus.getPlotItem().titleLabel.text == name
    assert widget.focus_marker.value() == 3
    assert widget.overlay_readout.text().startswith(f"{name} — 3 units kept")
    assert widget.curve(name).opts["pen"].color().alpha() == 255


def test_arrow_keys_nudge_the_selected_marker(qtbot, widget, curves):
    name = list(curves)[5]
    widget.set_selected(name)
    k = widget.keep()[name]
    with qtbot.waitSignal(widget.keepChangeFinished, timeout=1000) as finished:
        QTest.keyClick(widget, Qt.Key.Key_Right)
    assert finished.args == [name, k + 1] and widget.marker(name).value() == k + 1
    with qtbot.waitSignal(widget.keepChangeFinished, timeout=1000) as finished:
        QTest.keyClick(widget.overlay, Qt.Key.Key_Left)  # with the plot focused after a click, too
    assert finished.args == [name, k]
    widget.set_keep({name: 1})
    with qtbot.assertNotEmitted(widget.keepChanged):
        QTest.keyClick(widget, Qt.Key.Key_Left)  # already at 1 unit


def test_hover_read_outs_go_when_the_mouse_leaves(widget, curves):
    name = next(iter(curves))
    view = widget.focus.getPlotItem().vb
    widget._hover_focus(view.mapViewToScene(QPointF(4, 0.5)))
    assert widget.focus_readout.text().startswith(name)
    QApplication.sendEvent(widget.focus.viewport(), QEvent(QEvent.Type.Leave))
    assert widget.focus_readout.text() == ""
    widget.overlay_readout.setText("layer3 — 4 units kept")
    widget.hover_dot.setVisible(True)
    QApplication.sendEvent(widget.overlay.viewport(), QEvent(QEvent.Type.Leave))
    assert widget.overlay_readout.text() == HINT and not widget.hover_dot.isVisible()
    assert QEnterEvent  # the enter side needs nothing: hovering sets the text again


def test_the_hint_never_wraps_so_the_plot_keeps_its_height(qtbot, widget):
    height = widget.overlay.height()
    widget.resize(420, 400)  # far narrower than the hint
    qtbot.wait(20)
    label = widget.overlay_readout
    assert not label.wordWrap() and label.height() <= label.fontMetrics().height() + 6
    widget.resize(900, 400)
    qtbot.wait(20)
    assert widget.overlay.height() == height


def test_an_attention_layer_counts_heads_in_its_read_outs(qtbot):
    w = CurvesWidget()
    qtbot.addWidget(w)
    heads = np.array([0.0, 0.6, 0.8, 0.95, 1.0])
    channels = np.linspace(0.0, 1.0, 33)
    w.set_curves({"attn": heads, "mlp": channels}, {"attn": 3, "mlp": 16}, {"attn": "heads"})
    w.set_selected("attn")
    assert w.focus_label.toPlainText().strip() == "3/4 heads: 95.0 %"
    axis = w.focus.getPlotItem().getAxis("bottom")
    assert axis.labelText == "kept heads"
    w.set_selected("mlp")
    assert w.focus_label.toPlainText().strip() == "16/32 units: 50.0 %"
    assert axis.labelText == "kept units"

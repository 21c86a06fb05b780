"""What a small change repaints: a marker moved by one unit repaints the strips it crossed (only the
points of each curve inside them are stroked, with the same pixels as the whole curve), tick labels
only where a strip reaches them, and the layer table only the row whose kept count changed. Counted,
not timed (benchmarks/gui_latency.py times them)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pyqtgraph as pg
import pytest
from PySide6.QtCore import QRect, QRectF, Qt
from PySide6.QtGui import QImage, QPainter
from PySide6.QtWidgets import QApplication, QStyleOptionGraphicsItem

from snp_gui import layer_table
from snp_gui.layer_table import LayerTable
from snp_gui.plots.curves import CurvesWidget

LONG = 256  # curves at least this long span enough of the overlay to be painted in strips


@pytest.fixture
def curves() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    out = {}
    for index, units in enumerate([64, 128, 256, 512, 1024, 2048] * 4):
        spectrum = np.sort(rng.exponential(size=units))[::-1]
        out[f"layer{index}"] = np.concatenate([[0.0], np.cumsum(spectrum) / spectrum.sum()])
    return out


@pytest.fixture
def widget(qtbot, curves) -> CurvesWidget:
    w = CurvesWidget()
    qtbot.addWidget(w)
    w.set_curves(curves, {name: (len(c) - 1) // 3 for name, c in curves.items()})
    w.resize(1000, 420)
    w.show()
    qtbot.waitExposed(w)
    settle()
    return w


def settle() -> None:
    for _ in range(3):  # the queued auto range, then the repaints it may cause
        QApplication.processEvents()


def stroked(widget: CurvesWidget, names: list[str]) -> tuple[int, int]:
    """Paints in strips and paints of whole curves so far, over the overlay curves of ``names``."""
    items = [widget.curve(name).curve for name in names]
    return sum(item.strips for item in items), sum(item.wholes for item in items)


def test_a_one_unit_drag_strokes_strips_of_the_curves_not_whole_curves(widget, curves):
    names = list(curves)
    long = [name for name in names if len(curves[name]) - 1 >= LONG]
    name = names[4]  # 1024 units
    widget.set_selected(name)
    settle()
    items_before = list(widget.overlay.getPlotItem().listDataItems())
    labels_before = [widget.overlay.getPlotItem().getAxis(side).label_paints for side in ("left", "bottom")]
    strips_before, wholes_before = stroked(widget, long)
    focus_before = widget.focus_curve.curve.wholes
    for _ in range(5):  # a slow drag: one unit at a time
        marker = widget.marker(name)
        marker.setValue(float(marker.units() - 1))
        settle()
    strips, wholes = stroked(widget, long)
    assert strips - strips_before >= 5  # the curves under the marker were painted again, in strips,
    assert wholes == wholes_before  # and no long curve was stroked whole
    assert widget.focus_curve.curve.wholes == focus_before  # nor the focused curve
    # the tick labels lie outside the plot area, so the strips did not replay them
    labels = [widget.overlay.getPlotItem().getAxis(side).label_paints for side in ("left", "bottom")]
    assert labels == labels_before
    # the same curve items, not rebuilt
    assert widget.overlay.getPlotItem().listDataItems() == items_before
    assert widget.keep()[name] == (len(curves[name]) - 1) // 3 - 5


def test_moving_a_marker_leaves_the_auto_range_alone(widget, curves, monkeypatch):
    """Markers are added with ignoreBounds: their moves cannot change the range, so none is computed."""
    ranges = []
    view = widget.overlay.getPlotItem().getViewBox()
    original = view.updateAutoRange
    monkeypatch.setattr(view, "updateAutoRange", lambda: ranges.append(1) or original())
    marker = widget.marker(next(iter(curves)))
    marker.setValue(float(marker.units() - 1))
    settle()
    assert ranges == []
    # a curve given new data does change it, before the repaint
    widget.curve(list(curves)[5]).setData(np.arange(4096.0), np.linspace(0.0, 1.0, 4096))
    settle()
    assert ranges and view.viewRange()[0][1] > 4000


def test_painting_a_strip_gives_the_pixels_of_the_whole_curve(widget, curves):
    """What a repaint in strips draws inside the strip equals pyqtgraph's stroke of the whole path."""
    view = widget.overlay
    size = view.viewport().size()

    def paint(item, strip: QRect, whole: bool) -> np.ndarray:
        image = QImage(size, QImage.Format.Format_ARGB32_Premultiplied)
        image.fill(0xFFFFFFFF)
        painter = QPainter(image)
        transform = item.deviceTransform(view.viewportTransform())
        painter.setClipRect(strip)
        painter.setWorldTransform(transform)
        option = QStyleOptionGraphicsItem()
        exposed = transform.inverted()[0].mapRect(QRectF(strip)).adjusted(-1, -1, 1, 1)
        option.exposedRect = exposed & item.boundingRect()
        (pg.PlotCurveItem.paint if whole else type(item).paint)(item, painter, option, None)
        painter.end()
        return np.frombuffer(image.constBits(), np.uint8, image.sizeInBytes()).copy()

    names = list(curves)
    widget.set_selected(names[5])  # one bright wide curve, the others dimmed (translucent)
    settle()
    strips = 0
    for name in (names[3], names[5], names[11]):
        item = widget.curve(name).curve
        for width in (3, 17):
            for left in range(0, size.width() - width, 37):
                strip = QRect(left, 0, width, size.height())
                before = item.strips
                ours = paint(item, strip, whole=False)
                strips += item.strips - before
                assert np.array_equal(ours, paint(item, strip, whole=True)), (name, left, width)
    assert strips > 20  # the comparison was of strips, not of whole curves


def test_a_kept_count_change_repaints_only_its_table_row(qtbot, monkeypatch):
    asked: list[int] = []
    data = layer_table.LayerTableModel.data

    def counted(self, index, role=Qt.ItemDataRole.DisplayRole):
        if role == Qt.ItemDataRole.DisplayRole:
            asked.append(index.row())
        return data(self, index, role)

    monkeypatch.setattr(layer_table.LayerTableModel, "data", counted)  # before the model is made
    table = LayerTable()
    qtbot.addWidget(table)
    rows = [
        {"name": f"layer{i}", "type": "Conv2d", "units": 64, "kept": 64, "explained": 1.0, "params": 1, "flops": 1}
        for i in range(30)
    ]
    table.set_rows(rows)
    table.resize(900, 600)
    table.show()
    qtbot.waitExposed(table)
    settle()
    changed, resets = [], []
    table.layer_model.dataChanged.connect(lambda first, last, *_: changed.append((first.row(), last.row())))
    table.layer_model.modelReset.connect(lambda: resets.append(1))
    asked.clear()
    keep = {row["name"]: 64 for row in rows} | {"layer7": 63}
    table.update_keep(keep, {"layer7": 0.99}, {"layer7": 1}, {"layer7": 1})
    settle()
    assert changed == [(7, 7)] and resets == []
    # the viewport repainted the changed row (its grid line touches the next one), not all 30
    assert 7 in asked and set(asked) <= {6, 7, 8}

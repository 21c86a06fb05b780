"""The pieces of the curves view: one group's series, the plots they are drawn in, and the hover read-out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPaintEvent
from PySide6.QtWidgets import QLabel, QSizePolicy, QVBoxLayout, QWidget

from snp_gui.plots import UnitMarker, make_plot, units_at


@dataclass
class Series:
    """One group's curve (``values[k]``: explained with ``k`` units kept), its colour and its overlay items."""

    values: np.ndarray
    colour: QColor
    curve: pg.PlotDataItem
    marker: UnitMarker
    word: str = "units"  # what a unit is: "heads" for an attention layer

    @property
    def n(self) -> int:
        return len(self.values) - 1

    def xs(self, fraction: bool) -> np.ndarray:
        k = np.arange(self.n + 1, dtype=float)
        return k / self.n if fraction else k


def curve_plot(title: str) -> pg.PlotWidget:
    """An explained-variance plot: y fixed to 0..1, zoom along the kept units only."""
    plot = make_plot(title, "kept units", "explained variance")
    left = plot.getPlotItem().getAxis("left")
    # fixed ticks, 1.0 included: on a short plot the automatic ones dropped the label at the top edge
    left.setTicks([[(v / 5, f"{v / 5:.1f}") for v in range(6)], [(v / 10, "") for v in range(11)]])
    for axis in (left, plot.getPlotItem().getAxis("bottom")):  # the labels at the ends (1.0) stay
        axis.setStyle(hideOverlappingLabels=False)
    plot.getPlotItem().setYRange(0.0, 1.0, padding=0.02)
    plot.getPlotItem().setMouseEnabled(x=True, y=False)  # y is always 0..1; zooming only makes sense along k
    return plot


def hidden_item(item: pg.GraphicsObject, z: float) -> pg.GraphicsObject:
    """``item`` hidden until there is something to show, at depth ``z``."""
    item.setVisible(False)
    item.setZValue(z)
    return item


class ReadoutLabel(QLabel):
    """One line of text that never wraps: cut with "…" when narrow, so the plot above never changes height."""

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(text, parent)
        self.setWordWrap(False)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)

    def sizeHint(self) -> QSize:
        return QSize(super().sizeHint().width(), self.fontMetrics().height() + 4)

    def minimumSizeHint(self) -> QSize:
        return QSize(0, self.fontMetrics().height() + 4)

    def paintEvent(self, _event: QPaintEvent) -> None:
        rect = self.contentsRect()
        text = self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideRight, rect.width())
        painter = QPainter(self)
        painter.setPen(self.palette().color(self.foregroundRole()))
        painter.drawText(rect, int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter), text)


def plot_column(plot: pg.PlotWidget, label: QLabel) -> QWidget:
    """``plot`` with its read-out line under it."""
    column = QWidget()
    box = QVBoxLayout(column)
    box.setContentsMargins(0, 0, 0, 0)
    box.addWidget(plot, 1)
    box.addWidget(label)
    return column


def nearest(series: dict[str, Series], x: float, y: float, within: float, fraction: bool) -> str | None:
    """The group whose curve passes closest to ``(x, y)``, if one is nearer than ``within`` (in y units)."""
    best = None
    for name, item in series.items():
        gap = abs(float(np.interp(x, item.xs(fraction), item.values)) - y)
        if gap < within:
            best, within = name, gap
    return best


def readout(name: str, series: Series, x: float, fraction: bool) -> tuple[str, int]:
    """Read-out text for the point of ``name``'s curve nearest to ``x``, and its unit count."""
    k = units_at(x, series.n, fraction, lowest=0)
    return f"{name} — {k} {series.word} kept: {100 * series.values[k]:.1f} % explained  ({k}/{series.n})", k

"""The pieces of the curves view: one group's series, the plots they are drawn in, and the hover read-out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPaintEvent
from PySide6.QtWidgets import QGraphicsItem, QLabel, QSizePolicy, QStyleOptionGraphicsItem, QVBoxLayout, QWidget

from snp_gui.plots import UnitMarker, make_plot, units_at

STRIP_SHARE = 0.8  # a curve exposed over less than this share of its width strokes only the exposed part


class StripCurve(pg.PlotCurveItem):
    """A curve over increasing x that strokes only the part of it that Qt asks to repaint.

    A marker moved by one unit exposes two thin strips of the plot, and every curve crossing them is
    painted again; pyqtgraph strokes the whole path (thousands of antialiased points for a wide
    layer) and lets the clip throw away all but a few pixels. Here the points inside the exposed
    strip, widened by the pen and one point on either side, are stroked instead: inside the clip
    that gives the same pixels, since the segments left out lie wholly outside it. Curves with a
    fill, a shadow, steps, a non-solid pen, or an exposed part of more than :data:`STRIP_SHARE` of
    their width are drawn by pyqtgraph as they are.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # so that option.exposedRect is the part to repaint, not the whole bounding rectangle
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemUsesExtendedStyleOption)
        self.strips = 0  # paints that stroked only part of the curve, and paints of the whole (for the tests)
        self.wholes = 0
        self._increasing: tuple[object, bool] = (None, False)

    def _x_increases(self) -> bool:
        x = self.xData
        if self._increasing[0] is not x:  # checked once for each array the curve is given
            self._increasing = (x, x is not None and len(x) > 1 and bool(np.all(np.diff(x) > 0)))
        return self._increasing[1]

    def paint(self, p: QPainter, opt: QStyleOptionGraphicsItem, widget: QWidget | None) -> None:
        part = self._exposed_part(opt)
        if part is None:
            self.wholes += 1
            super().paint(p, opt, widget)
            return
        self.strips += 1
        first, stop = part
        p.setRenderHint(QPainter.RenderHint.Antialiasing, bool(self.opts["antialias"]))
        if self.opts["compositionMode"] is not None:
            p.setCompositionMode(self.opts["compositionMode"])
        p.setPen(self.opts["pen"])
        x, y = self.xData[first:stop], self.yData[first:stop]
        p.drawPath(pg.arrayToQPath(x, y, connect=self.opts["connect"], finiteCheck=not self.opts["skipFiniteCheck"]))

    def _exposed_part(self, opt: QStyleOptionGraphicsItem) -> tuple[int, int] | None:
        """``first, stop``: the points to stroke for ``opt.exposedRect``; None to draw the whole curve."""
        pen, opts = self.opts["pen"], self.opts
        plain = (
            self._exportOpts is False
            and opts["fillLevel"] is None
            and opts["shadowPen"] is None
            and not opts["stepMode"]
            and opts["connect"] in ("all", "finite")
            and pen is not None
            and pen.style() == Qt.PenStyle.SolidLine
            and pen.isCosmetic()
            and not self._shouldUseDrawLineSegments(pen)
        )
        if not plain or not self._x_increases():
            return None
        x = self.xData
        exposed, width = opt.exposedRect, float(x[-1] - x[0])
        if exposed.width() >= STRIP_SHARE * width:
            return None
        pixel = self.pixelWidth()  # x units per device pixel
        if not np.isfinite(pixel) or pixel <= 0:
            return None
        margin = (pen.widthF() + 2.0) * pixel  # the stroke reaches half a pen width past its points
        first = max(int(np.searchsorted(x, exposed.left() - margin, side="left")) - 1, 0)
        stop = min(int(np.searchsorted(x, exposed.right() + margin, side="right")) + 1, len(x))
        return (first, stop) if stop - first >= 2 else None


class Curve(pg.PlotDataItem):
    """A :class:`pyqtgraph.PlotDataItem` drawn by a :class:`StripCurve`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        plain = self.curve
        plain.sigClicked.disconnect(self.sigClicked)
        plain.setParentItem(None)
        self.curve = StripCurve()
        self.curve.setParentItem(self)
        self.curve.sigClicked.connect(self.sigClicked)
        self.updateItems(styleUpdate=True)


@dataclass
class Series:
    """One group's curve (``values[k]``: explained with ``k`` units kept), its colour and its overlay items."""

    values: np.ndarray
    colour: QColor
    curve: Curve
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

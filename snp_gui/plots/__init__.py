"""Plot widgets of the main window and the palette helpers they share.

``CurvesWidget`` (explained-variance curves with draggable keep markers) lives in
:mod:`snp_gui.plots.curves`; ``HistoryPlot`` and ``SweepPlot`` in :mod:`snp_gui.plots.history`.
They are re-exported here lazily so that the submodules can import the helpers below.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QPainter, QPalette, QPen, QPicture
from PySide6.QtWidgets import QGraphicsItem, QStyleOptionGraphicsItem, QWidget

__all__ = [
    "CurvesWidget",
    "HistoryPlot",
    "PlotViewBox",
    "SweepPlot",
    "UnitMarker",
    "apply_palette",
    "colour_at",
    "make_plot",
    "series_colours",
    "units_at",
]

# A rainbow whose lightness stays in a narrow middle band, so every colour reads on light and dark bases.
_COLOUR_MAP = "CET-R2"


def _luminance(colour: QColor) -> float:
    """Relative luminance as defined for contrast ratios (WCAG)."""

    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    return 0.2126 * linear(colour.redF()) + 0.7152 * linear(colour.greenF()) + 0.0722 * linear(colour.blueF())


def readable(colour: QColor, palette: QPalette | None, contrast: float = 3.0) -> QColor:
    """``colour`` blended towards the text colour just enough to stand out from the base colour."""
    if palette is None:
        return QColor(colour)
    base, text = palette.color(QPalette.ColorRole.Base), palette.color(QPalette.ColorRole.Text)
    lb = _luminance(base)
    for step in range(11):
        t = step / 10
        mixed = QColor.fromRgbF(
            *(a + t * (b - a) for a, b in zip(colour.getRgbF()[:3], text.getRgbF()[:3], strict=True))
        )
        lc = _luminance(mixed)
        if (max(lc, lb) + 0.05) / (min(lc, lb) + 0.05) >= contrast:
            return mixed
    return QColor(text)


def series_colours(count: int, palette: QPalette | None = None) -> list[QColor]:
    """``count`` colours from a perceptually even colour map, in order, made readable on ``palette``'s base."""
    if count <= 0:
        return []
    positions = np.linspace(0.0, 1.0, count) if count > 1 else np.array([0.15])
    return [readable(c, palette) for c in pg.colormap.get(_COLOUR_MAP).map(positions, mode="qcolor")]


def colour_at(position: float, palette: QPalette | None = None) -> QColor:
    """The colour map's colour at ``position`` in 0..1, made readable on ``palette``'s base."""
    return readable(pg.colormap.get(_COLOUR_MAP).map(np.array([position]), mode="qcolor")[0], palette)


def foreground(palette: QPalette) -> QColor:
    """Text colour of ``palette``: used for axes and labels."""
    return palette.color(QPalette.ColorRole.Text)


def muted(palette: QPalette) -> QColor:
    """A colour halfway between text and base: grid lines, reference lines."""
    fg, bg = palette.color(QPalette.ColorRole.Text), palette.color(QPalette.ColorRole.Base)
    return QColor((fg.red() + bg.red()) // 2, (fg.green() + bg.green()) // 2, (fg.blue() + bg.blue()) // 2)


def apply_palette(plot: pg.PlotWidget, palette: QPalette) -> None:
    """Paint ``plot`` with the base and text colours of ``palette`` instead of pyqtgraph's fixed black."""
    plot.setBackground(palette.color(QPalette.ColorRole.Base))
    fg = foreground(palette)
    item = plot.getPlotItem()
    for name in ("left", "bottom", "right", "top"):
        axis = item.getAxis(name)
        axis.setPen(pg.mkPen(fg))
        axis.setTextPen(pg.mkPen(fg))
    item.titleLabel.setAttr("color", fg)
    if item.titleLabel.text:
        item.setTitle(item.titleLabel.text)  # the colour only applies once the text is set again
    legend = item.legend
    if legend is not None:
        legend.setLabelTextColor(fg)
        base = QColor(palette.color(QPalette.ColorRole.Base))
        base.setAlpha(200)  # translucent so that curves under the legend stay visible
        legend.setBrush(pg.mkBrush(base))
        legend.setPen(pg.mkPen(muted(palette)))


class EdgeAxis(pg.AxisItem):
    """An axis whose end labels (0 and 1.0 of a 0..1 axis) are drawn even when they reach past the plot.

    With a grid, pyqtgraph clips tick labels to the axis and plot area, so on a short plot the label
    of the top tick, half above the view, was dropped.

    With a grid the axis's bounding rectangle covers the whole plot, so a marker moved inside the plot
    repaints the axis too: its tick labels are recorded apart from its lines and replayed only where
    the part to repaint reaches them (the lines, grid included, are replayed as before).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._texts: QPicture | None = None  # the tick labels, recorded with the lines' picture
        self._text_rect = QRectF()
        super().__init__(*args, **kwargs)
        # so that option.exposedRect is the part to repaint, not the whole bounding rectangle
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemUsesExtendedStyleOption)
        self.label_paints = 0  # paints that replayed the tick labels (read by the tests)

    def drawPicture(self, p: QPainter, axisSpec: Any, tickSpecs: Any, textSpecs: Any) -> None:
        super().drawPicture(p, axisSpec, tickSpecs, [])
        texts = QPicture()
        painter = QPainter(texts)
        try:  # as AxisItem.paint starts its picture, then the text part of AxisItem.drawPicture
            if self.style["tickFont"]:
                painter.setFont(self.style["tickFont"])
            super().drawPicture(painter, (QPen(Qt.PenStyle.NoPen), axisSpec[1], axisSpec[2]), [], textSpecs)
        finally:
            painter.end()
        self._texts = texts
        self._text_rect = QRectF()
        for rect, _flags, _text in textSpecs:
            self._text_rect |= QRectF(rect)
        # a glyph's edge may reach a pixel or two past the side of its box, not past its line height
        self._text_rect.adjust(-3.0, 0.0, 3.0, 0.0)

    def paint(self, p: QPainter, opt: QStyleOptionGraphicsItem, widget: QWidget | None) -> None:
        if self.picture is None:  # stale: both pictures are recorded again (drawPicture), or neither is
            self._texts = None
        super().paint(p, opt, widget)  # the lines
        if self._texts is not None and opt.exposedRect.intersects(self._text_rect):
            self.label_paints += 1
            self._texts.play(p)

    def boundingRect(self) -> QRectF:
        rect = super().boundingRect()
        margin = 12.0
        if self.orientation in ("left", "right"):
            return rect.adjusted(0.0, -margin, 0.0, margin)
        return rect.adjusted(-2 * margin, 0.0, 2 * margin, 0.0)


def _bounds_key(item: Any, group: Any) -> tuple | None:
    """What the auto range reads of ``item``: its data bounds and pixel padding (or its bounding
    rectangle), where it sits in the view and whether it is shown; None where it cannot be read."""
    try:
        if hasattr(item, "dataBounds"):
            bounds = (*item.dataBounds(0), *item.dataBounds(1), float(item.pixelPadding()))
        else:
            rect = item.boundingRect()
            bounds = (rect.x(), rect.y(), rect.width(), rect.height())
        t = item.itemTransform(group)[0]
        return (*bounds, t.m11(), t.m12(), t.m21(), t.m22(), t.dx(), t.dy(), item.isVisible())
    except (AttributeError, RuntimeError, TypeError, ValueError):
        return None


class PlotViewBox(pg.ViewBox):
    """A view box that repaints all of itself only when an item's change can move its auto range.

    pyqtgraph's view box answers a change of any item in it by marking its auto range stale and
    updating itself, i.e. its whole area, so that the range is recomputed before the next paint:
    dragging a marker by one unit repainted every curve, line and grid line of the plot instead of
    the strips the marker left and entered, and so did a curve given another pen. Here a change is
    passed on only when the item counts for the range (not added with ``ignoreBounds``) and what the
    range reads of it (data bounds, pixel padding, place, visibility) differs from the last time;
    an item that changed otherwise repaints only where it was and where it is, as every graphics
    item does. Ranges over the visible data only (``setAutoVisible``) are left to pyqtgraph.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # set before the base class, whose constructor already adds items
        self._unbounded: weakref.WeakSet = weakref.WeakSet()
        self._read: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # item -> _bounds_key
        super().__init__(*args, **kwargs)

    def addItem(self, item: Any, ignoreBounds: bool = False) -> None:
        if ignoreBounds:
            self._unbounded.add(item)
        else:
            self._unbounded.discard(item)
        self._read.pop(item, None)
        super().addItem(item, ignoreBounds=ignoreBounds)

    def removeItem(self, item: Any) -> None:
        self._unbounded.discard(item)
        self._read.pop(item, None)
        super().removeItem(item)

    def itemBoundsChanged(self, item: Any) -> None:
        if item in self._unbounded:
            return  # it does not count for the auto range, so the range cannot have changed
        if not any(self.state["autoVisibleOnly"]):
            key = _bounds_key(item, self.childGroup)
            if key is not None:
                if self._read.get(item) == key:
                    return  # nothing the range reads of it changed (e.g. a pen of the same width)
                self._read[item] = key
        super().itemBoundsChanged(item)


def make_plot(title: str, x_label: str, y_label: str) -> pg.PlotWidget:
    """A plot with a faint grid, axis labels and no auto-range button (ranges are managed by the owner)."""
    plot = pg.PlotWidget(viewBox=PlotViewBox(), axisItems={side: EdgeAxis(side) for side in ("left", "bottom")})
    item = plot.getPlotItem()
    item.setTitle(title or None)  # None leaves no empty title row
    item.showGrid(x=True, y=True, alpha=0.2)
    for side, label in (("left", y_label), ("bottom", x_label)):
        if label:  # an empty label would still reserve a row
            item.setLabel(side, label)
        # numbers as they are: no "loss (x0.001)" or "(k)" rescaling of the axis
        item.getAxis(side).enableAutoSIPrefix(False)
    item.hideButtons()
    return plot


def units_at(x: float, n: int, fraction: bool, lowest: int = 1) -> int:
    """Whole unit count nearest to ``x`` (a count, or a share of ``n``), clamped to ``[lowest, n]``."""
    k = x * n if fraction else x
    return int(min(max(np.floor(k + 0.5), lowest), n))


class UnitMarker(pg.InfiniteLine):
    """A draggable vertical line that only ever rests on a whole number of units in ``[1, n]``.

    With ``fraction`` the x axis is the kept share ``k / n`` instead of ``k``. Snapping happens in ``setPos``,
    so dragging, ``setValue`` and bounds all agree, and ``sigPositionChanged`` fires only when ``k`` changes.
    """

    n = 1  # class defaults: InfiniteLine.__init__ already calls setPos
    fraction = False

    def __init__(self, n: int, fraction: bool = False, **kwargs: Any) -> None:
        super().__init__(angle=90, movable=True, **kwargs)
        self.set_scale(n, fraction)

    def set_scale(self, n: int, fraction: bool) -> None:
        """Change the unit count or the axis kind; the line keeps its unit count."""
        k = self.units()
        self.n, self.fraction = max(int(n), 1), fraction
        self.set_units(k)

    def units(self) -> int:
        return units_at(self.value(), self.n, self.fraction)

    def set_units(self, k: int) -> None:
        self.setValue(k / self.n if self.fraction else float(k))

    def setPos(self, pos: Any) -> None:
        x = pos.x() if isinstance(pos, QPointF) else float(pos) if np.ndim(pos) == 0 else float(pos[0])
        k = units_at(x, self.n, self.fraction)
        super().setPos(k / self.n if self.fraction else float(k))


def __getattr__(name: str) -> Any:
    if name == "CurvesWidget":
        from snp_gui.plots.curves import CurvesWidget

        return CurvesWidget
    if name in ("HistoryPlot", "SweepPlot"):
        from snp_gui.plots import history

        return getattr(history, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

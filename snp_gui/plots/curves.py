"""Explained-variance curves of every unit group, with draggable markers for how many units each keeps.

The left plot overlays all groups; the right one focuses on the selected group. Markers snap to whole
units and are clamped to ``[1, n]``; moving them programmatically (``set_keep``) never emits signals.
With dozens of layers no set of colours stays distinct, so the selected layer is drawn bright and
every other one dimmed; dragging a layer's marker selects it, and the arrow keys nudge the selected
layer's marker by one unit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QObject, QPointF, Qt, Signal
from PySide6.QtGui import QColor, QKeyEvent
from PySide6.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QLabel, QSplitter, QVBoxLayout, QWidget

from snp_gui.plots import UnitMarker, apply_palette, muted, series_colours, units_at
from snp_gui.plots.series import (
    Curve,
    ReadoutLabel,
    Series,
    curve_plot,
    hidden_item,
    nearest,
    plot_column,
    readout,
)

HINT = "Hover to read a curve · drag a marker or press ←/→ to change the units kept · click a curve to focus it"
LEGEND_LIMIT = 16  # beyond this many groups the legend hides most of the plot, so it starts hidden
DIM_ALPHA = 70  # curves and markers of the layers that are not selected, when there are many
FEW_ALPHA, FEW = 160, 8  # a handful of layers stay apart by colour: dim them less
WARNING_COLOUR = "#d9534f"  # the threshold's and table's warning red
NUDGE_KEYS = {Qt.Key.Key_Left: -1, Qt.Key.Key_Down: -1, Qt.Key.Key_Right: 1, Qt.Key.Key_Up: 1}


def dimmed(colour: QColor, alpha: int = DIM_ALPHA) -> QColor:
    faded = QColor(colour)
    faded.setAlpha(alpha)
    return faded


class CurvesWidget(QWidget):
    """Overlay of all explained-variance curves plus a focused view of the selected one."""

    keepChanged = Signal(str, int)
    keepChangeFinished = Signal(str, int)
    layerSelected = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._series: dict[str, Series] = {}
        self._keep: dict[str, int] = {}
        self._selected: str | None = None
        self._fraction = False
        self._focus_axis = "kept units"
        self._dot_colour: int | None = None  # the focus dot's colour (its one point sits at 0, 0: it is moved)
        self._syncing = False  # set while markers are moved by code, so that no signal goes out
        self._build_controls()
        self._build_plots()
        self._apply_palette()
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        for plot in (self.overlay, self.focus):
            plot.installEventFilter(self)  # arrow keys and leaving the plot
            plot.viewport().installEventFilter(self)

    def _build_controls(self) -> None:
        self.x_axis = QComboBox()
        self.x_axis.addItems(["Kept units", "Kept fraction"])
        self.x_axis.setToolTip("Plot against the number of units kept, or against the kept share of each layer")
        self.x_axis.currentIndexChanged.connect(lambda index: self._set_fraction(index == 1))
        self.legend_box = QCheckBox("Legend")
        self.legend_box.setToolTip("Show the colour of each layer")
        self.legend_box.toggled.connect(self._show_legend)
        self.note = QLabel()  # why a marker was put elsewhere than dragged to (a layer's minimum, round-to)
        self.note.setStyleSheet(f"color: {WARNING_COLOUR}")
        self.note.setVisible(False)
        self._controls = QHBoxLayout()
        for widget in (QLabel("x axis:"), self.x_axis, self.legend_box):
            self._controls.addWidget(widget)
        self._controls.addWidget(self.note)
        self._controls.addStretch(1)

    def _build_plots(self) -> None:
        self.overlay = curve_plot("All layers")
        self.overlay.addLegend(offset=(-10, -10), labelTextSize="8pt")  # bottom right: below the rising curves
        self.overlay.getPlotItem().legend.setVisible(False)  # an empty legend would show as a stray box
        self.overlay_threshold = hidden_item(pg.InfiniteLine(angle=0), 5)
        self.hover_dot = hidden_item(pg.ScatterPlotItem(size=9), 20)
        self.overlay_readout = ReadoutLabel(HINT)
        self.focus = curve_plot("")
        self.focus_curve = Curve(antialias=True)
        self.focus_marker = hidden_item(UnitMarker(1), 10)
        self.focus_marker.setToolTip("Drag to change how many units this layer keeps")
        self.focus_marker.sigPositionChanged.connect(lambda line: self._marker_moved(self._selected, line))
        self.focus_marker.sigPositionChangeFinished.connect(lambda _line: self._marker_finished(self._selected))
        self.focus_dot = hidden_item(pg.ScatterPlotItem(size=10), 20)
        self.focus_label = hidden_item(pg.TextItem(anchor=(0, 0)), 20)
        self.focus_threshold = hidden_item(pg.InfiniteLine(angle=0), 5)
        self.focus_readout = ReadoutLabel("")
        for item in (self.overlay_threshold, self.hover_dot):
            self.overlay.addItem(item, ignoreBounds=True)
        self.focus.addItem(self.focus_curve)
        for item in (self.focus_marker, self.focus_dot, self.focus_label, self.focus_threshold):
            self.focus.addItem(item, ignoreBounds=True)
        self.overlay.scene().sigMouseMoved.connect(self._hover_overlay)
        self.focus.scene().sigMouseMoved.connect(self._hover_focus)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        for plot, label, stretch in ((self.overlay, self.overlay_readout, 3), (self.focus, self.focus_readout, 2)):
            splitter.addWidget(plot_column(plot, label))
            splitter.setStretchFactor(splitter.count() - 1, stretch)
        layout = QVBoxLayout(self)
        layout.addLayout(self._controls)
        layout.addWidget(splitter, 1)

    def _apply_palette(self) -> None:
        palette = self.palette()
        for plot in (self.overlay, self.focus):
            apply_palette(plot, palette)
        pen = pg.mkPen(muted(palette), width=1.5, style=Qt.PenStyle.DashLine)
        self.overlay_threshold.setPen(pen)
        self.focus_threshold.setPen(pen)
        self.focus_label.setColor(palette.color(palette.ColorRole.Text))
        # series colours are chosen against the base colour, so they change with it
        for (name, series), colour in zip(
            self._series.items(), series_colours(len(self._series), palette), strict=True
        ):
            series.colour = colour
            self._style(name, selected=name == self._selected)
        if self._selected is not None:
            self._place(self._selected, self._keep[self._selected])

    def changeEvent(self, event: QEvent) -> None:
        if event.type() == QEvent.Type.PaletteChange:
            self._apply_palette()
        super().changeEvent(event)

    def set_curves(
        self, curves: dict[str, np.ndarray], keep: dict[str, int], words: dict[str, str] | None = None
    ) -> None:
        """Replace all curves; ``curves[name][k]`` is the explained variance with ``k`` units kept
        (``words[name]`` says what a unit is where it is not "units", e.g. "heads")."""
        previous = self._selected
        self.clear()
        for (name, values), colour in zip(curves.items(), series_colours(len(curves), self.palette()), strict=True):
            values = np.asarray(values, dtype=float).ravel()
            if len(values) < 2:
                continue  # a group with no unit cannot be pruned or drawn
            self._series[name] = self._add_series(name, values, colour)
            self._series[name].word = (words or {}).get(name, "units")
            self._keep[name] = units_at(keep.get(name, len(values) - 1), len(values) - 1, False)
            self._place(name, self._keep[name])
        for name in self._series:  # how much the others are dimmed depends on how many there are
            self._style(name, selected=False)
        self.legend_box.setChecked(len(self._series) <= LEGEND_LIMIT)
        self._show_legend(self.legend_box.isChecked())
        self.overlay.getPlotItem().enableAutoRange(axis="x")
        if self._series:
            self.set_selected(previous if previous in self._series else next(iter(self._series)))

    def set_keep(self, keep: dict[str, int]) -> None:
        """Move markers to ``keep`` without emitting ``keepChanged``; only changed markers are touched."""
        for name, k in keep.items():
            series = self._series.get(name)
            if series is not None and (k := units_at(k, series.n, False)) != self._keep[name]:
                self._keep[name] = k
                self._place(name, k)

    def set_selected(self, name: str) -> None:
        """Focus the right-hand plot on ``name`` and emphasise its curve in the overlay (no signal)."""
        if name not in self._series or name == self._selected:
            return
        if self._selected in self._series:
            self._style(self._selected, selected=False)
        self._selected = name
        self._style(name, selected=True)
        series = self._series[name]
        self.focus_curve.setData(series.xs(self._fraction), series.values)
        self.focus.getPlotItem().setTitle(name)
        with self._quiet():
            self.focus_marker.set_scale(series.n, self._fraction)
        self._place(name, self._keep[name])
        self.focus.getPlotItem().enableAutoRange(axis="x")

    def show_note(self, text: str) -> None:
        """Say beside the controls why a marker went elsewhere than it was dragged to; empty hides it."""
        self.note.setText(f"⚠ {text}" if text else "")
        self.note.setToolTip(text)
        self.note.setVisible(bool(text))

    def set_threshold(self, value: float | None) -> None:
        """Draw the global explained-variance threshold in both plots, or hide it with ``None``."""
        for line in (self.overlay_threshold, self.focus_threshold):
            line.setVisible(value is not None)
            if value is not None:
                line.setValue(float(value))

    def clear(self) -> None:
        """Remove every curve and marker."""
        plot = self.overlay.getPlotItem()
        plot.legend.clear()
        plot.legend.setVisible(False)
        for series in self._series.values():
            plot.removeItem(series.curve)
            plot.removeItem(series.marker)
        self._series.clear()
        self._keep.clear()
        self._selected = None
        self.focus_curve.setData([], [])
        self.focus.getPlotItem().setTitle("")
        for item in (self.focus_marker, self.focus_dot, self.focus_label, self.hover_dot):
            item.setVisible(False)
        self.overlay_readout.setText(HINT)
        self.focus_readout.setText("")

    def keep(self) -> dict[str, int]:
        """Current marker positions."""
        return dict(self._keep)

    def selected(self) -> str | None:
        return self._selected

    def marker(self, name: str) -> UnitMarker:
        """The overlay marker of group ``name``."""
        return self._series[name].marker

    def curve(self, name: str) -> Curve:
        """The overlay curve of group ``name``."""
        return self._series[name].curve

    def _add_series(self, name: str, values: np.ndarray, colour: QColor) -> Series:
        curve = Curve(antialias=True)  # unnamed: legend entries are added only when it is shown
        curve.setCurveClickable(True, width=8)
        curve.sigClicked.connect(partial(self._curve_clicked, name))
        marker = UnitMarker(len(values) - 1, self._fraction)
        marker.setToolTip(f"{name}: drag to change how many units it keeps")
        marker.setZValue(10)
        marker.sigPositionChanged.connect(partial(self._marker_moved, name))
        marker.sigPositionChangeFinished.connect(lambda _line, name=name: self._marker_finished(name))
        series = Series(values, colour, curve, marker)
        curve.setData(series.xs(self._fraction), values)
        self.overlay.addItem(curve)
        self.overlay.addItem(marker, ignoreBounds=True)
        self._style(name, selected=False, series=series)
        return series

    def _style(self, name: str, selected: bool, series: Series | None = None) -> None:
        """The selected layer bright and on top, every other one dimmed (they stay readable when hovered)."""
        series = series or self._series[name]
        few = len(self._series) <= FEW
        colour = series.colour if selected else dimmed(series.colour, FEW_ALPHA if few else DIM_ALPHA)
        series.curve.setPen(pg.mkPen(colour, width=3 if selected else 1.5))
        series.curve.setZValue(2 if selected else 1)
        style = Qt.PenStyle.SolidLine if selected else Qt.PenStyle.DashLine
        series.marker.setPen(
            pg.mkPen(
                series.colour if selected else dimmed(series.colour, FEW_ALPHA if few else 110), width=2, style=style
            )
        )
        series.marker.setHoverPen(pg.mkPen(series.colour, width=4))
        series.marker.setZValue(11 if selected else 10)
        if selected:
            self.focus_curve.setPen(pg.mkPen(series.colour, width=3))
            self.focus_marker.setPen(pg.mkPen(series.colour, width=2))
            self.focus_marker.setHoverPen(pg.mkPen(series.colour, width=4))

    @contextmanager
    def _quiet(self) -> Iterator[None]:
        """Markers moved inside this block are being placed by code: their handlers must not emit."""
        self._syncing, previous = True, self._syncing
        try:
            yield
        finally:
            self._syncing = previous

    def _place(self, name: str, k: int) -> None:
        """Put the markers of ``name`` at ``k`` (both plots if it is selected) without emitting signals."""
        series = self._series[name]
        with self._quiet():
            series.marker.set_units(k)
            if name != self._selected:
                return
            self.focus_marker.set_units(k)
        x, y = self.focus_marker.value(), float(series.values[k])
        if self._dot_colour != series.colour.rgba():  # another layer: the dot takes its colour
            self._dot_colour = series.colour.rgba()
            self.focus_dot.setData([0.0], [0.0], brush=pg.mkBrush(series.colour), pen=pg.mkPen(None))
        # moved rather than given new data: new data repaints the whole focus plot (pyqtgraph's scatter
        # marks a rectangle far wider than the plot while its points are replaced), a move just the dot
        self.focus_dot.setPos(x, y)
        self.focus_label.setText(f" {k}/{series.n} {series.word}: {100 * y:.1f} %")
        self.focus_label.setPos(x, y)
        # below the point is free under a rising curve; near the right end, go left to stay in view
        self.focus_label.setAnchor((1, 0) if k > 0.75 * series.n else (0, 0))
        for item in (self.focus_marker, self.focus_dot, self.focus_label):
            item.setVisible(True)
        self._label_focus(series)

    def _label_focus(self, series: Series) -> None:
        """The focus plot's axis counts what the selected layer's units are (an attention layer's: heads)."""
        axis = "kept fraction" if self._fraction else f"kept {series.word}"
        if axis != self._focus_axis:
            self._focus_axis = axis
            self.focus.getPlotItem().setLabel("bottom", axis)

    def _set_fraction(self, fraction: bool) -> None:
        self._fraction = fraction
        label = "kept fraction" if fraction else "kept units"
        with self._quiet():
            for series in self._series.values():
                series.curve.setData(series.xs(fraction), series.values)
                series.marker.set_scale(series.n, fraction)
            if self._selected is not None:
                series = self._series[self._selected]
                self.focus_curve.setData(series.xs(fraction), series.values)
                self.focus_marker.set_scale(series.n, fraction)
                self._place(self._selected, self._keep[self._selected])
        for plot in (self.overlay, self.focus):
            plot.getPlotItem().setLabel("bottom", label)
            plot.getPlotItem().enableAutoRange(axis="x")
        self._focus_axis = label
        if self._selected is not None:
            self._label_focus(self._series[self._selected])

    def _show_legend(self, visible: bool) -> None:
        legend = self.overlay.getPlotItem().legend
        if visible and not legend.items:  # filled lazily: each entry relayouts the legend, which adds up
            for name, series in self._series.items():
                legend.addItem(series.curve, name)
        legend.setVisible(visible and bool(self._series))

    def _marker_moved(self, name: str | None, line: UnitMarker) -> None:
        if self._syncing or name not in self._series:
            return
        k = line.units()  # already snapped and clamped by the marker itself
        if name != self._selected:  # the dragged layer becomes the focus: plot and read-out describe it
            self.set_selected(name)  # (which puts the marker back where it was: _place below moves it again)
            self.layerSelected.emit(name)
        self._place(name, k)  # mirrors the move in the other plot
        self.overlay_readout.setText(readout(name, self._series[name], line.value(), self._fraction)[0])
        if k != self._keep[name]:
            self._keep[name] = k
            self.keepChanged.emit(name, k)

    def nudge(self, step: int) -> None:
        """Move the selected layer's marker by ``step`` units (the arrow keys): one finished change."""
        name = self._selected
        if name is None:
            return
        series = self._series[name]
        k = units_at(self._keep[name] + step, series.n, False)
        if k == self._keep[name]:
            return
        self._keep[name] = k
        self._place(name, k)
        self.overlay_readout.setText(readout(name, series, series.xs(self._fraction)[k], self._fraction)[0])
        self.keepChanged.emit(name, k)
        self.keepChangeFinished.emit(name, k)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        step = NUDGE_KEYS.get(Qt.Key(event.key()))
        if step is None or event.modifiers() & ~Qt.KeyboardModifier.KeypadModifier:
            super().keyPressEvent(event)
            return
        self.nudge(step)
        event.accept()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.KeyPress and Qt.Key(event.key()) in NUDGE_KEYS and not event.modifiers():
            self.nudge(NUDGE_KEYS[Qt.Key(event.key())])
            return True
        if event.type() == QEvent.Type.Leave:
            self._left(watched)
        return super().eventFilter(watched, event)

    def _left(self, watched: QObject) -> None:
        """The mouse left a plot: its hover read-out goes away."""
        if watched in (self.overlay, self.overlay.viewport()):
            self.hover_dot.setVisible(False)
            self.overlay_readout.setText(HINT)
        else:
            self.focus_readout.setText("")

    def _marker_finished(self, name: str | None) -> None:
        if name in self._series:
            self.keepChangeFinished.emit(name, self._keep[name])

    def _curve_clicked(self, name: str, *_args: object) -> None:
        self.set_selected(name)
        self.layerSelected.emit(name)

    def _hover_overlay(self, pos: QPointF) -> None:
        view, best = self.overlay.getPlotItem().vb, None
        if self._series and view.sceneBoundingRect().contains(pos):
            point = view.mapSceneToView(pos)
            # within eight pixels, in explained-variance units
            best = nearest(self._series, point.x(), point.y(), 8 * view.viewPixelSize()[1], self._fraction)
        self.hover_dot.setVisible(best is not None)
        if best is None:
            self.overlay_readout.setText(HINT)
            return
        series = self._series[best]
        text, k = readout(best, series, point.x(), self._fraction)
        self.overlay_readout.setText(text)
        self.hover_dot.setData(
            [series.xs(self._fraction)[k]], [series.values[k]], brush=pg.mkBrush(series.colour), pen=pg.mkPen(None)
        )

    def _hover_focus(self, pos: QPointF) -> None:
        view = self.focus.getPlotItem().vb
        inside = self._selected is not None and view.sceneBoundingRect().contains(pos)
        if not inside:
            self.focus_readout.setText("")
            return
        x = view.mapSceneToView(pos).x()
        self.focus_readout.setText(readout(self._selected, self._series[self._selected], x, self._fraction)[0])

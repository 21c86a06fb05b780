"""Live fine-tuning curves (loss and accuracy per epoch) and the accuracy-versus-FLOPs sweep plot.

Their legends are a line of text above the plots, so they never cover a point. The sweep plot also
shows the measured named plans as labelled points.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QVBoxLayout, QWidget

from snp_gui.plots import apply_palette, colour_at, make_plot

__all__ = ["HistoryPlot", "SweepPlot"]

# Fixed, well separated picks from the shared colour map, so that series keep their colour as more arrive.
_PICKS = (0.0, 0.75, 0.35, 1.0, 0.55, 0.15)


class _Plots(QWidget):
    """A vertical stack of palette-aware plots whose lines are recoloured when the palette changes."""

    def __init__(self, plots: list[tuple[pg.PlotWidget, tuple[int, int]]], parent: QWidget | None = None) -> None:
        """``plots``: each plot with its legend offset, chosen for the corner its data usually leaves empty."""
        super().__init__(parent)
        self._plots = [plot for plot, _offset in plots]
        self._lines: dict[str, tuple[pg.PlotDataItem, Qt.PenStyle]] = {}
        self.legend = QLabel()  # outside the plots: a legend inside them covers the points
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.legend.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.legend)
        row = QHBoxLayout()  # side by side: the tab below the curves is short on a small screen
        row.setSpacing(4)
        for plot, _offset in plots:
            plot.setMinimumHeight(100)
            row.addWidget(plot, 1)
        layout.addLayout(row, 1)
        self._repaint()

    def _update_legend(self) -> None:
        entries = []
        for name, (line, style) in self._lines.items():
            colour = line.opts["pen"].color().name()
            mark = "╍╍" if style == Qt.PenStyle.DashLine else "━━"
            entries.append(f'<span style="color:{colour}">{mark}●</span>&nbsp;{name}')
        self.legend.setText("&nbsp;&nbsp;&nbsp;".join(entries))
        self.legend.setVisible(bool(entries))

    def _add_line(self, plot: pg.PlotWidget, name: str, style: Qt.PenStyle, size: int) -> pg.PlotDataItem:
        line = plot.plot([], [], name=name, symbol="o", symbolSize=size, symbolPen=None)
        self._lines[name] = (line, style)
        self._colour(len(self._lines) - 1, line, style)
        self._update_legend()
        return line

    def _colour(self, index: int, line: pg.PlotDataItem, style: Qt.PenStyle) -> None:
        # fixed picks rather than an even split, so that a series keeps its colour as more arrive
        colour = colour_at(_PICKS[index % len(_PICKS)], self.palette())
        line.setPen(pg.mkPen(colour, width=2, style=style))
        line.setSymbolBrush(colour)

    def _repaint(self) -> None:
        for plot in self._plots:
            apply_palette(plot, self.palette())
        for index, (line, style) in enumerate(self._lines.values()):
            self._colour(index, line, style)
        self._update_legend()

    def _clear_lines(self) -> None:
        for plot in self._plots:
            plot.getPlotItem().clear()
        self._lines.clear()
        self._update_legend()

    def changeEvent(self, event: QEvent) -> None:
        if event.type() == QEvent.Type.PaletteChange:
            self._repaint()
        super().changeEvent(event)


class HistoryPlot(_Plots):
    """Loss (left) and accuracy (right) against epoch, one line per metric, updated point by point.

    Metrics whose name contains "loss" go to the left plot, all others (accuracies, fidelity, …) to the right;
    names containing "train" are dashed, held-out metrics solid.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        self.loss_plot = make_plot("", "epoch", "loss")
        self.accuracy_plot = make_plot("", "epoch", "accuracy (%)")
        self.accuracy_plot.setXLink(self.loss_plot)  # the same epochs in both
        self.loss_plot.setToolTip("Training and validation loss per epoch")
        self.accuracy_plot.setToolTip("Accuracy per epoch")
        super().__init__([(self.loss_plot, (-10, 10)), (self.accuracy_plot, (-10, -10))], parent)
        self._points: dict[str, tuple[list[float], list[float]]] = {}

    def add_point(self, epoch: float, values: dict[str, float]) -> None:
        """Append one point per metric at ``epoch`` (fractional epochs are fine for mid-epoch updates)."""
        for name, value in values.items():
            if value is None or not np.isfinite(value):
                continue
            if name not in self._points:
                plot = self.loss_plot if "loss" in name.lower() else self.accuracy_plot
                style = Qt.PenStyle.DashLine if "train" in name.lower() else Qt.PenStyle.SolidLine
                self._add_line(plot, name, style, size=5)
                self._points[name] = ([], [])
            xs, ys = self._points[name]
            xs.append(float(epoch))
            ys.append(float(value))
            self._lines[name][0].setData(np.asarray(xs), np.asarray(ys))

    def series(self, name: str) -> tuple[list[float], list[float]]:
        """The points of metric ``name`` so far."""
        xs, ys = self._points[name]
        return list(xs), list(ys)

    def clear(self) -> None:
        """Remove every line."""
        self._clear_lines()
        self._points.clear()


class SweepPlot(_Plots):
    """Accuracy against FLOPs reduction, one line per pruning method (e.g. "SNP" and "L1"), and the
    measured named plans as labelled points."""

    def __init__(self, parent: QWidget | None = None) -> None:
        self.plot = make_plot("", "FLOPs reduction (%)", "top-1 accuracy (%)")
        self.plot.setToolTip("Accuracy of each method at each FLOPs reduction it was pruned to, and of each named plan")
        super().__init__([(self.plot, (10, -10))], parent)  # accuracy falls to the right
        self.plan_dots = pg.ScatterPlotItem(size=11, symbol="d", pen=None)
        self._plan_labels: list[pg.TextItem] = []
        self._plan_points: list[tuple[str, float, float]] = []
        self._add_plan_items()

    def set_plans(self, points: list[tuple[str, float, float]]) -> None:
        """Show named plans as labelled points: (name, FLOPs reduction in %, top-1 in %) each."""
        self._plan_points = [(str(n), float(x), float(y)) for n, x, y in points]
        for label in self._plan_labels:
            self.plot.removeItem(label)
        self._plan_labels = []
        colour = self.palette().color(self.palette().ColorRole.Text)
        self.plan_dots.setData(
            [x for _n, x, _y in self._plan_points], [y for _n, _x, y in self._plan_points], brush=pg.mkBrush(colour)
        )
        xs = [x for _n, x, _y in self._plan_points]
        middle = (min(xs) + max(xs)) / 2 if xs else 0.0
        for name, x, y in self._plan_points:
            right = x > middle  # labels on the right half go left of their point, so they stay in view
            label = pg.TextItem(f"{name} " if right else f" {name}", color=colour, anchor=(1 if right else 0, 0.5))
            label.setPos(x, y)
            self.plot.addItem(label)
            self._plan_labels.append(label)

    def plan_labels(self) -> list[str]:
        """The names shown beside the plan points."""
        return [label.textItem.toPlainText().strip() for label in self._plan_labels]

    def _repaint(self) -> None:
        super()._repaint()
        if hasattr(self, "plan_dots"):  # the labels in the new text colour
            self.set_plans(self._plan_points)

    def _add_plan_items(self) -> None:
        self.plot.addItem(self.plan_dots)
        self.set_plans(self._plan_points)

    def set_series(self, name: str, xs: list[float], ys: list[float]) -> None:
        """Show (or replace) the points of method ``name``; they are joined in order of increasing x."""
        x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
        if x.shape != y.shape:
            raise ValueError(f"series {name!r}: {x.size} x values but {y.size} y values")
        if name not in self._lines:
            self._add_line(self.plot, name, Qt.PenStyle.SolidLine, size=7)
        order = np.argsort(x, kind="stable")
        self._lines[name][0].setData(x[order], y[order])

    def names(self) -> list[str]:
        return list(self._lines)

    def series(self, name: str) -> tuple[list[float], list[float]]:
        """The points shown for method ``name``, in order of increasing x."""
        xs, ys = self._lines[name][0].getData()
        return [float(x) for x in xs], [float(y) for y in ys]

    def clear(self) -> None:
        """Remove every series (the plan points stay: they belong to the plans, not the sweep)."""
        self._clear_lines()
        self._plan_labels = []  # the plot's items are gone
        self._add_plan_items()

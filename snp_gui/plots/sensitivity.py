"""Per-layer sensitivity as bar charts: the output error and the top-1 lost when only that layer is pruned.

One bar per prunable layer, in network order, in two plots side by side that share the x axis. Layers the
Relax button would give units back to are drawn in the warning colour, layers measured at another count
than the plan now gives them (or with other residual blocks removed) greyed, the selected layer outlined;
layers inside a removed residual block have no bar (they are not measured). Hovering a bar describes it in the
read-out line; clicking it selects the layer (``layerSelected``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QObject, QPointF, Signal
from PySide6.QtGui import QColor, QPalette, QShowEvent
from PySide6.QtWidgets import QHBoxLayout, QVBoxLayout, QWidget

from snp_engine.workflows.sensitivity import LayerSensitivity
from snp_gui.plots import apply_palette, colour_at, make_plot, muted
from snp_gui.plots.series import ReadoutLabel

__all__ = ["SensitivityPlot"]

HINT = "Measure sensitivity: each layer is pruned alone to its kept units and measured on the evaluation data"
WARNING_COLOUR = "#d9534f"
BAR_WIDTH = 0.7


class SensitivityPlot(QWidget):
    """Output error (left) and top-1 lost (right) of each layer pruned alone."""

    layerSelected = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.error_plot = make_plot("", "", "output error alone (%)")
        self.drop_plot = make_plot("", "", "top-1 lost alone (points)")
        self.drop_plot.setXLink(self.error_plot)
        self.error_plot.setToolTip("Relative logit error when only this layer is pruned to its kept units")
        self.drop_plot.setToolTip("Top-1 points lost when only this layer is pruned to its kept units")
        self.readout = ReadoutLabel(HINT)
        self._names: list[str] = []
        self._layers: dict[str, LayerSensitivity] = {}
        self._stale: set[str] = set()
        self._relax: set[str] = set()
        self._removed: dict[str, str] = {}  # layer inside a removed residual block: that block
        self._selected: str | None = None
        self._hidden_change = False  # bars changed while the plot was hidden: drawn when it is shown
        self._bars: list[tuple[pg.PlotWidget, pg.BarGraphItem]] = []
        for plot in (self.error_plot, self.drop_plot):
            plot.setMinimumHeight(100)
            plot.getPlotItem().setMouseEnabled(x=False, y=False)
            bars = pg.BarGraphItem(x=[], height=[], width=BAR_WIDTH)
            plot.addItem(bars)
            self._bars.append((plot, bars))
            plot.scene().sigMouseMoved.connect(lambda pos, plot=plot: self._hover(plot, pos))
            plot.scene().sigMouseClicked.connect(lambda event, plot=plot: self._clicked(plot, event))
            plot.viewport().installEventFilter(self)
        row = QHBoxLayout()
        row.setSpacing(4)
        row.addWidget(self.error_plot, 1)
        row.addWidget(self.drop_plot, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addLayout(row, 1)
        layout.addWidget(self.readout)
        self._repaint()

    # -- data ---------------------------------------------------------------------------------------
    def set_layers(self, names: Sequence[str]) -> None:
        """The prunable layers in network order (one bar each); clears the values."""
        self._names = list(names)
        self._layers, self._stale, self._relax = {}, set(), set()
        self._selected = self._selected if self._selected in self._names else None
        self._update_ticks()
        self._redraw()

    def set_values(
        self,
        layers: Mapping[str, LayerSensitivity],
        stale: Collection[str] = (),
        removed: Mapping[str, str] | None = None,
    ) -> None:
        """The measured layers (others have no bar yet); ``stale`` ones were measured at another count or
        with other blocks removed; ``removed`` maps the layers inside removed residual blocks to their block."""
        self._removed = {name: block for name, block in (removed or {}).items() if name in self._names}
        self._layers = {name: layers[name] for name in self._names if name in layers and name not in self._removed}
        self._stale = set(stale) & set(self._layers)
        self.readout.setText(HINT if not self._layers else self._summary())
        self._redraw()

    def set_relax(self, names: Collection[str]) -> None:
        """The layers the Relax button would give units back to (drawn in the warning colour)."""
        self._relax = set(names)
        self.readout.setText(HINT if not self._layers else self._summary())
        self._redraw()

    def set_selected(self, name: str) -> None:
        self._selected = name if name in self._names else None
        self._redraw()

    def values(self, name: str) -> tuple[float, float] | None:
        """(output error in %, top-1 points lost) of the bar of ``name``, None when it has none."""
        layer = self._layers.get(name)
        return None if layer is None else (100.0 * layer.error, layer.drop)

    def colour_of(self, name: str) -> str:
        """The fill colour of ``name``'s bar (``#rrggbb``): for tests and accessibility checks."""
        return self._brush(name).name()

    def clear(self) -> None:
        self.set_layers([])

    # -- drawing ------------------------------------------------------------------------------------
    def _brush(self, name: str) -> QColor:
        if name in self._stale:
            return muted(self.palette())
        if name in self._relax:
            return QColor(WARNING_COLOUR)
        return colour_at(0.15, self.palette())

    def showEvent(self, event: QShowEvent) -> None:
        if self._hidden_change:
            self._redraw()
        super().showEvent(event)

    def _redraw(self) -> None:
        if not self.isVisible():  # e.g. a layer selected while another tab is shown: nothing to draw yet
            self._hidden_change = True
            return
        self._hidden_change = False
        names = [name for name in self._names if name in self._layers]
        xs = np.array([self._names.index(name) for name in names], dtype=float)
        brushes = [pg.mkBrush(self._brush(name)) for name in names]
        text = self.palette().color(QPalette.ColorRole.Text)
        pens = [pg.mkPen(text, width=2) if name == self._selected else pg.mkPen(None) for name in names]
        for (_plot, bars), heights in zip(
            self._bars,
            (
                [100.0 * self._layers[n].error for n in names],
                [self._layers[n].drop for n in names],
            ),
            strict=True,
        ):
            # empty lists trip pyqtgraph's BarGraphItem: no bars take no per-bar pens or brushes
            bars.setOpts(
                x=xs,
                height=np.asarray(heights, dtype=float),
                width=BAR_WIDTH,
                brushes=brushes or None,
                pens=pens or None,
            )
        span = max(len(self._names), 1)
        for plot, _bars in self._bars:
            plot.getPlotItem().setXRange(-0.6, span - 0.4, padding=0)
            plot.getPlotItem().enableAutoRange(axis="y")

    def _update_ticks(self) -> None:
        """Layer names under the bars, as many as fit without overlapping."""
        if not self._names:
            ticks: list = []
        else:
            width = max(self.error_plot.width() - 60, 50)
            label = max(self.fontMetrics().horizontalAdvance(name) for name in self._names) + 12
            step = max(1, int(np.ceil(len(self._names) * label / width)))
            ticks = [(i, name) for i, name in enumerate(self._names) if i % step == 0]
        for plot, _bars in self._bars:
            plot.getPlotItem().getAxis("bottom").setTicks([ticks, []])

    def _summary(self) -> str:
        stale = f"; {len(self._stale)} greyed: measured at another count or other blocks" if self._stale else ""
        relax = f"; red: relaxed by the button ({len(self._relax)})" if self._relax else ""
        blocks = sorted(set(self._removed.values()))
        removed = (
            f"; measured without {', '.join(blocks)} ({len(self._removed)} layer(s) inside, no bar)" if blocks else ""
        )
        return f"{len(self._layers)} of {len(self._names)} layers measured{removed}{stale}{relax}"

    def _index_at(self, plot: pg.PlotWidget, pos: QPointF) -> int | None:
        view = plot.getPlotItem().vb
        if not view.sceneBoundingRect().contains(pos):
            return None
        index = int(np.floor(view.mapSceneToView(pos).x() + 0.5))
        return index if 0 <= index < len(self._names) else None

    def describe(self, name: str) -> str:
        """The read-out line for ``name``'s bar."""
        layer = self._layers.get(name)
        if name in self._removed:
            return f"{name}: removed with the residual block {self._removed[name]}, not measured"
        if layer is None:
            return f"{name}: not measured yet"
        text = (
            f"{name} alone at {layer.keep} of {layer.units} units: top-1 {layer.top1:.2f} % "
            f"({-layer.drop:+.2f} points), output error {100 * layer.error:.2f} %"
        )
        return text + (" — measured at another count, measure again" if name in self._stale else "")

    def _hover(self, plot: pg.PlotWidget, pos: QPointF) -> None:
        index = self._index_at(plot, pos)
        if index is None:
            self.readout.setText(self._summary() if self._layers else HINT)
        else:
            self.readout.setText(self.describe(self._names[index]))

    def _clicked(self, plot: pg.PlotWidget, event) -> None:
        index = self._index_at(plot, event.scenePos())
        if index is not None:
            self.set_selected(self._names[index])
            self.layerSelected.emit(self._names[index])

    def _repaint(self) -> None:
        for plot, _bars in self._bars:
            apply_palette(plot, self.palette())
        self._redraw()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Leave:  # the hover read-out goes when the mouse does
            self.readout.setText(self._summary() if self._layers else HINT)
        return super().eventFilter(watched, event)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._update_ticks()

    def changeEvent(self, event: QEvent) -> None:
        if event.type() == QEvent.Type.PaletteChange:
            self._repaint()
        super().changeEvent(event)

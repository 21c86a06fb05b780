"""The Architecture tab: the analysed network as a graph of its layers (see :mod:`snp_gui.plots.architecture`).

The graph is traced when the tab is first shown after an analysis (one forward pass, in the background);
a line above it explains the colours, and Fit shows the whole network.
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from snp_gui.plots.architecture import ArchitectureView, kept_colour

__all__ = ["ArchitecturePanel"]

EMPTY = "Run an analysis to see the network's layers here."


def _swatch(fraction: float, text: str) -> str:
    colour = kept_colour(fraction).name()
    return f'<span style="background:{colour};color:#141414">&nbsp;{text}&nbsp;</span>'


class ArchitecturePanel(QWidget):
    """The legend, Fit and zoom buttons, and the graph view."""

    shown = Signal()  # the tab became visible: the graph is wanted

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.view = ArchitectureView()
        self.legend = QLabel(
            f"kept units: {_swatch(0.1, 'few')} {_swatch(0.5, 'half')} {_swatch(1.0, 'all')} · "
            "grey: not pruned (hover for why) · struck through: in a removed block · "
            "dashed arc: layers sharing one unit group · "
            "click a layer to select it; Ctrl+wheel zooms"
        )
        self.legend.setWordWrap(True)
        self.status = QLabel(EMPTY)
        self.fit_button = QPushButton("Fit")
        self.fit_button.setToolTip("Show the whole network")
        self.fit_button.clicked.connect(self.view.fit)
        self.actual_button = QPushButton("1:1")
        self.actual_button.setToolTip("Natural size")
        self.actual_button.clicked.connect(self.view.resetTransform)
        top = QHBoxLayout()
        top.addWidget(self.legend, 1)
        top.addWidget(self.fit_button)
        top.addWidget(self.actual_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.status)
        layout.addWidget(self.view, 1)
        self.set_graph(None)

    def set_graph(self, graph, keep: dict[str, int] | None = None, waiting: bool = False) -> None:
        """Show ``graph`` (None: nothing yet; ``waiting`` says it is being traced)."""
        self.view.set_graph(graph, keep)
        if graph is None:
            self.status.setText("Tracing the network's layers…" if waiting else EMPTY)
        else:
            groups = len(graph.groups)
            layers = len(graph.nodes) - 1
            self.status.setText(f"{layers} layer calls, {groups} prunable unit groups")
        self.view.setVisible(graph is not None)
        for button in (self.fit_button, self.actual_button):
            button.setEnabled(graph is not None)

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.shown.emit()

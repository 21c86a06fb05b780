"""The Architecture tab: the analysed network as a graph of its layers (see :mod:`snp_gui.plots.architecture`).

The graph is traced when the tab is first shown after an analysis (one forward pass, in the background);
a line above it explains the colours. A big network is shown with its blocks folded into boxes: Unfold all
and Fold all change that for every block, Find (a layer or block name, or part of one; Enter again for
the next match) unfolds and scrolls to it, Fit shows the whole network and 1:1 its natural size.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeySequence, QShortcut, QShowEvent
from PySide6.QtWidgets import QCompleter, QHBoxLayout, QLabel, QLineEdit, QPushButton, QVBoxLayout, QWidget

from snp_gui.plots.architecture import ArchitectureView, kept_colour

__all__ = ["ArchitecturePanel"]

EMPTY = "Run an analysis to see the network's layers here."


def _swatch(fraction: float, text: str) -> str:
    colour = kept_colour(fraction).name()
    return f'<span style="background:{colour};color:#141414">&nbsp;{text}&nbsp;</span>'


class ArchitecturePanel(QWidget):
    """The legend, the find box, the fold and zoom buttons, and the graph view."""

    shown = Signal()  # the tab became visible: the graph is wanted

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.view = ArchitectureView()
        self.legend = QLabel(
            f"kept units: {_swatch(0.1, 'few')} {_swatch(0.5, 'half')} {_swatch(1.0, 'all')} · "
            "grey: not pruned (hover for why) · struck through: in a removed block · "
            "dashed arc: layers sharing one unit group · "
            "a box with + is a folded block (click to unfold, − on its frame folds it) · "
            "click a layer to select it; Ctrl+wheel or +/− zooms"
        )
        self.legend.setWordWrap(True)
        self.status = QLabel(EMPTY)
        self.status.setWordWrap(True)  # a long count or find note must not widen the window
        self.find_box = QLineEdit()
        self.find_box.setPlaceholderText("Find a layer or block…")
        self.find_box.setClearButtonEnabled(True)
        self.find_box.setToolTip("A layer or block name, or part of one (Ctrl+F); Enter again shows the next match")
        self.find_box.setMaximumWidth(260)
        self._completer = QCompleter([], self.find_box)
        self._completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self._completer.setFilterMode(Qt.MatchFlag.MatchContains)
        self.find_box.setCompleter(self._completer)
        self.find_box.returnPressed.connect(self.find)
        find = QShortcut(QKeySequence(QKeySequence.StandardKey.Find), self)  # Ctrl+F while the tab is shown
        find.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        find.activated.connect(lambda: (self.find_box.setFocus(), self.find_box.selectAll()))
        self.unfold_button = QPushButton("Unfold all")
        self.unfold_button.setToolTip("Draw every layer of every block")
        self.unfold_button.clicked.connect(self.view.unfold_all)
        self.fold_button = QPushButton("Fold all")
        self.fold_button.setToolTip("Draw each outermost block as one box")
        self.fold_button.clicked.connect(self.view.fold_all)
        self.fit_button = QPushButton("Fit")
        self.fit_button.setToolTip("Show the whole network (0)")
        self.fit_button.clicked.connect(lambda: self.view.fit())
        self.actual_button = QPushButton("1:1")
        self.actual_button.setToolTip("Natural size")
        self.actual_button.clicked.connect(self.view.actual_size)
        self.view.layoutChanged.connect(self._show_counts)
        top = QHBoxLayout()
        top.addWidget(self.legend, 1)
        controls = QHBoxLayout()
        controls.addWidget(self.status, 1)
        controls.addWidget(self.find_box)
        for button in (self.unfold_button, self.fold_button, self.fit_button, self.actual_button):
            controls.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addLayout(controls)
        layout.addWidget(self.view, 1)
        self._note = ""
        self.set_graph(None)

    @property
    def buttons(self) -> tuple[QPushButton, ...]:
        return (self.unfold_button, self.fold_button, self.fit_button, self.actual_button)

    def find(self) -> None:
        """Show the layer or block named (in part) in the find box, or say that none matches."""
        text = self.find_box.text().strip()
        if not text:
            return
        found = self.view.find(text)
        self._note = f"found {found}" if found else f"no layer or block matches '{text}'"
        self._show_counts()

    def _show_counts(self) -> None:
        graph = self.view.graph
        if graph is None:
            return
        groups, layers = len(graph.groups), len(graph.nodes) - 1
        folded = len(self.view.folds)
        drawn = f" ({folded} folded blocks)" if folded else ""
        text = f"{layers} layer calls in {len(self.view.boxes)} boxes{drawn}, {groups} prunable unit groups"
        self.status.setText(f"{text} · {self._note}" if self._note else text)

    def set_graph(self, graph, keep: dict[str, int] | None = None, waiting: bool = False) -> None:
        """Show ``graph`` (None: nothing yet; ``waiting`` says it is being traced)."""
        self._note = ""
        self.view.set_graph(graph, keep)
        if graph is None:
            self.status.setText("Tracing the network's layers…" if waiting else EMPTY)
        else:
            self._show_counts()
        self._completer.model().setStringList(self.view.names())
        self.view.setVisible(graph is not None)
        self.find_box.setEnabled(graph is not None)
        for button in self.buttons:
            button.setEnabled(graph is not None)

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.shown.emit()

"""The Plans tab: keep the current plan under a name, compare kept plans side by side, switch between them.

Each row shows what a plan came from, the residual blocks it removes and its parameters and FLOPs (without
those blocks); top-1, output error and latency once measured (the Measure button evaluates every plan in the
background, like Evaluate does for the current one). Double-clicking a row, or Switch, loads that plan (one
undo step). The plan in use is marked ●.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from snp_gui.plans import NamedPlan
from snp_gui.summary import DASH, human_count

__all__ = ["PlansPanel"]

COLUMNS = ("", "Plan", "Target", "Blocks", "Params", "FLOPs", "Top-1", "Output error", "Latency")
CURRENT, NAME, TARGET, BLOCKS, PARAMS, FLOPS, TOP1, ERROR, LATENCY = range(len(COLUMNS))
WARNING_COLOUR = "#d9534f"


def _percent(value: object) -> str:
    return DASH if not isinstance(value, (int, float)) else f"{value:.2f} %"


def blocks_text(blocks: tuple[str, ...]) -> str:
    """The residual blocks a plan removes, as its Blocks cell shows them."""
    if not blocks:
        return DASH
    return ", ".join(blocks) if len(blocks) <= 2 else f"{len(blocks)}: {blocks[0]}, … {blocks[-1]}"


def plan_cells(plan: NamedPlan) -> list[str]:
    """The text of each column for ``plan`` (without the current-plan mark)."""
    (params_before, params_after), (flops_before, flops_after) = plan.params, plan.flops
    m = plan.metrics
    fidelity = m.get("fidelity")
    latency = m.get("latency_after_ms")
    return [
        "",
        plan.name,
        plan.target(),
        blocks_text(plan.blocks),
        f"{human_count(params_after)} ({_change(params_before, params_after)})",
        f"{human_count(flops_after)} ({_change(flops_before, flops_after)})",
        _percent(m.get("top1_after")),
        DASH if not isinstance(fidelity, (int, float)) else f"{100 * fidelity:.2f} %",
        DASH if not isinstance(latency, (int, float)) else f"{latency:.2f} ms",
    ]


def _change(before: float, after: float) -> str:
    return f"-{100 * (1 - after / before):.1f} %" if before > 0 else DASH


class PlansPanel(QWidget):
    """Name field + Keep, the table of kept plans, and Switch / Measure / Remove."""

    keepRequested = Signal(str)
    switchRequested = Signal(str)
    removeRequested = Signal(str)
    measureRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.name = QLineEdit()
        self.name.setPlaceholderText("name for the current plan, e.g. “-50 % FLOPs, conv1 locked”")
        self.name.setToolTip("Keep the current keep counts, threshold and constraints under this name")
        self.name.returnPressed.connect(self._keep)
        self.keep_button = QPushButton("Keep plan")
        self.keep_button.setToolTip("Keep the current plan under the name (a plan of the same name is replaced)")
        self.keep_button.clicked.connect(self._keep)
        self.note = QLabel()  # why a plan could not be kept, beside the field
        self.note.setStyleSheet(f"color: {WARNING_COLOUR}")
        self.note.setVisible(False)
        self.name.textEdited.connect(lambda _text: self.show_note(""))
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setSectionResizeMode(NAME, QHeaderView.ResizeMode.Stretch)
        self.table.horizontalHeaderItem(CURRENT).setToolTip("● marks the plan in use")
        self.table.cellDoubleClicked.connect(lambda row, _column: self._switch(row))
        self.table.itemSelectionChanged.connect(self._enable)
        self.switch_button = QPushButton("Switch to plan")
        self.switch_button.setToolTip(
            "Load the selected plan: its keep counts, threshold, constraints and removed blocks (Ctrl+Z undoes it)"
        )
        self.switch_button.clicked.connect(lambda: self._switch(self.table.currentRow()))
        self.measure_button = QPushButton("Measure plans")
        self.measure_button.setToolTip(
            "Prune to each kept plan (its residual blocks removed) and measure its top-1, output error and latency "
            "in the background"
        )
        self.measure_button.clicked.connect(self.measureRequested)
        self.remove_button = QPushButton("Remove")
        self.remove_button.setToolTip("Forget the selected plan")
        self.remove_button.clicked.connect(self._remove)
        self.empty = QLabel("No plans kept yet: name the current plan and press Keep plan to compare it with others.")
        self.empty.setWordWrap(True)
        top = QHBoxLayout()
        top.addWidget(self.name, 1)
        top.addWidget(self.keep_button)
        buttons = QHBoxLayout()
        for button in (self.switch_button, self.measure_button, self.remove_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.note)
        layout.addWidget(self.empty)
        layout.addWidget(self.table, 1)
        layout.addLayout(buttons)
        self._names: list[str] = []
        self._ready = False
        self.set_plans([])

    def show_note(self, text: str) -> None:
        self.note.setText(f"⚠ {text}" if text else "")
        self.note.setVisible(bool(text))

    def set_ready(self, ready: bool) -> None:
        """Whether a plan can be kept and measured (an analysis is there and nothing runs)."""
        self._ready = ready
        self._enable()

    def set_plans(self, plans: list[NamedPlan], current: str | None = None) -> None:
        """Show ``plans`` (one row each); ``current`` is the name of the plan in use, if any."""
        selected = self.selected()
        self._names = [plan.name for plan in plans]
        self.table.setRowCount(len(plans))
        for row, plan in enumerate(plans):
            for column, text in enumerate(plan_cells(plan)):
                item = QTableWidgetItem(text)
                if column >= PARAMS:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if column == NAME:
                    item.setToolTip(f"{plan.name}: {plan.target()}; double-click to switch to it")
                if column == BLOCKS:
                    removed = ", ".join(plan.blocks) or "none"
                    item.setToolTip(f"Residual blocks removed with this plan: {removed}")
                self.table.setItem(row, column, item)
        self.mark_current(current)
        if selected in self._names:
            self.table.selectRow(self._names.index(selected))
        self.empty.setVisible(not plans)
        self.table.setVisible(bool(plans))
        self._enable()

    def mark_current(self, name: str | None) -> None:
        for row, plan_name in enumerate(self._names):
            self.table.item(row, CURRENT).setText("●" if plan_name == name else "")

    def names(self) -> list[str]:
        return list(self._names)

    def selected(self) -> str | None:
        row = self.table.currentRow()
        return self._names[row] if 0 <= row < len(self._names) and self.table.selectedItems() else None

    def cell(self, name: str, column: int) -> str:
        """The text shown for plan ``name`` in ``column`` (for tests and accessibility)."""
        return self.table.item(self._names.index(name), column).text()

    def _keep(self) -> None:
        self.keepRequested.emit(self.name.text())

    def _switch(self, row: int) -> None:
        if 0 <= row < len(self._names) and self._ready:
            self.switchRequested.emit(self._names[row])

    def _remove(self) -> None:
        name = self.selected()
        if name is not None:
            self.removeRequested.emit(name)

    def _enable(self) -> None:
        chosen = self.selected() is not None
        self.keep_button.setEnabled(self._ready)
        self.switch_button.setEnabled(self._ready and chosen)
        self.remove_button.setEnabled(chosen)
        self.measure_button.setEnabled(self._ready and bool(self._names))

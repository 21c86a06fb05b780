"""The Blocks tab: the network's whole residual blocks as rows of their own, scored, each with a box to remove it.

"Score blocks" finds the blocks whose output is their input plus a branch and measures, on the
calibration data, how much of each block's output its branch adds beyond a linear map of its input
(unexplained: what compensation cannot restore once the block is gone; readers: the same as the layers
reading the block's output see it, a share of their output energy; branch: what dropping it without
compensation changes). Ticking "Remove" takes the block out of the plan: the summary's parameters
and FLOPs leave it out, a threshold's FLOPs or parameter target is met with the channels of what
remains, and evaluating or exporting removes it, compensated. Ctrl+Z undoes a tick.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from snp_gui.block_jobs import BlockRow
from snp_gui.plots.sensitivity import WARNING_COLOUR
from snp_gui.summary import human_count

__all__ = ["BlocksPanel"]

COLUMNS = ("Remove", "Block", "Channels", "Unexplained", "Readers", "Branch", "FLOPs")
REMOVE, NAME, UNITS, UNEXPLAINED, READERS, BRANCH, FLOPS = range(len(COLUMNS))
EMPTY = "Score the blocks to list the network's residual blocks here."


class BlocksPanel(QWidget):
    """The Score button, a note, and one row per removable block."""

    scoreRequested = Signal()
    removeToggled = Signal(str, bool)  # block, removed

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.score_button = QPushButton("Score blocks")
        self.score_button.setToolTip(
            "Find the residual blocks (output = input + branch) and measure on the calibration data how much "
            "each branch adds beyond a linear map of its input, in the background"
        )
        self.score_button.clicked.connect(self.scoreRequested)
        self.status = QLabel(EMPTY)
        self.note = QLabel()
        self.note.setStyleSheet(f"color: {WARNING_COLOUR}")
        self.note.setVisible(False)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(NAME, QHeaderView.ResizeMode.Stretch)
        tips = {
            REMOVE: "Tick to remove the whole block (replaced by its skip connection; later layers refitted)",
            UNEXPLAINED: "Share of the block's output variance its branch adds beyond a linear map of its input: "
            "what compensation cannot restore (lower: safer to remove)",
            READERS: "Share of the next readers' output energy (the conv/linear layers that read the block's "
            "output) that a linear map of the block's input leaves: the unexplained part as those layers see it; "
            "— when no such layer reads the output directly",
            BRANCH: "Share of the block's output variance in the branch itself: what dropping the block "
            "without compensation changes",
            FLOPS: "What the block's layers cost at the current plan (saved when it is removed)",
        }
        for column, tip in tips.items():
            self.table.horizontalHeaderItem(column).setToolTip(tip)
        self.table.itemChanged.connect(self._item_changed)
        top = QHBoxLayout()
        top.addWidget(self.score_button)
        top.addWidget(self.status, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.note)
        layout.addWidget(self.table, 1)
        self._ready = False
        self._rows: list[BlockRow] = []
        self.set_ready(False)

    def set_ready(self, ready: bool) -> None:
        """Whether scoring and ticking can happen now (a model and data are there and nothing runs)."""
        self._ready = ready
        self.score_button.setEnabled(ready)
        self.table.setEnabled(ready or not self._rows)

    def show_note(self, text: str) -> None:
        self.note.setText(f"⚠ {text}" if text else "")
        self.note.setVisible(bool(text))

    def set_blocks(self, rows: Sequence[BlockRow], removed: Sequence[str], flops: Mapping[str, float]) -> None:
        """One row per block; ``removed`` ticked and struck through, ``flops`` the blocks' costs."""
        self._rows = list(rows)
        removed = set(removed)
        self.table.blockSignals(True)
        self.table.setRowCount(len(rows))
        for index, row in enumerate(rows):
            box = QTableWidgetItem()
            box.setFlags(Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
            box.setCheckState(Qt.CheckState.Checked if row.name in removed else Qt.CheckState.Unchecked)
            box.setData(Qt.ItemDataRole.UserRole, row.name)
            self.table.setItem(index, REMOVE, box)
            score = row.score
            texts = {
                NAME: row.name,
                UNITS: str(row.units),
                UNEXPLAINED: f"{100 * score.unexplained:.1f} %" if score is not None else "—",
                READERS: f"{100 * score.reader_energy:.1f} %"
                if score is not None and score.reader_energy is not None
                else "—",
                BRANCH: f"{100 * score.branch:.1f} %" if score is not None else "—",
                FLOPS: human_count(flops.get(row.name, 0.0)),
            }
            for column, text in texts.items():
                item = QTableWidgetItem(text)
                item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
                if column != NAME:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                font = item.font()
                font.setStrikeOut(row.name in removed)
                item.setFont(font)
                if row.name in removed:
                    item.setToolTip(f"{row.name} is removed: replaced by its skip connection")
                self.table.setItem(index, column, item)
        self.table.blockSignals(False)
        scored = sum(row.score is not None for row in rows)
        if not rows:
            self.status.setText(EMPTY)
        else:
            self.status.setText(
                f"{len(rows)} removable residual block(s), {len(removed)} removed"
                + ("" if scored == len(rows) else " · not scored yet")
            )
        self.set_ready(self._ready)

    def removed(self) -> list[str]:
        """The ticked blocks, as shown."""
        return [
            self.table.item(index, REMOVE).data(Qt.ItemDataRole.UserRole)
            for index in range(self.table.rowCount())
            if self.table.item(index, REMOVE).checkState() == Qt.CheckState.Checked
        ]

    def toggle(self, name: str) -> None:
        """Tick or untick ``name`` as a click on its box does."""
        for index in range(self.table.rowCount()):
            box = self.table.item(index, REMOVE)
            if box.data(Qt.ItemDataRole.UserRole) == name:
                checked = box.checkState() == Qt.CheckState.Checked
                box.setCheckState(Qt.CheckState.Unchecked if checked else Qt.CheckState.Checked)
                return

    def _item_changed(self, item: QTableWidgetItem) -> None:
        if item.column() != REMOVE:
            return
        self.removeToggled.emit(item.data(Qt.ItemDataRole.UserRole), item.checkState() == Qt.CheckState.Checked)

"""Per-layer table of the plan: units, kept units (editable), explained variance and cost of each group,
and the layer's constraints: a lock (the global threshold does not move it), a minimum and a round-to.
Once measured, each layer's sensitivity (top-1 and output error with only that layer pruned) is a column
too, greyed when the plan no longer gives the layer the count it was measured at.

Layers the engine cannot prune are listed greyed at the bottom, with the reason as a tooltip. A kept
count outside ``1 … units``, under the layer's minimum or off its rounding is fitted, and ``notice``
says so (the window shows it in the status bar and as a tooltip at the cell); a minimum or round-to
the layer cannot have is refused the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from PySide6.QtCore import (
    QAbstractItemModel,
    QAbstractTableModel,
    QEvent,
    QItemSelection,
    QModelIndex,
    QPersistentModelIndex,
    QSignalBlocker,
    Qt,
    Signal,
)
from PySide6.QtGui import QGuiApplication, QPalette, QValidator
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QSpinBox,
    QStyledItemDelegate,
    QTableView,
    QToolTip,
    QWidget,
)

from snp_engine.ratios import Constraints, GroupConstraint
from snp_engine.workflows.sensitivity import LayerSensitivity
from snp_gui.summary import DASH, human_count

__all__ = ["LayerTable", "LayerTableModel"]

NO_RULES = GroupConstraint()

COLUMNS = (
    "Layer",
    "Type",
    "Units",
    "Kept",
    "Ratio",
    "Explained",
    "Params",
    "FLOPs",
    "Alone: top-1 / error",
    "Lock",
    "Min",
    "Round to",
)
LAYER, TYPE, UNITS, KEPT, RATIO, EXPLAINED, PARAMS, FLOPS, ALONE, LOCK, MIN, ROUND = range(len(COLUMNS))
CONSTRAINT_FIELDS = {MIN: "min_units", ROUND: "round_to"}
HEADER_TIPS = (
    "Unit group (a layer, or layers that must keep the same units)",
    "Kind of layer",
    "Output units (channels, features or attention heads) before pruning",
    "Units the plan keeps; double-click to edit",
    "Kept units as a share of all units",
    "Share of the layer's activation variance that the kept units still explain",
    "Parameters of the layer with the kept units",
    "Multiply-accumulates per image of the layer with the kept units",
    "Sensitivity: top-1 and output (logit) error when only this layer is pruned to its kept units "
    "(Sensitivity tab; greyed: measured at another count)",
    "Locked: the global threshold or budget does not move this layer (editing its Kept count moves the lock)",
    "The fewest units this layer may keep; double-click to edit",
    "This layer keeps a multiple of this many units (or all of them); double-click to edit",
)
Index = QModelIndex | QPersistentModelIndex
# The roles the model answers; a cell's repaint asks for seven roles, three of which it never sets
# (font, decoration, background), and every call comes through Python: those return at once.
_Role = Qt.ItemDataRole
ANSWERED_ROLES = frozenset(
    (
        _Role.DisplayRole,
        _Role.CheckStateRole,
        _Role.EditRole,
        _Role.TextAlignmentRole,
        _Role.ForegroundRole,
        _Role.ToolTipRole,
        _Role.UserRole,
    )
)
RIGHT_ALIGNED = int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
# flags, combined once rather than on each of the many calls a repaint makes
SELECTABLE = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
CHECKABLE = SELECTABLE | Qt.ItemFlag.ItemIsUserCheckable
EDITABLE = SELECTABLE | Qt.ItemFlag.ItemIsEditable


@dataclass
class _Row:
    name: str
    type: str
    units: int
    kept: int
    explained: float | None
    params: int
    flops: float
    excluded_reason: str | None = None
    order: int = 0  # position in network order, to undo sorting
    warning: str | None = None  # e.g. fewer calibration samples than units: shown as ⚠ with its reason
    rule: GroupConstraint = NO_RULES
    alone: LayerSensitivity | None = None  # this layer pruned alone (measured at alone.keep units)

    @property
    def alone_stale(self) -> bool:
        return self.alone is not None and self.alone.keep != self.kept

    def values(self) -> tuple:
        """Comparable value of each column (for sorting)."""
        explained = -1.0 if self.explained is None else self.explained
        return (
            self.name,
            self.type,
            self.units,
            self.kept,
            self.kept / max(self.units, 1),
            explained,
            self.params,
            self.flops,
            (-1.0, -1.0) if self.alone is None else self.alone.rank_key,
            self.rule.locked is not None,
            self.rule.min_units or 1,
            self.rule.round_to or 1,
        )


def _display(row: _Row, column: int) -> str:
    if column >= LOCK:
        if row.excluded_reason is not None or column == LOCK:
            return ""
        return str((row.rule.min_units if column == MIN else row.rule.round_to) or 1)
    if column == RATIO:
        return f"{100.0 * row.kept / max(row.units, 1):.1f} %"
    if column == EXPLAINED:
        return DASH if row.explained is None else f"{100.0 * row.explained:.1f} %"
    if column == ALONE:
        if row.alone is None:
            return DASH if row.excluded_reason is None else ""
        return f"{row.alone.top1:.1f} % / {100.0 * row.alone.error:.1f} %"
    if column in (PARAMS, FLOPS):
        return human_count(row.params if column == PARAMS else row.flops)
    if column == LAYER and row.warning:
        return f"{row.name} ⚠"
    return str((row.name, row.type, row.units, row.kept)[column])


class LayerTableModel(QAbstractTableModel):
    """Rows of the plan; prunable groups first, excluded layers after them."""

    keepEdited = Signal(str, int)
    lockEdited = Signal(str, bool)
    constraintEdited = Signal(str, str, int)  # layer, "min_units" or "round_to", value
    notice = Signal(str)  # an edit was changed to fit: why

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._rows: list[_Row] = []
        self._index: dict[str, int] = {}

    # ----------------------------------------------------------------- Qt model interface

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008 - Qt's own default
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and 0 <= section < len(COLUMNS):
            if role == Qt.ItemDataRole.DisplayRole:
                return COLUMNS[section]
            if role == Qt.ItemDataRole.ToolTipRole:
                return HEADER_TIPS[section]
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role not in ANSWERED_ROLES or not index.isValid():
            return None
        row, column = self._rows[index.row()], index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return _display(row, column)
        if role == Qt.ItemDataRole.CheckStateRole and column == LOCK and row.excluded_reason is None:
            return Qt.CheckState.Checked if row.rule.locked is not None else Qt.CheckState.Unchecked
        if role == Qt.ItemDataRole.EditRole:
            if column in CONSTRAINT_FIELDS:
                return row.values()[column]
            return row.kept if column == KEPT else _display(row, column)
        if role == Qt.ItemDataRole.TextAlignmentRole and column >= UNITS:
            return RIGHT_ALIGNED
        if row.excluded_reason is not None:
            if role == Qt.ItemDataRole.ForegroundRole:
                return QGuiApplication.palette().brush(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text)
            if role == Qt.ItemDataRole.ToolTipRole:
                return f"Not pruned: {row.excluded_reason}"
        elif column == ALONE and row.alone is not None and role == Qt.ItemDataRole.ForegroundRole:
            if row.alone_stale:
                return QGuiApplication.palette().brush(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text)
        elif column == ALONE and role == Qt.ItemDataRole.ToolTipRole:
            return _alone_tip(row)
        elif role == Qt.ItemDataRole.ToolTipRole and column == KEPT:
            return _kept_tip(row) + (f"\n\n⚠ {row.warning}" if row.warning else "")
        elif role == Qt.ItemDataRole.ToolTipRole and column >= LOCK:
            return HEADER_TIPS[column]
        elif role == Qt.ItemDataRole.ToolTipRole and row.warning:
            return f"⚠ {row.warning}"
        if role == Qt.ItemDataRole.UserRole:
            return row.units  # the spin box editor's upper bound
        return None

    def flags(self, index: Index) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        row = self._rows[index.row()]
        if row.excluded_reason is not None:
            return Qt.ItemFlag.ItemIsEnabled  # enabled so that its tooltip shows, but neither selectable nor editable
        column = index.column()
        if column == LOCK:
            return CHECKABLE
        return EDITABLE if column in (KEPT, MIN, ROUND) else SELECTABLE

    def setData(self, index: Index, value: Any, role: int = Qt.ItemDataRole.EditRole) -> bool:
        if not index.isValid() or self._rows[index.row()].excluded_reason is not None:
            return False
        row, column = self._rows[index.row()], index.column()
        if column == LOCK and role == Qt.ItemDataRole.CheckStateRole:
            self.lockEdited.emit(row.name, Qt.CheckState(value) == Qt.CheckState.Checked)
            return True
        if role != Qt.ItemDataRole.EditRole or column not in (KEPT, MIN, ROUND):
            return False
        try:
            asked = round(float(value))
        except (TypeError, ValueError, OverflowError):
            what = "unit count" if column == KEPT else "whole number"
            self.notice.emit(f"{row.name}: {value!r} is no {what}; nothing changed")
            return False
        if column != KEPT:
            return self._set_rule(row, column, asked)
        free = GroupConstraint(min_units=row.rule.min_units, round_to=row.rule.round_to)  # edits move a lock
        kept = free.fit(asked, row.units)
        if kept != asked:
            self.notice.emit(f"{row.name}: {asked} became {kept}, {free.why(asked, kept, row.units)}")
        if kept != row.kept:
            row.kept = kept
            self.dataChanged.emit(self.index(index.row(), KEPT), self.index(index.row(), RATIO))
            self.keepEdited.emit(row.name, kept)
        return True

    def _set_rule(self, row: _Row, column: int, asked: int) -> bool:
        """A minimum or round-to typed into the table: refused with the reason when the layer cannot have it."""
        label = "minimum" if column == MIN else "round-to"
        if not 1 <= asked <= row.units:
            self.notice.emit(f"{row.name} has {row.units} units, so its {label} is 1 … {row.units}: {asked} refused")
            return False
        if column == MIN and row.rule.locked is not None and asked > row.rule.locked:
            self.notice.emit(
                f"{row.name} is locked at {row.rule.locked}: a minimum of {asked} refused (unlock it first)"
            )
            return False
        if asked != row.values()[column]:
            self.constraintEdited.emit(row.name, CONSTRAINT_FIELDS[column], asked)
        return True

    def set_constraints(self, constraints: Constraints) -> None:
        """Show each layer's lock, minimum and round-to."""
        for position, row in enumerate(self._rows):
            rule = constraints.of(row.name)
            if row.excluded_reason is None and rule != row.rule:
                row.rule = rule
                self.dataChanged.emit(self.index(position, LOCK), self.index(position, ROUND))

    def set_sensitivity(self, layers: Mapping[str, LayerSensitivity]) -> None:
        """Show each layer's sensitivity (the layers not in ``layers`` show a dash)."""
        for position, row in enumerate(self._rows):
            alone = layers.get(row.name)
            if row.excluded_reason is None and alone != row.alone:
                row.alone = alone
                index = self.index(position, ALONE)
                self.dataChanged.emit(index, index)

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        """Sort prunable rows by ``column`` (network order when ``column`` is -1); excluded rows stay last."""
        self.layoutAboutToBeChanged.emit()
        previous = [row.name for row in self._rows]
        descending = order == Qt.SortOrder.DescendingOrder and column >= 0

        def key(row: _Row) -> Any:
            return row.order if column < 0 else row.values()[column]

        included = sorted((r for r in self._rows if r.excluded_reason is None), key=key, reverse=descending)
        excluded = sorted((r for r in self._rows if r.excluded_reason is not None), key=lambda r: r.order)
        self._rows = included + excluded
        self._index = {row.name: position for position, row in enumerate(self._rows)}
        # keep the selection and any open editor on the same layer
        old = self.persistentIndexList()
        new = [self.index(self._index[previous[i.row()]], i.column()) for i in old]
        self.changePersistentIndexList(old, new)
        self.layoutChanged.emit()

    # ----------------------------------------------------------------- plan interface

    def set_rows(self, rows: list[dict]) -> None:
        """Replace all rows; dicts hold name, type, units, kept, explained, params, flops[, excluded_reason]."""
        self.beginResetModel()
        self._rows = [
            _Row(
                str(r["name"]),
                str(r.get("type", "")),
                int(r["units"]),
                int(r.get("kept", r["units"])),
                None if r.get("explained") is None else float(r["explained"]),
                int(r.get("params", 0)),
                float(r.get("flops", 0.0)),
                r.get("excluded_reason"),
                order,
                r.get("warning"),
            )
            for order, r in enumerate(rows)
        ]
        # network order, but layers that cannot be pruned go last
        self._rows.sort(key=lambda row: (row.excluded_reason is not None, row.order))
        self._index = {row.name: position for position, row in enumerate(self._rows)}
        self.endResetModel()

    def update_keep(
        self,
        keep: dict[str, int],
        explained: dict[str, float],
        params: dict[str, int] | None = None,
        flops: dict[str, float] | None = None,
    ) -> None:
        """Update rows in place; ``dataChanged`` goes out only for the cells whose value changed."""
        params, flops = params or {}, flops or {}
        for name, position in self._index.items():
            row = self._rows[position]
            if row.excluded_reason is not None:
                continue
            before = row.values()
            row.kept = int(keep.get(name, row.kept))
            row.explained = float(explained[name]) if name in explained else row.explained
            row.params = int(params.get(name, row.params))
            row.flops = float(flops.get(name, row.flops))
            changed = [column for column, (a, b) in enumerate(zip(before, row.values(), strict=True)) if a != b]
            if row.alone is not None and KEPT in changed:  # its sensitivity turns stale (or fresh again)
                changed = sorted({*changed, ALONE})
            if changed:  # one notification spanning the changed cells of this row
                self.dataChanged.emit(
                    self.index(position, changed[0]),
                    self.index(position, changed[-1]),
                    [Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.EditRole],
                )

    def row_of(self, name: str) -> int:
        """Row of group ``name``, -1 when it is not in the table."""
        return self._index.get(name, -1)

    def name_at(self, row: int) -> str:
        return self._rows[row].name

    def is_excluded(self, row: int) -> bool:
        return self._rows[row].excluded_reason is not None


def _alone_tip(row: _Row) -> str:
    alone = row.alone
    if alone is None:
        return HEADER_TIPS[ALONE] + ": not measured yet"
    text = (
        f"{row.name} pruned alone to {alone.keep} of {alone.units} units: top-1 {alone.top1:.2f} % "
        f"({-alone.drop:+.2f} points), output error {100 * alone.error:.2f} %"
    )
    if row.alone_stale:
        text += f"\nMeasured at {alone.keep} units; the plan now keeps {row.kept}: measure again"
    return text


def _kept_tip(row: _Row) -> str:
    rule, parts = row.rule, []
    if rule.locked is not None:
        parts.append(f"locked at {rule.locked}: the threshold does not move it")
    if rule.min_units:
        parts.append(f"at least {rule.min_units}")
    if rule.round_to:
        parts.append(f"a multiple of {rule.round_to} (or all {row.units})")
    return f"Double-click to change (1 … {row.units})" + (f"; {', '.join(parts)}" if parts else "")


class KeptEditor(QSpinBox):
    """A spin box bounded by the layer's unit count that still lets any whole number be typed.

    A plain QSpinBox silently drops keystrokes that leave its range (999 in a 64-unit layer ends up
    as 9); here the typed number goes to the model, which clamps it and says why.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._typed: str | None = None  # what the user typed last (Enter has the box clamp it before the commit)
        self.lineEdit().textEdited.connect(self._edited)

    def _edited(self, text: str) -> None:
        self._typed = text

    def validate(self, text: str, pos: int) -> object:
        stripped = text.strip()
        if stripped.isdigit() or (stripped.startswith("-") and stripped[1:].isdigit()):
            return QValidator.State.Acceptable, text, pos
        if stripped in ("", "-"):
            return QValidator.State.Intermediate, text, pos
        return QValidator.State.Invalid, text, pos

    def valueFromText(self, text: str) -> int:
        """The typed number clamped into the range (QSpinBox would turn 999 into the minimum)."""
        try:
            return min(max(int(text.strip()), self.minimum()), self.maximum())
        except ValueError:
            return self.value()

    def asked(self) -> int | None:
        """The number typed, even outside the range; None when the text is no whole number."""
        text = self.cleanText() if self._typed is None else self._typed
        try:
            return int(text.strip())
        except ValueError:
            return None


class KeptDelegate(QStyledItemDelegate):
    """Edits the Kept, Min and Round-to columns with a spin box bounded by the layer's unit count."""

    def createEditor(self, parent: QWidget, option: Any, index: Index) -> QWidget:
        editor = KeptEditor(parent)
        units = max(int(index.data(Qt.ItemDataRole.UserRole) or 1), 1)
        editor.setRange(1, units)
        what = {MIN: "The fewest units this layer may keep", ROUND: "This layer keeps a multiple of"}
        editor.setToolTip(f"{what.get(index.column(), 'Units this layer keeps')}: 1 … {units}")
        editor.setKeyboardTracking(False)
        return editor

    def setEditorData(self, editor: QWidget, index: Index) -> None:
        editor.setValue(int(index.data(Qt.ItemDataRole.EditRole)))

    def setModelData(self, editor: QWidget, model: QAbstractItemModel, index: Index) -> None:
        asked = editor.asked() if isinstance(editor, KeptEditor) else None
        editor.interpretText()
        model.setData(index, editor.value() if asked is None else asked, Qt.ItemDataRole.EditRole)


class LayerTable(QTableView):
    """Table view over :class:`LayerTableModel` with row selection and a spin box for the Kept column."""

    keepEdited = Signal(str, int)
    lockEdited = Signal(str, bool)
    constraintEdited = Signal(str, str, int)  # layer, "min_units" or "round_to", value
    layerSelected = Signal(str)
    notice = Signal(str)  # an edit was clamped to the layer's units: why

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._model = LayerTableModel(self)
        self.setModel(self._model)
        self._model.keepEdited.connect(self.keepEdited)
        self._model.lockEdited.connect(self.lockEdited)
        self._model.constraintEdited.connect(self.constraintEdited)
        self._model.notice.connect(self._show_notice)
        self.last_notice = ""
        for column in (KEPT, MIN, ROUND):
            self.setItemDelegateForColumn(column, KeptDelegate(self))
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(
            QAbstractItemView.EditTrigger.DoubleClicked
            | QAbstractItemView.EditTrigger.EditKeyPressed
            | QAbstractItemView.EditTrigger.SelectedClicked
        )
        self.setAlternatingRowColors(True)
        self.verticalHeader().setVisible(False)
        self.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 6)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(LAYER, QHeaderView.ResizeMode.Stretch)
        header.setSortIndicator(-1, Qt.SortOrder.AscendingOrder)  # start in network order
        self.setSortingEnabled(True)
        self.selectionModel().selectionChanged.connect(self._selection_changed)

    @property
    def layer_model(self) -> LayerTableModel:
        return self._model

    def show_notice(self, text: str) -> None:
        """Why an edit was refused elsewhere (e.g. the session refused a constraint): at the cell, like a clamp."""
        if text:
            self._show_notice(text)

    def set_constraints(self, constraints: Constraints) -> None:
        """Show each layer's lock, minimum and round-to (see :meth:`LayerTableModel.set_constraints`)."""
        self._model.set_constraints(constraints)

    def set_sensitivity(self, layers: Mapping[str, LayerSensitivity]) -> None:
        """Show each layer's sensitivity (see :meth:`LayerTableModel.set_sensitivity`)."""
        self._model.set_sensitivity(layers)

    def _show_notice(self, text: str) -> None:
        """At the edited cell, and for the window (``notice``)."""
        self.last_notice = text
        index = self.currentIndex()
        rect = self.visualRect(index) if index.isValid() else self.rect()
        QToolTip.showText(self.viewport().mapToGlobal(rect.bottomLeft()), text, self)
        self.notice.emit(text)

    def set_rows(self, rows: list[dict]) -> None:
        """Replace all rows (see :meth:`LayerTableModel.set_rows`)."""
        self._model.set_rows(rows)
        header = self.horizontalHeader()
        if header.sortIndicatorSection() >= 0:  # new rows arrive in network order; keep the user's sort
            self._model.sort(header.sortIndicatorSection(), header.sortIndicatorOrder())
        self.resizeColumnsToContents()
        self.horizontalHeader().setSectionResizeMode(LAYER, QHeaderView.ResizeMode.Stretch)

    def update_keep(
        self,
        keep: dict[str, int],
        explained: dict[str, float],
        params: dict[str, int] | None = None,
        flops: dict[str, float] | None = None,
    ) -> None:
        """Update kept units, explained variance and costs in place."""
        self._model.update_keep(keep, explained, params, flops)

    def select(self, name: str) -> None:
        """Select and reveal the row of ``name`` without emitting ``layerSelected``."""
        row = self._model.row_of(name)
        if row < 0 or self._model.is_excluded(row):
            return
        with QSignalBlocker(self):  # the caller already knows the selection, so layerSelected stays quiet
            self.selectRow(row)
            self.scrollTo(self._model.index(row, LAYER))

    def selected(self) -> str | None:
        rows = self.selectionModel().selectedRows()
        return self._model.name_at(rows[0].row()) if rows else None

    def _selection_changed(self, selected: QItemSelection, _deselected: QItemSelection) -> None:
        indexes = selected.indexes()
        if indexes:
            self.layerSelected.emit(self._model.name_at(indexes[0].row()))

    # -- how the last pruning fitted each layer (the Layer cell's tooltip)

    _fits: Mapping[str, str] = MappingProxyType({})

    def set_fits(self, fits: Mapping[str, str]) -> None:
        """One line per layer on how the last pruning fitted its consumer (kind, ridge and held-out
        errors, :func:`snp_gui.layer_rows.fit_texts`), shown in the Layer cell's tooltip; ``{}`` clears."""
        self._fits = MappingProxyType(dict(fits))

    def fit_tip(self, index: Index) -> str | None:
        """The Layer cell's tooltip with the layer's fit added; None where there is no fit to show."""
        if not index.isValid() or index.column() != LAYER:
            return None
        fit = self._fits.get(self._model.name_at(index.row()))
        if not fit:
            return None
        base = self._model.data(index, Qt.ItemDataRole.ToolTipRole)
        return (f"{base}\n\n" if base else "") + f"Fit of its consumer: {fit}"

    def viewportEvent(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ToolTip:
            tip = self.fit_tip(self.indexAt(event.pos()))
            if tip is not None:
                QToolTip.showText(event.globalPos(), tip, self.viewport())
                return True
        return super().viewportEvent(event)

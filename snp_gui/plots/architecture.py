"""The network drawn as a graph: layers in execution order, left to right, wrapped into rows like text.

Each box is one call of a layer (:class:`~snp_engine.workflows.architecture.Node`) or a folded block (a
module holding several layers: a residual block, a stage, a transformer layer) drawn as one box with its
type, its layer count and a strip of its unit groups' kept shares. A big network is first shown with its
blocks folded as deep as keeps the drawing to about :data:`FOLD_BUDGET` boxes (resnet50: its 16
bottlenecks; a ViT: its 12 encoder layers); clicking a folded box unfolds it, the "−" on a block's frame
folds it again, and selecting a layer elsewhere (the table, the curves) unfolds the block it is in and
scrolls it into view (folding back what was unfolded only for the previous selection).

A box sits one column after the latest of its inputs, branches (a downsample, an inception branch) stacked
below; the columns are wrapped into rows as wide as the view, each row ending where the fewest edges
cross (between two residual blocks rather than inside one). Layers that produce or carry a prunable unit
group are filled by the share of units the plan keeps (red: few, green: all), layers whose units are not
pruned are grey with the reason as their tooltip, others are plain. Boxes that share one unit group (a
residual stream, a gate) are tied by a dashed arc under them. Unfolded blocks (e.g. ``layer1.0``) are
framed; the layers of a residual block the plan removes are greyed and struck through, their frame dashed
and labelled "removed". Clicking a layer selects its unit group (``layerSelected``); the selected group's
boxes are outlined, the layers reading it dashed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

from PySide6.QtCore import QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import (
    QBrush,
    QColor,
    QFontMetricsF,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPainterPath,
    QPalette,
    QPen,
    QResizeEvent,
    QShowEvent,
    QWheelEvent,
)
from PySide6.QtWidgets import (
    QGraphicsItem,
    QGraphicsPathItem,
    QGraphicsRectItem,
    QGraphicsScene,
    QGraphicsSimpleTextItem,
    QGraphicsView,
    QWidget,
)

from snp_engine.workflows.architecture import INPUT, Architecture, Node
from snp_gui.plots import colour_at, muted

__all__ = ["FOLD_BUDGET", "ArchitectureView", "Cell", "cells", "foldable", "initial_folds", "kept_colour", "wrap"]

NODE_W, NODE_H, GAP_X, GAP_Y = 128.0, 56.0, 34.0, 26.0
FRAME_PAD = 9.0
NEST_PAD = 16.0  # more room per block nested inside a frame, for the inner frames' labels
ROW_GAP = 30.0  # between two wrapped rows, besides the room their frames and ties take
MARGIN = 20.0
FOLD_BUDGET = 48  # boxes a graph is first drawn with, at most, when it has blocks to fold
MIN_COLUMNS = 3
SELECTED_COLOUR = "#1f77d0"
REMOVED_COLOUR = "#d4d4d4"  # the fill of a layer whose residual block is removed
ZOOM_RANGE = (0.1, 3.0)


def kept_colour(fraction: float) -> QColor:
    """The fill of a layer keeping ``fraction`` of its units: red (none) through yellow to green (all)."""
    fraction = min(max(float(fraction), 0.0), 1.0)
    return QColor.fromHsvF(fraction / 3.0, 0.45, 0.97)


def _shape(shape: tuple[int, ...] | None) -> str:
    return "×".join(str(s) for s in shape) if shape else "?"


# -- folding and layout (no Qt) ---------------------------------------------------------------------------
def _ancestors(module: str) -> list[str]:
    """The modules holding ``module``, outermost first (``layer1.0.conv1`` → ``layer1``, ``layer1.0``)."""
    parts = module.split(".")
    return [".".join(parts[:depth]) for depth in range(1, len(parts))]


def foldable(graph: Architecture) -> list[str]:
    """The blocks that can be folded into one box, outermost first: every module holding two or more layer
    calls, except one holding exactly the layers of a single inner block (``layer4`` around a lone
    ``layer4.0``: the inner one is folded instead)."""
    members: dict[str, set[str]] = {}
    for node in graph.nodes:
        if node.id != INPUT:
            for block in _ancestors(node.module):
                members.setdefault(block, set()).add(node.id)
    blocks = sorted(members, key=lambda b: (b.count("."), b))
    return [
        block
        for block in blocks
        if len(members[block]) >= 2
        and not any(other.startswith(block + ".") and members[other] == members[block] for other in members)
    ]


def _fold_depth(blocks: Sequence[str]) -> dict[str, int]:
    """How many foldable blocks hold each one."""
    known = set(blocks)
    return {block: sum(1 for outer in _ancestors(block) if outer in known) for block in blocks}


def representative(node: Node, folded: set[str]) -> str:
    """The box ``node`` is drawn in: its outermost folded block, else the node itself."""
    for block in _ancestors(node.module):
        if block in folded:
            return block
    return node.id


def initial_folds(graph: Architecture, budget: int = FOLD_BUDGET) -> set[str]:
    """The blocks folded when ``graph`` is first shown: unfolded level by level (the outermost first) as
    long as the drawing stays within ``budget`` boxes; a graph within the budget is shown whole."""
    blocks = foldable(graph)
    depth = _fold_depth(blocks)
    folded = set(blocks)
    for level in range(max(depth.values(), default=-1) + 1):
        trial = {block for block in folded if depth[block] != level}
        if len({representative(node, trial) for node in graph.nodes}) > budget:
            break
        folded = trial
    return folded


@dataclass(frozen=True)
class Cell:
    """One drawn box: a layer call (``node``) or a folded block (``block`` with its layer calls)."""

    id: str
    node: Node | None
    block: str
    members: tuple[Node, ...]
    type: str = ""

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return self.members[0].input_shape if self.members else None

    @property
    def output_shape(self) -> tuple[int, ...] | None:
        return self.members[-1].output_shape if self.members else None


def cells(graph: Architecture, folded: set[str]) -> tuple[list[Cell], list[tuple[str, str]], dict[str, str]]:
    """The boxes drawn with ``folded`` blocks folded (in execution order), the edges between them, and the
    box each node is drawn in."""
    box = {node.id: representative(node, folded) for node in graph.nodes}
    members: dict[str, list[Node]] = {}
    for node in graph.nodes:
        members.setdefault(box[node.id], []).append(node)
    found = []
    for key, inside in members.items():
        if key != inside[0].id or len(inside) > 1:  # a folded block (named by a prefix of its layers)
            found.append(Cell(key, None, key, tuple(inside), graph.blocks.get(key, "")))
        else:
            found.append(Cell(key, inside[0], "", tuple(inside), inside[0].type))
    edges = list(dict.fromkeys((box[s], box[t]) for s, t in graph.edges if box[s] != box[t]))
    return found, edges, box


def columns_and_rows(boxes: Sequence[Cell], edges: Iterable[tuple[str, str]]) -> dict[str, tuple[int, int]]:
    """(column, row) of every box: one column after the latest of its inputs; a box takes the row of its
    first input when that place is free (so a chain stays on one line), else the first free row."""
    inputs: dict[str, list[str]] = {cell.id: [] for cell in boxes}
    for source, target in edges:
        inputs[target].append(source)
    column: dict[str, int] = {}
    taken: set[tuple[int, int]] = set()
    placed: dict[str, tuple[int, int]] = {}
    for cell in boxes:  # execution order: a topological order of the data flow
        sources = [s for s in inputs[cell.id] if s in column]
        column[cell.id] = 1 + max((column[s] for s in sources), default=-1)
        row = placed[sources[0]][1] if sources else 0
        if (column[cell.id], row) in taken:
            row = 0
            while (column[cell.id], row) in taken:
                row += 1
        taken.add((column[cell.id], row))
        placed[cell.id] = (column[cell.id], row)
    return placed


def wrap(
    placed: Mapping[str, tuple[int, int]],
    edges: Iterable[tuple[str, str]],
    width: int,
    spans: Iterable[Sequence[str]] = (),
) -> list[range]:
    """The columns cut into rows of at most ``width`` columns, each row ending after the column (in its
    second half) that the fewest edges cross, then the fewest of the blocks ``spans`` (each the boxes of
    one block) are cut through, the latest of equals."""
    count = 1 + max((column for column, _ in placed.values()), default=-1)
    width = max(int(width), 1)

    def through(pairs: Iterable[tuple[int, int]]) -> list[int]:
        """For each boundary b (after column b): how many of the (first, last) column pairs span it."""
        counts = [0] * (count + 1)
        for a, b in pairs:
            if a < b:
                counts[a] += 1
                counts[b] -= 1
        return list(itertools.accumulate(counts))

    crossing = through((placed[s][0], placed[t][0]) for s, t in edges)
    cut = through((min(placed[k][0] for k in keys), max(placed[k][0] for k in keys)) for keys in spans if keys)
    rows, start = [], 0
    while start < count:
        if count - start <= width:
            rows.append(range(start, count))
            break
        first = start + max(math.ceil(width / 2) - 1, 0)
        end = min(range(first, start + width), key=lambda b: (crossing[b], cut[b], -b))
        rows.append(range(start, end + 1))
        start = end + 1
    return rows


# -- items ------------------------------------------------------------------------------------------------
class _Toggle(QGraphicsRectItem):
    """The small square that folds (−) or unfolds (+) ``block``."""

    SIZE = 11.0

    def __init__(self, block: str, unfold: bool, corner: QPointF, colour: QColor, parent=None) -> None:
        super().__init__(QRectF(corner.x(), corner.y(), self.SIZE, self.SIZE), parent)
        self.block = block
        self.unfold = unfold
        pen = QPen(colour, 1.2)
        self.setPen(pen)
        self.setBrush(QBrush(Qt.BrushStyle.NoBrush))
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setToolTip(f"{'Unfold' if unfold else 'Fold'} {block}")
        r, mid = self.rect(), self.rect().center()
        signs = QPainterPath(QPointF(r.left() + 2.5, mid.y()))
        signs.lineTo(r.right() - 2.5, mid.y())
        if unfold:
            signs.moveTo(mid.x(), r.top() + 2.5)
            signs.lineTo(mid.x(), r.bottom() - 2.5)
        self.mark = QGraphicsPathItem(signs, self)
        self.mark.setPen(pen)

    def set_colour(self, colour: QColor) -> None:
        pen = QPen(colour, 1.2)
        self.setPen(pen)
        self.mark.setPen(pen)


class NodeItem(QGraphicsRectItem):
    """A box: its name, type and output shape; for a folded block also a strip of its groups' kept shares."""

    def __init__(self, cell: Cell, rect: QRectF, palette: QPalette) -> None:
        super().__init__(rect)
        self.cell = cell
        self.node = cell.node
        self.block = cell.block
        self.setAcceptHoverEvents(True)
        clickable = cell.block or (cell.node is not None and cell.node.group)
        self.setCursor(Qt.CursorShape.PointingHandCursor if clickable else Qt.CursorShape.ArrowCursor)
        text = palette.color(QPalette.ColorRole.Text)
        if cell.node is not None:
            lines = (cell.node.label, cell.node.type, _shape(cell.output_shape))
        else:
            name = cell.block.rpartition(".")[2]
            name = cell.block if name.isdigit() else name  # "layer1.0" rather than "0"
            lines = (name, f"{cell.type or 'block'} ({len(cell.members)} layers)", _shape(cell.output_shape))
        room = rect.width() - (12 + _Toggle.SIZE if cell.block else 10)
        self.texts = []
        for index, line in enumerate(lines):
            item = QGraphicsSimpleTextItem(line, self)
            font = item.font()
            font.setBold(index == 0)
            font.setPointSizeF(max(font.pointSizeF() - (1.0 if index else 0.0), 6.0))
            item.setFont(font)
            metrics = QFontMetricsF(font)
            width = room if index == 0 else rect.width() - 10  # the first line shares its row with the "+"
            if metrics.horizontalAdvance(line) > width:  # too long: shown whole in the tooltip
                if index == 1 and cell.block:  # "SwinTransformerBl… (9)": the layer count kept
                    count = f" ({len(cell.members)})"
                    kind = cell.type or "block"
                    line = metrics.elidedText(
                        kind, Qt.TextElideMode.ElideRight, width - metrics.horizontalAdvance(count)
                    )
                    line += count
                else:  # a block's name keeps its end (…layer_11), a layer's its start
                    mode = Qt.TextElideMode.ElideLeft if index == 0 and cell.block else Qt.TextElideMode.ElideRight
                    line = metrics.elidedText(line, mode, width)
                item.setText(line)
            item.setPos(rect.left() + 6, rect.top() + 3 + index * 15)
            item.setBrush(QBrush(text))
            self.texts.append(item)
        self.strip: list[tuple[str, QGraphicsRectItem]] = []
        # the unit groups whose counts its fill, strip or tooltip show
        self.groups = {g for n in cell.members for g in (n.group, *n.reads) if g}
        self.toggle = None
        if cell.block:
            corner = QPointF(rect.right() - _Toggle.SIZE - 3, rect.top() + 3)
            self.toggle = _Toggle(cell.block, True, corner, text, self)

    def add_strip(self, groups: Sequence[str]) -> None:
        """One thin bar per unit group along the bottom of a folded block's box."""
        if not groups:
            return
        r = self.rect()
        width = (r.width() - 8) / len(groups)
        for index, group in enumerate(groups):
            bar = QGraphicsRectItem(QRectF(r.left() + 4 + index * width, r.bottom() - 7, width, 5), self)
            bar.setPen(QPen(Qt.PenStyle.NoPen))
            self.strip.append((group, bar))

    def set_text_colour(self, colour: QColor) -> None:
        """The texts and the "+" in ``colour`` (dark on a kept-share fill, the palette's text on its base)."""
        for item in self.texts:
            item.setBrush(QBrush(colour))
        if self.toggle is not None:
            self.toggle.set_colour(colour)

    def set_struck(self, struck: bool) -> None:
        """Strike the texts through (a layer of a removed block) or not."""
        for item in self.texts:
            font = item.font()
            if font.strikeOut() != struck:
                font.setStrikeOut(struck)
                item.setFont(font)

    def struck(self) -> bool:
        return bool(self.texts) and self.texts[0].font().strikeOut()


# -- the view ---------------------------------------------------------------------------------------------
class ArchitectureView(QGraphicsView):
    """The graph of :class:`~snp_engine.workflows.architecture.Architecture`, wrapped to the view's width.

    ``items`` holds the drawn layer boxes by node id, ``folds`` the folded blocks' boxes by block name.
    Ctrl+wheel or +/- zooms, 0 fits the whole network; dragging pans.
    """

    layerSelected = Signal(str)
    layoutChanged = Signal()  # redrawn: other blocks folded, or wrapped to a new width

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setScene(QGraphicsScene(self))
        self.setRenderHint(QPainter.RenderHint.Antialiasing)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.graph: Architecture | None = None
        self.items: dict[str, NodeItem] = {}
        self.folds: dict[str, NodeItem] = {}
        self.frames: dict[str, tuple[QGraphicsRectItem, QGraphicsSimpleTextItem]] = {}  # each block's first
        self._frame_parts: list[tuple[str, int, QGraphicsRectItem, QGraphicsSimpleTextItem]] = []
        self.boxes: list[Cell] = []
        self.folded: set[str] = set()
        self._foldable: list[str] = []
        self._auto: set[str] = set()  # unfolded only to show the selection: folded again when it moves on
        self._box_of: dict[str, str] = {}
        self._keep: dict[str, int] = {}
        self._removed: tuple[str, ...] = ()
        self._selected = ""
        self._found = ""
        self._reveal = ""  # a box to scroll into view once the view is shown
        self._dirty = False  # the fold state changed while hidden: redraw when shown
        self._stale = False  # the kept counts changed while hidden: repaint when shown
        self._columns = 0
        self._auto_fit = False  # fit again when the view gets its size, until the user zooms or fits
        self._edges: list[tuple[str, str]] = []
        self._band: dict[str, int] = {}
        self._frames_for: list[Cell] | None = None  # the boxes _frames_cache was found for
        self._frames_cache: dict[str, list[str]] = {}
        self._bands: list[QRectF] = []
        self._pressed: QPointF | None = None
        self._matches: tuple[str, list[str], int] = ("", [], -1)
        self._rewrap = QTimer(self)
        self._rewrap.setSingleShot(True)
        self._rewrap.setInterval(120)
        self._rewrap.timeout.connect(self._rewrap_if_needed)

    # -- content ------------------------------------------------------------------------------------
    def set_graph(self, graph: Architecture | None, keep: Mapping[str, int] | None = None) -> None:
        """Draw ``graph`` (nothing for None) with the kept shares of ``keep``, deep blocks folded."""
        self.graph = graph
        self._keep = dict(keep or {})
        self._auto, self._found, self._reveal = set(), "", ""
        self._foldable = foldable(graph) if graph is not None else []
        self.folded = initial_folds(graph) if graph is not None else set()
        self.resetTransform()
        self._redraw()
        if graph is not None:
            self.fit(min_scale=0.7)
            self._auto_fit = True

    def _columns_for(self, scale: float) -> int:
        """Columns a row at ``scale`` (the view's width, less a vertical scroll bar whether shown or not)."""
        room = self.width() - 2 * self.frameWidth() - self.verticalScrollBar().sizeHint().width()
        pad = max(FRAME_PAD + NEST_PAD * max(self._frame_depth() - 1, 0), GAP_X / 2)  # frames, edges to a next row
        width = room / max(scale, 1e-6) - 2 * (MARGIN + pad) + GAP_X
        return max(MIN_COLUMNS, int(width // (NODE_W + GAP_X)))

    def _plan(self, columns: int) -> tuple[dict[str, QRectF], list[QRectF]]:
        """Each box's rectangle and each wrapped row's band with ``columns`` columns a row."""
        placed = columns_and_rows(self.boxes, self._edges)
        rows = wrap(placed, self._edges, columns, self._frame_blocks().values())
        row_of = {column: index for index, span in enumerate(rows) for column in span}
        depth = self._frame_depth()
        room = FRAME_PAD + NEST_PAD * depth + 14.0  # above and below a row: frames, their labels, ties
        rects: dict[str, QRectF] = {}
        bands: list[QRectF] = []
        self._band = {key: row_of[column] for key, (column, _row) in placed.items()}
        top = MARGIN + room
        for index, span in enumerate(rows):
            inside = [key for key, (column, _row) in placed.items() if row_of[column] == index]
            height = max(placed[key][1] for key in inside) + 1
            for key in inside:
                column, row = placed[key]
                x = MARGIN + (column - span.start) * (NODE_W + GAP_X)
                rects[key] = QRectF(x, top + row * (NODE_H + GAP_Y), NODE_W, NODE_H)
            band = QRectF(MARGIN, top, len(span) * (NODE_W + GAP_X) - GAP_X, height * (NODE_H + GAP_Y) - GAP_Y)
            bands.append(band)
            top = band.bottom() + 2 * room + ROW_GAP
        return rects, bands

    def _frame_blocks(self) -> dict[str, list[str]]:
        """The unfolded blocks drawn as frames, with the boxes inside each: every module holding drawn boxes,
        except one holding just the boxes of one inner block (``layer1`` around ``layer1.0``)."""
        if self._frames_for is self.boxes:
            return self._frames_cache
        members: dict[str, list[str]] = {}
        for cell in self.boxes:
            module = cell.block or (cell.node.module if cell.node is not None and cell.node.id != INPUT else "")
            for block in _ancestors(module) if module else []:
                members.setdefault(block, []).append(cell.id)
        self._frames_for, self._frames_cache = (
            self.boxes,
            {
                block: ids
                for block, ids in members.items()
                if not any(other.startswith(block + ".") and members[other] == ids for other in members)
            },
        )
        return self._frames_cache

    def _frame_depth(self) -> int:
        blocks = self._frame_blocks() if self.boxes else {}
        return max((sum(1 for outer in _ancestors(b) if outer in blocks) for b in blocks), default=-1) + 1

    def _redraw(self) -> None:
        """Draw the boxes of the current fold state, wrapped to the view's width (on a new scene: clearing
        the old one while it still holds the item the mouse was last on can crash)."""
        old = self.scene()
        scene = QGraphicsScene(self)
        self.setScene(scene)
        old.deleteLater()
        self.items, self.folds, self.frames, self._frame_parts = {}, {}, {}, []
        self._dirty = False
        if self.graph is None:
            self.boxes, self._edges, self._box_of = [], [], {}
            scene.setSceneRect(QRectF())
            self.layoutChanged.emit()
            return
        self.boxes, self._edges, self._box_of = cells(self.graph, self.folded)
        self._columns = self._columns_for(self.transform().m11())
        rects, self._bands = self._plan(self._columns)
        palette = self.palette()
        for cell in self.boxes:
            item = NodeItem(cell, rects[cell.id], palette)
            item.setZValue(2)
            scene.addItem(item)
            if cell.node is not None:
                self.items[cell.id] = item
            else:
                self.folds[cell.id] = item
                item.add_strip(self._groups_in(cell))
        self._draw_frames()
        self._style_frames()
        self._draw_edges()
        self._draw_ties()
        self._paint()
        scene.setSceneRect(scene.itemsBoundingRect().adjusted(-MARGIN, -MARGIN, MARGIN, MARGIN))
        self.layoutChanged.emit()

    def _box(self, key: str) -> NodeItem:
        return self.items.get(key) or self.folds[key]

    def _groups_in(self, cell: Cell) -> list[str]:
        """The unit groups produced inside a folded block, in execution order."""
        found = [node.group for node in cell.members if node.group and node.role == "producer"]
        return list(dict.fromkeys(found))

    def _band_of(self, key: str) -> int:
        """The wrapped row the box ``key`` is drawn in."""
        return self._band.get(key, 0)

    def _draw_frames(self) -> None:
        """A frame around each unfolded block's boxes (one per wrapped row it spans); outer frames get room
        for the labels of inner ones; a foldable block's frame has a "−" that folds it."""
        blocks = self._frame_blocks()
        height = {block: 0 for block in blocks}
        for block in sorted(blocks, key=lambda b: -b.count(".")):  # innermost first
            for outer in blocks:
                if block.startswith(outer + ".") and set(blocks[block]) <= set(blocks[outer]):
                    height[outer] = max(height[outer], height[block] + 1)
        colour = muted(self.palette())
        pen = QPen(colour, 1.0, Qt.PenStyle.SolidLine)
        can_fold = set(self._foldable)
        for block, ids in blocks.items():
            parts: dict[int, QRectF] = {}
            for key in ids:
                rect = self._box(key).rect()
                band = self._band_of(key)
                parts[band] = parts[band].united(rect) if band in parts else QRectF(rect)
            pad = FRAME_PAD + NEST_PAD * height[block]
            for index, (_band, rect) in enumerate(sorted(parts.items())):
                outline = rect.adjusted(-pad, -pad - 12, pad, pad)
                frame = self.scene().addRect(outline, pen, QBrush(Qt.BrushStyle.NoBrush))
                frame.setZValue(0)
                label = QGraphicsSimpleTextItem(block if index == 0 else f"{block} (continued)")
                label.setBrush(QBrush(colour))
                offset = _Toggle.SIZE + 4 if block in can_fold else 0.0
                label.setPos(outline.left() + 3 + offset, outline.top())
                label.setZValue(0)
                self.scene().addItem(label)
                if block in can_fold:
                    toggle = _Toggle(block, False, QPointF(outline.left() + 3, outline.top() + 2), colour)
                    toggle.setZValue(4)
                    self.scene().addItem(toggle)
                self._frame_parts.append((block, index, frame, label))
                if index == 0:
                    self.frames[block] = (frame, label)

    def _draw_edges(self) -> None:
        pen = QPen(self.palette().color(QPalette.ColorRole.Text), 1.2)
        for source, target in self._edges:
            a, b = self._box(source).rect(), self._box(target).rect()
            start, end = QPointF(a.right(), a.center().y()), QPointF(b.left(), b.center().y())
            path = QPainterPath(start)
            band_a, band_b = self._band_of(source), self._band_of(target)
            if band_a == band_b:
                bend = max((end.x() - start.x()) / 2, 12.0)
                path.cubicTo(start + QPointF(bend, 0), end - QPointF(bend, 0), end)
            else:  # to a later row: down into the gap above it, back left, into the box
                above, below = self._bands[band_b - 1], self._bands[band_b]
                gutter = (above.bottom() + below.top()) / 2 if band_b > 0 else below.top() - GAP_Y
                turn = start.x() + GAP_X / 2
                path.cubicTo(QPointF(turn, start.y()), QPointF(turn, gutter), QPointF(start.x(), gutter))
                entry = max(end.x() - GAP_X / 2, MARGIN / 2)
                path.lineTo(QPointF(entry, gutter))
                path.cubicTo(QPointF(entry, end.y()), QPointF(entry, end.y()), end)
            edge = QGraphicsPathItem(path)
            edge.setPen(pen)
            edge.setZValue(1)
            self.scene().addItem(edge)

    def _draw_ties(self) -> None:
        """A dashed arc under the boxes that share one coupled group's units, in that group's colour."""
        assert self.graph is not None
        coupled = [links for links in self.graph.groups.values() if len(links.producers) > 1]
        for index, links in enumerate(coupled):
            colour = colour_at((index + 0.5) / max(len(coupled), 1), self.palette())
            keys = [self._box_of[n.id] for n in self.graph.of_group(links.name) if n.role == "producer"]
            boxes = [self._box(key) for key in dict.fromkeys(keys)]
            boxes.sort(key=lambda item: (item.rect().top() // 1, item.rect().center().x()))
            pen = QPen(colour, 2.0, Qt.PenStyle.DashLine)
            for a, b in itertools.pairwise(boxes):
                start = QPointF(a.rect().center().x(), a.rect().bottom())
                end = QPointF(b.rect().center().x(), b.rect().bottom())
                depth = GAP_Y * 0.8 + 4 * (index % 3)
                path = QPainterPath(start)
                path.cubicTo(start + QPointF(0, depth), end + QPointF(0, depth), end)
                tie = QGraphicsPathItem(path)
                tie.setPen(pen)
                tie.setZValue(3)
                tie.setToolTip(f"{links.name}: these layers share {links.units} units, pruned together")
                self.scene().addItem(tie)

    # -- folding ------------------------------------------------------------------------------------
    def unfold(self, block: str, *, reveal: bool = True) -> None:
        """Show the layers of ``block`` (and of the blocks holding it)."""
        opened = {block, *_ancestors(block)} & self.folded
        if opened:
            self.folded -= opened
            self._auto -= opened
            self._changed(block if reveal else "")

    def fold(self, block: str) -> None:
        """Draw ``block`` as one box again."""
        if block in self._foldable and block not in self.folded:
            self.folded.add(block)
            self._auto.discard(block)
            self._changed(block)

    def unfold_all(self) -> None:
        self.folded, self._auto = set(), set()
        self._changed("")

    def fold_all(self) -> None:
        """Every block folded: only the outermost ones are drawn, as boxes."""
        self.folded, self._auto = set(self._foldable), set()
        self._changed("")

    def _changed(self, reveal: str) -> None:
        """Redraw after the fold state changed (when shown; else once the view is shown)."""
        self._reveal = reveal or self._reveal
        if self.isVisible():
            self._redraw()
            self._scroll_to_reveal()
        else:
            self._dirty = True

    def _scroll_to_reveal(self) -> None:
        key, self._reveal = self._reveal, ""
        if key and self.graph is not None:
            key = self._box_of.get(key, key)
            if (key in self.items or key in self.folds) and not self.visible_in_viewport(key, margin=30):
                self.centerOn(self._box(key))  # with what is around it
            elif key in self.frames:
                self.ensureVisible(self.frames[key][0], 20, 20)

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if self._dirty:
            self._redraw()
        elif self._stale:
            self._paint()
        self._scroll_to_reveal()

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        if self.graph is not None:
            self._rewrap.start()  # once the resizing pauses: wrapping redraws the whole scene

    def _rewrap_if_needed(self) -> None:
        if self.graph is not None and self._auto_fit:
            self.fit(min_scale=0.7)
            self._auto_fit = True
        elif self.graph is not None and self._columns_for(self.transform().m11()) != self._columns:
            self._reveal = self._reveal or self._selected_box()
            self._redraw()
            self._scroll_to_reveal()

    def _selected_box(self) -> str:
        if self.graph is None or not self._selected:
            return ""
        nodes = [n for n in self.graph.of_group(self._selected) if n.role == "producer"]
        return self._box_of.get(nodes[0].id, "") if nodes else ""

    # -- state shown --------------------------------------------------------------------------------
    def removed_block(self, node: Node) -> str:
        """The removed residual block ``node`` is a layer of, "" when there is none."""
        for block in self._removed:
            if node.module.startswith(block + "."):
                return block
        return ""

    def set_removed(self, blocks: Sequence[str]) -> None:
        """Grey and strike through the layers of the residual blocks ``blocks`` (removed by the plan)."""
        self._removed = tuple(blocks)
        if self.graph is None:
            return
        self._style_frames()
        self._paint()

    def _style_frames(self) -> None:
        """A removed block's frames (one per wrapped row it spans) dashed and labelled "removed"."""
        normal = QPen(muted(self.palette()), 1.0, Qt.PenStyle.SolidLine)
        dashed = QPen(muted(self.palette()), 1.5, Qt.PenStyle.DashLine)
        for block, index, frame, label in self._frame_parts:
            gone = block in self._removed
            frame.setPen(dashed if gone else normal)
            name = block if index == 0 else f"{block} (continued)"
            label.setText(f"{name} · removed" if gone else name)

    def _removed_box(self, cell: Cell) -> bool:
        if cell.node is not None:
            return bool(self.removed_block(cell.node))
        return any(cell.block == b or cell.block.startswith(b + ".") for b in self._removed)

    def set_keep(self, keep: Mapping[str, int]) -> None:
        """Fill each group's boxes by the share of units it keeps; boxes of removed blocks grey and struck
        through; a folded block by the share of its groups' units kept. Only the boxes of the groups
        whose counts changed are repainted (a marker drag changes one), and none while the view is hidden
        (they are once it is shown)."""
        keep = dict(keep)
        changed = {g for g in set(keep) | set(self._keep) if keep.get(g) != self._keep.get(g)}
        self._keep = keep
        if self.graph is None:
            return
        if not self.isVisible():
            self._stale = True
            return
        self._paint(changed)

    def _paint(self, changed: set[str] | None = None) -> None:
        """Fill, texts and tooltips of the boxes holding a group of ``changed`` (None: of every box)."""
        if self.graph is None:
            return
        if changed is None or self._stale:
            boxes = [*self.items.values(), *self.folds.values()]
        else:
            boxes = [item for item in (*self.items.values(), *self.folds.values()) if item.groups & changed]
        self._stale = False
        palette = self.palette()
        text, base = palette.color(QPalette.ColorRole.Text), palette.color(QPalette.ColorRole.Base)
        disabled = palette.color(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text)
        dark_text = QColor(20, 20, 20)
        groups = self.graph.groups
        for item in boxes:
            cell, node = item.cell, item.node
            gone = self._removed_box(cell)
            item.set_struck(gone)
            links = groups.get(node.group or "") if node is not None else None
            if item.strip:
                units = sum(groups[g].units for g, _bar in item.strip)
                kept = sum(self._keep.get(g, groups[g].units) for g, _bar in item.strip)
                for group, bar in item.strip:
                    share = self._keep.get(group, groups[group].units) / max(groups[group].units, 1)
                    bar.setBrush(QBrush(QColor(REMOVED_COLOUR) if gone else kept_colour(share).darker(125)))
            if gone:
                item.setBrush(QBrush(QColor(REMOVED_COLOUR)))
                item.set_text_colour(disabled)
            elif links is not None:
                fraction = self._keep.get(links.name, links.units) / max(links.units, 1)
                item.setBrush(QBrush(kept_colour(fraction)))
                item.set_text_colour(dark_text)
            elif item.strip:
                item.setBrush(QBrush(kept_colour(kept / max(units, 1))))
                item.set_text_colour(dark_text)
            elif (node is not None and node.excluded is not None) or (node is None and self._all_excluded(cell)):
                item.setBrush(QBrush(palette.color(QPalette.ColorRole.Mid)))
                item.set_text_colour(text)  # grey enough: the disabled colour on grey was unreadable
            else:
                item.setBrush(QBrush(base))
                item.set_text_colour(text)
            item.setToolTip(self._tooltip(cell))
        self._outline()

    @staticmethod
    def _all_excluded(cell: Cell) -> bool:
        return any(n.excluded is not None for n in cell.members) and not any(n.group for n in cell.members)

    def set_selected(self, group: str) -> None:
        """Outline the boxes of ``group`` (solid) and the layers reading it (dashed). When its first layer is
        inside a folded block, that block is unfolded and scrolled into view (and folded again once the
        selection moves elsewhere)."""
        self._selected = group or ""
        if self.graph is not None and self._selected:
            nodes = sorted(self.graph.of_group(self._selected), key=lambda n: n.role != "producer")
            kept_open = self.folded | self._auto
            target = (
                next((n for n in nodes if n.id == self._found), None)
                or next((n for n in nodes if representative(n, kept_open) == n.id), None)
                or (nodes[0] if nodes else None)
            )
            if target is not None:
                self._show_node(target)
        self._outline()

    def _show_node(self, node: Node) -> None:
        """Unfold what hides ``node`` (folding back what was unfolded only for an earlier one) and scroll
        to it."""
        holders = set(_ancestors(node.module))
        back = {block for block in self._auto if block not in holders}
        opened = holders & self.folded
        self._auto = (self._auto - back) | opened
        self.folded = (self.folded | back) - opened
        if back or opened:
            self._changed(node.id)
        else:
            self._reveal = node.id
            if self.isVisible():
                self._scroll_to_reveal()

    def _outline(self) -> None:
        normal = QPen(muted(self.palette()), 1.0)
        chosen = QPen(QColor(SELECTED_COLOUR), 3.0)
        reading = QPen(QColor(SELECTED_COLOUR), 2.0, Qt.PenStyle.DashLine)
        found = QPen(QColor(SELECTED_COLOUR), 2.5, Qt.PenStyle.DotLine)
        selected = self._selected
        for item in (*self.items.values(), *self.folds.values()):
            members = item.cell.members
            if selected and any(n.group == selected for n in members):
                item.setPen(chosen)
            elif selected and any(selected in n.reads for n in members):
                item.setPen(reading)
            elif self._found and self._found == item.cell.id:
                item.setPen(found)
            else:
                item.setPen(normal)

    def node_colour(self, node_id: str) -> str:
        """The fill of a box (``#rrggbb``; a node id or a folded block's name), for tests and accessibility
        checks."""
        return self._box(node_id).brush().color().name()

    def outlined(self) -> dict[str, str]:
        """Outlined boxes: "selected" (of the selected group), "reader" (reading it) or "found" (searched)."""
        found = {}
        for key, item in (*self.items.items(), *self.folds.items()):
            if item.pen().widthF() >= 3.0:
                found[key] = "selected"
            elif item.pen().style() == Qt.PenStyle.DotLine:
                found[key] = "found"
            elif item.pen().style() == Qt.PenStyle.DashLine:
                found[key] = "reader"
        return found

    def visible_in_viewport(self, key: str, margin: int = 0) -> bool:
        """Whether the box of ``key`` (a node id or block) is drawn and inside the visible part of the view
        (``margin`` pixels from its edges)."""
        key = self._box_of.get(key, key)
        if key not in self.items and key not in self.folds:
            return False
        inner = self.viewport().rect().adjusted(margin, margin, -margin, -margin)
        return self.mapToScene(inner).boundingRect().contains(self._box(key).sceneBoundingRect())

    def _tooltip(self, cell: Cell) -> str:
        if cell.node is None:
            return self._block_tooltip(cell)
        node = cell.node
        lines = [f"{node.module} ({node.type})"]
        block = self.removed_block(node)
        if block:
            lines.append(f"Removed with the residual block {block} (replaced by its skip connection)")
        if node.id != INPUT:
            lines.append(f"{_shape(node.input_shape)} → {_shape(node.output_shape)}")
        links = self.graph.groups.get(node.group or "") if self.graph is not None else None
        if links is not None:
            k = self._keep.get(links.name, links.units)
            part = "produces" if node.role == "producer" else "carries"
            share = 100 * k / links.units
            lines.append(f"{part} the units of {links.name}: keeps {k} of {links.units} ({share:.0f} %)")
            if links.coupled:
                lines.append(f"shared by producers {', '.join(links.producers)}; read by {', '.join(links.readers)}")
            lines.append("click to select this layer")
        if node.excluded is not None:
            lines.append(f"Not pruned: {node.excluded}")
        if node.reads:
            lines.append(f"reads the units of {', '.join(node.reads)}")
        return "\n".join(lines)

    def _block_tooltip(self, cell: Cell) -> str:
        lines = [f"{cell.block} ({cell.type or 'block'}): {len(cell.members)} layer calls, folded"]
        if any(cell.block == b or cell.block.startswith(b + ".") for b in self._removed):
            lines.append("Removed by the plan (replaced by its skip connection)")
        lines.append(f"{_shape(cell.input_shape)} → {_shape(cell.output_shape)}")
        groups = [g for g, _bar in self._box(cell.id).strip] if cell.id in self.folds else self._groups_in(cell)
        assert self.graph is not None
        for group in groups[:12]:
            links = self.graph.groups[group]
            k = self._keep.get(group, links.units)
            lines.append(f"  {group}: keeps {k} of {links.units} ({100 * k / max(links.units, 1):.0f} %)")
        if len(groups) > 12:
            lines.append(f"  … and {len(groups) - 12} more unit groups")
        excluded = [n for n in cell.members if n.excluded is not None]
        if excluded:
            lines.append(f"{len(excluded)} layers not pruned (unfold to see why)")
        lines.append("click to unfold")
        return "\n".join(lines)

    # -- finding ------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every layer and block name, for completion."""
        if self.graph is None:
            return []
        modules = [n.module for n in self.graph.nodes if n.id != INPUT]
        return list(dict.fromkeys([*modules, *self.graph.blocks]))

    def find(self, text: str) -> str:
        """Show the next layer or block matching ``text`` (its name, or a part of it, any case): unfold what
        hides it, scroll to it and outline it; a layer of a unit group is selected everywhere. Returns
        the name found, "" when nothing matches."""
        text = text.strip()
        if self.graph is None or not text:
            return ""
        query, matches, index = self._matches
        if query != text:
            low = text.lower()
            nodes = [n.id for n in self.graph.nodes if n.id != INPUT]
            exact = [key for key in (*nodes, *self.graph.blocks) if key.lower() == low]
            parts = [key for key in (*nodes, *self.graph.blocks) if low in key.lower() and key not in exact]
            matches, index = exact + parts, -1
        if not matches:
            self._matches = (text, [], -1)
            return ""
        index = (index + 1) % len(matches)
        self._matches = (text, matches, index)
        key = matches[index]
        if key in self.graph.blocks:
            self._auto = set()
            self.folded -= set(_ancestors(key))
            self._found = key if key in self.folded else ""
            self._changed(key)
            self._outline()
            return key
        node = self.graph.node(key)
        self._found = key
        self._show_node(node)
        self._auto = set()  # what the user looked for stays unfolded
        if node.group:
            self.set_selected(node.group)
            self.layerSelected.emit(node.group)
        self._outline()
        return key

    # -- interaction --------------------------------------------------------------------------------
    def node_at(self, position: QPointF) -> Node | None:
        """The layer under ``position`` (view coordinates)."""
        for item in self.items_at(position):
            if isinstance(item, NodeItem) and item.node is not None:
                return item.node
        return None

    def items_at(self, position: QPointF) -> list[QGraphicsItem]:
        return self.items_under(self.mapToScene(position.toPoint()))

    def items_under(self, point: QPointF) -> list[QGraphicsItem]:
        found = []
        for item in self.scene().items(point):
            while item is not None and not isinstance(item, (NodeItem, _Toggle)):
                item = item.parentItem()
            if item is not None:
                found.append(item)
        return found

    def click_node(self, node_id: str) -> None:
        """What a click on a layer's box does: select its unit group (layers without one select nothing);
        blocks unfolded for an earlier selection stay unfolded."""
        node = self.items[node_id].node
        if node is not None and node.group:
            self._auto = set()
            self.set_selected(node.group)
            self.layerSelected.emit(node.group)

    def click_block(self, block: str) -> None:
        """What a click on a folded block's box (or its "+") does: unfold it."""
        self.unfold(block)

    def mousePressEvent(self, event: QMouseEvent) -> None:
        self._pressed = event.position()
        super().mousePressEvent(event)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        super().mouseReleaseEvent(event)
        pressed, self._pressed = self._pressed, None
        if pressed is None or (event.position() - pressed).manhattanLength() > 4:
            return  # a drag scrolls, it does not select
        for item in self.items_at(event.position()):
            # folding redraws the scene: not while Qt is still delivering this event to its items
            if isinstance(item, _Toggle):
                QTimer.singleShot(0, partial(self.unfold if item.unfold else self.fold, item.block))
                return
            if isinstance(item, NodeItem) and item.node is None:
                QTimer.singleShot(0, partial(self.click_block, item.block))
                return
            if isinstance(item, NodeItem) and item.node is not None:
                self.click_node(item.node.id)
                return

    def wheelEvent(self, event: QWheelEvent) -> None:
        if event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            self.zoom(1.15 if event.angleDelta().y() > 0 else 1 / 1.15)
            event.accept()
            return
        super().wheelEvent(event)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = event.key()
        if key in (Qt.Key.Key_Plus, Qt.Key.Key_Equal):
            self.zoom(1.15)
        elif key == Qt.Key.Key_Minus:
            self.zoom(1 / 1.15)
        elif key == Qt.Key.Key_0:
            self.fit()
        else:
            super().keyPressEvent(event)

    def zoom(self, factor: float) -> None:
        """Zoom by ``factor`` (within 10 %–300 %), keeping the wrapping: zooming out shows more rows."""
        self._auto_fit = False
        scale = self.transform().m11() * factor
        if ZOOM_RANGE[0] <= scale <= ZOOM_RANGE[1]:
            self.scale(factor, factor)

    def actual_size(self) -> None:
        """Natural size, wrapped to the view's width."""
        self._auto_fit = False
        self.resetTransform()
        self._rewrap_if_needed()

    def fit(self, min_scale: float = 0.2) -> None:
        """The whole network in view, wrapped for it: the largest scale (at most natural size, at least
        ``min_scale``) at which the rows wrapped to that width fit the view's height."""
        self._auto_fit = False
        if self.graph is None or not self.boxes:
            return
        viewport = self.viewport().size()
        chosen = min_scale
        scale = 1.0
        while scale >= min_scale - 1e-9:
            rects, _bands = self._plan(self._columns_for(scale))
            bounds = QRectF()
            for rect in rects.values():
                bounds = bounds.united(rect)
            height = bounds.bottom() + MARGIN + FRAME_PAD + NEST_PAD * self._frame_depth() + 14.0
            if height * scale <= viewport.height() and (bounds.right() + MARGIN) * scale <= viewport.width():
                chosen = scale
                break
            scale = round(scale - 0.05, 2)
        self.resetTransform()
        self.scale(chosen, chosen)
        if self._columns_for(chosen) != self._columns:
            self._redraw()
        self.horizontalScrollBar().setValue(self.horizontalScrollBar().minimum())
        self.verticalScrollBar().setValue(self.verticalScrollBar().minimum())

    def scroll_to(self, node_id: str) -> None:
        """Scroll so that the box drawing ``node_id`` (a layer, or the folded block holding it) is centred."""
        key = self._box_of.get(node_id, node_id)
        if key in self.items or key in self.folds:
            self.centerOn(self._box(key))

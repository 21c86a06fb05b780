"""The network drawn as a graph: layers in execution order from left to right, with their shapes.

Each node is one call of a layer (:class:`~snp_engine.workflows.architecture.Node`); a layer one column
after the latest of its inputs, branches (a downsample, an inception branch) stacked below. Layers that
produce or carry a prunable unit group are filled by the share of units the plan keeps (red: few, green:
all), layers whose units are not pruned are grey with the reason as their tooltip, others are plain.
Layers that share one unit group (a residual stream, a gate) are tied by a dashed arc under them.
Blocks (a module's layers, e.g. ``layer1.0``) are framed; the layers of a residual block the plan
removes are greyed and struck through, their frame dashed and labelled "removed". Clicking a node selects its unit group
(``layerSelected``); the selected group's layers are outlined, the layers reading it dashed.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QMouseEvent, QPainter, QPainterPath, QPalette, QPen, QWheelEvent
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

__all__ = ["ArchitectureView", "kept_colour"]

NODE_W, NODE_H, GAP_X, GAP_Y = 128.0, 56.0, 34.0, 26.0
FRAME_PAD = 9.0
SELECTED_COLOUR = "#1f77d0"
REMOVED_COLOUR = "#d4d4d4"  # the fill of a layer whose residual block is removed


def kept_colour(fraction: float) -> QColor:
    """The fill of a layer keeping ``fraction`` of its units: red (none) through yellow to green (all)."""
    fraction = min(max(float(fraction), 0.0), 1.0)
    return QColor.fromHsvF(fraction / 3.0, 0.45, 0.97)


def _shape(shape: tuple[int, ...] | None) -> str:
    return "×".join(str(s) for s in shape) if shape else "?"


class NodeItem(QGraphicsRectItem):
    """A layer's box: its name, type and output shape."""

    def __init__(self, node: Node, rect: QRectF, palette: QPalette) -> None:
        super().__init__(rect)
        self.node = node
        self.setAcceptHoverEvents(True)
        self.setCursor(Qt.CursorShape.PointingHandCursor if node.group else Qt.CursorShape.ArrowCursor)
        text = palette.color(QPalette.ColorRole.Text)
        lines = (node.label, node.type, _shape(node.output_shape))
        self.texts = []
        for index, line in enumerate(lines):
            item = QGraphicsSimpleTextItem(line, self)
            font = item.font()
            font.setBold(index == 0)
            font.setPointSizeF(max(font.pointSizeF() - (1.0 if index else 0.0), 6.0))
            item.setFont(font)
            width = item.boundingRect().width()
            if width > rect.width() - 8:  # too long: shown whole in the tooltip
                item.setText(line[: max(3, int(len(line) * (rect.width() - 14) / width))] + "…")
            item.setPos(rect.left() + 6, rect.top() + 3 + index * 16)
            item.setBrush(QBrush(text))
            self.texts.append(item)

    def set_text_colour(self, colour: QColor) -> None:
        for item in self.texts:
            item.setBrush(QBrush(colour))

    def set_struck(self, struck: bool) -> None:
        """Strike the texts through (a layer of a removed block) or not."""
        for item in self.texts:
            font = item.font()
            if font.strikeOut() != struck:
                font.setStrikeOut(struck)
                item.setFont(font)

    def struck(self) -> bool:
        return bool(self.texts) and self.texts[0].font().strikeOut()


class ArchitectureView(QGraphicsView):
    """The graph of :class:`~snp_engine.workflows.architecture.Architecture`; wheel with Ctrl zooms."""

    layerSelected = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setScene(QGraphicsScene(self))
        self.setRenderHint(QPainter.RenderHint.Antialiasing)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.graph: Architecture | None = None
        self.items: dict[str, NodeItem] = {}
        self._keep: dict[str, int] = {}
        self._removed: tuple[str, ...] = ()
        self.frames: dict[str, tuple[QGraphicsRectItem, QGraphicsSimpleTextItem]] = {}
        self._selected = ""
        self._pressed: QPointF | None = None

    # -- content ------------------------------------------------------------------------------------
    def set_graph(self, graph: Architecture | None, keep: Mapping[str, int] | None = None) -> None:
        """Draw ``graph`` (nothing for None) with the kept shares of ``keep``."""
        scene = self.scene()
        scene.clear()
        self.items, self.frames = {}, {}
        self.graph = graph
        self.resetTransform()
        if graph is None:
            return
        positions = layout(graph)
        palette = self.palette()
        for node in graph.nodes:
            column, row = positions[node.id]
            rect = QRectF(column * (NODE_W + GAP_X), row * (NODE_H + GAP_Y), NODE_W, NODE_H)
            item = NodeItem(node, rect, palette)
            item.setZValue(2)
            item.setToolTip(self._tooltip(node))
            scene.addItem(item)
            self.items[node.id] = item
        self._draw_frames(graph)
        self._draw_edges(graph)
        self._draw_ties(graph)
        self.set_keep(keep or {})
        scene.setSceneRect(scene.itemsBoundingRect().adjusted(-20, -20, 20, 20))
        self.fit_height()

    def fit_height(self) -> None:
        """As large as the whole graph's height allows (at most the natural size, at least a third of it)."""
        if self.graph is None:
            return
        self.resetTransform()
        room = self.viewport().height() / max(self.scene().sceneRect().height(), 1.0)
        scale = min(1.0, max(room, 0.35))
        self.scale(scale, scale)
        self.horizontalScrollBar().setValue(self.horizontalScrollBar().minimum())

    def _draw_frames(self, graph: Architecture) -> None:
        """A frame around each block's layers; a block holding just the layers of one inner block is left
        out (``layer1`` around ``layer1.0``), and outer frames get room for the labels of inner ones."""
        members: dict[str, list[str]] = {}
        for node in graph.nodes:
            parts = node.block.split(".") if node.block else []
            for depth in range(1, len(parts) + 1):
                members.setdefault(".".join(parts[:depth]), []).append(node.id)
        blocks = {
            block: ids
            for block, ids in members.items()
            if not any(other.startswith(block + ".") and members[other] == ids for other in members)
        }
        height = {block: 0 for block in blocks}
        for block in sorted(blocks, key=lambda b: -b.count(".")):  # innermost first
            for outer in blocks:
                if block.startswith(outer + ".") and set(blocks[block]) <= set(blocks[outer]):
                    height[outer] = max(height[outer], height[block] + 1)
        pen = QPen(muted(self.palette()), 1.0, Qt.PenStyle.SolidLine)
        for block, ids in blocks.items():
            rect = QRectF(self.items[ids[0]].rect())
            for node_id in ids[1:]:
                rect = rect.united(self.items[node_id].rect())
            pad = FRAME_PAD + 16.0 * height[block]
            frame = self.scene().addRect(rect.adjusted(-pad, -pad - 12, pad, pad), pen, QBrush(Qt.BrushStyle.NoBrush))
            frame.setZValue(0)
            label = QGraphicsSimpleTextItem(block)
            label.setBrush(QBrush(muted(self.palette())))
            label.setPos(rect.left() - pad + 3, rect.top() - pad - 12)
            label.setZValue(0)
            self.scene().addItem(label)
            self.frames[block] = (frame, label)

    def _draw_edges(self, graph: Architecture) -> None:
        pen = QPen(self.palette().color(QPalette.ColorRole.Text), 1.2)
        for source, target in graph.edges:
            a, b = self.items[source].rect(), self.items[target].rect()
            start, end = QPointF(a.right(), a.center().y()), QPointF(b.left(), b.center().y())
            path = QPainterPath(start)
            bend = max((end.x() - start.x()) / 2, 12.0)
            path.cubicTo(start + QPointF(bend, 0), end - QPointF(bend, 0), end)
            edge = QGraphicsPathItem(path)
            edge.setPen(pen)
            edge.setZValue(1)
            self.scene().addItem(edge)

    def _draw_ties(self, graph: Architecture) -> None:
        """A dashed arc under the layers that share one coupled group's units, in that group's colour."""
        coupled = [links for links in graph.groups.values() if len(links.producers) > 1]
        for index, links in enumerate(coupled):
            colour = colour_at((index + 0.5) / max(len(coupled), 1), self.palette())
            nodes = [self.items[n.id] for n in graph.of_group(links.name) if n.role == "producer"]
            nodes.sort(key=lambda item: item.rect().center().x())
            pen = QPen(colour, 2.0, Qt.PenStyle.DashLine)
            for a, b in itertools.pairwise(nodes):
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
        normal = QPen(muted(self.palette()), 1.0, Qt.PenStyle.SolidLine)
        dashed = QPen(muted(self.palette()), 1.5, Qt.PenStyle.DashLine)
        for block, (frame, label) in self.frames.items():
            gone = block in self._removed
            frame.setPen(dashed if gone else normal)
            label.setText(f"{block} · removed" if gone else block)
        self.set_keep(self._keep)

    def set_keep(self, keep: Mapping[str, int]) -> None:
        """Fill each group's layers by the share of units it keeps (microseconds per node); layers of
        removed blocks grey and struck through."""
        self._keep = dict(keep)
        if self.graph is None:
            return
        palette = self.palette()
        text, base = palette.color(QPalette.ColorRole.Text), palette.color(QPalette.ColorRole.Base)
        dark_text = QColor(20, 20, 20)
        for item in self.items.values():
            node = item.node
            links = self.graph.groups.get(node.group or "")
            gone = bool(self.removed_block(node))
            item.set_struck(gone)
            if gone:
                item.setBrush(QBrush(QColor(REMOVED_COLOUR)))
                item.set_text_colour(palette.color(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text))
            elif links is not None:
                fraction = self._keep.get(links.name, links.units) / max(links.units, 1)
                item.setBrush(QBrush(kept_colour(fraction)))
                item.set_text_colour(dark_text)
            elif node.excluded is not None:
                item.setBrush(QBrush(palette.color(QPalette.ColorRole.Mid)))
                item.set_text_colour(palette.color(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text))
            else:
                item.setBrush(QBrush(base))
                item.set_text_colour(text)
            item.setToolTip(self._tooltip(node))
        self._outline()

    def set_selected(self, group: str) -> None:
        """Outline the layers of ``group`` (solid) and the layers reading it (dashed)."""
        self._selected = group or ""
        self._outline()

    def _outline(self) -> None:
        normal = QPen(muted(self.palette()), 1.0)
        chosen = QPen(QColor(SELECTED_COLOUR), 3.0)
        reading = QPen(QColor(SELECTED_COLOUR), 2.0, Qt.PenStyle.DashLine)
        for item in self.items.values():
            node = item.node
            if self._selected and node.group == self._selected:
                item.setPen(chosen)
            elif self._selected and self._selected in node.reads:
                item.setPen(reading)
            else:
                item.setPen(normal)

    def node_colour(self, node_id: str) -> str:
        """The fill of a node (``#rrggbb``), for tests and accessibility checks."""
        return self.items[node_id].brush().color().name()

    def outlined(self) -> dict[str, str]:
        """Outlined nodes: "selected" (of the selected group) or "reader" (reading it)."""
        found = {}
        for node_id, item in self.items.items():
            if item.pen().widthF() >= 3.0:
                found[node_id] = "selected"
            elif item.pen().style() == Qt.PenStyle.DashLine:
                found[node_id] = "reader"
        return found

    def _tooltip(self, node: Node) -> str:
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

    # -- interaction --------------------------------------------------------------------------------
    def node_at(self, position: QPointF) -> Node | None:
        """The node under ``position`` (view coordinates)."""
        for item in self.items_at(position):
            if isinstance(item, NodeItem):
                return item.node
        return None

    def items_at(self, position: QPointF) -> list[QGraphicsItem]:
        return self.items_under(self.mapToScene(position.toPoint()))

    def items_under(self, point: QPointF) -> list[QGraphicsItem]:
        found = []
        for item in self.scene().items(point):
            while item is not None and not isinstance(item, NodeItem):
                item = item.parentItem()
            if item is not None:
                found.append(item)
        return found

    def click_node(self, node_id: str) -> None:
        """What a click on the node does: select its unit group (layers without one select nothing)."""
        node = self.items[node_id].node
        if node.group:
            self.set_selected(node.group)
            self.layerSelected.emit(node.group)

    def mousePressEvent(self, event: QMouseEvent) -> None:
        self._pressed = event.position()
        super().mousePressEvent(event)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        super().mouseReleaseEvent(event)
        pressed, self._pressed = self._pressed, None
        if pressed is None or (event.position() - pressed).manhattanLength() > 4:
            return  # a drag scrolls, it does not select
        node = self.node_at(event.position())
        if node is not None:
            self.click_node(node.id)

    def wheelEvent(self, event: QWheelEvent) -> None:
        if event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            factor = 1.15 if event.angleDelta().y() > 0 else 1 / 1.15
            self.zoom(factor)
            event.accept()
            return
        super().wheelEvent(event)

    def zoom(self, factor: float) -> None:
        scale = self.transform().m11() * factor
        if 0.1 <= scale <= 3.0:
            self.scale(factor, factor)

    def fit(self) -> None:
        """The whole graph in view (at most at its natural size)."""
        if self.graph is None:
            return
        self.fitInView(self.scene().sceneRect(), Qt.AspectRatioMode.KeepAspectRatio)
        if self.transform().m11() > 1.0:
            self.resetTransform()

    def scroll_to(self, node_id: str) -> None:
        if node_id in self.items:
            self.centerOn(self.items[node_id])


def layout(graph: Architecture) -> dict[str, tuple[int, int]]:
    """(column, row) of every node: the column from :meth:`Architecture.columns`; a node takes the row of
    its first input when that place is free (so a chain stays on one line), else the first free row."""
    columns = graph.columns()
    first_input: dict[str, str] = {}
    for source, target in graph.edges:
        first_input.setdefault(target, source)
    taken: set[tuple[int, int]] = set()
    placed: dict[str, tuple[int, int]] = {}
    for node in graph.nodes:
        column = columns[node.id]
        source = first_input.get(node.id)
        row = placed[source][1] if source in placed else 0
        if (column, row) in taken:
            row = 0
            while (column, row) in taken:
                row += 1
        taken.add((column, row))
        placed[node.id] = (column, row)
    return placed

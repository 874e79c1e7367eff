"""The graph view's scene items: nodes, collapsed groups, group frames and edges.

Each item is made once per drawn node and moved or restyled in place (`NodeItem.set_state`,
`EdgeItem.set_route`) when the layout, the measure or the document changes. Text is skipped
when zoomed far out: it would be unreadable, and painting it is most of the cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QFontMetricsF, QPainter, QPainterPath, QPen, QPolygonF
from PySide6.QtWidgets import (
    QGraphicsItem,
    QGraphicsPathItem,
    QGraphicsRectItem,
    QStyleOptionGraphicsItem,
    QWidget,
)

from qviz.app.views.plot_style import label_font
from qviz.core.graphview.layout import Box, Frame, Route
from qviz.core.graphview.scales import FLOAT_FILL, NO_READING

SELECTED = QColor("#e08600")     # the clip band's amber: "what the other views show"
SEARCH_HIT = QColor("#1565c0")
BORDER = QColor("#424242")
FLOAT_BORDER = QColor("#bdbdbd")
FLOAT_TEXT = QColor("#8a8a8a")
TEXT = QColor("#202124")
EDGE = QColor("#9e9e9e")
QDQ_EDGE = QColor("#6a3d9a")     # purple: values on this edge are quantized (Q/DQ)
KERNEL_BADGE = QColor("#1b5e20")
WEIGHT_BADGE = QColor("#37474f")
FRAME_FILLS = (QColor(236, 242, 250, 110), QColor(245, 240, 250, 110))
FRAME_BORDER = QColor("#b0bec5")
# Below this zoom, nodes are drawn as coloured boxes only.
TEXT_LOD = 0.45
STALE_ALPHA = 110
STUB_LABEL_W = 90.0

Z_FRAME, Z_EDGE, Z_NODE = -10.0, 0.0, 10.0


@dataclass(frozen=True)
class NodeStyle:
    """How one drawn item looks now."""

    fill: str | None          # the measure's colour; None: no reading
    quantized: bool           # a quantized layer, or a group holding one
    value_text: str = ""      # the reading, drawn as the third line
    weight_badge: str = ""    # "int8": the weight is stored quantized
    kernel_badge: str = ""    # "QLinearConv": ORT ran it as an integer kernel
    faded: bool = False       # the reading is for earlier settings
    io: bool = False          # a graph input or output


class NodeItem(QGraphicsItem):
    """A node or a collapsed group: a box with its op type (or group label), its name (or
    size), and the measure's reading; badges for a quantized weight and a fused kernel."""

    def __init__(self, item_id: str, title: str, subtitle: str, is_group: bool) -> None:
        super().__init__()
        self.item_id = item_id
        self.title = title
        self.subtitle = subtitle
        self.is_group = is_group
        self.style = NodeStyle(None, False)
        self.selected = False
        self.search_hit = False
        self._rect = QRectF()
        self.setZValue(Z_NODE)
        self.setAcceptHoverEvents(True)
        self.setCursor(Qt.CursorShape.PointingHandCursor)

    # ----------------------------------------------------------------- updates
    def set_box(self, box: Box) -> None:
        rect = QRectF(0.0, 0.0, box.w, box.h)
        if rect != self._rect:
            self.prepareGeometryChange()
            self._rect = rect
        self.setPos(box.x, box.y)

    def set_style(self, style: NodeStyle) -> None:
        if style != self.style:
            self.style = style
            self.update()

    def set_marks(self, selected: bool, search_hit: bool) -> None:
        if (selected, search_hit) != (self.selected, self.search_hit):
            self.selected, self.search_hit = selected, search_hit
            self.update()

    # ----------------------------------------------------------------- painting
    def boundingRect(self) -> QRectF:
        return self._rect.adjusted(-4.0, -4.0, 4.0, 4.0)

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem,
              widget: QWidget | None = None) -> None:
        s = self.style
        rect = self._rect
        lod = option.levelOfDetailFromTransform(painter.worldTransform())
        if s.fill is not None:
            fill = QColor(s.fill)
            if s.faded:
                fill.setAlpha(STALE_ALPHA)
        elif s.quantized:
            fill = QColor(NO_READING)
        else:
            fill = QColor(FLOAT_FILL)
        border = BORDER if s.quantized else FLOAT_BORDER
        radius = rect.height() / 2 if s.io else 5.0
        if self.is_group:  # a stack of cards: more inside
            painter.setPen(QPen(border, 1.0))
            painter.setBrush(QBrush(fill.lighter(108)))
            painter.drawRoundedRect(rect.translated(3.0, 3.0), radius, radius)
        pen = QPen(border, 1.6 if s.quantized else 1.0)
        if self.search_hit:
            pen = QPen(SEARCH_HIT, 3.0)
        if self.selected:
            pen = QPen(SELECTED, 4.0)
        painter.setPen(pen)
        painter.setBrush(QBrush(fill))
        painter.drawRoundedRect(rect, radius, radius)
        if lod < TEXT_LOD:
            return
        text = TEXT if (s.quantized or self.is_group) else FLOAT_TEXT
        inner = rect.adjusted(6.0, 5.0, -6.0, -2.0)  # the top edge holds the badges
        lines = [(self.title, label_font(9.0, bold=True)), (self.subtitle, label_font(8.0))]
        if s.value_text:
            lines.append((s.value_text, label_font(8.0, bold=True)))
        line_h = inner.height() / 3.0
        top = inner.top() + (inner.height() - line_h * len(lines)) / 2
        painter.setPen(text)
        for i, (line, font) in enumerate(lines):
            painter.setFont(font)
            elided = QFontMetricsF(font).elidedText(line, Qt.TextElideMode.ElideMiddle,
                                                    inner.width())
            painter.drawText(QRectF(inner.left(), top + i * line_h, inner.width(), line_h),
                             Qt.AlignmentFlag.AlignCenter, elided)
        if s.weight_badge:
            self._badge(painter, s.weight_badge, WEIGHT_BADGE, left=True)
        if s.kernel_badge:
            self._badge(painter, s.kernel_badge, KERNEL_BADGE, left=False)

    def _badge(self, painter: QPainter, text: str, colour: QColor, left: bool) -> None:
        """A small label sitting on the box's top edge (left: weight format, right: kernel)."""
        font = label_font(7.0, bold=True)
        fm = QFontMetricsF(font)
        w, h = fm.horizontalAdvance(text) + 8.0, fm.height() + 1.0
        x = self._rect.left() + 4.0 if left else self._rect.right() - w - 4.0
        badge = QRectF(x, self._rect.top() - h / 2, w, h)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QBrush(colour))
        painter.drawRoundedRect(badge, 3.0, 3.0)
        painter.setPen(QColor("#ffffff"))
        painter.setFont(font)
        painter.drawText(badge, Qt.AlignmentFlag.AlignCenter, text)


class FrameItem(QGraphicsRectItem):
    """The outline of an expanded group, its label on top; double-click collapses it."""

    def __init__(self, frame: Frame) -> None:
        super().__init__()
        self.group_id = frame.group
        self.label = frame.label
        self.setZValue(Z_FRAME + frame.depth)
        self.setPen(QPen(FRAME_BORDER, 1.0, Qt.PenStyle.DashLine))
        self.setBrush(QBrush(FRAME_FILLS[frame.depth % 2]))
        self.setToolTip(f"{frame.label}: double-click to collapse")
        self.set_frame(frame)

    def set_frame(self, frame: Frame) -> None:
        self.setRect(QRectF(frame.x, frame.y, frame.w, frame.h))

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem,
              widget: QWidget | None = None) -> None:
        super().paint(painter, option, widget)
        if option.levelOfDetailFromTransform(painter.worldTransform()) < TEXT_LOD:
            return
        r = self.rect()
        painter.setPen(QColor("#546e7a"))
        font = label_font(8.0, bold=True)
        painter.setFont(font)
        text = QFontMetricsF(font).elidedText(f"▾ {self.label}", Qt.TextElideMode.ElideRight,
                                              r.width() - 8.0)
        painter.drawText(QRectF(r.left() + 5.0, r.top() + 1.0, r.width() - 8.0, 15.0),
                         Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, text)


class EdgeItem(QGraphicsPathItem):
    """A polyline with an arrowhead; edges carrying quantized values are purple and thicker,
    with a diamond (the Q/DQ pair) just before the target. An auxiliary edge is a short dashed
    stub into its target, its source's name above it."""

    def __init__(self, route: Route) -> None:
        super().__init__()
        self.setZValue(Z_EDGE)
        self.quantized = False
        self._marks: list[QPolygonF] = []
        self.set_route(route)

    def set_route(self, route: Route) -> None:
        self.route = route
        self._rebuild()

    def set_quantized(self, quantized: bool) -> None:
        if quantized != self.quantized:
            self.quantized = quantized
            self._rebuild()

    def _rebuild(self) -> None:
        pts = [QPointF(x, y) for x, y in self.route.points]
        path = QPainterPath(pts[0])
        for p in pts[1:]:
            path.lineTo(p)
        end, before = pts[-1], pts[-2]
        angle = math.atan2(end.y() - before.y(), end.x() - before.x())
        size = 8.0
        self._marks = [QPolygonF([
            end,
            QPointF(end.x() - size * math.cos(angle - 0.4), end.y() - size * math.sin(angle - 0.4)),
            QPointF(end.x() - size * math.cos(angle + 0.4), end.y() - size * math.sin(angle + 0.4)),
        ])]
        if self.quantized:
            # The Q/DQ diamond just before the arrowhead: below a frame's label strip (see
            # layout.FRAME_PAD) where the edge enters a group.
            seg = math.hypot(end.x() - before.x(), end.y() - before.y())
            t = min(1.0, 12.0 / seg) if seg else 0.0
            c = QPointF(end.x() - (end.x() - before.x()) * t, end.y() - (end.y() - before.y()) * t)
            d = 4.5
            self._marks.append(QPolygonF([QPointF(c.x(), c.y() - d), QPointF(c.x() + d, c.y()),
                                          QPointF(c.x(), c.y() + d), QPointF(c.x() - d, c.y())]))
        self.prepareGeometryChange()
        self.setPath(path)
        colour = QDQ_EDGE if self.quantized else EDGE
        style = Qt.PenStyle.DashLine if self.route.auxiliary else Qt.PenStyle.SolidLine
        self.setPen(QPen(colour, 2.0 if self.quantized else 1.2, style))
        if self.route.auxiliary:
            self.setToolTip(f"from {self.route.label} (drawn as a stub: it feeds many nodes "
                            "far below)")

    def boundingRect(self) -> QRectF:
        pad = STUB_LABEL_W / 2 if self.route.auxiliary else 10.0
        return super().boundingRect().adjusted(-pad, -22.0, pad, 10.0)

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem,
              widget: QWidget | None = None) -> None:
        painter.setPen(self.pen())
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawPath(self.path())
        solid = QPen(self.pen())
        solid.setStyle(Qt.PenStyle.SolidLine)
        painter.setPen(solid)
        painter.setBrush(QBrush(self.pen().color()))
        for poly in self._marks:
            painter.drawPolygon(poly)
        if self.route.auxiliary and self.route.label and (
                option.levelOfDetailFromTransform(painter.worldTransform()) >= TEXT_LOD):
            x, y = self.route.points[0]
            font = label_font(7.0)
            painter.setFont(font)
            painter.setPen(FLOAT_TEXT)
            text = QFontMetricsF(font).elidedText(self.route.label, Qt.TextElideMode.ElideLeft,
                                                  STUB_LABEL_W)
            painter.drawText(QRectF(x - STUB_LABEL_W / 2, y - 12.0, STUB_LABEL_W, 11.0),
                             Qt.AlignmentFlag.AlignCenter, text)

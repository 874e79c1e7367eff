"""The graph view: the whole ONNX graph, coloured by a chosen measure (View ▸ Graph).

Everything drawn is computed in `qviz.core.graphview`: the nodes and groups, the layered
layout (cached by model and expanded groups), the measure's readings and colour scale, the
Q/DQ marks and the tooltips. This view only draws them, and follows the document: a change
of settings, new results, a sensitivity report or an evaluation restyle the items in place;
the selection is highlighted wherever it comes from. Clicking a node selects its layer in the
document (the table, the layer view and the rest follow); double-clicking a group expands or
collapses it; the search box marks the nodes whose name, op type, tensor or module path
matches, and Enter goes to the next one, opening the groups it sits in.

While the dock is hidden nothing is redrawn; it catches up when shown.
"""

from __future__ import annotations

import html
from collections.abc import Callable

from PySide6.QtCore import QEvent, QPoint, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QHelpEvent, QMouseEvent, QPainter, QShowEvent, QWheelEvent
from PySide6.QtWidgets import (
    QComboBox,
    QDockWidget,
    QGraphicsScene,
    QGraphicsView,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QToolButton,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from qviz.app.views.graph_items import EdgeItem, FrameItem, NodeItem, NodeStyle
from qviz.core.document.document import Document
from qviz.core.graphview.groups import VisibleItem
from qviz.core.graphview.layout import GraphLayout, LayoutCache
from qviz.core.graphview.marks import QuantMarks, quant_marks
from qviz.core.graphview.measures import (
    MEASURES,
    NodeMeasure,
    NodeReadings,
    Reading,
    group_readings,
    read_measure,
)
from qviz.core.graphview.model_graph import ModelGraph
from qviz.core.graphview.node_info import item_tooltip, key_for_node, node_of_selection
from qviz.core.graphview.opgraph import NodeKind
from qviz.core.graphview.scales import FLOAT_FILL

MIN_SCALE, MAX_SCALE = 0.03, 4.0
CLICK_SLOP = 4  # pixels a press may move and still be a click, not a pan
READABLE_SCALE = 0.7  # the smallest zoom the first view uses: node text stays legible


class GraphCanvas(QGraphicsView):
    """Zoom with the wheel, pan by dragging; a click or double-click on an item is told by
    id (a frame's double-click by its group's id). Tooltips are asked for when shown."""

    itemClicked = Signal(str)
    itemDoubleClicked = Signal(str)

    def __init__(self, scene: QGraphicsScene, parent: QWidget | None = None) -> None:
        super().__init__(scene, parent)
        self.setRenderHints(QPainter.RenderHint.Antialiasing
                            | QPainter.RenderHint.TextAntialiasing)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.SmartViewportUpdate)
        self.tooltip_for: Callable[[str], str] | None = None  # set by the view
        self._press: QPoint | None = None

    def item_id_at(self, pos: QPoint) -> str | None:
        for item in self.items(pos):
            if isinstance(item, NodeItem):
                return item.item_id
        for item in self.items(pos):
            if isinstance(item, FrameItem):
                return item.group_id
        return None

    def wheelEvent(self, event: QWheelEvent) -> None:
        factor = 1.0015 ** event.angleDelta().y()
        scale = self.transform().m11()
        factor = max(MIN_SCALE / scale, min(MAX_SCALE / scale, factor))
        self.scale(factor, factor)

    def mousePressEvent(self, event: QMouseEvent) -> None:
        self._press = event.position().toPoint()
        super().mousePressEvent(event)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        super().mouseReleaseEvent(event)
        pos = event.position().toPoint()
        if (self._press is not None and event.button() == Qt.MouseButton.LeftButton
                and (pos - self._press).manhattanLength() <= CLICK_SLOP):
            found = self.item_id_at(pos)
            if found is not None:
                self.itemClicked.emit(found)
        self._press = None

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        found = self.item_id_at(event.position().toPoint())
        if found is not None:
            self.itemDoubleClicked.emit(found)
        else:
            super().mouseDoubleClickEvent(event)

    def viewportEvent(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ToolTip and self.tooltip_for is not None:
            assert isinstance(event, QHelpEvent)
            found = self.item_id_at(event.pos())
            if found is None:
                QToolTip.hideText()
            else:
                QToolTip.showText(event.globalPos(), self.tooltip_for(found), self.viewport())
            return True
        return super().viewportEvent(event)


class GraphView(QWidget):
    """The measure picker, the search box, the canvas and its legend (see the module
    docstring)."""

    def __init__(self, doc: Document, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._doc = doc
        self._cache = LayoutCache()
        self.model_graph: ModelGraph | None = None
        self.expanded: frozenset[str] = frozenset()
        self.layout_shown: GraphLayout | None = None
        self.nodes: dict[str, NodeItem] = {}
        self.edges: dict[tuple[str, str, bool], EdgeItem] = {}
        self.frames: dict[str, FrameItem] = {}
        self.measure = NodeMeasure.SQNR
        self.readings: NodeReadings | None = None
        self._group_readings: dict[str, Reading] = {}
        self.marks: QuantMarks | None = None
        self.matches: tuple[str, ...] = ()
        self._match = -1
        self._stale_model = True
        self._stale_style = True

        self.measure_combo = QComboBox()
        for m, spec in MEASURES.items():
            self.measure_combo.addItem(spec.label, m)
            self.measure_combo.setItemData(self.measure_combo.count() - 1, spec.description,
                                           Qt.ItemDataRole.ToolTipRole)
        self.measure_combo.setToolTip("What colours the nodes")
        self.measure_combo.currentIndexChanged.connect(self._on_measure)
        self.search_edit = QLineEdit()
        self.search_edit.setPlaceholderText("Search: node, op, tensor or module  (Enter: next)")
        self.search_edit.setClearButtonEnabled(True)
        self.search_edit.textChanged.connect(self.search)
        self.search_edit.returnPressed.connect(self.next_match)
        self.match_label = QLabel("")
        self.fit_button = QToolButton()
        self.fit_button.setText("Fit")
        self.fit_button.setToolTip("Show the whole graph")
        self.fit_button.clicked.connect(self.fit)
        self.reset_button = QToolButton()
        self.reset_button.setText("Regroup")
        self.reset_button.setToolTip("Collapse the groups back to the default depth")
        self.reset_button.clicked.connect(self.reset_groups)
        bar = QHBoxLayout()
        bar.setContentsMargins(4, 2, 4, 0)
        bar.addWidget(QLabel("Colour by"))
        bar.addWidget(self.measure_combo, 1)
        bar.addWidget(self.reset_button)
        bar.addWidget(self.fit_button)
        find = QHBoxLayout()
        find.setContentsMargins(4, 0, 4, 0)
        find.addWidget(self.search_edit, 1)
        find.addWidget(self.match_label)

        self.legend_label = QLabel()
        self.legend_label.setWordWrap(True)
        self.legend_label.setTextFormat(Qt.TextFormat.RichText)
        # White, like the canvas: the float swatch is the canvas's float grey.
        self.legend_label.setStyleSheet(
            "QLabel { background: white; border: 1px solid #d0d0d0; padding: 2px 4px; }")
        self.scene = QGraphicsScene(self)
        self.scene.setItemIndexMethod(QGraphicsScene.ItemIndexMethod.BspTreeIndex)
        self.canvas = GraphCanvas(self.scene)
        self.canvas.tooltip_for = self.tooltip
        self.canvas.itemClicked.connect(self.click_item)
        self.canvas.itemDoubleClicked.connect(self.toggle_group)
        self.status_label = QLabel("No model open")
        self.status_label.setWordWrap(True)
        self.measure_combo.setMinimumContentsLength(8)
        self.measure_combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.canvas.setMinimumSize(200, 200)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addLayout(bar)
        layout.addLayout(find)
        layout.addWidget(self.legend_label)
        layout.addWidget(self.canvas, 1)
        layout.addWidget(self.status_label)

        self._restyle_timer = QTimer(self)
        self._restyle_timer.setSingleShot(True)
        self._restyle_timer.setInterval(0)  # one restyle per burst of results
        self._restyle_timer.timeout.connect(self.refresh_style)
        events = doc.events
        events.model.connect(self._on_model)
        for signal in (events.config, events.results, events.stats, events.sensitivity,
                       events.evaluation):
            signal.connect(self._schedule_style)
        events.selection.connect(self._on_selection)

    # ================================================================= following the document
    def _on_model(self) -> None:
        self._stale_model = True
        if self.isVisible():
            self.refresh()

    def _schedule_style(self, *_: object) -> None:
        self._stale_style = True
        if self.isVisible():
            self._restyle_timer.start()

    def _on_selection(self) -> None:
        if self.isVisible() and not self._stale_model:
            self._mark_items(reveal=True)

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        QTimer.singleShot(0, self.refresh)

    def refresh(self) -> None:
        """Catch up with the document: the model's drawing, the styles, the selection."""
        new_model = False
        if self._stale_model:
            self._stale_model = False
            new_model = self._load_model()
        if self._stale_style:
            self.refresh_style()
        self._mark_items(reveal=True)
        if new_model:
            # After the legend has its text and the canvas its final size.
            QTimer.singleShot(0, self._initial_view)

    def _load_model(self) -> bool:
        """Make the drawing of a newly opened model; False when there is none to make."""
        model = self._doc.model
        if self.model_graph is not None and self.model_graph.model is model:
            return False
        self._clear()
        if model is None:
            self.model_graph = None
            self.status_label.setText("No model open")
            return False
        self.model_graph = ModelGraph(model, self._cache)
        self.expanded = self.model_graph.default_expanded
        self.matches, self._match = (), -1
        self._apply_layout()
        self._stale_style = True
        return True

    def _clear(self) -> None:
        self.scene.clear()
        self.nodes.clear()
        self.edges.clear()
        self.frames.clear()
        self.layout_shown = None

    # ================================================================= layout
    def _apply_layout(self) -> None:
        """Draw the layout for the expanded groups, reusing the items already made."""
        mg = self.model_graph
        assert mg is not None
        layout = mg.layout(self.expanded)
        self.layout_shown = layout
        items = {it.id: it for it in layout.visible.items}
        for gone in set(self.nodes) - set(items):
            self.scene.removeItem(self.nodes.pop(gone))
        for item_id, item in items.items():
            node = self.nodes.get(item_id)
            if node is None:
                node = self._new_node(item)
            node.set_box(layout.boxes[item_id])
        frames = {f.group: f for f in layout.frames}
        for gone in set(self.frames) - set(frames):
            self.scene.removeItem(self.frames.pop(gone))
        for gid, frame in frames.items():
            if gid in self.frames:
                self.frames[gid].set_frame(frame)
            else:
                self.frames[gid] = FrameItem(frame)
                self.scene.addItem(self.frames[gid])
        routes = {(r.edge.src, r.edge.dst, r.auxiliary): r for r in layout.routes}
        for key in set(self.edges) - set(routes):
            self.scene.removeItem(self.edges.pop(key))
        for key, route in routes.items():
            if key in self.edges:
                self.edges[key].set_route(route)
            else:
                self.edges[key] = EdgeItem(route)
                self.scene.addItem(self.edges[key])
        self.scene.setSceneRect(QRectF(0.0, 0.0, layout.width, layout.height))
        self._update_status()

    def _new_node(self, item: VisibleItem) -> NodeItem:
        node = NodeItem(item.id, item.title, item.subtitle, item.is_group)
        self.nodes[item.id] = node
        self.scene.addItem(node)
        return node

    def _initial_view(self) -> None:
        """Readable at once: the whole graph when it fits at a readable zoom, else its width
        (never magnified) with its top in view."""
        layout = self.layout_shown
        if layout is None:
            return
        self.canvas.resetTransform()
        vw = max(1, self.canvas.viewport().width() - 10)
        vh = max(1, self.canvas.viewport().height() - 10)
        whole = min(vw / max(layout.width, 1.0), vh / max(layout.height, 1.0))
        if whole >= READABLE_SCALE:
            scale = min(1.0, whole)
        else:
            scale = max(READABLE_SCALE, min(1.0, vw / max(layout.width, 1.0)))
        self.canvas.scale(scale, scale)
        height = vh / scale
        self.canvas.centerOn(layout.width / 2, min(layout.height, height) / 2)

    def fit(self) -> None:
        self.canvas.fitInView(self.scene.sceneRect(), Qt.AspectRatioMode.KeepAspectRatio)

    def reset_groups(self) -> None:
        if self.model_graph is not None:
            self.set_expanded(self.model_graph.default_expanded)

    def set_expanded(self, expanded: frozenset[str], focus: str | None = None) -> None:
        """Show these groups open; keep ``focus`` (a node or group) where the eye is."""
        if self.model_graph is None:
            return
        self.expanded = expanded
        self._apply_layout()
        self.refresh_style()
        self._mark_items(reveal=False)
        if focus is not None:
            self.center_on(focus)

    def toggle_group(self, item_id: str) -> None:
        """Double-click: a collapsed group opens, an open group's frame collapses."""
        mg = self.model_graph
        if mg is None or item_id not in mg.tree.groups:
            return
        self.set_expanded(mg.toggle(self.expanded, item_id), focus=item_id)

    def center_on(self, item_id: str) -> None:
        """Centre the view on a drawn node, or on the frame (or node) of a group."""
        if item_id in self.nodes:
            self.canvas.centerOn(self.nodes[item_id])
        elif item_id in self.frames:
            r = self.frames[item_id].rect()
            self.canvas.centerOn(r.center().x(), r.top() + self.canvas.viewport().height() / 3)

    # ================================================================= styling
    def _on_measure(self) -> None:
        self.measure = NodeMeasure(self.measure_combo.currentData())
        self.refresh_style()

    def set_measure(self, measure: NodeMeasure) -> None:
        self.measure_combo.setCurrentIndex(self.measure_combo.findData(measure))

    def refresh_style(self) -> None:
        """Colour every drawn item by the measure and mark the Q/DQ placement."""
        self._restyle_timer.stop()
        mg = self.model_graph
        if mg is None or not self.isVisible():
            return
        self._stale_style = False
        doc = self._doc
        self.readings = readings = read_measure(doc, mg.graph, self.measure)
        self._group_readings = group_readings(readings, mg.tree)
        self.marks = marks = quant_marks(doc, mg.graph)
        for item_id, node in self.nodes.items():
            node.set_style(self.style_of(item_id))
        for edge in self.edges.values():
            edge.set_quantized(any(marks.edge_is_quantized(e.src, e.dst, e.tensor)
                                   for e in edge.route.edge.edges))
        self._update_legend()

    def reading(self, item_id: str) -> Reading | None:
        if self.readings is None:
            return None
        return self._group_readings.get(item_id) or self.readings.reading(item_id)

    def style_of(self, item_id: str) -> NodeStyle:
        mg, marks, readings = self.model_graph, self.marks, self.readings
        assert mg is not None and marks is not None and readings is not None
        reading = self.reading(item_id)
        fill = None if reading is None else reading.colour
        text = "" if reading is None else reading.text
        if item_id in mg.tree.groups:
            inside = mg.tree.nodes_in(item_id)
            n_q = sum(1 for n in inside if n in marks.quantized)
            fused = sum(1 for n in inside if n in marks.kernels)
            badge = f"{fused}/{n_q} int" if fused and marks.kernels_current else ""
            return NodeStyle(fill, n_q > 0, text, "", badge, readings.stale)
        node = mg.graph.node(item_id)
        kernel = marks.kernels.get(item_id, "") if marks.kernels_current else ""
        return NodeStyle(fill, item_id in marks.quantized, text,
                         marks.weight_formats.get(item_id, ""), kernel, readings.stale,
                         io=node.kind is not NodeKind.OP)

    def _update_legend(self) -> None:
        readings = self.readings
        if readings is None:
            return
        swatch = ('<span style="background-color:{c}; color:{c};">&nbsp;&nbsp;&nbsp;</span>'
                  '&nbsp;{t}')
        parts = [swatch.format(c=c, t=html.escape(t).replace(" ", "&nbsp;"))
                 for c, t in readings.scale.legend()]
        head = f"<b>{html.escape(readings.scale.title)}</b>"
        if readings.note:
            head += f" — <i>{html.escape(readings.note)}</i>"
        marks = (swatch.format(c=FLOAT_FILL, t="float")
                 + ' &nbsp; <span style="color:#6a3d9a;">━◆▸</span>&nbsp;Q/DQ'
                 + ' &nbsp; <span style="background-color:#37474f; color:white;">&nbsp;int8'
                 '&nbsp;</span>&nbsp;quantized&nbsp;weight'
                 + ' &nbsp; <span style="background-color:#1b5e20; color:white;">&nbsp;QGemm'
                 '&nbsp;</span>&nbsp;ORT&nbsp;integer&nbsp;kernel')
        self.legend_label.setText(f"{head}<br>{' &nbsp; '.join(parts)}<br>{marks}")

    def _update_status(self) -> None:
        mg, layout = self.model_graph, self.layout_shown
        if mg is None or layout is None:
            return
        n_groups = sum(1 for it in layout.visible.items if it.is_group)
        self.status_label.setText(
            f"{mg.graph.n_ops:,} nodes · {len(layout.visible.items):,} drawn "
            f"({n_groups} collapsed groups) · layout {layout.seconds * 1000:.0f} ms · "
            "click: select the layer · double-click a group: open/close · wheel: zoom"
        )

    def tooltip(self, item_id: str) -> str:
        mg = self.model_graph
        if mg is None or self.readings is None or self.marks is None:
            return ""
        return item_tooltip(mg.graph, mg.tree, item_id, self.reading(item_id), self.readings,
                            self.marks)

    # ================================================================= selection and search
    def click_item(self, item_id: str) -> None:
        """A click on a node selects its tensor in the document (the other views follow)."""
        mg = self.model_graph
        if mg is None or item_id not in mg.graph:
            return
        key = key_for_node(self._doc, mg.graph, item_id)
        if key is None:
            node = mg.graph.node(item_id)
            self.status_label.setText(f"{node.op_type} {node.name}: float, nothing to select")
            return
        self._doc.select(key)

    def selected_item(self) -> str | None:
        """The drawn item standing for the document's selection."""
        mg = self.model_graph
        if mg is None:
            return None
        node = node_of_selection(self._doc, mg.graph)
        return None if node is None else mg.representative(self.expanded, node)

    def _mark_items(self, reveal: bool) -> None:
        mg = self.model_graph
        if mg is None:
            return
        selected = self.selected_item()
        hits = {mg.representative(self.expanded, n) for n in self.matches}
        for item_id, node in self.nodes.items():
            node.set_marks(item_id == selected, item_id in hits)
        if reveal and selected in self.nodes:
            self.canvas.ensureVisible(self.nodes[selected], 40, 40)

    def search(self, text: str) -> None:
        mg = self.model_graph
        self.matches = () if mg is None else mg.search(text)
        self._match = -1
        if not text.strip():
            self.match_label.setText("")
        else:
            n = len(self.matches)
            self.match_label.setText(f"{n} match{'es' if n != 1 else ''}")
        self._mark_items(reveal=False)

    def next_match(self) -> None:
        """Go to the next match, opening the groups that hold it."""
        mg = self.model_graph
        if mg is None or not self.matches:
            return
        self._match = (self._match + 1) % len(self.matches)
        node = self.matches[self._match]
        expanded = mg.tree.reveal(self.expanded, node)
        if mg.tree.effective(expanded) != mg.tree.effective(self.expanded):
            self.set_expanded(expanded)
        self._mark_items(reveal=False)
        if self.canvas.transform().m11() < READABLE_SCALE:  # zoomed out too far to read
            self.canvas.resetTransform()
        self.center_on(node)
        self.match_label.setText(f"{self._match + 1} of {len(self.matches)}")


class GraphDock(QDockWidget):
    """The graph view in a dock (View ▸ Graph), hidden until asked for."""

    def __init__(self, doc: Document, parent: QWidget | None = None) -> None:
        super().__init__("Graph", parent)
        self.setObjectName("graph_dock")
        self.view = GraphView(doc)
        self.setWidget(self.view)
        toggle = self.toggleViewAction()
        toggle.setText("&Graph")
        toggle.setToolTip("The whole model graph, coloured by the quantization error")
        toggle.setStatusTip(toggle.toolTip())

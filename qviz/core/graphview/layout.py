"""A layered drawing of the visible graph, by grandalf's Sugiyama layout.

grandalf (a small, pure-Python, well-kept library) ranks the nodes top to bottom, orders each
rank to reduce crossings and places them (Brandes-Köpf); long edges are routed through the
dummy points it adds on the ranks they cross. Disconnected parts are laid out one by one and
put side by side. Node sizes come from their labels, in a nominal font (the app elides text
that does not fit). Expanded groups get a frame around what they hold, labelled on top (the
ranks are spaced to leave room for the label).

Laying out costs about 1 s per thousand visible nodes, so the drawing is made on the
collapsed graph and `LayoutCache` keeps the drawings already made, by model and expanded
groups.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from grandalf.graphs import Edge, Graph, Vertex
from grandalf.layouts import SugiyamaLayout
from grandalf.routing import route_with_lines

from qviz.core.graphview.groups import GroupTree, VisibleEdge, VisibleGraph, VisibleItem

__all__ = ["Box", "Frame", "GraphLayout", "LayoutCache", "Route", "layout_graph"]

# Nominal metrics of the node font (the app draws in about 9 pt).
CHAR_W = 7.0
NODE_H = 48.0  # three lines: op type, name, the measure's reading
GROUP_H = 52.0
MIN_W, MAX_W = 78.0, 210.0
LAYER_MIN_W = 124.0  # a weight format and a kernel name fit on its top edge
X_SPACE = 28.0
Y_SPACE = 32.0  # room between ranks for edges and a frame's label
FRAME_PAD = 16.0  # keeps a frame's label clear of the Q/DQ marks on edges entering it
FRAME_LABEL_H = 16.0
COMPONENT_GAP = 60.0
MARGIN = 20.0
# An edge whose source feeds at least AUX_FANOUT items and that skips a rank is auxiliary:
# routed through every rank it crosses, the 24 uses of one decoder's rotary table cost
# grandalf tens of thousands of dummy points (25 s instead of 1 s) and draw a fan of long
# lines across the whole model.
AUX_FANOUT = 8
AUX_SPAN = 1
STUB = 18.0

Point = tuple[float, float]


@dataclass(frozen=True)
class Box:
    """A drawn item's rectangle (top-left corner, width, height)."""

    id: str
    x: float
    y: float
    w: float
    h: float

    @property
    def centre(self) -> Point:
        return (self.x + self.w / 2, self.y + self.h / 2)


@dataclass(frozen=True)
class Route:
    """Where an edge runs: from the border of its source's box to its target's. An
    ``auxiliary`` edge (from a node feeding many others far below: shapes, masks, rotary
    tables) is drawn as a short stub into its target only, labelled with its source."""

    edge: VisibleEdge
    points: tuple[Point, ...]
    auxiliary: bool = False
    label: str = ""


@dataclass(frozen=True)
class Frame:
    """The outline of an expanded group around what it holds; ``depth`` 0 is outermost."""

    group: str
    label: str
    x: float
    y: float
    w: float
    h: float
    depth: int


@dataclass(frozen=True, eq=False)
class GraphLayout:
    visible: VisibleGraph
    boxes: Mapping[str, Box]
    routes: tuple[Route, ...]
    frames: tuple[Frame, ...]
    width: float
    height: float
    seconds: float  # how long the layout took


class _VertexView:
    def __init__(self, w: float, h: float) -> None:
        self.w, self.h = w, h
        self.xy: Point = (0.0, 0.0)


class _EdgeView:
    def __init__(self) -> None:
        self.points: list[Point] = []

    def setpath(self, points: list[Point]) -> None:
        self.points = list(points)


def item_size(item: VisibleItem) -> tuple[float, float]:
    chars = max(len(item.title), len(item.subtitle))
    w = min(MAX_W, max(LAYER_MIN_W if item.is_layer else MIN_W, chars * CHAR_W + 20.0))
    return (w, GROUP_H if item.is_group else NODE_H)


def _clip(centre: Point, half: Point, toward: Point) -> Point:
    """Where the segment from a box's centre toward ``toward`` leaves the box."""
    dx, dy = toward[0] - centre[0], toward[1] - centre[1]
    t = 1.0
    if dx:
        t = min(t, half[0] / abs(dx))
    if dy:
        t = min(t, half[1] / abs(dy))
    return (centre[0] + dx * t, centre[1] + dy * t)


def layout_graph(visible: VisibleGraph, tree: GroupTree) -> GraphLayout:
    """Lay out ``visible`` (see the module docstring); frames for its expanded groups."""
    start = time.perf_counter()
    vertices: dict[str, Vertex] = {}
    for item in visible.items:
        v = Vertex(item.id)
        v.view = _VertexView(*item_size(item))
        vertices[item.id] = v
    auxiliary = _auxiliary(visible)
    edges: list[tuple[VisibleEdge, Edge]] = []
    for ve in visible.edges:
        if (ve.src, ve.dst) in auxiliary:
            continue
        e = Edge(vertices[ve.src], vertices[ve.dst])
        e.view = _EdgeView()
        edges.append((ve, e))
    graph = Graph(list(vertices.values()), [e for _, e in edges])
    centres: dict[str, Point] = {}
    x_offset = 0.0
    for component in graph.C:
        sug = SugiyamaLayout(component)
        sug.xspace, sug.yspace = X_SPACE, Y_SPACE
        sug.route_edge = route_with_lines
        sug.init_all()
        sug.draw()
        comp = list(component.sV)
        left = min(v.view.xy[0] - v.view.w / 2 for v in comp)
        right = max(v.view.xy[0] + v.view.w / 2 for v in comp)
        shift = x_offset - left
        for v in comp:
            centres[v.data] = (v.view.xy[0] + shift, v.view.xy[1])
        for _, e in edges:
            if e.v[0] in component.sV:
                e.view.points = [(x + shift, y) for x, y in e.view.points]
        x_offset += right - left + COMPONENT_GAP
    boxes = {
        vid: Box(vid, cx - v.view.w / 2, cy - v.view.h / 2, v.view.w, v.view.h)
        for vid, v in vertices.items()
        for cx, cy in (centres[vid],)
    }
    frames = _frames(visible, tree, boxes)
    dx, dy = _origin(boxes, frames)
    boxes = {k: Box(k, b.x + dx, b.y + dy, b.w, b.h) for k, b in boxes.items()}
    frames = [Frame(f.group, f.label, f.x + dx, f.y + dy, f.w, f.h, f.depth) for f in frames]
    routes = []
    for ve, e in edges:
        pts = [(x + dx, y + dy) for x, y in e.view.points]
        if len(pts) < 2:
            a, b = boxes[ve.src].centre, boxes[ve.dst].centre
            pts = [a, b]
        sb, tb = boxes[ve.src], boxes[ve.dst]
        pts[0] = _clip(sb.centre, (sb.w / 2, sb.h / 2), pts[1])
        pts[-1] = _clip(tb.centre, (tb.w / 2, tb.h / 2), pts[-2])
        routes.append(Route(ve, tuple(pts)))
    routes += _stubs(visible, auxiliary, boxes)
    width = max([b.x + b.w for b in boxes.values()] + [f.x + f.w for f in frames] + [0.0])
    height = max([b.y + b.h for b in boxes.values()] + [f.y + f.h for f in frames] + [0.0])
    return GraphLayout(
        visible, MappingProxyType(boxes), tuple(routes), tuple(frames),
        width + MARGIN, height + MARGIN, time.perf_counter() - start,
    )


def _ranks(visible: VisibleGraph) -> dict[str, int]:
    """Longest-path ranks (as the Sugiyama layout's first pass ranks); a cycle that
    collapsing groups made is broken at its item earliest in graph order."""
    ins: dict[str, set[str]] = {it.id: set() for it in visible.items}
    outs: dict[str, list[str]] = {it.id: [] for it in visible.items}
    for e in visible.edges:
        ins[e.dst].add(e.src)
        outs[e.src].append(e.dst)
    first = {it.id: it.first_index for it in visible.items}
    rank: dict[str, int] = {}
    waiting = {k: len(v) for k, v in ins.items()}
    ready = [k for k, n in waiting.items() if n == 0]
    while len(rank) < len(ins):
        if not ready:  # a cycle: start it where the graph does
            ready = [min((k for k in ins if k not in rank), key=lambda k: first[k])]
        nxt: list[str] = []
        for item in ready:
            if item in rank:
                continue
            rank[item] = max((rank[s] + 1 for s in ins[item] if s in rank), default=0)
            for d in outs[item]:
                waiting[d] -= 1
                if waiting[d] == 0 and d not in rank:
                    nxt.append(d)
        ready = nxt
    return rank


def _auxiliary(visible: VisibleGraph) -> set[tuple[str, str]]:
    """The (src, dst) pairs drawn as stubs (see AUX_FANOUT)."""
    fanout: dict[str, int] = {}
    for e in visible.edges:
        fanout[e.src] = fanout.get(e.src, 0) + 1
    if max(fanout.values(), default=0) < AUX_FANOUT:
        return set()
    rank = _ranks(visible)
    return {(e.src, e.dst) for e in visible.edges
            if fanout[e.src] >= AUX_FANOUT and rank[e.dst] - rank[e.src] > AUX_SPAN}


def _stubs(visible: VisibleGraph, auxiliary: set[tuple[str, str]],
           boxes: Mapping[str, Box]) -> list[Route]:
    """One short arrow into the top of each target of auxiliary edges, standing for all of
    them and labelled with their sources."""
    into: dict[str, list[VisibleEdge]] = {}
    for e in visible.edges:
        if (e.src, e.dst) in auxiliary:
            into.setdefault(e.dst, []).append(e)
    titles = {it.id: it.title for it in visible.items}
    routes = []
    for dst, stubs in into.items():
        b = boxes[dst]
        x = b.x + b.w * 0.75  # off the centre, where edges from the rank above arrive
        joined = VisibleEdge(stubs[0].src, dst, tuple(e for s in stubs for e in s.edges))
        label = ", ".join(dict.fromkeys(titles[s.src] for s in stubs))
        routes.append(Route(joined, ((x, b.y - STUB), (x, b.y)), True, label))
    return routes


def _frames(visible: VisibleGraph, tree: GroupTree, boxes: Mapping[str, Box]) -> list[Frame]:
    """A frame per expanded group around its drawn items and inner frames, outermost first."""
    rects: dict[str, tuple[float, float, float, float]] = {}
    for gid in sorted(visible.expanded, key=lambda g: -tree.groups[g].depth):
        parts = []
        for child in tree.groups[gid].children:
            if child in rects:
                parts.append(rects[child])
            elif child in boxes:
                b = boxes[child]
                parts.append((b.x, b.y, b.x + b.w, b.y + b.h))
        if not parts:
            continue
        rects[gid] = (
            min(p[0] for p in parts) - FRAME_PAD,
            min(p[1] for p in parts) - FRAME_PAD - FRAME_LABEL_H,
            max(p[2] for p in parts) + FRAME_PAD,
            max(p[3] for p in parts) + FRAME_PAD,
        )
    frames = [
        Frame(g, tree.groups[g].label, r[0], r[1], r[2] - r[0], r[3] - r[1],
              tree.groups[g].depth)
        for g, r in rects.items()
    ]
    frames.sort(key=lambda f: (f.depth, f.y, f.x))
    return frames


def _origin(boxes: Mapping[str, Box], frames: list[Frame]) -> Point:
    xs = [b.x for b in boxes.values()] + [f.x for f in frames]
    ys = [b.y for b in boxes.values()] + [f.y for f in frames]
    return (MARGIN - min(xs, default=0.0), MARGIN - min(ys, default=0.0))


class LayoutCache:
    """Layouts already made, by (model, expanded groups); the least recently used go first."""

    def __init__(self, size: int = 32) -> None:
        self._size = size
        self._store: OrderedDict[Hashable, GraphLayout] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> GraphLayout | None:
        found = self._store.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._store.move_to_end(key)
        return found

    def put(self, key: Hashable, layout: GraphLayout) -> None:
        self._store[key] = layout
        self._store.move_to_end(key)
        while len(self._store) > self._size:
            self._store.popitem(last=False)

    def __len__(self) -> int:
        return len(self._store)

"""The quantizable tensors as a tree of module paths, and each group's numbers.

A model with a thousand quantizable tensors is read by its structure: the layer table shows
``layers.3 ▸ self_attn ▸ q_proj`` rather than a thousand flat rows. Everything here is pure
(no Qt, no document): the table's model presents what these functions return.

How a layer name becomes a path (`path_tokens`):

* it is split at ``.`` and ``/`` (``model.layers.3.mlp.up_proj``, ``/model/layers.3/MatMul``);
* a numeric part stays with the one before it, so a block reads ``layers.3``, not ``3``;
* a suffix in parentheses (``model.layers.0.self_attn (matmul)``: a node inside a module, not
  a module of its own) is the last part.

How the tree is shaped (`build_tree`): a layer's groups are its path without the last part,
which names the row. A group holding only one group and no tensor is merged with it
(``attention.self``); a group holding only a numbered sequence of blocks (a module list) gives
way to them, so the blocks read ``model.layers.3 ▸ self_attn ▸ q_proj``; and the path every
tensor shares is stripped from the top and kept as the tree's `prefix`, so the first level is
what differs: the blocks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from qviz.core.calibration.analysis import TensorKey
from qviz.core.document.summary import weighted_sqnr_db
from qviz.core.model.loading import TensorKind

# The parts of a name: runs of anything but the separators, with where each ends.
_PART = re.compile(r"[^./]+")
# "model.layers.0.self_attn (matmul)": the node's own name after its module's.
_NUMBERED = re.compile(r"^(.*)[./]\d+$")
_SUFFIX = re.compile(r"^(?P<base>.*?\S)\s+(?P<suffix>\([^()]*\))$")


def path_tokens(name: str) -> tuple[tuple[str, int], ...]:
    """The parts of a layer name, each with the offset in `name` where it ends.

    ``"model.layers.3.mlp.up_proj"`` → ``model``, ``layers.3``, ``mlp``, ``up_proj`` (numeric
    parts joined to the one before); ``"m.attn (matmul)"`` → ``m``, ``attn``, ``(matmul)``.
    """
    suffix_match = _SUFFIX.match(name)
    base = suffix_match.group("base") if suffix_match else name
    tokens: list[tuple[str, int]] = []
    for m in _PART.finditer(base):
        part = m.group(0)
        if part.isdigit() and tokens:
            prev, _end = tokens[-1]
            tokens[-1] = (f"{prev}{base[m.start() - 1]}{part}", m.end())
        else:
            tokens.append((part, m.end()))
    if suffix_match:
        tokens.append((suffix_match.group("suffix"), len(name)))
    if not tokens:  # a name of separators only: one row named as it is
        tokens.append((name, len(name)))
    return tuple(tokens)


@dataclass(frozen=True)
class Group:
    """One module path and what lies under it.

    ``children`` are groups and tensors in graph order (each child's first tensor decides its
    place); ``keys`` are every tensor below, in graph order. The root has path ``""``.
    """

    path: str
    label: str
    children: tuple[Group | TensorKey, ...]
    keys: tuple[TensorKey, ...]

    @property
    def groups(self) -> tuple[Group, ...]:
        return tuple(c for c in self.children if isinstance(c, Group))


@dataclass(frozen=True)
class TensorTree:
    """The tensors as a tree (`build_tree`)."""

    root: Group
    prefix: str                               # the stripped common path ("" when none)
    labels: Mapping[TensorKey, str]           # a tensor's row name, relative to its group
    parents: Mapping[TensorKey, str]          # a tensor's group's path ("" at the top)
    groups: Mapping[str, Group] = field(repr=False)  # every group but the root, by path
    group_parents: Mapping[str, str] = field(repr=False)  # a group's parent's path

    def ancestors(self, key: TensorKey) -> tuple[str, ...]:
        """The paths of the groups above a tensor, outermost first."""
        out: list[str] = []
        path = self.parents.get(key, "")
        while path:
            out.append(path)
            path = self.group_parents[path]
        return tuple(reversed(out))

    def level(self, path: str) -> int:
        """How deep a group sits: 0 for a top-level group."""
        n = 0
        path = self.group_parents.get(path, "")
        while path:
            n += 1
            path = self.group_parents[path]
        return n

    @property
    def has_groups(self) -> bool:
        return bool(self.groups)


@dataclass
class _Node:
    path: str
    children: dict[str, _Node] = field(default_factory=dict)
    order: list[Group | TensorKey | str] = field(default_factory=list)  # str: a child's token


def build_tree(items: Iterable[tuple[TensorKey, str]]) -> TensorTree:
    """The tree of `items`: (tensor, its layer's name), in graph order."""
    root = _Node("")
    leaf_label: dict[TensorKey, str] = {}
    for key, layer_name in items:
        tokens = path_tokens(layer_name)
        node = root
        for token, end in tokens[:-1]:
            child = node.children.get(token)
            if child is None:
                child = _Node(layer_name[:end].lstrip("./"))
                node.children[token] = child
                node.order.append(token)
            node = child
        node.order.append(key)
        leaf_label[key] = tokens[-1][0]
    top = _freeze(root)
    prefix = ""
    # Strip what every tensor shares: while the top holds one group and nothing else.
    while len(top.children) == 1 and isinstance(top.children[0], Group):
        only = top.children[0]
        prefix = only.path
        top = Group("", "", only.children, only.keys)
    top = _relabel(top, prefix)
    groups: dict[str, Group] = {}
    group_parents: dict[str, str] = {}
    parents: dict[TensorKey, str] = {}
    _index(top, groups, group_parents, parents)
    return TensorTree(top, prefix, leaf_label, parents, groups, group_parents)


def _freeze(node: _Node) -> Group:
    children: list[Group | TensorKey] = []
    for item in node.order:
        if isinstance(item, TensorKey):
            children.append(item)
            continue
        child_node = node.children[str(item)]
        child = _freeze(child_node)
        if _is_sequence(child_node, child):
            children.extend(child.children)  # "model.layers.3", not "model ▸ layers.3"
        else:
            children.append(child)
    # A group of one group and no tensor is one level, not two ("attention.self").
    if node.path and len(children) == 1 and isinstance(children[0], Group):
        return children[0]
    keys = tuple(k for c in children for k in ((c,) if isinstance(c, TensorKey) else c.keys))
    return Group(node.path, "", tuple(children), keys)


def _is_sequence(node: _Node, group: Group) -> bool:
    """Does the group only hold a numbered sequence of blocks (a module list: layers.0,
    layers.1, …)? Then its blocks take its place, named with its path."""
    if group.path != node.path or len(node.order) < 2:
        return False  # merged with its only child already
    bases = set()
    for item in node.order:
        m = _NUMBERED.match(item) if isinstance(item, str) else None
        if m is None:
            return False
        bases.add(m.group(1))
    return len(bases) == 1


def _relabel(group: Group, base: str) -> Group:
    """Each child group's label: its path after `base` (its parent's path, or at the top the
    stripped prefix)."""
    children: list[Group | TensorKey] = []
    for c in group.children:
        if isinstance(c, Group):
            label = c.path[len(base):].lstrip("./ ") if base and c.path.startswith(base) \
                else c.path
            children.append(_relabel(Group(c.path, label, c.children, c.keys), c.path))
        else:
            children.append(c)
    return Group(group.path, group.label, tuple(children), group.keys)


def _index(
    group: Group, groups: dict[str, Group], group_parents: dict[str, str],
    parents: dict[TensorKey, str],
) -> None:
    for child in group.children:
        if isinstance(child, Group):
            groups[child.path] = child
            group_parents[child.path] = group.path
            _index(child, groups, group_parents, parents)
        else:
            parents[child] = group.path


# ------------------------------------------------------------------------- group numbers


@dataclass(frozen=True)
class GroupSummary:
    """A group's numbers, over every tensor below it.

    ``worst`` is the measured tensor with the lowest SQNR (a tensor kept float is exact and
    never the worst); ``weighted_sqnr_db`` is the power mean of `weighted_sqnr_db` with each
    tensor's element count as weight, the number the summary line gives for the whole model.
    """

    n_tensors: int
    n_weights: int
    n_measured: int
    worst: tuple[TensorKey, float] | None
    weighted_sqnr_db: float
    params: float          # weight parameters under the group
    max_clipped: float     # the largest clipped fraction measured (NaN: none measured)

    @property
    def n_activations(self) -> int:
        return self.n_tensors - self.n_weights


@dataclass(frozen=True)
class TensorScore:
    """One measured tensor's numbers, as a group summary needs them."""

    sqnr_db: float    # +inf for a tensor kept float
    size: float       # element count (parameters; activation values per sample)
    clipped: float    # clipped fraction (0 for a tensor kept float)


def summarize_group(
    group: Group, scores: Mapping[TensorKey, TensorScore], params: Mapping[TensorKey, float]
) -> GroupSummary:
    """`group`'s numbers from the measured tensors' `scores`; `params`: weights' sizes."""
    measured = [(k, scores[k]) for k in group.keys if k in scores]
    finite = [(k, s.sqnr_db) for k, s in measured if s.sqnr_db == s.sqnr_db]
    worst = min(finite, key=lambda ks: ks[1]) if finite else None
    clipped = [s.clipped for _, s in measured if s.clipped == s.clipped]
    weights = [k for k in group.keys if k.kind is TensorKind.WEIGHT]
    return GroupSummary(
        n_tensors=len(group.keys),
        n_weights=len(weights),
        n_measured=len(measured),
        worst=worst,
        weighted_sqnr_db=weighted_sqnr_db((s.sqnr_db, s.size) for _, s in measured),
        params=float(sum(params.get(k, 0.0) for k in weights)),
        max_clipped=max(clipped) if clipped else float("nan"),
    )


def summarize_groups(
    tree: TensorTree, scores: Mapping[TensorKey, TensorScore], params: Mapping[TensorKey, float]
) -> dict[str, GroupSummary]:
    """Every group's summary, by path (the root's, for the whole model, under ``""``)."""
    out = {path: summarize_group(g, scores, params) for path, g in tree.groups.items()}
    out[""] = summarize_group(tree.root, scores, params)
    return out


def common_label(group: Group, labels: Mapping[TensorKey, str], mixed: str = "mixed") -> str:
    """The one label every tensor of the group has (a method, a format), or `mixed`."""
    seen = {labels[k] for k in group.keys if k in labels}
    if len(seen) == 1:
        return next(iter(seen))
    return mixed if seen else ""


def kinds_label(group: Group, labels: Mapping[TensorKey, str], mixed: str = "mixed") -> str:
    """A setting of the group's weights and of its activations (``"int8 / uint8"``), each
    `mixed` where its tensors differ; one label where both agree or the group holds one
    kind."""
    parts = []
    for kind in (TensorKind.WEIGHT, TensorKind.ACTIVATION):
        seen = {labels[k] for k in group.keys if k.kind is kind and k in labels}
        if seen:
            parts.append(next(iter(seen)) if len(seen) == 1 else mixed)
    if len(parts) == 2 and parts[0] == parts[1]:
        return parts[0]
    return " / ".join(parts)


def flatten(tree: TensorTree) -> Sequence[TensorKey]:
    """Every tensor in the tree's order (graph order)."""
    return tree.root.keys


# ------------------------------------------------------------------------- along depth


@dataclass(frozen=True)
class Band:
    """Consecutive points along depth that lie in one top-level group (one block)."""

    label: str   # the group's row name ("model.layers.3")
    path: str    # its full path
    start: int   # first point's index
    stop: int    # one past the last point's index


@dataclass(frozen=True)
class DepthGroups:
    """How points along depth group into blocks (`depth_groups`)."""

    bands: tuple[Band, ...]          # empty when the names have no groups (or only one)
    short_names: tuple[str, ...]     # each point's name after its band's path


def depth_groups(layer_names: Sequence[str]) -> DepthGroups:
    """Blocks along depth for points named by their layers (in depth order): runs of points
    in the same top-level group of `build_tree`, and each point's name within its block, so
    a plot of hundreds of points can band and label by block."""
    keys = [TensorKey(str(i), TensorKind.ACTIVATION) for i in range(len(layer_names))]
    tree = build_tree(zip(keys, layer_names, strict=True))
    top: list[str | None] = []
    for key in keys:
        above = tree.ancestors(key)
        top.append(above[0] if above else None)
    bands: list[Band] = []
    start = 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or top[i] != top[start]:
            path = top[start]
            if path is not None:
                bands.append(Band(tree.groups[path].label, path, start, i))
            start = i
    short = tuple(
        _after(name, path) if path is not None else name
        for name, path in zip(layer_names, top, strict=True)
    )
    if len({b.path for b in bands}) < 2:
        return DepthGroups((), tuple(layer_names))
    return DepthGroups(tuple(bands), short)


def _after(name: str, path: str) -> str:
    rest = name[len(path):].lstrip("./ ") if name.startswith(path) else name
    return rest or name

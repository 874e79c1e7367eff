"""The shape of the code: no import cycles, no module over the size limit, Qt kept out of the
core (the import-linter contract checks that one in CI; this checks the rest)."""

from __future__ import annotations

from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2] / "qviz"
# A module past this many lines does more than one thing; split it by concern.
MAX_LINES = 600


def _cycles(graph: grimp.ImportGraph, skip: frozenset[str] = frozenset()) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative); modules
    in `skip` are left out."""
    modules = sorted(graph.modules - skip)
    edges = {m: sorted((graph.find_modules_directly_imported_by(m) & graph.modules) - skip)
             for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in modules:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            recurse = False
            for j in range(i, len(edges[node])):
                nxt = edges[node][j]
                if nxt not in index:
                    work.append((node, j + 1))
                    work.append((nxt, 0))
                    recurse = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if recurse:
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return out


def test_no_import_cycles() -> None:
    # Imports under TYPE_CHECKING count too: a cycle in the types is a cycle in the design.
    graph = grimp.build_graph("qviz")
    # A package's __init__ is not a dependency of its parts.
    packages = frozenset(m for m in graph.modules if (ROOT.parent / m.replace(".", "/")).is_dir())
    assert _cycles(graph, packages) == []


@pytest.mark.parametrize(
    "path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT.parent))
)
def test_no_module_is_too_long(path: Path) -> None:
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{path.name} has {n} lines"


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for m in ("a", "b", "c"):
        graph.add_module(m)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="c")
    graph.add_import(importer="c", imported="a")
    assert _cycles(graph) == [["a", "b", "c"]]

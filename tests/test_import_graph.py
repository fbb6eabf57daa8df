"""The package's import graph has no cycle, and the layers point one way: the data package
never imports the trackers (the track cache's reader lives in data/, its writer in trackers/).

The graph is read from the source (every import, also those inside functions), so a lazy
import that only hides a cycle at run time still counts."""

import ast
from pathlib import Path

import mosic

ROOT = Path(mosic.__file__).parent


def import_graph() -> dict[str, set[str]]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, is_package) in modules.items():
        here = name.split(".") if is_package else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else [])) if node.level else node.module
                # `from pkg import module` names a module; `from module import name` the module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    assert "mosic.trackers.cache" in graph["mosic.cli"]  # imported inside a function
    assert "mosic.tracks" in graph["mosic.data.clips"]


def test_mosic_has_no_import_cycle():
    assert cycles(import_graph()) == []


def test_data_does_not_import_trackers():
    graph = import_graph()
    wrong = {m: sorted(t for t in ts if t.startswith("mosic.trackers")) for m, ts in graph.items() if m.startswith("mosic.data")}
    assert {m: ts for m, ts in wrong.items() if ts} == {}


def test_tracks_is_the_core_type_and_imports_nothing_of_mosic_but_the_device_helper():
    assert import_graph()["mosic.tracks"] <= {"mosic.device"}

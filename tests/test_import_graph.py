"""The package's import graph has no cycle, and the layers point one way: the layers are the
table of docs/design.md's package map (errors/tracks -> config -> data -> backbones/trackers
-> objectives -> train -> eval/export -> cli/viz), read by these tests, so the map and the
code cannot drift apart. (The data package, for one, never imports the trackers: the track
cache's reader lives in data/, its writer in trackers/.)

The graph is read from the source (every import, also those inside functions), so a lazy
import that only hides a cycle at run time still counts."""

import ast
import re
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


def test_tracks_is_the_core_type_and_imports_nothing_of_mosic_but_the_device_helper_and_checks():
    assert import_graph()["mosic.tracks"] <= {"mosic.device", "mosic.checks"}
    assert import_graph()["mosic.checks"] == set()


# ---- the layer contract: docs/design.md's package map is the contract -------------------

DESIGN = ROOT.parent / "docs" / "design.md"


def layer_table() -> list[tuple[str, list[str]]]:
    """The rows of the map's layer table, lowest layer first: (layer name, its parts), a
    part being a top-level module (``config``) or a folder (``data/``)."""
    text = DESIGN.read_text(encoding="utf-8")
    section = text.split("## The package map", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0][:1].isdigit():
            rows.append((cells[1], re.findall(r"`([\w/]+)`", cells[2])))
    return rows


def layer_of(module: str, layers: dict[str, int]) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # the package itself: mosic/__init__.py
        return layers["__init__"]
    return layers[parts[1] + "/"] if parts[1] + "/" in layers else layers[parts[1]]


def layers() -> dict[str, int]:
    found = {}
    for i, (_, parts) in enumerate(layer_table()):
        for part in parts:
            assert part not in found, f"{part} sits in two layers of the map"
            found[part] = i
    return found


def test_the_map_places_every_module_in_one_layer():
    table = layers()
    assert len(layer_table()) >= 6
    for module in import_graph():
        try:
            layer_of(module, table)
        except KeyError:
            raise AssertionError(f"{module} is in no layer of docs/design.md's package map") from None
    tops = {p.stem if p.is_file() else p.name + "/" for p in ROOT.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert set(table) == tops, "the map names parts that are not in the package"


def test_imports_point_down_the_layers():
    table, names = layers(), [name for name, _ in layer_table()]
    upward = [
        f"{a} ({names[layer_of(a, table)]}) imports {b} ({names[layer_of(b, table)]})"
        for a, targets in import_graph().items()
        for b in sorted(targets)
        if layer_of(b, table) > layer_of(a, table)
    ]
    assert upward == [], "imports against the layers of docs/design.md:\n" + "\n".join(upward)


def test_the_layer_check_finds_an_upward_import():
    table = layers()
    assert layer_of("mosic.data.clips", table) < layer_of("mosic.train.trainer", table)
    assert layer_of("mosic.cli", table) == layer_of("mosic", table)


def test_the_concepts_the_map_names_exist():
    section = DESIGN.read_text(encoding="utf-8").split("## The package map", 1)[1].split("\n## ", 1)[0]
    paths = set(re.findall(r"`(mosic/[\w/]+\.py)`", section))
    assert len(paths) >= 20
    missing = sorted(p for p in paths if not (ROOT.parent / p).is_file())
    assert missing == [], f"docs/design.md's map names files that do not exist: {missing}"

"""The control plane (primary/control/) and the team's Datasette plugin
(primary/datasette/) import each other's modules without cycles, and one
way only: the control plane asks the plugin who may publish, the plugin
asks the control plane only over HTTP (broadsheet/client.py). Fast: reads
the source, runs none of it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("primary", "broadsheet", "replica")
CHECKED = ("primary.control", "primary.datasette")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that importing ``name`` imports, function-level
    imports included, with the packages each passes through (but not the
    importer's own, which are imported already)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    wanted: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            wanted.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            wanted.add(source)
            wanted.update(f"{source}.{alias.name}" for alias in node.names)
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
    edges = set()
    for target in wanted:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            ancestor = ".".join(parts[:i])
            if ancestor in modules and ancestor not in own:
                edges.add(ancestor)
    return edges


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _within(name: str, packages) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def test_the_control_plane_and_the_team_plugin_have_no_import_cycles():
    graph = _graph()
    assert any(_within(name, ("primary.control",)) for name in graph), "primary/control/ not found"
    assert any(_within(name, ("primary.datasette",)) for name in graph), "primary/datasette/ not found"
    cycles = [c for c in _cycles(graph) if any(_within(m, CHECKED) for m in c)]
    assert cycles == [], f"import cycles through the control plane or the team plugin: {cycles}"


def test_the_team_plugin_never_imports_the_control_plane():
    """The plugin asks the control plane over HTTP, in its own process: see
    primary/datasette/control_plane.py for why."""
    graph = _graph()
    wrong = {
        name: sorted(t for t in targets if _within(t, ("primary.control",)))
        for name, targets in graph.items()
        if _within(name, ("primary.datasette",))
    }
    assert {name: targets for name, targets in wrong.items() if targets} == {}


def test_the_control_plane_client_imports_no_role():
    assert {t for t in _graph()["broadsheet.client"] if _within(t, ("primary", "replica"))} == set()

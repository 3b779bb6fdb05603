"""The layout holds: every module of broadsheet/, primary/, replica/ and
local/ imports in a fresh interpreter, and no two modules import each other,
directly or through others (a walk of every import statement, function-level ones included,
so an import cycle cannot hide inside a function); the team's Datasette
plugin reaches the control plane over HTTP only. Fast: no processes but
one Python."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("broadsheet", "primary", "replica", "local")


def modules() -> dict[str, Path]:
    """Every module of PACKAGES, by dotted name (a package by its own name)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` that ``name`` imports, anywhere in it, with
    the packages Python runs on the way (a package's ``__init__`` runs
    before its modules), except the packages ``name`` itself is in."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets.add(module)
            # ``from package import module`` imports the module too.
            targets |= {f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in known}
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    found = set()
    for target in targets:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            step = ".".join(parts[:i])
            if step in known and step not in own and step != name:
                found.add(step)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, as the modules around it, or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(module: str) -> list[str] | None:
        path.append(module)
        on_path.add(module)
        for target in sorted(graph[module]):
            if target in on_path:
                return path[path.index(target):] + [target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        on_path.discard(path.pop())
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def test_no_module_is_part_of_an_import_cycle():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_walk_sees_a_cycle_through_a_function_level_import(tmp_path):
    """The check itself: node <-> standby, as it was, is found."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "node.py").write_text("def start():\n    from .standby import check\n")
    (tmp_path / "pkg" / "standby.py").write_text("from . import node\n")
    known = {"pkg": tmp_path / "pkg" / "__init__.py", "pkg.node": tmp_path / "pkg" / "node.py",
             "pkg.standby": tmp_path / "pkg" / "standby.py"}
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert find_cycle(graph) in (["pkg.node", "pkg.standby", "pkg.node"], ["pkg.standby", "pkg.node", "pkg.standby"])


def test_every_module_imports_in_a_fresh_interpreter():
    names = sorted(modules())
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    done = subprocess.run([sys.executable, "-c", script, *names], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_team_plugin_never_imports_the_control_plane():
    """The plugin asks the control plane over HTTP, in its own process (see
    primary/datasette/control_plane.py); the control plane may ask the
    plugin who may publish, so the two are one way only."""
    known = modules()
    assert any(within(name, "primary.datasette") for name in known)
    wrong = {
        name: sorted(t for t in imports(name, path, known) if within(t, "primary.control"))
        for name, path in known.items()
        if within(name, "primary.datasette")
    }
    assert {name: targets for name, targets in wrong.items() if targets} == {}

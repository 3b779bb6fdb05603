"""The shared package is a library: no module of ``broadsheet/`` imports a
role (``primary``, ``replica``) or the local cluster (``local``), not even
inside a function. The roles' commands reach the ``broadsheet`` command by
entry point (pyproject.toml)."""

from __future__ import annotations

import ast
from pathlib import Path

import broadsheet

ROLES = {"primary", "replica", "local"}
LIBRARY = Path(broadsheet.__file__).parent


def imported(path: Path) -> set[str]:
    """The top-level package of every absolute import in ``path``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                names.add(node.args[0].value.split(".")[0])
    return names


def test_the_library_imports_no_role():
    modules = sorted(LIBRARY.rglob("*.py"))
    assert modules
    offenders = {str(p.relative_to(LIBRARY.parent)): sorted(imported(p) & ROLES) for p in modules}
    assert {path: roles for path, roles in offenders.items() if roles} == {}


def test_every_role_declares_its_commands():
    from importlib.metadata import entry_points

    from broadsheet.cli import ENTRY_POINTS

    assert {point.name for point in entry_points(group=ENTRY_POINTS)} == ROLES

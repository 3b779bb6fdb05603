"""Datasette plugins a team adds to its read nodes, by package name.

``BROADSHEET_READ_NODE_PLUGINS`` lists packages (``datasette-cluster-map``,
or with a version, ``datasette-cluster-map==0.18.2``), separated by commas
or spaces; ``BROADSHEET_READ_NODE_PLUGINS_CONFIG`` is their configuration,
Datasette's ``plugins`` block as JSON or YAML (``{"datasette-cluster-map":
{"latitude_column": "lat", "longitude_column": "lon"}}``). Only that block:
a whole Datasette configuration could grant permissions, and a read node's
are broadsheet's alone. Datasette loads each package (and the plugins it
requires, such as datasette-leaflet) through its own ``DATASETTE_LOAD_PLUGINS``.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys

import yaml

from .config import ConfigError

PLUGINS_VAR = "BROADSHEET_READ_NODE_PLUGINS"
CONFIG_VAR = "BROADSHEET_READ_NODE_PLUGINS_CONFIG"
# The team's Datasette's packaged plugins (datasette-upload-csvs,
# datasette-edit-schema): loaded on the primary only, never by a read node,
# whose Datasette loads exactly its own list (datasette_launcher.py).
TEAM_PLUGINS_VAR = "BROADSHEET_TEAM_PLUGINS"
# The image's build argument that installs each list.
BUILD_ARGS = {PLUGINS_VAR: "READ_NODE_PLUGINS", TEAM_PLUGINS_VAR: "TEAM_PLUGINS"}

# SQLite libraries other than Python's own sqlite3 (which Datasette uses):
# a team plugin that brings one would open data.db with a second copy of
# SQLite in the team Datasette's process, which LiteFS sees as one lock
# owner (docs/internals.md, Known limits): refused, not risked.
SECOND_SQLITE = frozenset({"apsw", "pysqlite3", "pysqlite3-binary", "sqlean-py", "sqlcipher3", "sqlcipher3-binary"})

# What a package name looks like (PEP 508), before any extras or version.
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")


def requirements(value: str | None, variable: str = PLUGINS_VAR) -> tuple[str, ...]:
    """The packages a setting lists, each as pip would be asked for it."""
    found = tuple(part for part in re.split(r"[\s,]+", value or "") if part)
    for requirement in found:
        if not _NAME.match(requirement) or requirement.startswith("-"):
            raise ConfigError(f"{variable}: {requirement!r} is not a package name")
    return found


def name_of(requirement: str) -> str:
    return _NAME.match(requirement).group(0)


def _one_line(exc: yaml.YAMLError) -> str:
    """YAML's complaint and where, on one line (it draws a caret under the
    text on lines of their own)."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split())


def config(value: str | None, variable: str = CONFIG_VAR) -> dict:
    """The plugins' configuration: plugin name -> its settings."""
    if not value or not value.strip():
        return {}
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{variable} must be JSON or YAML: {_one_line(exc)}") from None
    if not isinstance(parsed, dict) or not all(isinstance(v, dict) for v in parsed.values()):
        raise ConfigError(
            f"{variable} must map each plugin's name to its settings, as in"
            ' {"datasette-cluster-map": {"latitude_column": "lat"}}'
        )
    json.dumps(parsed)  # what Datasette will read: JSON values only
    return parsed


def missing(wanted: tuple[str, ...]) -> list[str]:
    """The requirements whose package is not installed here."""
    absent = []
    for requirement in wanted:
        try:
            importlib.metadata.distribution(name_of(requirement))
        except importlib.metadata.PackageNotFoundError:
            absent.append(requirement)
    return absent


def check_installed(wanted: tuple[str, ...], variable: str = PLUGINS_VAR) -> None:
    absent = missing(wanted)
    if absent:
        raise ConfigError(
            f"{variable}: not installed here: {', '.join(absent)} (pip install them, or build the image with"
            f" {BUILD_ARGS.get(variable, 'READ_NODE_PLUGINS')}=\"{' '.join(wanted)}\" scripts/image)"
        )
    for requirement in wanted:
        if not _entry_points(name_of(requirement)):
            raise ConfigError(f"{variable}: {name_of(requirement)} is installed but is not a Datasette plugin")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def second_sqlite(wanted: tuple[str, ...]) -> dict[str, str]:
    """Each of these installed packages that requires (itself, or through
    what it requires) an SQLite library other than Python's: package ->
    that library."""
    found = {}
    for requirement in wanted:
        seen: set[str] = set()
        todo = [name_of(requirement)]
        while todo:
            package = _normal(todo.pop())
            if package in seen:
                continue
            seen.add(package)
            if package in SECOND_SQLITE:
                found[name_of(requirement)] = package
                break
            try:
                requires = importlib.metadata.requires(package) or []
            except importlib.metadata.PackageNotFoundError:
                continue
            todo += [name_of(r) for r in requires if "extra ==" not in r]
    return found


def check_team(wanted: tuple[str, ...]) -> None:
    """ConfigError unless every team plugin is installed, is a Datasette
    plugin, and keeps to Datasette's SQLite library."""
    check_installed(wanted, TEAM_PLUGINS_VAR)
    refused = second_sqlite(wanted)
    if refused:
        said = ", ".join(f"{p} (it requires {lib})" for p, lib in refused.items())
        raise ConfigError(
            f"{TEAM_PLUGINS_VAR}: refused: {said}. The team's Datasette opens data.db with Python's sqlite3 only:"
            " a second SQLite library in the same process can drop the other's locks on LiteFS's data.db"
            " (see Known limits: one SQLite library per process)"
        )


def install(wanted: tuple[str, ...]) -> None:
    """pip install what is missing, into this Python's environment."""
    absent = missing(wanted)
    if absent:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *absent], check=True)


def _entry_points(package: str) -> list:
    try:
        return [ep for ep in importlib.metadata.distribution(package).entry_points if ep.group == "datasette"]
    except importlib.metadata.PackageNotFoundError:
        return []


def load_list(wanted: tuple[str, ...]) -> str:
    """``DATASETTE_LOAD_PLUGINS`` for these packages: each, and every
    installed Datasette plugin it requires (datasette-cluster-map draws its
    map with datasette-leaflet's Leaflet), each once."""
    names: list[str] = []
    todo = [name_of(r) for r in wanted]
    while todo:
        package = todo.pop(0)
        if package.lower() in {n.lower() for n in names}:
            continue
        names.append(package)
        for requirement in importlib.metadata.requires(package) or []:
            if "extra ==" in requirement:
                continue
            dependency = name_of(requirement)
            if dependency.lower() != "datasette" and _entry_points(dependency):
                todo.append(dependency)
    return ",".join(names)

"""The docs cannot drift from the code (no cluster: plain files and one
small Sphinx build of the CLI page).

- Every environment variable a broadsheet process reads is on the
  configuration page, and every variable that page lists is read somewhere.
- Every command and option of ``broadsheet`` (its click tree, walked the way
  click walks it) is in the CLI reference as Sphinx builds it, and every
  command in the page's own table.
- Every ``Broadsheet-*`` HTTP header the code sends or reads is documented,
  and every one the docs or the README name is one the code knows.
"""

from __future__ import annotations

import ast
import re
import shutil
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"

BROADSHEET_VAR = re.compile(r"\bBROADSHEET_[A-Z0-9_]*[A-Z0-9]\b")
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")
# The methods that read one variable: os.environ.get, environ.get, os.getenv
# and broadsheet.config.Env's typed reads (env.str, env.port, ...).
ENV_READS = {"get", "getenv", "str", "optional", "int", "float", "port", "url", "urls", "bool"}
# Files outside the Python packages that name variables a user sets: the
# container and Fly deployment, and the scripts that build the image.
DEPLOYMENT_FILES = ["Dockerfile", "docker-compose.yml", "fly.toml", "litefs.yml", *(f"scripts/{p}" for p in ("image", "base-image", "up", "setup", "test", "test-containers", "container-engine", "bench", "differential", "docs"))]


def package_dirs() -> list[Path]:
    """The project's Python packages, as pyproject.toml lists them for the
    wheel (so a package added or renamed there is scanned too)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted(p for p in ROOT.iterdir() if (p / "__init__.py").exists() and any(fnmatch(p.name, pat) for pat in patterns))


def python_sources() -> dict[Path, str]:
    return {path: path.read_text() for d in package_dirs() for path in sorted(d.rglob("*.py"))}


def _is_env(node: ast.AST) -> bool:
    text = ast.unparse(node).lower()
    return "environ" in text or text in ("env", "self.env", "os") or text.endswith(".env")


def variables_read() -> dict[str, str]:
    """Every variable the code reads, with where: each BROADSHEET_* name in
    the source, every other name read through the environment (os.environ,
    Env, click's envvar=), and the ${VAR}s of litefs.yml."""
    found: dict[str, str] = {}
    for path, text in python_sources().items():
        where = str(path.relative_to(ROOT))
        for name in BROADSHEET_VAR.findall(text):
            found.setdefault(name, where)
        for node in ast.walk(ast.parse(text)):
            names = []
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Attribute) and func.attr in ENV_READS and _is_env(func.value) and node.args:
                    names.append(node.args[0])
                names += [kw.value for kw in node.keywords if kw.arg == "envvar"]
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _is_env(node.value):
                names.append(node.slice)
            for arg in names:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and ENV_NAME.match(arg.value):
                    found.setdefault(arg.value, where)
    for name in filter(ENV_NAME.match, re.findall(r"\$\{([A-Z][A-Z0-9_]*)\}", (ROOT / "litefs.yml").read_text())):
        found.setdefault(name, "litefs.yml")
    return found


def documented_variables() -> set[str]:
    """The variables the configuration page's tables list (their first column)."""
    names = set()
    for line in CONFIGURATION.read_text().splitlines():
        if line.startswith("|") and not line.startswith("| ---"):
            first = line.split("|")[1]
            names.update(n for n in re.findall(r"`([A-Z][A-Z0-9_]*)`", first) if ENV_NAME.match(n))
    return names


def test_every_variable_read_is_on_the_configuration_page():
    page = CONFIGURATION.read_text()
    missing = {name: where for name, where in variables_read().items() if not re.search(rf"`{name}`", page)}
    assert not missing, f"read by the code, not on docs/configuration.md: {missing}"


def test_every_variable_documented_is_read_somewhere():
    sources = "\n".join(python_sources().values())
    sources += "\n".join((ROOT / f).read_text() for f in DEPLOYMENT_FILES if (ROOT / f).exists())
    documented = documented_variables()
    assert len(documented) > 40, "the configuration page's tables were not found"
    unread = sorted(n for n in documented if not re.search(rf"\b{n}\b", sources))
    assert not unread, f"on docs/configuration.md, read by nothing: {unread}"


def test_the_scan_finds_what_each_kind_of_read_looks_like():
    read = variables_read()
    # Env's typed reads, plain os.environ.get, click's envvar=, litefs.yml.
    for name in ("BROADSHEET_PRIVATE_PRIMARY_HOSTNAME", "DATASETTE_SECRET", "FLY_REGION", "FLY_MACHINE_ID", "LITEFS_RETENTION"):
        assert name in read, name
    assert "BROADSHEET_READ_NODE_LITEFS_PORT" not in read


# -- the CLI reference -------------------------------------------------------


def walk(command: click.Command, path: tuple[str, ...] = (), ctx: click.Context | None = None):
    """(path, command) for every command that is not hidden, as click finds
    them (list_commands/get_command, so lazily loaded ones too)."""
    yield path, command
    if isinstance(command, click.Group):
        ctx = click.Context(command, info_name=command.name, parent=ctx)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from walk(sub, (*path, name), ctx)


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory) -> str:
    """docs/cli.md as Sphinx builds it, with the site's conf.py and
    extensions (the text builder, that page alone: a few seconds)."""
    from sphinx.cmd.build import build_main

    out = tmp_path_factory.mktemp("docs")
    src = out / "src"
    shutil.copytree(DOCS / "_ext", src / "_ext")
    for name in ("conf.py", "cli.md"):
        shutil.copy(DOCS / name, src / name)
    status = build_main(["-q", "-b", "text", "-D", "root_doc=cli", str(src), str(out / "text")])
    assert status == 0
    return (out / "text" / "cli.txt").read_text()


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::PendingDeprecationWarning")
def test_every_command_and_option_is_in_the_cli_reference(cli_reference):
    from broadsheet.cli import cli

    commands = list(walk(cli))
    assert len(commands) > 20
    usages = [m.start() for m in re.finditer(r"^\s+broadsheet\b.*$", cli_reference, re.M)]
    missing = []
    for path, command in commands:
        usage = re.search(rf"^\s+broadsheet{''.join(' ' + re.escape(p) for p in path)} \[OPTIONS\]", cli_reference, re.M)
        if usage is None:
            missing.append(" ".join(("broadsheet", *path)))
            continue
        end = next((u for u in usages if u > usage.start()), len(cli_reference))
        section = cli_reference[usage.start():end]
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                for flag in param.opts + param.secondary_opts:
                    if flag not in section:
                        missing.append(f"broadsheet {' '.join(path)} {flag}")
    assert not missing, f"not in the CLI reference as built: {missing}"


# -- headers -----------------------------------------------------------------

HEADER = re.compile(r"\bBroadsheet(?:-[A-Z][a-z]+)+\b")
RAW_HEADER = re.compile(rb"""b["'](broadsheet(?:-[a-z]+)+)["']""")


def headers_in_code() -> set[str]:
    """Broadsheet-* headers the code sends or reads: raw ASGI header names
    (b"broadsheet-public-txid") and the names its messages and docstrings
    spell (Broadsheet-Wait), lowercased as HTTP compares them."""
    names = set()
    for path, text in python_sources().items():
        names.update(h.lower() for h in HEADER.findall(text))
        names.update(h.decode() for h in RAW_HEADER.findall(text.encode()))
    return names


def documented_text() -> str:
    pages = [p.read_text() for p in sorted(DOCS.rglob("*.md")) if "_build" not in p.parts]
    return "\n".join(pages)


def test_every_header_the_code_knows_is_documented():
    code = headers_in_code()
    assert {"broadsheet-wait", "broadsheet-min-txid", "broadsheet-txid"} <= code
    docs = {h.lower() for h in HEADER.findall(documented_text())}
    assert not code - docs, f"headers the code sends or reads, documented nowhere in docs/: {sorted(code - docs)}"
    rows = [line for line in (DOCS / "http.md").read_text().splitlines() if line.startswith("| `Broadsheet-")]
    table = {re.match(r"\| `([^`]+)`", row).group(1).lower() for row in rows}
    assert not code - table, f"headers missing from the HTTP reference's table of headers: {sorted(code - table)}"


def test_every_header_documented_is_one_the_code_knows():
    code = headers_in_code()
    named = {h.lower() for h in HEADER.findall(documented_text() + (ROOT / "README.md").read_text())}
    assert not named - code, f"documented headers the code neither sends nor reads: {sorted(named - code)}"


def test_every_command_is_in_the_cli_pages_table():
    """The table people read first (docs/cli.md, written by hand) names
    every command and subcommand."""
    from broadsheet.cli import cli

    cells = " ".join(
        line.split("|")[1] for line in (DOCS / "cli.md").read_text().splitlines() if line.startswith("| `broadsheet")
    )
    words = set(re.findall(r"[a-z][a-z-]*", cells))
    missing = [" ".join(path) for path, _ in walk(cli) if path and path[-1] not in words]
    assert not missing, f"commands missing from docs/cli.md's table: {missing}"


def test_the_cli_page_sees_commands_a_group_loads_lazily():
    """A root group that loads some commands on demand keeps them out of its
    ``commands`` dict, where sphinx-click looks first; the docs' extension
    fills them in, as click would list them."""
    import sys

    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        from cli_commands import materialize
    finally:
        sys.path.remove(str(DOCS / "_ext"))

    role = click.Group("role", commands={"run": click.Command("run", params=[click.Option(["--flag"])])})

    class Lazy(click.Group):
        def list_commands(self, ctx):
            return sorted({*super().list_commands(ctx), "role"})

        def get_command(self, ctx, name):
            return role if name == "role" else super().get_command(ctx, name)

    root = Lazy("root", commands={"eager": click.Command("eager")})
    materialize(root)
    assert set(root.commands) == {"eager", "role"}
    assert [path for path, _ in walk(root)] == [(), ("eager",), ("role",), ("role", "run")]

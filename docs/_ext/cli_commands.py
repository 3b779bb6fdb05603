"""Make every command of ``broadsheet.cli:cli`` visible to sphinx-click.

sphinx-click lists a group's commands from its ``commands`` dict and asks
``list_commands``/``get_command`` only when that dict is empty; a root group
that loads some commands lazily (each role's group on demand) would then
lose them from the reference. So, before any page is read, every group of
the tree is walked the way click itself walks it and its ``commands``
filled in. A loader the CLI offers (``all_commands``) runs first.
"""

from __future__ import annotations

import importlib
import re

import click

CLI = "broadsheet.cli:cli"


def load_cli(spec: str = CLI) -> click.Command:
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    loader = getattr(module, "all_commands", None)
    if callable(loader):
        loader()
    return getattr(module, attr)


def materialize(command: click.Command, ctx: click.Context | None = None) -> None:
    if not isinstance(command, click.Group):
        return
    ctx = click.Context(command, info_name=command.name, parent=ctx)
    for name in command.list_commands(ctx):
        sub = command.get_command(ctx, name)
        if sub is None:
            continue
        command.commands.setdefault(name, sub)
        materialize(sub, ctx)


_LITERAL = re.compile(r"(``.+?``)")
_TRAILING_UNDERSCORE = re.compile(r"(\w)_(?=\W|$)")


def escape_help(app, ctx, lines: list[str]) -> None:
    """Help text is written for a terminal: ``dstok_…`` there is a token's
    prefix, not a reStructuredText reference."""
    for i, line in enumerate(lines):
        parts = _LITERAL.split(line)
        lines[i] = "".join(p if p.startswith("``") else _TRAILING_UNDERSCORE.sub(r"\1\\_", p) for p in parts)


def setup(app):
    materialize(load_cli())
    for part in ("description", "usage", "options", "arguments", "envvars", "epilog"):
        app.connect(f"sphinx-click-process-{part}", escape_help)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

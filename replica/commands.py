"""The read node's commands, composed into the ``broadsheet`` command by
its entry point (``broadsheet.commands``, pyproject.toml)."""

from __future__ import annotations

import sys

import click


@click.group()
def commands():
    """The read node's commands."""


@commands.command()
def replica():
    """Run this machine's read node (LiteFS replica of public.db and the public
    Datasette), configured by environment variables, until SIGTERM."""
    from broadsheet.config import ConfigError
    from broadsheet.supervisor import run_node

    from .node import ReadNode

    try:
        node = ReadNode.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc))
    sys.exit(run_node(node))

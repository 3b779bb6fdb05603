"""The ``broadsheet`` command: each role's commands, composed.

The roles own their commands (``primary/commands.py``,
``replica/commands.py``, ``local/commands.py``, each a click group) and
declare them as entry points in the ``broadsheet.commands`` group
(pyproject.toml); this package imports none of them."""

from __future__ import annotations

from importlib.metadata import entry_points

import click

ENTRY_POINTS = "broadsheet.commands"


class Commands(click.Group):
    """broadsheet's own commands and every installed role's, loaded from
    their entry points the first time a command is looked up."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._loaded = False

    def load(self) -> "Commands":
        if not self._loaded:
            self._loaded = True
            for point in sorted(entry_points(group=ENTRY_POINTS), key=lambda p: p.name):
                group = point.load()
                for name, command in group.commands.items():
                    if name in self.commands:
                        raise RuntimeError(f"broadsheet: two command groups define {name!r} ({point.value})")
                    self.add_command(command, name)
        return self

    def list_commands(self, ctx):
        self.load()
        return super().list_commands(ctx)

    def get_command(self, ctx, name):
        self.load()
        return super().get_command(ctx, name)


@click.group(cls=Commands)
@click.version_option(package_name="broadsheet")
def cli():
    """Publish tables of a private SQLite database to LiteFS read nodes."""


def all_commands() -> click.Group:
    """The ``broadsheet`` command with every role's commands loaded (for
    generated references and for walking the command tree)."""
    return cli.load()


@cli.command()
@click.argument("url")
@click.option("--timeout", default=3.0, show_default=True)
def healthcheck(url, timeout):
    """Exit 0 if URL answers 200 (for container health checks)."""
    import httpx

    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"{url}: {exc}")
    if response.status_code != 200:
        raise click.ClickException(f"{url}: HTTP {response.status_code}")


if __name__ == "__main__":
    cli()

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


@cli.command()
@click.argument("url", required=False)
@click.option("--key", "key_text", help="The publisher's public key (ed25519:...), as the team publishes it."
              " Without it, the key the node trusts is used, which proves less.")
@click.option("--file", "file_", type=click.Path(exists=True, dir_okay=False),
              help="Check a downloaded copy of public.db instead, against the release URL's node serves.")
@click.option("--timeout", default=10.0, show_default=True)
def verify(url, key_text, file_, timeout):
    """Check that a read node (URL), or a copy of public.db (--file), is what
    the publisher signed. Exits 1 naming the TXID when it is not."""
    import httpx

    from . import release
    from .litefs import Pos

    if not url:
        raise click.UsageError("give a read node's URL (with --file, the node whose release the copy must match)")
    try:
        key = release.PublicKey.parse(key_text) if key_text else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--key")
    where = f"{url.rstrip('/')}/-/broadsheet/release.json"
    try:
        body = httpx.get(where, timeout=timeout).json()
    except (httpx.HTTPError, ValueError) as exc:
        raise click.ClickException(f"{where}: {exc}")
    txid = body.get("txid")
    signed = body.get("release")
    if not signed:
        raise click.ClickException(f"{url}: TXID {txid}: not verified: {body.get('problem') or body.get('error')}")
    found = release.Release.from_dict(signed)
    if key is None:
        key = release.PublicKey.parse(body["key"])
        click.echo(f"note: checked against the key the node trusts ({key}); pass --key to check against the team's", err=True)
    if file_:
        digest = release.PageTree.of_file(file_).digest
        problem = found.problem(key, found.txid, digest)
        if problem:
            raise click.ClickException(f"{file_}: {problem}")
        click.echo(f"{file_}: TXID {found.txid}, digest {digest[:16]}…: signed by {key.key_id}")
        return
    pos = Pos(int(txid), int(body["checksum"], 16))
    problem = release.verdict(found.digest, pos, found, {key.key_id: key})
    if problem:
        raise click.ClickException(f"{url}: {problem}")
    click.echo(f"{url}: TXID {pos.txid}, digest {found.digest[:16]}…: signed by {key.key_id}")


if __name__ == "__main__":
    cli()

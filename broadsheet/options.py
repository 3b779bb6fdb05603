"""What the roles' commands (``primary/commands.py``, ``replica/commands.py``,
``local/commands.py``) share: the local cluster's directory, and the checks
that turn a bad path into a message."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import click

from .cluster_file import DEFAULT_DIR

cluster_dir = click.option(
    "--dir",
    "root",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DIR,
    show_default=True,
    envvar="BROADSHEET_DIR",
    help="Where the local cluster keeps its mounts, data and logs.",
)


def sqlite_file(path: str | Path, what: str = "database") -> str:
    """``path``, if it is an SQLite database file; else a message (no such
    file, a directory, not SQLite). Read without opening it as a database,
    so that checking creates nothing."""
    path = Path(path)
    if not path.exists():
        raise click.ClickException(f"{path}: no such {what}")
    if path.is_dir():
        raise click.ClickException(f"{path}: is a directory, not an SQLite {what}")
    try:
        with open(path, "rb") as fp:
            header = fp.read(16)
    except OSError as exc:
        raise click.ClickException(f"{path}: {exc.strerror}")
    if header and header != b"SQLite format 3\x00":
        raise click.ClickException(f"{path}: not an SQLite {what}")
    return str(path)


def sqlite_errors() -> tuple[type[BaseException], ...]:
    """The SQLite errors (sqlite3's and APSW's) a command reports as a
    message rather than a traceback."""
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
    try:
        import apsw

        errors += (apsw.Error,)
    except ImportError:  # a read node's install
        pass
    return errors

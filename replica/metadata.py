"""The team's metadata (title, description, license, source and their URLs),
replicated in public.db's ``_public_metadata``, shown where Datasette shows
metadata: on the index page and in ``/-/metadata.json`` for the instance
(and the database), on table pages and their JSON for each public table.

Datasette keeps metadata in its internal database; a read node copies the
replicated rows there whenever its position moves, so a change the team
makes shows without a restart, and nothing stays of a table that is no
longer public (the publisher replicates metadata for public tables only).
"""

from __future__ import annotations

import asyncio
import json
import weakref

from broadsheet.litefs import Pos
from broadsheet.names import PUBLIC_METADATA

FIELDS = ("title", "description", "license", "license_url", "source", "source_url")
COLUMNS = "columns"  # JSON: column name -> description (the columns the public copy has)

_synced: dict[str, Pos] = {}  # database name -> the position last copied
_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # one per Datasette (and so per event loop)


async def sync(datasette, db, pos: Pos) -> None:
    """Copy ``_public_metadata`` into Datasette's metadata if ``pos`` is new.
    The requests that arrive together at a new position copy once: the
    first does, the others wait for it."""
    if pos.txid == 0 or _synced.get(db.name) == pos:
        return
    if datasette not in _locks:
        _locks[datasette] = asyncio.Lock()
    async with _locks[datasette]:
        if _synced.get(db.name) != pos:
            await _copy(datasette, db, pos)


async def _copy(datasette, db, pos: Pos) -> None:
    try:
        rows = (await db.execute(f"SELECT table_name, {', '.join(FIELDS)}, {COLUMNS} FROM {PUBLIC_METADATA}")).rows
    except Exception as exc:
        if "no such table" not in str(exc) and "no such column" not in str(exc):
            return  # a passing fault: keep what is shown, try again next request
        rows = []  # a public.db from before metadata (or before column descriptions: the next cycle adds them)
    instance = {}
    resources = []
    columns = []
    for row in rows:
        fields = {k: row[k] for k in FIELDS if row[k]}
        if row["table_name"] == "":
            instance = fields
            continue
        resources += [(row["table_name"], k, v) for k, v in fields.items()]
        described = _descriptions(row[COLUMNS])
        columns += [(row["table_name"], column, text) for column, text in described.items()]

    def write(conn):
        conn.execute("DELETE FROM metadata_instance")
        conn.execute("DELETE FROM metadata_databases WHERE database_name = ?", [db.name])
        conn.execute("DELETE FROM metadata_resources WHERE database_name = ?", [db.name])
        conn.executemany("INSERT INTO metadata_instance (key, value) VALUES (?, ?)", list(instance.items()))
        # The one database is the instance: the same title and license there.
        conn.executemany(
            "INSERT INTO metadata_databases (database_name, key, value) VALUES (?, ?, ?)",
            [(db.name, k, v) for k, v in instance.items()],
        )
        conn.executemany(
            "INSERT INTO metadata_resources (database_name, resource_name, key, value) VALUES (?, ?, ?, ?)",
            [(db.name, table, k, v) for table, k, v in resources],
        )
        # Datasette shows a column's description on its table page (and in
        # the JSON's ``column_descriptions``) from here.
        conn.execute("DELETE FROM metadata_columns WHERE database_name = ?", [db.name])
        conn.executemany(
            "INSERT INTO metadata_columns (database_name, resource_name, column_name, key, value)"
            " VALUES (?, ?, ?, 'description', ?)",
            [(db.name, table, column, text) for table, column, text in columns],
        )

    await datasette.get_internal_database().execute_write_fn(write)
    _synced[db.name] = pos


def _descriptions(text) -> dict[str, str]:
    """A row's column descriptions; nothing for a value that is not a JSON
    mapping of strings (public.db is the publisher's, but a visitor's page
    must not fail on it)."""
    try:
        described = json.loads(text) if text else {}
    except ValueError:
        return {}
    if not isinstance(described, dict):
        return {}
    return {str(k): v for k, v in described.items() if isinstance(v, str)}

"""Saved queries on a read node: the team's published queries, replicated
in public.db's ``_public_queries``, served as Datasette stored queries at
``/public/NAME`` (``.json``, ``.csv``), with their parameters.

Datasette keeps stored queries in its internal database; a read node copies
the replicated rows there whenever its position moves (as ``metadata.py``
does for metadata), so a query the team saves shows without a restart and
one it removes, or the publisher withdraws, is gone at the TXID that took it
out of public.db. The permission rule lets anyone view exactly those
queries. They run like any visitor's SQL: read-only on the sandboxed
connection, under ``sql_time_limit_ms``, holding one of the custom-SQL slots
(the read-node plugin counts them as custom SQL).
"""

from __future__ import annotations

import json

from datasette import hookimpl
from datasette.permissions import PermissionSQL
from datasette.utils import tilde_decode

from broadsheet.litefs import Pos
from broadsheet.names import PUBLIC_QUERIES

SOURCE = "broadsheet"  # the internal queries table's source column: ours to replace

# database name -> (the position last copied, the query names it had)
_synced: dict[str, tuple[Pos, frozenset[str]]] = {}


async def sync(datasette, db, pos: Pos) -> frozenset[str]:
    """Copy ``_public_queries`` into Datasette's stored queries if ``pos``
    is new (always, off LiteFS, where a position is TXID 0); returns the
    names now served."""
    synced = _synced.get(db.name)
    if synced is not None and pos.txid != 0 and synced[0] == pos:
        return synced[1]
    try:
        rows = (await db.execute(f"SELECT name, sql, title, description FROM {PUBLIC_QUERIES} ORDER BY name")).rows
    except Exception as exc:
        if "no such table" not in str(exc) and synced is not None:
            return synced[1]  # a passing fault: keep what is served, try again next request
        rows = []  # nothing published yet
    wanted = {row["name"]: row for row in rows}
    shown = {
        row["name"]: row
        for row in (
            await datasette.get_internal_database().execute(
                "SELECT name, sql, title, description FROM queries WHERE database_name = ? AND source = ?",
                [db.name, SOURCE],
            )
        ).rows
    }
    for name in set(shown) - set(wanted):
        await datasette.remove_query(db.name, name, source=SOURCE)
    for name, row in wanted.items():
        if name in shown and tuple(shown[name]) == tuple(row):
            continue
        await datasette.add_query(
            db.name, name, row["sql"], title=row["title"], description=row["description"], source=SOURCE
        )
    names = frozenset(wanted)
    _synced[db.name] = (pos, names)
    return names


def served(db) -> frozenset[str]:
    """The saved queries this node served at its last sync."""
    synced = _synced.get(db.name)
    return synced[1] if synced else frozenset()


def named_in(path: str, db) -> str | None:
    """The saved query a ``/db/NAME`` (``.json``, ``.csv``) path names, if
    this node serves it."""
    parts = path.split("/")
    if len(parts) != 3 or not parts[2] or parts[2].startswith("-"):
        return None
    names = served(db)
    for candidate in (tilde_decode(parts[2]), tilde_decode(parts[2].rsplit(".", 1)[0])):
        if candidate in names:
            return candidate
    return None


@hookimpl
def permission_resources_sql(datasette, actor, action):
    """Anyone may view the saved queries public.db lists; every other stored
    query stays denied (``--default-deny``)."""
    if action != "view-query":
        return None
    return [
        PermissionSQL(
            sql="SELECT :bsq_db AS parent, value AS child, 1 AS allow,"
            " 'broadsheet: listed in _public_queries' AS reason FROM json_each(:bsq_names)",
            params={"bsq_db": name, "bsq_names": json.dumps(sorted(names))},
        )
        for name, (_, names) in _synced.items()
    ] or None

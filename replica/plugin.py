"""The read node's Datasette plugin: anonymous visitors see exactly the tables
listed in the replicated ``_public_tables``, and nothing can be written.

The permission rule follows datasette-public's: a ``permission_resources_sql``
hook that allows ``view-table`` for every listed table. It reads the list from
public.db itself (not from Datasette's internal database, which is not
replicated). Datasette runs with ``--default-deny``, so whatever the rule does
not allow is denied: even a table that reached public.db by mistake is not
served.
"""

from __future__ import annotations

import json
import os

from datasette import hookimpl
from datasette.permissions import PermissionSQL
from datasette.utils import tilde_decode

from broadsheet.names import PUBLIC_TABLES

# public.db holds nothing but published data, so read-only SQL against it is
# as public as its tables (under Datasette's sql_time_limit_ms).
DATABASE_ACTIONS = {"view-database", "execute-sql"}

WRITE_ERROR = (
    "This is a broadsheet read node: public.db is a read-only LiteFS replica."
    " Write to the private primary instead{where}."
)


def _public_databases(datasette) -> list:
    return [db for name, db in datasette.databases.items() if name != "_internal" and not db.is_memory]


_listed_cache: dict[str, tuple[str, list[str]]] = {}


async def _listed_tables(db) -> list[str]:
    """The tables listed in the node's replicated ``_public_tables``.

    Cached per LiteFS position: the ``-pos`` file changes with every applied
    transaction, and reading it is cheaper than a query."""
    try:
        with open(f"{db.path}-pos") as fp:
            pos = fp.read()
    except OSError:
        pos = None
    cached = _listed_cache.get(db.name)
    if pos is not None and cached is not None and cached[0] == pos:
        return cached[1]
    try:
        result = await db.execute(f"SELECT table_name FROM {PUBLIC_TABLES}")
        tables = [row[0] for row in result.rows]
    except Exception:
        # Before the first publish cycle reaches this node there is no list:
        # nothing is public.
        tables = []
    if pos is not None:
        _listed_cache[db.name] = (pos, tables)
    return tables


@hookimpl
async def permission_resources_sql(datasette, actor, action):
    if action == "view-instance":
        return PermissionSQL.allow(reason="broadsheet read node")
    rules = []
    for db in _public_databases(datasette):
        if action in DATABASE_ACTIONS:
            rules.append(
                PermissionSQL(
                    sql="SELECT :bs_db AS parent, NULL AS child, 1 AS allow, 'broadsheet: public database' AS reason",
                    params={"bs_db": db.name},
                )
            )
        elif action == "view-table":
            rules.append(
                PermissionSQL(
                    sql="SELECT :bs_db AS parent, value AS child, 1 AS allow,"
                    " 'broadsheet: listed in _public_tables' AS reason FROM json_each(:bs_tables)",
                    params={"bs_db": db.name, "bs_tables": json.dumps(await _listed_tables(db))},
                )
            )
    return rules or None


@hookimpl
def asgi_wrapper(datasette):
    primary = os.environ.get("BROADSHEET_PRIMARY_URL")
    message = WRITE_ERROR.format(where=f" at {primary}" if primary else "")
    body = json.dumps({"ok": False, "errors": [message]}).encode()

    def wrap(app):
        async def read_node(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
                return await _respond(send, 405, body, [(b"allow", b"GET, HEAD, OPTIONS")])
            table = await _unlisted_table(datasette, scope["path"])
            if table is not None:
                message = f"Table {table!r} is not public on this node."
                return await _respond(send, 403, json.dumps({"ok": False, "status": 403, "error": message}).encode())
            await app(scope, receive, send)

        return read_node

    return wrap


async def _unlisted_table(datasette, path: str) -> str | None:
    """The table a /db/table... path names, if that table is not public.

    Every such path gets the same 403, whether or not the table exists in
    public.db, so a visitor cannot probe for private names; Datasette alone
    would answer 404 for a table that was unpublished (and dropped)."""
    parts = path.split("/")
    if len(parts) < 3 or not parts[2] or parts[2].startswith("-"):
        return None
    db = datasette.databases.get(tilde_decode(parts[1]))
    if db is None or db.name == "_internal":
        return None
    # "airports.json" names the table "airports"; Datasette tilde-encodes a
    # dot that belongs to a table name.
    name = tilde_decode(parts[2].rsplit(".", 1)[0])
    if name in await _listed_tables(db) or tilde_decode(parts[2]) in await _listed_tables(db):
        return None
    return name


async def _respond(send, status: int, body: bytes, headers: list | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json; charset=utf-8"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})

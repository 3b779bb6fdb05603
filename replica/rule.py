"""The read node's permission rule, in the style of datasette-public: visitors
may view exactly the tables listed in the replicated ``_public_tables`` (and
the full-text tables that index them), and run read-only SQL against
public.db, which holds nothing but published data. Datasette runs with
``--default-deny``, so whatever the rule does not allow is denied."""

from __future__ import annotations

import contextvars
import json
from dataclasses import dataclass
from functools import cached_property

from datasette.permissions import PermissionSQL
from datasette.utils import tilde_decode

from broadsheet import fts
from broadsheet.litefs import Pos
from broadsheet.names import PUBLIC_TABLES

from . import queries
from .startup import public_databases
from .volatile import volatile_views

# public.db holds nothing but published data, so read-only SQL against it is
# as public as its tables (under Datasette's sql_time_limit_ms).
DATABASE_ACTIONS = {"view-database", "execute-sql"}


@dataclass(frozen=True)
class Listing:
    """What the replicated ``_public_tables`` makes visible: the listed
    tables and views, and the full-text tables that index them (Datasette
    checks ``view-table`` on those to search)."""

    tables: tuple[str, ...] = ()
    full_text: tuple[str, ...] = ()
    # Listed views whose rows are not a function of the data (they call
    # random() or read the clock, or read such a view): never kept.
    volatile: frozenset[str] = frozenset()

    @cached_property
    def visible_json(self) -> str:
        """Every name ``view-table`` is allowed on, as the permission rule's
        parameter: made once per position, not once per permission check."""
        return json.dumps([*self.tables, *self.full_text])


_listing_cache: dict[str, tuple[Pos, Listing]] = {}


# The position a request is served at: read once per request by the ASGI
# wrapper (replica/pipeline.py) and reused by every permission check the
# request makes.
serving_at: contextvars.ContextVar[Pos | None] = contextvars.ContextVar("broadsheet_pos", default=None)


async def listing(db) -> Listing:
    """Cached per LiteFS position: the ``-pos`` file changes with every
    applied transaction, and reading it is cheaper than a query."""
    pos = serving_at.get() or Pos.read(db.path)
    if pos.txid == 0:
        pos = None  # not on LiteFS (or nothing replicated yet): do not cache
    cached = _listing_cache.get(db.name)
    if pos is not None and cached is not None and cached[0] == pos:
        return cached[1]
    try:
        tables = [row[0] for row in (await db.execute(f"SELECT table_name FROM {PUBLIC_TABLES}")).rows]
        virtual = (
            await db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' AND sql LIKE 'CREATE VIRTUAL%'")
        ).rows
        views = [row[0] for row in (await db.execute("SELECT name FROM sqlite_master WHERE type = 'view'")).rows]
        result = Listing(
            tuple(tables),
            tuple(name for name, sql in virtual if fts.content_table(sql) in tables),
            await db.execute_fn(lambda conn: volatile_views(db.path, views)),
        )
    except Exception:
        # Before the first publish cycle reaches this node there is no list:
        # nothing is public.
        result = Listing()
    if pos is not None:
        _listing_cache[db.name] = (pos, result)
    return result


async def resources_sql(datasette, actor, action) -> list[PermissionSQL] | None:
    """The rule, as ``permission_resources_sql`` returns it."""
    if action == "view-instance":
        return PermissionSQL.allow(reason="broadsheet read node")
    rules = []
    for db in public_databases(datasette):
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
                    params={"bs_db": db.name, "bs_tables": (await listing(db)).visible_json},
                )
            )
    return rules or None


async def unlisted_table(datasette, path: str) -> str | None:
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
    listed = (await listing(db)).tables
    if name in listed or tilde_decode(parts[2]) in listed or queries.named_in(path, db) is not None:
        return None
    return name


async def names_volatile_view(db, path: str) -> bool:
    """Whether a /db/name... path names a listed view that is not a function
    of the data (replica/volatile.py)."""
    parts = path.split("/")
    if len(parts) < 3 or not parts[2] or parts[2].startswith("-") or tilde_decode(parts[1]) != db.name:
        return False
    volatile = (await listing(db)).volatile
    return bool(volatile) and bool({tilde_decode(parts[2]), tilde_decode(parts[2].rsplit(".", 1)[0])} & volatile)

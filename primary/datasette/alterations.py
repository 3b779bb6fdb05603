"""Datasette's alter API, followed: a public table whose columns an
alteration moves under its spec is made private in the alteration's own
transaction, audit-logged with why; one it merely rebuilt is published
again in the altering actor's name."""

from __future__ import annotations

import json

from datasette.utils import tilde_decode

from broadsheet.litefs import Pos
from broadsheet.log import log
from broadsheet.names import PUBLIC_TABLES

from .. import publishing, store
from ..settings import settings
from ..store import PublishSpec, SpecError, column_ids
from . import control_plane
from .actors import actor_label
from .body_guard import BODY
from .data_db import data_db_name
from .permissions import may_publish


async def republish_rebuilt(datasette, table: str, actor: dict, after_schema: str | None) -> None:
    """Datasette's alter-table may rebuild a table (create, copy, drop,
    rename), which the publisher cannot tell from a table dropped and created
    again: it makes a public one private. The team member who altered it
    meant to keep it: publish it again in their name, with the spec it had,
    once the publisher has seen the alteration, if they may publish it, the
    spec still fits the new schema (otherwise it stays private) and the
    table is still as the alteration left it. An alteration that moved
    columns under the spec made it private itself, with its reason
    (follow_columns), so the newest audit entry is not the rebuild's and
    nothing is published again."""
    mark = _altered.pop(table, None)
    if mark is None:
        return  # it was not public, or the alteration made it private itself
    private_txid = Pos.read(settings().data_db).txid
    try:
        await publishing.wait_published(private_txid, 10.0)
    except publishing.PublishTimeout:
        return
    if not await may_publish(datasette, actor, table):
        return
    # Read through this Datasette's own connection, and flipped by the
    # control plane: never apsw on data.db in this process (control_plane.flip).
    db = datasette.get_database(data_db_name())
    rows = (
        await db.execute(
            f"SELECT {', '.join(store.AUDIT_COLUMNS)} FROM _public_audit_log WHERE table_name = ? ORDER BY id DESC LIMIT 1",
            (table,),
        )
    ).rows
    newest = [dict(zip(store.AUDIT_COLUMNS, row)) for row in rows]
    if not newest or (newest[0]["operation"], newest[0]["actor"]) != ("unpublish", store.REBUILT_ACTOR):
        return
    if newest[0]["id"] <= mark or not await db.table_exists(table):
        return  # made private by an earlier rebuild, not by this alteration
    now = (await db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))).rows
    if not now or now[0][0] != after_schema:
        log("primary", f"{table!r} stays private: it changed again after the alteration")
        return
    spec = PublishSpec.from_json(newest[0]["spec_before"])
    rebuilder = {"id": f"{actor_label(actor)} (alter-table)"}
    try:
        await control_plane.flip(datasette, rebuilder, table, True, spec)
    except store.PublishError as exc:
        log("primary", f"{table!r} stays private after the alteration: its spec no longer fits ({exc.message})")


def follow_columns(database, request):
    """Datasette's alter API renames columns by rebuilding the table
    (sqlite-utils' transform), which no trigger survives, so the publisher
    cannot follow columns through it (primary/store/column_ids.py). The request's
    own operations can: inside the alteration's transaction, a public
    table whose spec's names would denote other columns afterwards (or
    none), or whose columns had already moved, is made private, audit-logged
    with why. Datasette's connection does the writing (never apsw on
    data.db in this process: see data_db.public_specs)."""
    if database != data_db_name() or request is None or not request.path.endswith("/-/alter"):
        return None
    table = tilde_decode(request.url_vars.get("table", ""))
    renamed, dropped = _alter_operations(request.scope.get(BODY))
    by = f"broadsheet:alter-table by {actor_label(request.actor or {})}"

    def follow(conn):
        row = conn.execute(f"SELECT spec FROM {PUBLIC_TABLES} WHERE table_name = ?", (table,)).fetchone()
        if row is None or table not in store.user_tables(conn):
            yield
            return
        spec = PublishSpec.from_json(row[0])
        before = column_ids.table_columns(conn, "main", table)
        try:
            names = spec.named_columns(table, [c.name for c in before])
        except SpecError:
            names = {*(spec.columns or ()), *spec.exclude_columns, *spec.masked}
        record = column_ids.read(conn, "main", table)
        problem = record.problem(before, names) if record is not None else None
        (mark,) = conn.execute("SELECT ifnull(max(id), 0) FROM _public_audit_log").fetchone()
        result = yield
        if problem is None:
            after = [c.name for c in column_ids.table_columns(conn, "main", table)]
            problem = column_ids.moved_by(names, renamed, dropped, after)
        if problem is not None and store.fail_closed(conn, table, f"spec no longer fits: {problem}", by=by):
            log("primary", f"{table!r} made private by the alteration: {problem}")
        elif problem is None:
            # Public before, its columns where they were: if the publisher
            # now finds it rebuilt, publish it again (republish_rebuilt).
            after_name = result[2] if isinstance(result, tuple) and len(result) == 3 else table
            _altered[after_name] = mark

    return follow


# Tables an alteration left public with their columns in place, with the
# newest audit entry before it: the republish takes only a rebuild after it.
_altered: dict[str, int] = {}


def _alter_operations(body: bytes | None) -> tuple[dict[str, str], set[str]]:
    """The columns an alter API request renames (old -> new) and drops (by
    their old names), as Datasette applies them. Datasette has checked the
    body by the time it writes."""
    renamed: dict[str, str] = {}
    dropped: set[str] = set()
    try:
        operations = json.loads(body or b"{}").get("operations") or []
    except (ValueError, AttributeError):
        return renamed, dropped
    for operation in operations if isinstance(operations, list) else []:
        if not isinstance(operation, dict) or not isinstance(operation.get("args"), dict):
            continue
        args = operation["args"]
        if operation.get("op") == "rename_column":
            renamed[args.get("name")] = args.get("to")
        elif operation.get("op") == "drop_column":
            dropped.add(args.get("name"))
    return renamed, dropped

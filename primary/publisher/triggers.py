"""The change log on data.db: triggers the publisher installs on every
published table, so that every writer (broadsheet or not) logs the rowids
it changes into ``_public_changes``, in its own transaction. A table that
has lost them is not the table that was published (dropped and created
again, or rebuilt): it fails closed.

``maintain`` is one data.db transaction of the publisher's, before a
cycle's snapshot: writes before it are in the snapshot, writes after it in
the log."""

from __future__ import annotations

import json

import apsw

from broadsheet.log import log
from broadsheet.names import PUBLIC_TABLES, literal, quote
from primary import store
from primary.store import TableShape, column_ids
from primary.store.projection import has_rowid

TRIGGER_PREFIX = "_public_trg_"


def trigger_names(table: str) -> dict[str, str]:
    return {op: f"{TRIGGER_PREFIX}{op}_{table}" for op in ("ins", "upd", "del")}


def has_triggers(conn: apsw.Connection, schema: str, table: str) -> bool:
    """Whether ``table`` still carries every change-log trigger of ours."""
    found = {
        n
        for (n,) in conn.execute(
            f"SELECT name FROM {quote(schema)}.sqlite_master WHERE type = 'trigger' AND tbl_name = ?", (table,)
        )
    }
    return set(trigger_names(table).values()) <= found


def publishable(conn: apsw.Connection, schema: str) -> list[str]:
    """The listed tables that exist as tables of ``schema``."""
    listed = [r[0] for r in conn.execute(f"SELECT table_name FROM {schema}.{PUBLIC_TABLES} ORDER BY table_name")]
    tables = set(store.user_tables(conn, schema))
    return [t for t in listed if t in tables]


def unrecorded(conn: apsw.Connection, schema: str) -> list[str]:
    """Listed tables with no record of their columns (primary/store/column_ids.py)."""
    unrecorded = {
        t for (t,) in conn.execute(f"SELECT table_name FROM {schema}.{PUBLIC_TABLES} WHERE column_identity IS NULL")
    }
    return [t for t in publishable(conn, schema) if t in unrecorded]


def maintenance_key(conn: apsw.Connection) -> tuple:
    """What ``maintain`` depends on: data.db's schema, the listed tables,
    and which of them have no record of their columns yet."""
    return (
        conn.execute("PRAGMA schema_version").fetchone()[0],
        tuple(publishable(conn, "main")),
        tuple(unrecorded(conn, "main")),
    )


def maintain(conn: apsw.Connection, public: apsw.Connection, processed: int) -> set[str]:
    """Install change-log triggers on every published table of data.db
    (``conn``) and remove them from tables no longer published, in one
    data.db transaction, after failing closed what is no longer the table
    that was published (``public``: the publisher's public.db connection,
    to know what it holds). Returns the tables given triggers anew: their
    change log has a gap, so they are copied whole in the next cycle."""
    fresh = set()
    with store.immediate(conn):
        _follow_renames(conn)
        _forget_dropped(conn)
        _forget_rebuilt(conn, public)
        _forget_unfit(conn)
        published = publishable(conn, "main")
        for name in column_ids.orphans(conn, set(published)):
            conn.execute(f"DROP TRIGGER {quote(name)}")
        for table in unrecorded(conn, "main"):
            # Listed by a direct write to _public_tables: its columns
            # as the publisher first sees them are the published ones.
            column_ids.record(conn, table)
        wanted = {(name, table) for table in published for name in trigger_names(table).values()}
        existing = set(
            conn.execute(
                "SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger' AND substr(name, 1, ?) = ?",
                (len(TRIGGER_PREFIX), TRIGGER_PREFIX),
            )
        )
        for name, _ in existing - wanted:
            conn.execute(f"DROP TRIGGER {quote(name)}")
        for table in published:
            if any((n, table) not in existing for n in trigger_names(table).values()):
                create_triggers(conn, table)
                fresh.add(table)
        conn.execute(
            "DELETE FROM _public_changes WHERE tbl NOT IN (SELECT value FROM json_each(?)) AND id < ?",
            (json.dumps(published), processed),
        )
    return fresh


def _follow_renames(conn: apsw.Connection) -> None:
    # ALTER TABLE … RENAME TO (Datasette's rename_table too) carries a
    # table's triggers along: one of ours whose name says table X but
    # which now sits on table Y means X was renamed to Y, and the table
    # stays public under its new name.
    prefix = f"{TRIGGER_PREFIX}ins_"
    listed = {t for (t,) in conn.execute(f"SELECT table_name FROM {PUBLIC_TABLES}")}
    existing = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for name, table in conn.execute(
        "SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger' AND substr(name, 1, ?) = ?",
        (len(prefix), prefix),
    ).fetchall():
        old = name[len(prefix):]
        if old != table and old in listed and old not in existing and table not in listed:
            conn.execute(f"UPDATE {PUBLIC_TABLES} SET table_name = ? WHERE table_name = ?", (table, old))
            actor = f"broadsheet:publisher ({old!r} renamed to {table!r})"
            store.audit(conn, "unpublish", old, actor)
            store.audit(conn, "publish", table, actor)
            listed = (listed - {old}) | {table}
            log("publisher", f"{old!r} was renamed to {table!r}; it stays public under its new name")


def _forget_dropped(conn: apsw.Connection) -> None:
    # A published table that is dropped stops being public, so that a new
    # table created under its name starts out private.
    existing = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
    for (table,) in conn.execute(f"SELECT table_name FROM {PUBLIC_TABLES}").fetchall():
        if table not in existing:
            store.fail_closed(conn, table, "table was dropped")
            log("publisher", f"{table!r} no longer exists in data.db; it is no longer public")


def _forget_rebuilt(conn: apsw.Connection, public: apsw.Connection) -> None:
    # Our triggers go with the table they sit on. A published table that
    # public.db already holds but that has lost them is not the table that
    # was published: dropped and created again under its name (in one
    # transaction or between two cycles), or rebuilt by a schema tool.
    # Fail closed: it is private until someone publishes it again
    # (Datasette's alter-table does so for its own rebuilds, see
    # primary/datasette/alterations.py).
    copied = set(store.user_tables(public, "main"))
    for table in publishable(conn, "main"):
        if table in copied and not has_triggers(conn, "main", table):
            store.fail_closed(conn, table, store.REBUILT_REASON)
            log("publisher", f"{table!r} was re-created or rebuilt under its name; it is private until published again")


def _forget_unfit(conn: apsw.Connection) -> None:
    # A spec that no longer fits its table (a listed, excluded or filtered
    # column dropped or renamed, or one of its names now denoting another
    # column) is never applied loosely: the table is private until
    # someone publishes it with a spec that fits.
    tables = store.user_tables(conn)
    for table, spec in store.public_specs(conn).items():
        if spec.whole or table not in tables:
            continue
        problem = store.misfit(conn, "main", table, spec, TableShape.read(conn, table, "main"))
        if problem is not None:
            store.fail_closed(conn, table, f"spec no longer fits: {problem}")
            log("publisher", f"{table!r}: its publish spec no longer fits ({problem}); it is private")


def create_triggers(conn: apsw.Connection, table: str) -> None:
    names = trigger_names(table)
    for name in names.values():
        conn.execute(f"DROP TRIGGER IF EXISTS {quote(name)}")
    t, lit = quote(table), literal(table)
    rowid = has_rowid(conn, "main", table)
    new = "new._rowid_" if rowid else "NULL"
    old = "old._rowid_" if rowid else "NULL"
    log_ = "INSERT INTO _public_changes (tbl, rid) VALUES"
    conn.execute(
        f"CREATE TRIGGER {quote(names['ins'])} AFTER INSERT ON {t} BEGIN {log_} ({lit}, {new}); END;"
        f"CREATE TRIGGER {quote(names['del'])} AFTER DELETE ON {t} BEGIN {log_} ({lit}, {old}); END;"
        f"CREATE TRIGGER {quote(names['upd'])} AFTER UPDATE ON {t} BEGIN {log_} ({lit}, {old});"
        f" INSERT INTO _public_changes (tbl, rid) SELECT {lit}, {new} WHERE {new} IS NOT {old}; END;"
    )

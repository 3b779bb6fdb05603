"""Carrying out a publish cycle's plan in public.db, on the publisher's
connection (public.db as ``main``, data.db attached read-only as ``src``),
inside the cycle's one transaction: tables dropped, copied whole (with
their indexes and full-text companions) or row by row, views made, saved
queries judged again, metadata and the public table list written."""

from __future__ import annotations

import json
import time

import apsw

from broadsheet.log import log
from broadsheet.names import PUBLIC_METADATA, PUBLIC_TABLES, literal, quote
from primary.store import Projection, fts_companions

from . import published_queries, staging
from .plan import Plan, view_sql

FTS_TRIGGER_PREFIX = "_public_fts_"


def apply(conn: apsw.Connection, plan: Plan, budget: staging.Budget | None = None) -> int:
    """Carry out ``plan`` in public.db, inside the cycle's transaction;
    returns the rows copied or changed. ``budget``: what staging work
    (staging.py) may change in this transaction."""
    for view in plan.drop_views:
        conn.execute(f"DROP VIEW IF EXISTS main.{quote(view)}")
    for table in plan.drop:
        log("publisher", f"unpublishing {table!r}")
        drop(conn, table)
    rows = 0
    if plan.erase or plan.staging or plan.stage_start or plan.finish:
        rows += _stage(conn, plan, budget or staging.Budget(4 * 1024 * 1024, _page_size(conn)))
    for table in plan.copy:
        started = time.perf_counter()
        copied = isolated(conn, plan, table, lambda t=table: drop(conn, t) or copy_table(conn, plan.projections[t]))
        if copied is not None:
            rows += copied
            plan.rows_by_table[table] = copied
            log("publisher", f"copied {table!r}: {copied} rows in {(time.perf_counter() - started) * 1000:.0f} ms")
    for table, rids in plan.rows.items():
        if table in plan.failed:
            continue
        try:
            conn.execute("SAVEPOINT rows")
            changed = copy_rows(conn, plan.projections[table], rids)
            conn.execute("RELEASE rows")
            rows += changed
            plan.rows_by_table[table] = changed
        except apsw.ConstraintError:
            # A REPLACE on data.db removed a row through a UNIQUE conflict
            # without firing a delete trigger: re-copy the table whole.
            conn.execute("ROLLBACK TO rows")
            conn.execute("RELEASE rows")
            log("publisher", f"constraint conflict applying rows of {table!r}; copying it whole")
            copied = isolated(conn, plan, table, lambda t=table: drop(conn, t) or copy_table(conn, plan.projections[t]))
            rows += copied or 0
        except apsw.Error:
            conn.execute("ROLLBACK TO rows")
            conn.execute("RELEASE rows")
            isolated(conn, plan, table, lambda t=table: copy_rows(conn, plan.projections[t], rids))
    for view in plan.create_views:
        try:
            conn.execute("SAVEPOINT view")
            conn.execute(view_sql(conn, "src", view))
            conn.execute("RELEASE view")
        except apsw.Error as exc:
            # It reads a table this cycle could not copy.
            conn.execute("ROLLBACK TO view")
            conn.execute("RELEASE view")
            log("publisher", f"view {view!r} left out this cycle: {exc}")
            plan.views.remove(view)
            plan.public_tables_changed = True
    # Saved queries are judged against public.db as this cycle leaves it,
    # whenever its schema or the queries change: one that no longer
    # compiles leaves in the same transaction as what it read.
    schema_changes = plan.drop or plan.copy or plan.drop_views or plan.create_views or plan.public_tables_changed
    if plan.queries_due or schema_changes:
        plan.queries_changed, plan.queries_left_out, after = published_queries.publish_into(
            conn, plan.published + plan.views, plan.queries_live, plan.queries_public
        )
        plan.query_changes = published_queries.changes(
            plan.queries_changed, plan.queries_public, after, plan.queries_left_out, plan.query_actors
        )
    if plan.metadata is not None:
        conn.execute(f"DELETE FROM main.{PUBLIC_METADATA}")
        for table, fields in plan.metadata.items():
            keys = list(fields)
            conn.execute(
                f"INSERT INTO main.{PUBLIC_METADATA} (table_name, {', '.join(keys)})"
                f" VALUES (?, {', '.join('?' for _ in keys)})",
                (table, *(json.dumps(v) if isinstance(v, dict) else v for v in fields.values())),
            )
    if plan.public_tables_changed:
        conn.execute(f"DELETE FROM main.{PUBLIC_TABLES}")
        conn.execute(
            f"INSERT INTO main.{PUBLIC_TABLES} (table_name) SELECT value FROM json_each(?)",
            (json.dumps(plan.published + plan.views),),
        )
    return rows


def _page_size(conn: apsw.Connection) -> int:
    return conn.execute("PRAGMA main.page_size").fetchone()[0]


def _stage(conn: apsw.Connection, plan: Plan, budget: staging.Budget) -> int:
    """This cycle's share of large first copies (staging.py), within
    ``budget``: staged tables whose copy is whole are made public (their
    marker goes; the listing below lists them); the team's changes reach the
    rows already staged; then erasing, then copying, batch by batch, as far
    as the budget goes. Returns the rows copied."""
    for table in plan.finish:
        staging.forget(conn, table)
        # What it holds now (rows deleted while it was staged are gone).
        plan.finish[table].copied = conn.execute(f"SELECT count(*) FROM main.{quote(table)}").fetchone()[0]
        log("publisher", f"{table!r} staged whole ({plan.finish[table].copied} rows): made public")
    for table, rids in plan.stage_rows.items():
        high = plan.staging[table].high
        if high is not None and (mine := [r for r in rids if r <= high]):
            copy_rows(conn, plan.projections[table], mine)
    moved, rows = 0, 0
    for table, state in plan.erase.items():
        left = budget.remaining(moved)
        if left is None:
            plan.staging_more = True
            continue
        finished, spent = staging.erase_batch(conn, state, left, lambda t: drop(conn, t))
        moved += spent
        plan.staging_more = True  # erasing goes on, or the table (if still published) starts again
        plan.staging_progress[table] = {"state": "erased" if finished else staging.ERASING, "copied": 0, "total": state.total}
        log("publisher", f"staged {table!r} {'erased' if finished else 'being erased'}")

    def batch(state: staging.Staged) -> None:
        nonlocal moved, rows
        left = budget.remaining(moved)
        if left is None:
            return
        before = state.copied
        moved += staging.copy_batch(conn, plan.projections[state.table], state, left)
        rows += state.copied - before

    for table, state in plan.staging.items():
        isolated(conn, plan, table, lambda s=state: batch(s))
    for table in plan.stage_start:
        if budget.remaining(moved) is None:
            plan.staging_more = True  # it starts next cycle
            continue

        def start(t=table) -> None:
            state = start_staging(conn, plan.projections[t])
            plan.staging[t] = state
            log("publisher", f"staging {t!r}: {state.total} rows, in batches of about {budget.pages} pages")
            batch(state)

        isolated(conn, plan, table, start)
    for table, state in plan.staging.items():
        if table not in plan.failed:
            plan.staging_more = True  # more batches, or made public next cycle
            plan.staging_progress[table] = state.progress()
    plan.staging_moved = moved
    return rows


def start_staging(conn: apsw.Connection, projection: Projection) -> staging.Staged:
    """Create a staged table as its projection says, indexes and full-text
    companions (kept in step by triggers as rows arrive) first, and record it."""
    conn.execute(projection.create_sql)
    for _, index_sql in projection.indexes:
        conn.execute(index_sql)
    for name, fts_sql in projection.full_text:
        conn.execute(fts_sql)
        _create_fts_triggers(conn, projection.table, name)
    state = staging.Staged(projection.table, staging.COPYING, None, 0, staging.count(conn, projection))
    staging.record(conn, state)
    return state


def isolated(conn: apsw.Connection, plan: Plan, table: str, work):
    """Run one table's work in a savepoint. Should SQLite refuse it (a
    collation or function data.db has and this process lacks, say), the
    table is left out of public.db, nothing of it stays there, it is made
    private after the cycle (plan.failed), and every other table's
    changes go on: one table can never wedge publishing."""
    conn.execute("SAVEPOINT one_table")
    try:
        result = work()
        conn.execute("RELEASE one_table")
        return result
    except apsw.Error as exc:
        conn.execute("ROLLBACK TO one_table")
        conn.execute("RELEASE one_table")
        drop(conn, table)
        plan.failed[table] = str(exc)
        if table in plan.published:
            plan.published.remove(table)
        plan.public_tables_changed = True
        log("publisher", f"{table!r} could not be copied ({exc}); it is left out and made private")
        return None


def drop(conn: apsw.Connection, table: str) -> None:
    for name, _ in fts_companions(conn, "main", table):
        conn.execute(f"DROP TABLE IF EXISTS main.{quote(name)}")
    conn.execute(f"DROP TABLE IF EXISTS main.{quote(table)}")


def copy_table(conn: apsw.Connection, projection: Projection) -> int:
    """Create the table in public.db as its projection says and copy its
    published rows, its indexes and full-text companions."""
    table = projection.table
    conn.execute(projection.create_sql)  # schema-unqualified: it lands in main
    if _whole(conn, projection):
        count = _transfer(conn, projection)
    else:
        count = _insert_published(conn, projection)
        for _, index_sql in projection.indexes:  # built once, after the rows
            conn.execute(index_sql)
    for name, fts_sql in projection.full_text:
        conn.execute(fts_sql)
        conn.execute(f"INSERT INTO main.{quote(name)} ({quote(name)}) VALUES ('rebuild')")
        _create_fts_triggers(conn, table, name)
    return count


def _whole(conn: apsw.Connection, projection: Projection) -> bool:
    """Whether public.db's copy has exactly data.db's columns, in order, none
    generated, and every row is published."""
    if projection.filter_sql or projection.spec.masks:
        return False
    columns = {
        schema: tuple(row[1] for row in conn.execute(f"PRAGMA {schema}.table_xinfo({literal(projection.table)})"))
        for schema in ("main", "src")
    }
    return columns["main"] == columns["src"] == tuple(projection.columns)


def _transfer(conn: apsw.Connection, projection: Projection) -> int:
    """Copy a table published whole the way SQLite copies a table into an
    identical empty one: ``INSERT INTO t SELECT * FROM src.t`` lets its
    transfer optimization move records and index entries as they are,
    without decoding rows or sorting for each index (flights: 0.15 s, not
    0.4 s). So the indexes are made first."""
    t = quote(projection.table)
    for _, index_sql in projection.indexes:
        conn.execute(index_sql)
    conn.execute(f"INSERT INTO main.{t} SELECT * FROM src.{t}")
    count = conn.changes()
    if projection.has_rowid and not _same_rowids(conn, t):
        # SQLite copied row by row (a condition of the transfer did not hold)
        # and numbered the rows afresh; row-level applies need data.db's
        # rowids, so copy again naming them.
        conn.execute(f"DELETE FROM main.{t}")
        _insert_published(conn, projection)
    return count


def _same_rowids(conn: apsw.Connection, t: str) -> bool:
    """Whether a copy kept data.db's rowids. Copied row by row into an empty
    table, N rows are numbered 1..N in rowid order, so the same lowest and
    highest rowid (N rows in both) means the same rowids either way: two
    lookups, no scan."""
    bounds = "SELECT (SELECT min(_rowid_) FROM {0}.{1}), (SELECT max(_rowid_) FROM {0}.{1})"
    return conn.execute(bounds.format("main", t)).fetchone() == conn.execute(bounds.format("src", t)).fetchone()


def _insert_published(conn: apsw.Connection, projection: Projection) -> int:
    """Insert the published columns (masked ones as their masks compute
    them, here on the primary) of the published rows, with data.db's rowids."""
    cols = ", ".join(quote(c) for c in projection.columns)
    rowid = "_rowid_, " if projection.has_rowid else ""
    t = quote(projection.table)
    where = f" WHERE 1{projection.filter_sql}" if projection.filter_sql else ""
    conn.execute(f"INSERT INTO main.{t} ({rowid}{cols}) SELECT {rowid}{projection.select_sql} FROM src.{t}{where}")
    return conn.changes()


def _create_fts_triggers(conn: apsw.Connection, table: str, fts_table: str) -> None:
    """Keep public.db's full-text index in step with row-level applies."""
    # The indexed columns only: not the hidden ones (the table's own name, rank).
    cols = [name for _, name, _, _, _, _, hidden in conn.execute(f"PRAGMA main.table_xinfo({literal(fts_table)})") if hidden == 0]
    t, f = quote(table), quote(fts_table)
    names = ", ".join(quote(c) for c in cols)
    new = ", ".join(f"new.{quote(c)}" for c in cols)
    old = ", ".join(f"old.{quote(c)}" for c in cols)
    pre = FTS_TRIGGER_PREFIX + fts_table
    conn.execute(
        f"CREATE TRIGGER main.{quote(pre + '_ai')} AFTER INSERT ON {t} BEGIN"
        f" INSERT INTO {f} (rowid, {names}) VALUES (new._rowid_, {new}); END;"
        f"CREATE TRIGGER main.{quote(pre + '_ad')} AFTER DELETE ON {t} BEGIN"
        f" INSERT INTO {f} ({f}, rowid, {names}) VALUES ('delete', old._rowid_, {old}); END;"
    )


def copy_rows(conn: apsw.Connection, projection: Projection, rids: list[int]) -> int:
    """Make the given rows of public.db's table equal to data.db's: delete
    them, then insert those that still exist and pass the row filter (their
    masks computed again, for these rows only)."""
    t = quote(projection.table)
    ids = json.dumps(sorted(set(rids)))
    cols = ", ".join(quote(c) for c in projection.columns)
    conn.execute(f"DELETE FROM main.{t} WHERE _rowid_ IN (SELECT value FROM json_each(?))", (ids,))
    conn.execute(
        f"INSERT INTO main.{t} (_rowid_, {cols}) SELECT _rowid_, {projection.select_sql} FROM src.{t}"
        f" WHERE _rowid_ IN (SELECT value FROM json_each(?)){projection.filter_sql}",
        (ids,),
    )
    return len(set(rids))

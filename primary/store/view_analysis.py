"""What a view reads, as SQLite resolves it: which tables and which of
their columns, through any views it uses; and whether it reads anything
that is not public."""

from __future__ import annotations

import apsw

from broadsheet.names import quote

from .catalogue import views


class BrokenView(Exception):
    """A view that no longer compiles: a table it reads was dropped, or a
    column it reads was dropped or renamed away."""

    def __init__(self, view: str, reason: str):
        super().__init__(f"view {view!r} no longer compiles: {reason}")
        self.view, self.reason = view, reason


def view_columns(conn: apsw.Connection, schema: str, view: str) -> dict[str, set[str]]:
    """The tables a view reads, through any views it uses, with the columns
    it reads of each, as SQLite itself resolves them: an authorizer records
    every column read while the query is prepared (EXPLAIN: prepared, never
    run)."""
    reads: dict[str, set[str]] = {}

    def authorizer(op, p1, p2, dbname, source):
        if op == apsw.SQLITE_READ and p1 and not p1.startswith("sqlite_"):
            reads.setdefault(p1, set()).add(p2 or "")
        return apsw.SQLITE_OK

    previous = conn.authorizer
    conn.authorizer = authorizer
    try:
        conn.execute(f"EXPLAIN SELECT * FROM {quote(schema)}.{quote(view)}").fetchall()
    except apsw.SQLError as exc:
        raise BrokenView(view, str(exc).removeprefix("SQLError: ").replace(f" {schema}.", " ")) from None
    finally:
        conn.authorizer = previous
    # Reads are reported for the views' own columns too: keep the tables.
    for name in views(conn, schema):
        reads.pop(name, None)
    return reads


def view_reads(conn: apsw.Connection, schema: str, view: str) -> set[str]:
    """The tables a view reads, through any views it uses."""
    return set(view_columns(conn, schema, view))


ROWID_NAMES = {"", "rowid", "_rowid_", "oid"}


def private_reads(reads: dict[str, set[str]], public: dict[str, list[str]]) -> list[str]:
    """What of ``reads`` (table -> columns) is not in ``public`` (table ->
    published columns): the view cannot be published while it reads any."""
    missing = []
    for table, columns in sorted(reads.items()):
        if table not in public:
            missing.append(repr(table))
            continue
        shown = set(public[table]) | ROWID_NAMES
        missing += [f"{table}.{c}" for c in sorted(columns) if c.lower() not in shown and c not in shown]
    return missing

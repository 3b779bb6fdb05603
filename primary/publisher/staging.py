"""A large first copy over several transactions of bounded size.

LiteFS v0.5.14 holds a replica's database write lock, every WAL read lock
included, while it *receives* an LTX file, not only while it applies it.
A visitor's query on that read node waits for a read lock, and SQLite gives
up after about ten seconds of retries with "locking protocol" (a 500). So an
LTX that takes longer than that to cross the link to a read node breaks
that node's reads (measured: 11.9 MB applies cleanly over 10 Mbit/s with
130 ms each way, 13 MB does not; docs/internals.md, "Known limits"). The
fix (superfly/litefs PR #450) is in no release.

So the first copy of a table that is larger than ``BROADSHEET_PUBLISH_BATCH_BYTES``
is *staged*: it is built in public.db under its own name, but not listed in
``_public_tables`` (so no read node serves or lists it), one batch of rows
per publish cycle, each cycle one transaction that changes about that many
bytes of public.db; and it is made public by one last small transaction
that lists it. Changes the team makes to the table meanwhile reach the rows
already staged through the change log, as for any published table, so what
is listed is the projection at the listing cycle's snapshot.

``_public_staging`` in public.db says which tables are staged and how far
(read nodes never serve a table it names). A table unpublished, or whose
spec changes, during its staging is erased (secure_delete, in bounded
batches too); so is a staging that a restarted publisher finds (it does not
know the spec the rows were staged under), which then starts again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import apsw

from broadsheet.names import quote
from primary.store import Projection

STAGING_TABLE = "_public_staging"
SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS main.{STAGING_TABLE} (table_name TEXT PRIMARY KEY,"
    " state TEXT NOT NULL CHECK (state IN ('copying', 'done', 'erasing')),"
    " high INTEGER, copied INTEGER NOT NULL DEFAULT 0, total INTEGER NOT NULL DEFAULT 0)"
)
COPYING, DONE, ERASING = "copying", "done", "erasing"
# Rows in the first chunk of a batch: small, so a table of huge rows cannot
# overshoot the budget before the first measurement.
FIRST_CHUNK = 16


@dataclass
class Staged:
    """One staged table, as ``_public_staging`` records it."""

    table: str
    state: str
    high: int | None = None  # the highest data.db rowid copied so far
    copied: int = 0  # rows in public.db's staged copy
    total: int = 0  # rows to copy, counted when staging began

    def progress(self) -> dict:
        return {"state": self.state, "copied": self.copied, "total": self.total}


def read(conn: apsw.Connection) -> dict[str, Staged]:
    """public.db's staged tables (none in a public.db from before staging)."""
    if not conn.execute("SELECT 1 FROM main.sqlite_master WHERE name = ?", (STAGING_TABLE,)).fetchall():
        return {}
    return {
        row[0]: Staged(*row)
        for row in conn.execute(f"SELECT table_name, state, high, copied, total FROM main.{STAGING_TABLE} ORDER BY table_name")
    }


def record(conn: apsw.Connection, staged: Staged) -> None:
    conn.execute(SCHEMA)
    conn.execute(
        f"INSERT OR REPLACE INTO main.{STAGING_TABLE} (table_name, state, high, copied, total) VALUES (?, ?, ?, ?, ?)",
        (staged.table, staged.state, staged.high, staged.copied, staged.total),
    )


def forget(conn: apsw.Connection, table: str) -> None:
    conn.execute(f"DELETE FROM main.{STAGING_TABLE} WHERE table_name = ?", (table,))


def used_pages(conn: apsw.Connection) -> int:
    (pages,) = conn.execute("PRAGMA main.page_count").fetchone()
    (free,) = conn.execute("PRAGMA main.freelist_count").fetchone()
    return pages - free


def estimated_bytes(conn: apsw.Connection, projection: Projection) -> int:
    """What a first copy of ``projection`` adds to public.db, roughly: the
    rowid span times the published size of a sample of rows (two lookups and
    a few rows read: no scan). Only chooses between one transaction and
    staging; staging itself measures what each batch changes."""
    t = quote(projection.table)
    sizes = " + ".join(f"coalesce(length(CAST({quote(c)} AS BLOB)), 0) + 2" for c in projection.columns) or "0"
    try:
        low, high = conn.execute(f"SELECT min(_rowid_), max(_rowid_) FROM src.{t}").fetchone()
        (sample,) = conn.execute(f"SELECT avg({sizes}) FROM (SELECT * FROM src.{t} LIMIT 64)").fetchone()
    except apsw.Error:
        return 0  # SQLite cannot read it here (a collation it lacks): the copy says so
    if low is None:
        return 0
    per_row = (sample or 0) + 8
    # Each index holds its columns again, roughly.
    return int((high - low + 1) * per_row * (1 + 0.5 * len(projection.indexes) + len(projection.full_text)))


def wants_staging(conn: apsw.Connection, projection: Projection, batch_bytes: int) -> bool:
    """Whether a first copy of ``projection`` is staged: a rowid table
    (batches follow rowids) likely to change more than a batch's bytes."""
    return batch_bytes > 0 and projection.has_rowid and estimated_bytes(conn, projection) > batch_bytes


class Budget:
    """What one cycle may change in public.db for staging, in pages. The
    pages a transaction adds or frees are measured as it goes (page_count
    less freelist_count); the pages its commit writes are somewhat more
    (b-tree parents, index leaves touched in place), so ``ratio`` (written
    over measured, from the last staging commit) scales the measure."""

    def __init__(self, batch_bytes: int, page_size: int):
        self.pages = max(1, batch_bytes // page_size)
        self.ratio = 1.0

    def remaining(self, moved: int) -> "Budget | None":
        """What is left of this budget once ``moved`` pages are spent (None: nothing)."""
        left = int(self.pages - moved * self.ratio)
        if left <= 0:
            return None
        rest = Budget(0, 1)
        rest.pages, rest.ratio = left, self.ratio
        return rest

    def learn(self, measured: int, written: int) -> None:
        """After a staging commit: it moved ``measured`` pages, wrote ``written``."""
        if measured > 0 and written > 0:
            self.ratio = max(1.0, min(16.0, written / measured))


def bounded(conn: apsw.Connection, budget: Budget, chunk: Callable[[int], tuple[bool, int]]) -> tuple[bool, int, int]:
    """Run ``chunk(n)`` (which does up to n rows' work and returns whether
    it is finished and the rows it did) until it is finished or the
    transaction has moved the budget's pages. Returns (finished, rows, pages
    moved). Each chunk is sized from the pages per row so far, so one chunk
    overshoots the budget by little."""
    start = used_pages(conn)
    n, rows = FIRST_CHUNK, 0
    while True:
        finished, done = chunk(n)
        rows += done
        moved = abs(used_pages(conn) - start)
        if finished:
            return True, rows, moved
        left = budget.pages - moved * budget.ratio
        if left <= 0:
            return False, rows, moved
        per_row = moved * budget.ratio / rows if rows else 0
        n = min(n * 4, max(1, int(left / per_row))) if per_row else n * 4


def count(conn: apsw.Connection, projection: Projection) -> int:
    """The rows a staging copies (its progress's total): one count, once."""
    where = f" WHERE 1{projection.filter_sql}" if projection.filter_sql else ""
    return conn.execute(f"SELECT count(*) FROM src.{quote(projection.table)}{where}").fetchone()[0]


def copy_batch(conn: apsw.Connection, projection: Projection, staged: Staged, budget: Budget) -> int:
    """Copy the next batch of published rows (their published columns, masks
    computed here) into the staged table, by data.db rowid; returns the
    pages it moved. ``staged`` is updated and recorded."""
    t = quote(projection.table)
    cols = ", ".join(quote(c) for c in projection.columns)
    (last,) = conn.execute(f"SELECT max(_rowid_) FROM src.{t}").fetchone()

    def chunk(n: int) -> tuple[bool, int]:
        after = "_rowid_ > ?" if staged.high is not None else "1"
        args = (staged.high,) if staged.high is not None else ()
        row = conn.execute(
            f"SELECT _rowid_ FROM src.{t} WHERE {after} ORDER BY _rowid_ LIMIT 1 OFFSET ?", (*args, n - 1)
        ).fetchone()
        upto = row[0] if row is not None else last
        if upto is None or (staged.high is not None and upto <= staged.high):
            return True, 0
        conn.execute(
            f"INSERT INTO main.{t} (_rowid_, {cols}) SELECT _rowid_, {projection.select_sql} FROM src.{t}"
            f" WHERE {after} AND _rowid_ <= ?{projection.filter_sql}",
            (*args, upto),
        )
        copied = conn.changes()
        staged.high, staged.copied = upto, staged.copied + copied
        return row is None or upto >= last, copied

    finished, _, moved = bounded(conn, budget, chunk)
    if finished:
        staged.state = DONE
    record(conn, staged)
    return moved


def erase_batch(conn: apsw.Connection, staged: Staged, budget: Budget, drop: Callable[[str], None]) -> tuple[bool, int]:
    """Delete the next batch of a staged table's rows (secure_delete zeroes
    what they freed); once it is empty, drop it (``drop``: with its
    full-text companions) and forget it. Returns (finished, pages moved)."""
    t = quote(staged.table)
    exists = conn.execute("SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = ?", (staged.table,)).fetchall()
    moved = 0
    if exists:  # only rowid tables are staged

        def chunk(n: int) -> tuple[bool, int]:
            conn.execute(f"DELETE FROM main.{t} WHERE _rowid_ IN (SELECT _rowid_ FROM main.{t} ORDER BY _rowid_ LIMIT ?)", (n,))
            done = conn.changes()
            return done < n, done

        finished, _, moved = bounded(conn, budget, chunk)
        if not finished:
            staged.state, staged.high = ERASING, None
            record(conn, staged)
            return False, moved
    drop(staged.table)
    forget(conn, staged.table)
    return True, moved

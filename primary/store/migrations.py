"""data.db's publish state: its schema, and the migrations that bring a
data.db made by an older broadsheet (or by nobody) up to it.

The publish state lives in data.db so that data and publish state are one
transactional snapshot (the datasette-public plugin's first design):

- ``_public_tables``: one row per public table (its spec, and its columns
  as they were when it was published: column_ids.py); replicated to read
  nodes (the names only).
- ``_public_audit_log``: who flipped what, when, and the public TXID it
  reached (audit_log.py).
- ``_public_changes``: rows changed in published tables, written by triggers
  the publisher installs, so every writer is captured, including ones that
  bypass broadsheet. The publisher deletes entries once they are in
  public.db.
- ``_public_metadata``: titles, descriptions, licenses (public_metadata.py).
- ``_public_queries``: saved queries (queries.py), with
  ``_public_queries_log``, their audit log; public.db holds those that
  compile against the public copy.
- ``_public_adoptions``: SQLite files adopted into data.db (adoption.py),
  with the metadata document each came with, kept whole.
- ``_public_schedule``: publishes and unpublishes set for a moment (an
  embargo: schedule.py), with who set or cancelled each and when it was
  applied; never replicated.
- ``_public_cycles``: no longer written (cycle records cost no data.db
  commit now: primary/publisher/cycle.py); kept so that an older data.db
  still opens.
"""

from __future__ import annotations

import apsw

from broadsheet.names import PUBLIC_METADATA, PUBLIC_QUERIES, PUBLIC_TABLES, quote
from broadsheet.sqlite import immediate

from . import column_ids
from .catalogue import user_tables

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {PUBLIC_TABLES} (
    table_name TEXT PRIMARY KEY,
    spec TEXT,  -- a PublishSpec as JSON (spec.py); NULL: the whole table
    column_identity TEXT  -- its columns when published (column_ids.py); NULL for a view
);
CREATE TABLE IF NOT EXISTS _public_audit_log (
    id INTEGER PRIMARY KEY,
    timestamp TEXT NOT NULL,
    actor TEXT,
    operation TEXT NOT NULL CHECK (operation IN ('publish', 'unpublish')),
    table_name TEXT NOT NULL,
    private_txid INTEGER,
    public_txid INTEGER,
    spec_before TEXT,
    spec_after TEXT,
    reason TEXT  -- why broadsheet itself made a table private (NULL: a person did)
);
CREATE TABLE IF NOT EXISTS _public_changes (
    id INTEGER PRIMARY KEY,
    tbl TEXT NOT NULL,
    rid INTEGER
);
CREATE TABLE IF NOT EXISTS {PUBLIC_METADATA} (
    table_name TEXT PRIMARY KEY,  -- '' for the instance
    title TEXT, description TEXT, license TEXT, license_url TEXT, source TEXT, source_url TEXT,
    columns TEXT  -- column name -> description, as JSON (Datasette's per-column metadata)
);
CREATE TABLE IF NOT EXISTS {PUBLIC_QUERIES} (
    name TEXT PRIMARY KEY,
    sql TEXT NOT NULL,
    title TEXT,
    description TEXT,
    saved_by TEXT,
    saved_at TEXT,
    withdrawn TEXT  -- why the publisher withdrew it; NULL: published (or about to be)
);
CREATE TABLE IF NOT EXISTS _public_queries_log (
    id INTEGER PRIMARY KEY,
    timestamp TEXT NOT NULL,
    actor TEXT,
    operation TEXT NOT NULL CHECK (operation IN ('save', 'remove', 'withdraw')),
    name TEXT NOT NULL,
    sql_before TEXT,
    sql_after TEXT,
    reason TEXT,
    private_txid INTEGER,
    public_txid INTEGER
);
CREATE TABLE IF NOT EXISTS _public_adoptions (
    id INTEGER PRIMARY KEY,
    timestamp TEXT NOT NULL,
    actor TEXT,
    files TEXT NOT NULL,  -- JSON: [{"name", "bytes"}] of the SQLite files adopted
    tables TEXT NOT NULL,  -- JSON: the tables and views it created
    replaced TEXT NOT NULL,  -- JSON: those that replaced tables or views of the same name
    metadata TEXT,  -- the metadata document as given, kept whole (JSON)
    ignored TEXT  -- JSON: the document's keys broadsheet does not use
);
CREATE TABLE IF NOT EXISTS _public_schedule (
    id INTEGER PRIMARY KEY,
    table_name TEXT NOT NULL,
    operation TEXT NOT NULL CHECK (operation IN ('publish', 'unpublish')),
    spec TEXT,  -- the PublishSpec to publish with (NULL: the whole table)
    at TEXT NOT NULL,  -- the moment, UTC ISO 8601 with milliseconds and Z (sorts as it compares)
    set_by TEXT,
    set_at TEXT NOT NULL,
    cancelled_at TEXT,
    cancelled_by TEXT,
    applied_at TEXT,  -- set in the same transaction as the flip: applied exactly once
    outcome TEXT
);
CREATE TABLE IF NOT EXISTS _public_cycles (
    id INTEGER PRIMARY KEY,
    started_at TEXT NOT NULL,
    duration_ms REAL NOT NULL,
    private_txid INTEGER NOT NULL,
    public_txid INTEGER NOT NULL,
    tables_copied INTEGER NOT NULL,
    tables_dropped INTEGER NOT NULL,
    rows_changed INTEGER NOT NULL
);
"""

# After the migrations below (it needs the spec column).
TRIGGERS = f"""
-- A new spec for a public table re-copies it whole, in the same snapshot as
-- the change (NULL rowid: the whole table), however the publisher restarts.
CREATE TRIGGER IF NOT EXISTS _public_spec_changed AFTER UPDATE OF spec ON {PUBLIC_TABLES}
WHEN new.spec IS NOT old.spec
BEGIN
    INSERT INTO _public_changes (tbl, rid) VALUES (new.table_name, NULL);
END;
-- Listed anew (unpublished then published with another spec before a cycle
-- ran, or a REPLACE): copied whole too.
CREATE TRIGGER IF NOT EXISTS _public_listed AFTER INSERT ON {PUBLIC_TABLES}
BEGIN
    INSERT INTO _public_changes (tbl, rid) VALUES (new.table_name, NULL);
END;
"""

# Columns added since the first release, for a data.db made before them.
MIGRATIONS = (
    (PUBLIC_TABLES, "spec", "TEXT"),
    ("_public_audit_log", "spec_before", "TEXT"),
    ("_public_audit_log", "spec_after", "TEXT"),
    (PUBLIC_TABLES, "column_identity", "TEXT"),
    ("_public_audit_log", "reason", "TEXT"),
    (PUBLIC_METADATA, "columns", "TEXT"),
)


def migrate(conn: apsw.Connection) -> None:
    """Bring data.db's publish state up to date, inside the caller's write
    transaction."""
    conn.execute(SCHEMA)
    for table, column, type_ in MIGRATIONS:
        if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({quote(table)})")}:
            conn.execute(f"ALTER TABLE {quote(table)} ADD COLUMN {quote(column)} {type_}")
            if column == "column_identity":
                # Tables public before broadsheet followed columns: their
                # columns as they are now are the ones public now.
                listed = [n for (n,) in conn.execute(f"SELECT table_name FROM {PUBLIC_TABLES} ORDER BY table_name")]
                for name in listed:
                    if name in user_tables(conn):
                        column_ids.record(conn, name)
    conn.execute(TRIGGERS)


# A new data.db's page size. Every page a transaction writes is a WAL frame
# written through FUSE and read back by LiteFS into an LTX file: with 16 KiB
# pages a large write (adopting a 210 MB file) commits in 7 s instead of 20–30 s
# with SQLite's 4 KiB (bench figures in docs/getting-started.md), as
# public.db's 16 KiB pages did for a first publish. An existing data.db
# keeps the page size it has (changing it takes a VACUUM outside WAL).
DATA_DB_PAGE_SIZE = 16384


def ensure_schema(conn: apsw.Connection) -> None:
    if not conn.execute("SELECT 1 FROM main.sqlite_master LIMIT 1").fetchone():
        conn.execute(f"PRAGMA page_size={DATA_DB_PAGE_SIZE}")  # honoured while the file is empty
    conn.execute("PRAGMA journal_mode=WAL")
    with immediate(conn):
        migrate(conn)

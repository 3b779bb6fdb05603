"""Publish state, kept in data.db so that data and publish state are one
transactional snapshot (the datasette-public plugin's first design).

- ``_public_tables``: one row per public table (its spec, and its columns
  as they were when it was published: primary/identity.py); replicated to
  read nodes (the names only).
- ``_public_audit_log``: who flipped what, when, and the public TXID it reached.
- ``_public_changes``: rows changed in published tables, written by triggers the
  publisher installs, so every writer is captured, including ones that bypass
  broadsheet. The publisher deletes entries once they are in public.db.
- ``_public_queries``: saved queries (primary/queries.py), with
  ``_public_queries_log``, their audit log; public.db holds those that
  compile against the public copy.
- ``_public_cycles``: no longer written (cycle records cost no data.db
  commit now: see CycleLog); kept so that an older data.db still opens.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from dataclasses import dataclass

import apsw

from broadsheet.names import PUBLIC_METADATA, PUBLIC_QUERIES, PUBLIC_TABLES, is_internal, quote

from . import identity
from .projection import TableShape
from .spec import PublishSpec, SpecError

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {PUBLIC_TABLES} (
    table_name TEXT PRIMARY KEY,
    spec TEXT,  -- a PublishSpec as JSON (primary/spec.py); NULL: the whole table
    column_identity TEXT  -- its columns when published (primary/identity.py); NULL for a view
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
    title TEXT, description TEXT, license TEXT, license_url TEXT, source TEXT, source_url TEXT
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


# The audit actor of a table that the publisher made private because its
# identity changed (dropped and re-created, or rebuilt, under its name).
REBUILT_REASON = "table re-created or rebuilt; publish it again"
REBUILT_ACTOR = f"broadsheet:publisher ({REBUILT_REASON})"


class PublishError(Exception):
    """A publish or unpublish request that cannot be carried out. ``status`` is
    the HTTP status a client should see."""

    status = 400

    def __init__(self, message: str, table: str | None = None):
        super().__init__(message)
        self.message = message
        self.table = table


class TableNotFound(PublishError):
    status = 404


class InternalTable(PublishError):
    status = 403


class DependsOnPrivate(PublishError):
    """A view that reads tables which are not public."""

    status = 409


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def connect(path: str, readonly: bool = False) -> apsw.Connection:
    flags = apsw.SQLITE_OPEN_URI | (
        apsw.SQLITE_OPEN_READONLY if readonly else apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    )
    conn = apsw.Connection(path, flags=flags)
    conn.set_busy_timeout(10_000)
    return conn


@contextlib.contextmanager
def immediate(conn: apsw.Connection):
    """A write transaction that takes the write lock up front, so that it
    waits on the busy timeout instead of failing to upgrade a read lock."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


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
)


def _migrate(conn: apsw.Connection) -> None:
    conn.execute(SCHEMA)
    for table, column, type_ in MIGRATIONS:
        if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({quote(table)})")}:
            conn.execute(f"ALTER TABLE {quote(table)} ADD COLUMN {quote(column)} {type_}")
            if column == "column_identity":
                # Tables public before broadsheet followed columns: their
                # columns as they are now are the ones public now.
                for name in public_tables(conn):
                    if name in user_tables(conn):
                        identity.record(conn, name)
    conn.execute(TRIGGERS)


def ensure_schema(conn: apsw.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    with immediate(conn):
        _migrate(conn)


SHADOW_SUFFIXES = ("_data", "_idx", "_content", "_docsize", "_config", "_segments", "_segdir", "_stat")


def user_tables(conn: apsw.Connection, schema: str = "main") -> list[str]:
    """A team's own tables, the ones that can be published: not internal, not
    virtual (full-text tables follow the table they index), not a virtual
    table's shadow tables."""
    rows = conn.execute(f"SELECT name, sql FROM {quote(schema)}.sqlite_master WHERE type = 'table' ORDER BY name")
    rows = rows.fetchall()
    virtual = [n for n, sql in rows if sql and sql.upper().startswith("CREATE VIRTUAL")]
    return [
        n
        for n, _ in rows
        if not is_internal(n)
        and n not in virtual
        and not any(n.startswith(v + "_") and n.endswith(SHADOW_SUFFIXES) for v in virtual)
    ]


def views(conn: apsw.Connection, schema: str = "main") -> list[str]:
    return [n for (n,) in conn.execute(f"SELECT name FROM {quote(schema)}.sqlite_master WHERE type = 'view' ORDER BY name")]


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


class BrokenView(Exception):
    """A view that no longer compiles: a table it reads was dropped, or a
    column it reads was dropped or renamed away."""

    def __init__(self, view: str, reason: str):
        super().__init__(f"view {view!r} no longer compiles: {reason}")
        self.view, self.reason = view, reason


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


def public_tables(conn: apsw.Connection) -> list[str]:
    return [name for (name,) in conn.execute(f"SELECT table_name FROM {PUBLIC_TABLES} ORDER BY table_name")]


def public_specs(conn: apsw.Connection, schema: str = "main") -> dict[str, PublishSpec]:
    """Every public table (and view) with its spec."""
    return {
        name: PublishSpec.from_json(spec)
        for name, spec in conn.execute(f"SELECT table_name, spec FROM {quote(schema)}.{PUBLIC_TABLES} ORDER BY table_name")
    }


def check_name(table: str) -> None:
    if not isinstance(table, str) or not table.strip():
        raise PublishError("Table name must be a non-empty string", table)
    if "\x00" in table:
        raise PublishError("Table name may not contain NUL characters", table)


def check_publishable(conn: apsw.Connection, table: str) -> None:
    """Raise a PublishError unless ``table`` is a user table that exists."""
    check_name(table)
    if is_internal(table):
        raise InternalTable(f"{table!r} is an internal table and can never be made public", table)
    if table in views(conn):
        public = {}
        for name, spec in public_specs(conn).items():
            try:
                public[name] = spec_columns(conn, name, spec) if name not in views(conn) else []
            except SpecError:
                pass  # a spec that no longer fits publishes nothing
        try:
            reads = view_columns(conn, "main", table)
        except BrokenView as exc:
            raise PublishError(f"View {table!r} does not compile: {exc.reason}", table) from None
        private = private_reads(reads, public)
        if private:
            raise DependsOnPrivate(
                f"View {table!r} reads what is not public: {', '.join(private)}: publish that first", table
            )
        return
    if table not in user_tables(conn):
        if table in {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}:
            raise PublishError(
                f"{table!r} is a virtual table or part of one; full-text tables are published with the table they index",
                table,
            )
        raise TableNotFound(f"Table {table!r} does not exist in data.db", table)


@dataclass(frozen=True)
class Flip:
    """The outcome of a publish or unpublish: whether it changed anything, and
    the data.db TXID that holds it (None if nothing changed)."""

    table: str
    public: bool
    changed: bool
    audit_id: int | None = None


def set_public(
    conn: apsw.Connection, table: str, public: bool, actor: str | None = None, spec: PublishSpec | None = None
) -> Flip:
    """Make ``table`` public (as ``spec`` says: default the whole table) or
    private, in one data.db transaction with an audit log entry. Idempotent:
    flipping to the current state and spec changes nothing. Publishing a
    public table with another spec changes its spec."""
    check_name(table)
    spec = spec or PublishSpec()
    with immediate(conn):
        _migrate(conn)  # a data.db that broadsheet has not touched yet
        if public:
            check_publishable(conn, table)
            if not spec.whole:
                if table in views(conn):
                    raise PublishError("A view is published whole: it has no columns or rows to choose", table)
                check_spec(conn, table, spec)
        elif is_internal(table):
            raise InternalTable(f"{table!r} is an internal table and is never public", table)
        current = public_specs(conn)
        is_public = table in current
        if not public and not is_public and table not in user_tables(conn) + views(conn):
            raise TableNotFound(f"Table {table!r} does not exist in data.db", table)
        if is_public == public and (not public or current[table] == spec):
            return Flip(table, public, changed=False)
        before = current[table].to_json() if is_public else None
        if public:
            conn.execute(
                f"INSERT INTO {PUBLIC_TABLES} (table_name, spec) VALUES (?, ?)"
                " ON CONFLICT (table_name) DO UPDATE SET spec = excluded.spec",
                (table, spec.to_json()),
            )
            if table in user_tables(conn):
                # The spec means these columns, as they are at this moment.
                identity.record(conn, table)
        else:
            conn.execute(f"DELETE FROM {PUBLIC_TABLES} WHERE table_name = ?", (table,))
            identity.forget(conn, table)
        audit_id = audit(
            conn, "publish" if public else "unpublish", table, actor,
            spec_before=before, spec_after=spec.to_json() if public else None,
        )
    return Flip(table, public, changed=True, audit_id=audit_id)


def spec_columns(conn: apsw.Connection, table: str, spec: PublishSpec, schema: str = "main") -> list[str]:
    """The columns of ``table`` that ``spec`` publishes (SpecError if it no
    longer fits the table), by the rules the publisher's projection follows."""
    return TableShape.read(conn, table, schema).published(spec)


def check_spec(conn: apsw.Connection, table: str, spec: PublishSpec, schema: str = "main") -> None:
    """PublishError (400) unless ``spec`` fits ``table`` now: its columns exist,
    its row filter is a pure expression over them (as SQLite itself judges
    it: PublishSpec.check_where)."""
    try:
        spec_columns(conn, table, spec, schema)
        if spec.where:
            spec.check_where(table, TableShape.read(conn, table, schema).columns)
    except SpecError as exc:
        raise PublishError(str(exc), table) from None


def audit(
    conn: apsw.Connection,
    operation: str,
    table: str,
    actor: str | None,
    spec_before: str | None = None,
    spec_after: str | None = None,
    reason: str | None = None,
) -> int:
    """Append to ``_public_audit_log`` (inside the caller's transaction, on
    apsw's connection or Python's sqlite3)."""
    cursor = conn.execute(AUDIT_INSERT, (now(), actor, operation, table, spec_before, spec_after, reason))
    return conn.last_insert_rowid() if isinstance(conn, apsw.Connection) else cursor.lastrowid


AUDIT_INSERT = (
    "INSERT INTO _public_audit_log (timestamp, actor, operation, table_name, spec_before, spec_after, reason)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def fail_closed(conn, table: str, reason: str, by: str = "broadsheet:publisher") -> bool:
    """Make ``table`` private because broadsheet can no longer vouch for
    what its spec publishes (in the caller's transaction), audit-logged with
    ``reason``. Whether it was public."""
    row = conn.execute(f"SELECT spec FROM {PUBLIC_TABLES} WHERE table_name = ?", (table,)).fetchone()
    if row is None:
        return False
    conn.execute(f"DELETE FROM {PUBLIC_TABLES} WHERE table_name = ?", (table,))
    identity.forget(conn, table)
    audit(conn, "unpublish", table, f"{by} ({reason})", spec_before=row[0], reason=reason)
    return True


METADATA_FIELDS = ("title", "description", "license", "license_url", "source", "source_url")
INSTANCE = ""  # the metadata row of the public instance itself


def check_metadata(values: dict) -> dict:
    """The metadata a client sent, checked: known fields, text, http(s)
    URLs. None (or "") clears a field."""
    unknown = set(values) - set(METADATA_FIELDS)
    if unknown:
        raise PublishError(f"Unknown metadata field(s): {', '.join(sorted(unknown))}; known: {', '.join(METADATA_FIELDS)}")
    for key, value in values.items():
        if value is not None and not isinstance(value, str):
            raise PublishError(f"{key} must be text")
        if value and key.endswith("_url") and not value.startswith(("https://", "http://")):
            raise PublishError(f"{key} must be an http(s) URL")
        if value and len(value) > 10_000:
            raise PublishError(f"{key} is longer than 10,000 characters")
    return {k: (v or None) for k, v in values.items()}


def set_metadata(conn: apsw.Connection, table: str, values: dict) -> dict:
    """Set (merge) the metadata of ``table`` (INSTANCE for the instance).
    Shown on read nodes for the instance and for public tables only."""
    values = check_metadata(values)
    with immediate(conn):
        _migrate(conn)
        if table != INSTANCE and table not in user_tables(conn) + views(conn):
            raise TableNotFound(f"Table {table!r} does not exist in data.db", table)
        current = metadata(conn).get(table, {})
        merged = {**{k: current.get(k) for k in METADATA_FIELDS}, **values}
        conn.execute(
            f"INSERT OR REPLACE INTO {PUBLIC_METADATA} (table_name, {', '.join(METADATA_FIELDS)})"
            f" VALUES (?, {', '.join('?' for _ in METADATA_FIELDS)})",
            (table, *(merged[k] for k in METADATA_FIELDS)),
        )
    return {k: v for k, v in merged.items() if v}


def metadata(conn: apsw.Connection, schema: str = "main") -> dict[str, dict]:
    """Every metadata row: table name ('' for the instance) -> its fields that are set."""
    try:
        cursor = conn.execute(f"SELECT table_name, {', '.join(METADATA_FIELDS)} FROM {quote(schema)}.{PUBLIC_METADATA}")
    except apsw.SQLError:
        return {}  # a data.db from before metadata
    return {row[0]: {k: v for k, v in zip(METADATA_FIELDS, row[1:]) if v} for row in cursor}


def audit_txids(conn: apsw.Connection, audit_id: int, private_txid: int, public_txid: int) -> None:
    """Record which data.db and public.db TXIDs an audited flip reached."""
    with immediate(conn):
        conn.execute(
            "UPDATE _public_audit_log SET private_txid = ?, public_txid = ? WHERE id = ?",
            (private_txid, public_txid, audit_id),
        )


AUDIT_COLUMNS = (
    "id", "timestamp", "actor", "operation", "table_name", "private_txid", "public_txid", "spec_before", "spec_after",
    "reason",
)


def audit_entries(conn: apsw.Connection, table: str | None = None, limit: int = 100) -> list[dict]:
    """The newest audit log entries, for every table or one."""
    where, params = ("WHERE table_name = ?", (table,)) if table is not None else ("", ())
    cursor = conn.execute(
        f"SELECT {', '.join(AUDIT_COLUMNS)} FROM _public_audit_log {where} ORDER BY id DESC LIMIT ?",
        (*params, limit),
    )
    return [dict(zip(AUDIT_COLUMNS, row)) for row in cursor]


@dataclass(frozen=True)
class Watermark:
    """How far the publisher has got: every data.db transaction up to
    ``private_txid`` is reflected in public.db at ``public_txid`` or later.

    Written by the publisher after every cycle, including cycles that found
    nothing to publish, to a small file beside (not inside) the LiteFS mounts.
    """

    private_txid: int
    public_txid: int
    # The publisher's change-log position at that point: entries up to it
    # are in public.db at ``public_txid`` (0: unknown).
    processed: int = 0

    def write(self, path: str | os.PathLike) -> None:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as fp:
            json.dump(
                {"private_txid": self.private_txid, "public_txid": self.public_txid, "processed": self.processed}, fp
            )
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: str | os.PathLike) -> "Watermark | None":
        try:
            with open(path) as fp:
                data = json.load(fp)
        except (FileNotFoundError, ValueError):
            return None
        return cls(int(data["private_txid"]), int(data["public_txid"]), int(data.get("processed", 0)))


class CycleLog:
    """The publisher's record of its cycles, one JSON line each, in a file
    beside the watermark: writing it costs no data.db commit (a team write
    is one commit, and wakes the publisher once). Keeps the newest
    ``keep`` records."""

    def __init__(self, path: str | os.PathLike, keep: int = 10_000):
        self.path = str(path)
        self.keep = keep
        self._lines = self._count()

    def _count(self) -> int:
        try:
            with open(self.path, "rb") as fp:
                return sum(1 for _ in fp)
        except FileNotFoundError:
            return 0

    def append(self, record: dict) -> None:
        with open(self.path, "a") as fp:
            fp.write(json.dumps(record) + "\n")
        self._lines += 1
        if self._lines > 2 * self.keep:
            kept = self.read(self.keep)[::-1]
            tmp = f"{self.path}.tmp"
            with open(tmp, "w") as fp:
                fp.writelines(json.dumps(r) + "\n" for r in kept)
            os.replace(tmp, self.path)
            self._lines = len(kept)

    @staticmethod
    def read_file(path: str | os.PathLike, limit: int = 100) -> list[dict]:
        """The newest ``limit`` records, newest first."""
        try:
            with open(path) as fp:
                lines = fp.readlines()
        except FileNotFoundError:
            return []
        records = []
        for line in reversed(lines[-limit:]):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a crash
        return records

    def read(self, limit: int = 100) -> list[dict]:
        return self.read_file(self.path, limit)


@dataclass(frozen=True)
class Withdrawal:
    """Something broadsheet itself took off the read nodes, and why: a table
    whose spec no longer fits (its columns moved, one it names is gone) or
    that could not be copied or was rebuilt, a view that no longer compiles,
    a saved query that no longer compiles against the public copy. It stays
    private until someone publishes (or saves) it again."""

    name: str
    kind: str  # "table", "view" or "query"
    reason: str
    at: str  # when (the audit or saved-query log entry's timestamp)


class Withdrawals:
    """What broadsheet has withdrawn and not been published again since,
    kept by the publisher in a file beside the watermark (the control plane
    names them on /health without opening data.db). Read from the audit log
    (unpublish entries with a reason) and the saved-query log (withdraw
    entries), from where the file says it got to."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        saved = self.read_file(self.path, raw=True)
        self.audit_id = saved.get("audit_id", 0)
        self.queries_log_id = saved.get("queries_log_id", 0)
        self.items = {(w["kind"] == "query", w["name"]): Withdrawal(**w) for w in saved.get("withdrawn", [])}

    @staticmethod
    def read_file(path: str | os.PathLike, raw: bool = False):
        try:
            with open(path) as fp:
                data = json.load(fp)
        except (FileNotFoundError, ValueError):
            data = {}
        return data if raw else [Withdrawal(**w) for w in data.get("withdrawn", [])]

    def update(self, conn: apsw.Connection) -> None:
        """Take in the log entries since the last update, drop what is public
        (or saved) again or no longer exists, and write the file if anything
        changed."""
        before = (self.audit_id, self.queries_log_id, dict(self.items))
        views_now = set(views(conn))
        for id_, operation, table, reason, timestamp in conn.execute(
            "SELECT id, operation, table_name, reason, timestamp FROM _public_audit_log WHERE id > ? ORDER BY id",
            (self.audit_id,),
        ).fetchall():
            self.audit_id = id_
            if operation == "unpublish" and reason:
                kind = "view" if table in views_now else "table"
                self.items[(False, table)] = Withdrawal(table, kind, reason, timestamp)
            else:
                self.items.pop((False, table), None)
        for id_, operation, name, reason, timestamp in conn.execute(
            "SELECT id, operation, name, reason, timestamp FROM _public_queries_log WHERE id > ? ORDER BY id",
            (self.queries_log_id,),
        ).fetchall():
            self.queries_log_id = id_
            if operation == "withdraw":
                self.items[(True, name)] = Withdrawal(name, "query", reason or "", timestamp)
            else:
                self.items.pop((True, name), None)
        if self.items:
            names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
            saved = {n for (n,) in conn.execute(f"SELECT name FROM {PUBLIC_QUERIES}")}
            self.items = {k: w for k, w in self.items.items() if w.name in (saved if k[0] else names)}
        if (self.audit_id, self.queries_log_id, self.items) != before:
            tmp = f"{self.path}.tmp"
            with open(tmp, "w") as fp:
                json.dump(
                    {
                        "audit_id": self.audit_id,
                        "queries_log_id": self.queries_log_id,
                        "withdrawn": [vars(w) for w in sorted(self.items.values(), key=lambda w: (w.at, w.name))],
                    },
                    fp,
                )
            os.replace(tmp, self.path)

"""Saved queries in data.db: named, read-only SQL the team publishes beside
its tables, checked, stored and logged.

A saved query lives in data.db's ``_public_queries`` (so it is one snapshot
with the data and the publish state) and every change to it is in
``_public_queries_log``. It is public only while it compiles against the
public copy: SQLite prepares it (never runs it) against public.db's schema
with an authorizer watching, and it may read nothing but published tables
and views, in public.db, and do nothing but read. That is checked when the
team saves it (a 400 naming what is wrong) and again by every publish cycle
that changes public.db's schema, inside the cycle's own transaction: a query
that stops compiling (its table unpublished, a column renamed or no longer
published) is left out of public.db in that same cycle and withdrawn,
audit-logged, until someone saves it again (primary/publisher/
published_queries.py). Saving and waiting for the publisher, as the team's
interfaces do: primary/queries.py.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import apsw
import apsw.ext

from broadsheet import fts
from broadsheet.names import PUBLIC_QUERIES, PUBLIC_TABLES, is_internal, quote
from broadsheet.sql_functions import SAFE_FUNCTIONS, SAFE_TABLE_FUNCTIONS
from broadsheet.sqlite import connect, immediate

from .audit_log import now
from .catalogue import shadow_tables, virtual_tables
from .errors import PublishError
from .migrations import migrate

NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,99}$")
MAX_SQL = 100_000
MAX_TEXT = 10_000

ONLY_READS = "A saved query may only read public tables: "
SQLITE_SCHEMA = frozenset({"sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema"})


class QueryError(PublishError):
    """A saved query that cannot be saved (400), or is not there (404)."""

    def __init__(self, message: str, name: str | None = None, status: int = 400):
        super().__init__(message, name)
        self.status = status


@dataclass(frozen=True)
class SavedQuery:
    """A saved query as the team wrote it."""

    name: str
    sql: str
    title: str | None = None
    description: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def check_fields(query: SavedQuery) -> SavedQuery:
    """The query's name and texts, checked; empty title/description: None."""
    if not isinstance(query.name, str) or not NAME.match(query.name):
        raise QueryError(
            "A saved query's name is 1-100 letters, digits, '_' or '-', not starting with '-'", query.name
        )
    if is_internal(query.name):
        raise QueryError(f"{query.name!r} is a name broadsheet keeps for itself", query.name)
    if not isinstance(query.sql, str) or not query.sql.strip():
        raise QueryError("sql must be a non-empty SQL statement", query.name)
    if len(query.sql) > MAX_SQL or "\x00" in query.sql:
        raise QueryError(f"sql must be under {MAX_SQL:,} characters, without NUL characters", query.name)
    for key in ("title", "description"):
        value = getattr(query, key)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT):
            raise QueryError(f"{key} must be text under {MAX_TEXT:,} characters", query.name)
    return SavedQuery(query.name, query.sql.strip(), query.title or None, query.description or None)


def readable(conn: apsw.Connection, schema: str, listed: list[str]) -> set[str]:
    """What a saved query may read: the listed (published) tables and views
    and the full-text tables that index them (with their shadow tables,
    which the full-text modules read themselves), lower-cased as SQLite
    compares names."""
    names = {n.lower() for n in listed} | SAFE_TABLE_FUNCTIONS
    full_text = [name for name, sql in virtual_tables(conn, schema) if fts.content_table(sql) in listed]
    names |= {name.lower() for name in full_text + shadow_tables(conn, schema, full_text)}
    return names


def compile_check(conn: apsw.Connection, sql: str, allowed: set[str]) -> tuple[str, ...]:
    """Prepare ``sql`` on ``conn`` (never run it) and return its parameter
    names; QueryError unless it is one statement that only reads, and reads
    only ``allowed`` tables of ``conn``'s main database (so an attached
    database, a private table or a column the public copy lacks cannot
    compile), with only the functions read nodes' sandbox allows.

    The authorizer refuses everything else while SQLite prepares it, not
    after: some statements act as they are prepared (``PRAGMA
    secure_delete=OFF`` would change the publisher's own connection)."""
    # A table read without its columns (count(*)) is reported without its
    # database, and so is a common table expression's name: one that is
    # not a table of public.db is a CTE (other databases: see below).
    tables = {n.lower() for (n,) in conn.execute("SELECT name FROM main.sqlite_master")} | SQLITE_SCHEMA
    refused: list[str] = []

    def authorize(op, p1, p2, dbname, _source):
        if op in (apsw.SQLITE_SELECT, apsw.SQLITE_RECURSIVE):
            return apsw.SQLITE_OK
        if op == apsw.SQLITE_FUNCTION:
            if (p2 or "").lower() in SAFE_FUNCTIONS:
                return apsw.SQLITE_OK
            # Read nodes run saved queries in their sandbox, which would refuse it.
            refused.append(f"uses {p2}(), which read nodes do not run")
        elif op == apsw.SQLITE_READ:
            table = (p1 or "").lower()
            if (dbname is None and table not in tables) or (dbname in ("main", None) and table in allowed):
                return apsw.SQLITE_OK
            refused.append(f"reads {p1!r}, which is not public")
        else:
            action = apsw.mapping_authorizer_function[op].removeprefix("SQLITE_").lower().replace("_", " ")
            refused.append(f"{action} {p1 or ''}".strip())
        return apsw.SQLITE_DENY

    previous = conn.authorizer
    conn.authorizer = authorize
    try:
        info = apsw.ext.query_info(conn, sql, explain=True)
    except apsw.Error as exc:
        if refused:
            raise QueryError(ONLY_READS + "; ".join(dict.fromkeys(refused))) from None
        raise QueryError(f"The query does not compile against the public copy: {exc}") from None
    finally:
        conn.authorizer = previous
    if info.query_remaining and info.query_remaining.strip():
        raise QueryError("A saved query is one SQL statement (found more after the first ';')")
    if not info.has_vdbe:
        raise QueryError("The query is empty")
    if info.is_explain:
        raise QueryError("A saved query cannot be an EXPLAIN")
    if None in info.bindings_names:
        raise QueryError("Use named parameters (:name), not '?' or numbered ones")
    # Datasette fills these in itself, from the visitor's request (headers,
    # cookies, actor) or not at all from a visitor: read nodes would serve
    # one visitor's values, from caches every visitor shares, to the next.
    magic = [name for name in info.bindings_names if name.startswith("_")]
    if magic:
        raise QueryError(
            f"':{magic[0]}' is one of Datasette's magic parameters (a name starting with '_'),"
            " which a saved query may not use: name its parameters without a leading '_'"
        )
    # Every database a statement uses starts a transaction on it (tables,
    # full-text tables, count(*) alike): only main, public.db, may.
    if any(op.opcode == "Transaction" and op.p1 != 0 for op in info.explain or []):
        raise QueryError(ONLY_READS + "it reads a database other than the public copy")
    if not info.is_readonly:
        raise QueryError(ONLY_READS + "it writes")
    return tuple(info.bindings_names)


def connect_public(path: str) -> apsw.Connection:
    """public.db, read-only, as a saved query is judged against it: with
    SQLite's double-quoted-string fallback off, so a quoted name that is not
    a public column is an error, never a string."""
    conn = connect(f"file:{path}?mode=ro", readonly=True)
    conn.config(apsw.SQLITE_DBCONFIG_DQS_DML, 0)
    return conn


def check_against_public(public: apsw.Connection, query: SavedQuery) -> tuple[str, ...]:
    """``compile_check`` against public.db as it is now."""
    try:
        listed = [n for (n,) in public.execute(f"SELECT table_name FROM {PUBLIC_TABLES}")]
    except apsw.SQLError:
        listed = []  # no publish cycle yet: nothing is public
    try:
        return compile_check(public, query.sql, readable(public, "main", listed))
    except QueryError as exc:
        raise QueryError(exc.message, query.name) from None


def save(
    data: apsw.Connection, public: apsw.Connection, query: SavedQuery, actor: str | None
) -> tuple[bool, int | None]:
    """Save (or replace) a query, checked against public.db, in one data.db
    transaction with a log entry. Returns (changed, log id): saving the
    same query again changes nothing unless it was withdrawn."""
    query = check_fields(query)
    check_against_public(public, query)
    with immediate(data):
        migrate(data)
        taken = {n.lower() for (n,) in data.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
        if query.name.lower() in taken:
            message = f"A table or view is named {query.name!r}: a saved query needs a name of its own"
            raise QueryError(message, query.name)
        row = data.execute(
            f"SELECT sql, title, description, withdrawn FROM {PUBLIC_QUERIES} WHERE name = ?", (query.name,)
        ).fetchone()
        if row is not None and row[:3] == (query.sql, query.title, query.description) and row[3] is None:
            return False, None
        data.execute(
            f"INSERT INTO {PUBLIC_QUERIES} (name, sql, title, description, saved_by, saved_at, withdrawn)"
            " VALUES (?, ?, ?, ?, ?, ?, NULL) ON CONFLICT (name) DO UPDATE SET sql = excluded.sql,"
            " title = excluded.title, description = excluded.description, saved_by = excluded.saved_by,"
            " saved_at = excluded.saved_at, withdrawn = NULL",
            (query.name, query.sql, query.title, query.description, actor, now()),
        )
        return True, log(data, "save", query.name, actor, row[0] if row else None, query.sql)


def remove(data: apsw.Connection, name: str, actor: str | None) -> int:
    """Remove a saved query; read nodes stop serving it from the next cycle.
    Returns the log id; QueryError (404) if there is no such query."""
    with immediate(data):
        migrate(data)
        row = data.execute(f"SELECT sql FROM {PUBLIC_QUERIES} WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise QueryError(f"There is no saved query named {name!r}", name, status=404)
        data.execute(f"DELETE FROM {PUBLIC_QUERIES} WHERE name = ?", (name,))
        return log(data, "remove", name, actor, row[0], None)


def withdraw(data: apsw.Connection, left_out: dict[str, tuple[SavedQuery, str]]) -> list[str]:
    """Mark the queries a publish cycle left out (name -> (query, why)) as
    withdrawn, with a log entry each, in one data.db transaction. Only the
    text the cycle judged: one saved again since is left alone. Returns
    the names withdrawn."""
    withdrawn = []
    with immediate(data):
        for name, (query, reason) in left_out.items():
            data.execute(
                f"UPDATE {PUBLIC_QUERIES} SET withdrawn = ? WHERE name = ? AND sql = ? AND withdrawn IS NULL",
                (reason, name, query.sql),
            )
            if data.changes():
                log(data, "withdraw", name, WITHDRAW_ACTOR, query.sql, None, reason)
                withdrawn.append(name)
    return withdrawn


WITHDRAW_ACTOR = "broadsheet:publisher (no longer compiles against the public copy; save it again)"


def log(
    conn: apsw.Connection,
    operation: str,
    name: str,
    actor: str | None,
    sql_before: str | None,
    sql_after: str | None,
    reason: str | None = None,
) -> int:
    """Append to ``_public_queries_log`` (inside the caller's transaction)."""
    conn.execute(
        "INSERT INTO _public_queries_log (timestamp, actor, operation, name, sql_before, sql_after, reason)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (now(), actor, operation, name, sql_before, sql_after, reason),
    )
    return conn.last_insert_rowid()


def log_txids(conn: apsw.Connection, log_id: int, private_txid: int, public_txid: int) -> None:
    with immediate(conn):
        conn.execute(
            "UPDATE _public_queries_log SET private_txid = ?, public_txid = ? WHERE id = ?",
            (private_txid, public_txid, log_id),
        )


LOG_COLUMNS = (
    "id", "timestamp", "actor", "operation", "name", "sql_before", "sql_after", "reason", "private_txid", "public_txid",
)


def log_entries(conn: apsw.Connection, name: str | None = None, limit: int = 100) -> list[dict]:
    where, params = ("WHERE name = ?", (name,)) if name is not None else ("", ())
    try:
        cursor = conn.execute(
            f"SELECT {', '.join(LOG_COLUMNS)} FROM _public_queries_log {where} ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )
        return [dict(zip(LOG_COLUMNS, row)) for row in cursor]
    except apsw.SQLError:
        return []  # a data.db from before saved queries


def saved(conn: apsw.Connection, schema: str = "main") -> list[dict]:
    """Every saved query in data.db, with who saved it, when, and why it was
    withdrawn (None while it is not)."""
    columns = ("name", "sql", "title", "description", "saved_by", "saved_at", "withdrawn")
    try:
        cursor = conn.execute(f"SELECT {', '.join(columns)} FROM {quote(schema)}.{PUBLIC_QUERIES} ORDER BY name")
    except apsw.SQLError:
        return []
    return [dict(zip(columns, row)) for row in cursor]


def published(conn: apsw.Connection, schema: str = "main", live: bool = False) -> dict[str, SavedQuery]:
    """The saved queries a public.db holds, or (``live``) those of data.db
    that are not withdrawn: name -> query."""
    where = " WHERE withdrawn IS NULL" if live else ""
    try:
        cursor = conn.execute(f"SELECT name, sql, title, description FROM {quote(schema)}.{PUBLIC_QUERIES}{where}")
    except apsw.SQLError:
        return {}
    return {row[0]: SavedQuery(*row) for row in cursor}

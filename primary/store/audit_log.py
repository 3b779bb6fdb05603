"""``_public_audit_log``: who made which table public or private, when,
why (when broadsheet itself did), and the TXIDs of data.db and public.db
that hold the change."""

from __future__ import annotations

import datetime

import apsw

from broadsheet.sqlite import immediate


def now() -> str:
    """The timestamps of data.db's logs: UTC, ISO 8601, milliseconds."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


AUDIT_INSERT = (
    "INSERT INTO _public_audit_log (timestamp, actor, operation, table_name, spec_before, spec_after, reason)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)

AUDIT_COLUMNS = (
    "id", "timestamp", "actor", "operation", "table_name", "private_txid", "public_txid", "spec_before", "spec_after",
    "reason",
)


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


def audit_txids(conn: apsw.Connection, audit_id: int, private_txid: int, public_txid: int) -> None:
    """Record which data.db and public.db TXIDs an audited flip reached."""
    with immediate(conn):
        conn.execute(
            "UPDATE _public_audit_log SET private_txid = ?, public_txid = ? WHERE id = ?",
            (private_txid, public_txid, audit_id),
        )


def audit_entries(conn: apsw.Connection, table: str | None = None, limit: int = 100) -> list[dict]:
    """The newest audit log entries, for every table or one."""
    where, params = ("WHERE table_name = ?", (table,)) if table is not None else ("", ())
    cursor = conn.execute(
        f"SELECT {', '.join(AUDIT_COLUMNS)} FROM _public_audit_log {where} ORDER BY id DESC LIMIT ?",
        (*params, limit),
    )
    return [dict(zip(AUDIT_COLUMNS, row)) for row in cursor]

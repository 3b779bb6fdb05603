"""Embargoes: publishes and unpublishes set for a moment, kept in data.db's
``_public_schedule`` (the same snapshot as the data and ``_public_tables``,
so a restart of any process, a restore or a promotion keeps it).

Until its moment an entry is only a row here: ``_public_tables`` does not
list the table, so the publisher copies nothing of it. At the moment the
publisher's runner (runner.py) applies it: the flip (visibility.set_public)
and the entry's ``applied_at`` commit in one data.db transaction, so an
entry is applied exactly once whatever restarts, and the flip then
propagates as any flip. Each entry says who set it (and who cancelled
it); the flip's audit log entry names who set it and for when.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import apsw

from broadsheet.names import is_internal
from broadsheet.sqlite import immediate

from .audit_log import now as now_text
from .errors import PublishError
from .spec import PublishSpec


class NoSuchEntry(PublishError):
    status = 404


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def moment_text(moment: datetime) -> str:
    """An instant as stored: UTC, milliseconds, ``Z`` (sorts as it compares)."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_moment(text: str, now: datetime | None = None) -> datetime:
    """The instant ``text`` (ISO 8601 with a zone) names; PublishError (a
    400) for an unparsable time, a time without a zone, or one not in the
    future."""
    if not isinstance(text, str) or not text.strip():
        raise PublishError("The moment must be a time such as 2026-12-02T09:30:00Z")
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise PublishError(f"{text!r} is not a time: give ISO 8601 with a zone, such as 2026-12-02T09:30:00Z") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise PublishError(f"{text!r} has no time zone: add Z (UTC) or an offset such as +01:00")
    now = now or utc_now()
    if moment <= now:
        raise PublishError(f"{text!r} is in the past (it is {moment_text(now)} on the primary)")
    return moment.astimezone(timezone.utc)


@dataclass(frozen=True)
class Entry:
    id: int
    table: str
    public: bool  # publish (True) or unpublish
    spec: PublishSpec
    at: str
    set_by: str | None
    set_at: str

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "table": self.table,
            "operation": "publish" if self.public else "unpublish",
            "spec": self.spec.to_dict() if self.public else None,
            "at": self.at,
            "set_by": self.set_by,
            "set_at": self.set_at,
        }


_COLUMNS = "id, table_name, operation, spec, at, set_by, set_at"


def _entry(row) -> Entry:
    id_, table, operation, spec, at, set_by, set_at = row
    return Entry(id_, table, operation == "publish", PublishSpec.from_json(spec), at, set_by, set_at)


def schedule(
    conn: apsw.Connection,
    table: str,
    public: bool,
    at: str,
    actor: str | None,
    spec: PublishSpec | None = None,
    now: datetime | None = None,
) -> Entry:
    """Set ``table`` to be published (with ``spec``) or unpublished at
    ``at``. The table and spec are checked now, as publishing would check
    them (and again at the moment)."""
    from .catalogue import user_tables, views
    from .migrations import migrate
    from .visibility import check_name, check_publishable, check_spec

    moment = parse_moment(at, now)
    spec = spec or PublishSpec()
    check_name(table)
    with immediate(conn):
        migrate(conn)
        if public:
            check_publishable(conn, table)
            if not spec.whole:
                check_spec(conn, table, spec)
        elif is_internal(table) or table not in user_tables(conn) + views(conn):
            raise PublishError(f"Table {table!r} does not exist in data.db", table)
        conn.execute(
            "INSERT INTO _public_schedule (table_name, operation, spec, at, set_by, set_at) VALUES (?, ?, ?, ?, ?, ?)",
            (table, "publish" if public else "unpublish", spec.to_json() if public else None,
             moment_text(moment), actor, now_text()),
        )
        (id_,) = conn.execute("SELECT last_insert_rowid()").fetchone()
        return _entry(conn.execute(f"SELECT {_COLUMNS} FROM _public_schedule WHERE id = ?", (id_,)).fetchone())


def pending(conn: apsw.Connection, schema: str = "main") -> list[Entry]:
    """Entries not yet applied nor cancelled, soonest first."""
    if not conn.execute(
        f"SELECT 1 FROM {schema}.sqlite_master WHERE type = 'table' AND name = '_public_schedule'"
    ).fetchone():
        return []  # a data.db from before embargoes
    return [
        _entry(row)
        for row in conn.execute(
            f"SELECT {_COLUMNS} FROM {schema}._public_schedule WHERE applied_at IS NULL AND cancelled_at IS NULL"
            " ORDER BY at, id"
        )
    ]


def cancel(conn: apsw.Connection, entry_id: int, actor: str | None) -> Entry:
    with immediate(conn):
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM _public_schedule WHERE id = ? AND applied_at IS NULL AND cancelled_at IS NULL",
            (entry_id,),
        ).fetchone() if _exists(conn) else None
        if row is None:
            raise NoSuchEntry(f"No pending scheduled entry {entry_id}")
        conn.execute(
            "UPDATE _public_schedule SET cancelled_at = ?, cancelled_by = ? WHERE id = ?", (now_text(), actor, entry_id)
        )
    return _entry(row)


def _exists(conn: apsw.Connection) -> bool:
    return bool(conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_public_schedule'").fetchone())


def apply_due(conn: apsw.Connection, now: datetime | None = None) -> list[tuple[Entry, str, int | None]]:
    """Apply every entry whose moment has come: each in one data.db
    transaction with its flip, so none is applied twice or lost. An entry
    that can no longer be applied (its table dropped, its spec no longer
    fitting) is closed with the reason, and the table stays as it was.
    Returns the entries applied with what became of each and the audit
    log entry of its flip (None: nothing changed)."""
    from .visibility import set_public

    due_by = moment_text(now or utc_now())
    done = []
    for entry in pending(conn):
        if entry.at > due_by:
            break
        conn.execute("BEGIN IMMEDIATE")
        try:
            still = conn.execute(
                "SELECT 1 FROM _public_schedule WHERE id = ? AND applied_at IS NULL AND cancelled_at IS NULL",
                (entry.id,),
            ).fetchone()
            if not still:
                conn.execute("COMMIT")
                continue
            conn.execute("SAVEPOINT flip")
            audit_id = None
            try:
                actor = f"{entry.set_by or 'someone'} (scheduled for {entry.at}, entry {entry.id})"
                flip = set_public(conn, entry.table, entry.public, actor=actor, spec=entry.spec, in_transaction=True)
                outcome = "applied" if flip.changed else "applied (no change)"
                audit_id = flip.audit_id
                conn.execute("RELEASE flip")
            except PublishError as exc:
                conn.execute("ROLLBACK TO flip")
                conn.execute("RELEASE flip")
                outcome = f"not applied: {exc.message}"
            conn.execute(
                "UPDATE _public_schedule SET applied_at = ?, outcome = ? WHERE id = ?", (now_text(), outcome, entry.id)
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        done.append((entry, outcome, audit_id))
    return done


def next_moment(conn: apsw.Connection) -> str | None:
    entries = pending(conn)
    return entries[0].at if entries else None

"""Which tables (and views) are public, with what spec: making one public
or private, in one data.db transaction with its audit log entry, and
failing closed when broadsheet can no longer vouch for what a spec
publishes."""

from __future__ import annotations

from dataclasses import dataclass

import apsw

from broadsheet.names import PUBLIC_TABLES, is_internal, quote
from broadsheet.sqlite import immediate

from . import column_ids
from .audit_log import audit
from .catalogue import user_tables, views
from .errors import DependsOnPrivate, InternalTable, PublishError, TableNotFound
from .migrations import migrate
from .projection import TableShape
from .spec import PublishSpec, SpecError
from .view_analysis import BrokenView, private_reads, view_columns

# The audit actor of a table that the publisher made private because its
# identity changed (dropped and re-created, or rebuilt, under its name).
REBUILT_REASON = "table re-created or rebuilt; publish it again"
REBUILT_ACTOR = f"broadsheet:publisher ({REBUILT_REASON})"


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
    conn: apsw.Connection,
    table: str,
    public: bool,
    actor: str | None = None,
    spec: PublishSpec | None = None,
    in_transaction: bool = False,
) -> Flip:
    """Make ``table`` public (as ``spec`` says: default the whole table) or
    private, in one data.db transaction with an audit log entry (the
    caller's, with ``in_transaction``). Idempotent: flipping to the current
    state and spec changes nothing. Publishing a public table with another
    spec changes its spec."""
    check_name(table)
    spec = spec or PublishSpec()
    if in_transaction:
        return _set_public(conn, table, public, actor, spec)
    with immediate(conn):
        return _set_public(conn, table, public, actor, spec)


def _set_public(conn: apsw.Connection, table: str, public: bool, actor: str | None, spec: PublishSpec) -> Flip:
    migrate(conn)  # a data.db that broadsheet has not touched yet
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
            column_ids.record(conn, table)
    else:
        conn.execute(f"DELETE FROM {PUBLIC_TABLES} WHERE table_name = ?", (table,))
        column_ids.forget(conn, table)
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
    its row filter and its masks are pure expressions over them (as SQLite
    itself judges them: PublishSpec.check_where)."""
    try:
        spec_columns(conn, table, spec, schema)
        if spec.where or spec.masks:
            spec.check_where(table, TableShape.read(conn, table, schema).columns)
    except SpecError as exc:
        raise PublishError(str(exc), table) from None


def fail_closed(conn, table: str, reason: str, by: str = "broadsheet:publisher") -> bool:
    """Make ``table`` private because broadsheet can no longer vouch for
    what its spec publishes (in the caller's transaction), audit-logged with
    ``reason``. Whether it was public."""
    row = conn.execute(f"SELECT spec FROM {PUBLIC_TABLES} WHERE table_name = ?", (table,)).fetchone()
    if row is None:
        return False
    conn.execute(f"DELETE FROM {PUBLIC_TABLES} WHERE table_name = ?", (table,))
    column_ids.forget(conn, table)
    audit(conn, "unpublish", table, f"{by} ({reason})", spec_before=row[0], reason=reason)
    return True


def misfit(conn: apsw.Connection, schema: str, table: str, spec: PublishSpec, shape: TableShape) -> str | None:
    """Why ``spec`` no longer fits ``table`` (None: it fits): a name it
    depends on now denotes another column than when the table was published
    (column_ids.py), or a column it needs is gone, or its row filter or a
    mask no longer compiles."""
    record = column_ids.read(conn, schema, table)
    names = {*(spec.columns or ()), *spec.exclude_columns, *spec.masked}
    for reads in (spec.filter_columns, spec.mask_columns):
        for columns in ([shape.columns] + ([[c.name for c in record.published]] if record else [])):
            try:
                names |= reads(table, columns)
                break
            except SpecError:
                continue  # a column it reads renamed: the names it had at publish time say which
    if record is not None:
        problem = record.problem([column_ids.Column.from_xinfo(row) for row in shape.xinfo], names)
        if problem is not None:
            return problem
    try:
        shape.published(spec)
        spec.check_where(table, shape.columns)
    except SpecError as exc:
        return str(exc)
    return None

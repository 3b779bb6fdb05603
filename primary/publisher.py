"""The publisher: keeps public.db equal to the published projection of data.db.

One publish cycle is one SQLite transaction on public.db, so one LTX: a read
node shows the state before a cycle or after it, never a mix. The cycle reads
data.db through ``ATTACH ... AS src`` inside that transaction, so everything
it copies comes from one data.db snapshot.

Work per cycle is proportional to what changed: triggers that the publisher
installs on every published table log changed rowids into ``_public_changes``,
and a cycle re-copies just those rows. Whole tables are copied only when they
are first published or their schema changes.
"""

from __future__ import annotations

import json
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import apsw

from broadsheet import fts
from broadsheet.litefs import Pos, TxEvent, events
from broadsheet.log import log
from broadsheet.names import PUBLIC_METADATA, PUBLIC_TABLES, PUBLIC_TXID, literal, quote

from . import identity
from . import queries as saved_queries
from . import state
from .projection import Projection, TableShape, copied_signature, fts_companions, has_rowid, project
from .settings import settings
from .spec import SpecError

TRIGGER_PREFIX = "_public_trg_"
FTS_TRIGGER_PREFIX = "_public_fts_"


@dataclass(frozen=True)
class Cycle:
    """One publish cycle: the data.db position it reflects and the public.db
    position it produced."""

    private_txid: int
    public_txid: int
    started_at: str
    duration_ms: float
    tables_copied: tuple[str, ...] = ()
    tables_dropped: tuple[str, ...] = ()
    rows_changed: int = 0
    commit_ms: float = 0.0  # of duration_ms: LiteFS turning the transaction into an LTX
    # What the cycle did, as the propagation record tells it: tables (and
    # views) newly public, made private, copied again over their old copy,
    # rows changed per table; and who asked, from the audit log entries in
    # this cycle's own data.db snapshot (table -> actor of its newest flip
    # since the previous cycle). ``audit_id``: the newest entry seen.
    published: tuple[str, ...] = ()
    unpublished: tuple[str, ...] = ()
    recopied: tuple[str, ...] = ()
    rows_by_table: dict[str, int] = field(default_factory=dict)
    actors: dict[str, str] = field(default_factory=dict)
    metadata_changed: bool = False
    audit_id: int = 0
    queries_changed: tuple[str, ...] = ()  # saved queries published, changed or withdrawn
    # Each of those: what happened to it and who asked, from the saved-query
    # log entries in this cycle's snapshot (name -> {"action": "published" |
    # "changed" | "removed" | "withdrawn", "actor": ..., "reason": ...});
    # ``queries_log_id``: the newest entry seen.
    query_changes: dict[str, dict] = field(default_factory=dict)
    queries_log_id: int = 0


@dataclass
class _Plan:
    published: list[str]
    views: list[str] = field(default_factory=list)
    drop_views: list[str] = field(default_factory=list)
    create_views: list[str] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)
    copy: list[str] = field(default_factory=list)
    rows: dict[str, list[int]] = field(default_factory=dict)
    max_change: int | None = None
    public_tables_changed: bool = False
    metadata: dict | None = None  # the public metadata rows, when they changed
    schema_version: int | None = None
    recopied: list[str] = field(default_factory=list)  # copied again over an existing copy
    rebuilt: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # listed, triggers not installed yet
    unfit: dict[str, str] = field(default_factory=dict)  # table -> why its spec no longer fits
    failed: dict[str, str] = field(default_factory=dict)  # table -> why SQLite could not copy it
    broken_views: dict[str, str] = field(default_factory=dict)  # listed view -> why it no longer compiles
    projections: dict[str, Projection] = field(default_factory=dict)
    rows_by_table: dict[str, int] = field(default_factory=dict)
    present_views: set[str] = field(default_factory=set)
    actors: dict[str, str] = field(default_factory=dict)  # table -> who asked, since the last cycle
    audit_id: int = 0
    queries_due: bool = False  # data.db's saved queries differ from public.db's
    queries_changed: tuple[str, ...] = ()
    queries_left_out: dict = field(default_factory=dict)  # name -> (SavedQuery, why it no longer compiles)
    queries_public: dict = field(default_factory=dict)  # public.db's saved queries before the cycle
    queries_live: dict = field(default_factory=dict)  # data.db's saved queries, in this cycle's snapshot
    query_actors: dict[str, str | None] = field(default_factory=dict)  # name -> who saved or removed it last
    queries_log_id: int = 0
    query_changes: dict[str, dict] = field(default_factory=dict)

    @property
    def erases(self) -> bool:
        """Whether the cycle takes data out of public.db that must not linger:
        a table dropped or copied again (a narrower spec), or rows of a
        filtered table changed (a row may have left the filter)."""
        filtered = any(self.projections[t].spec.where for t in self.rows)
        return bool(self.drop or self.recopied or filtered or self.queries_changed)

    @property
    def empty(self) -> bool:
        return not (
            self.drop
            or self.copy
            or self.rows
            or self.public_tables_changed
            or self.drop_views
            or self.create_views
            or self.metadata is not None
            or self.queries_due
        )


def misfit(conn: apsw.Connection, schema: str, table: str, spec, shape: TableShape) -> str | None:
    """Why ``spec`` no longer fits ``table`` (None: it fits): a name it
    depends on now denotes another column than when the table was published
    (primary/identity.py), or a column it needs is gone, or its row filter
    no longer compiles."""
    record = identity.read(conn, schema, table)
    names = {*(spec.columns or ()), *spec.exclude_columns}
    for columns in ([shape.columns] + ([[c.name for c in record.published]] if record else [])):
        try:
            names |= spec.filter_columns(table, columns)
            break
        except SpecError:
            continue  # a filter column renamed: the names it had at publish time say which
    if record is not None:
        problem = record.problem([identity.Column.from_xinfo(row) for row in shape.xinfo], names)
        if problem is not None:
            return problem
    try:
        shape.published(spec)
        spec.check_where(table, shape.columns)
    except SpecError as exc:
        return str(exc)
    return None


def _projections(
    conn: apsw.Connection, published: list[str], specs: dict
) -> tuple[dict[str, Projection], dict[str, str]]:
    """Every published table's projection, and the tables whose spec no
    longer fits (left out: fail closed, made private after the cycle), all
    judged in this cycle's snapshot of data.db."""
    shapes = {t: TableShape.read(conn, t, "src") for t in published}
    columns: dict[str, set[str]] = {}
    unfit: dict[str, str] = {}
    for table, shape in shapes.items():
        problem = misfit(conn, "src", table, specs[table], shape)
        if problem is None:
            columns[table] = set(shape.published(specs[table]))
        else:
            unfit[table] = problem
    projections = {}
    for table in columns:
        try:
            projections[table] = project(conn, table, specs[table], columns, shapes[table])
        except SpecError as exc:
            unfit[table] = str(exc)
    return projections, unfit


def cycle_log_path(watermark_file: str | Path) -> Path:
    return Path(watermark_file).with_name("publisher-cycles.jsonl")


def withdrawals_path(watermark_file: str | Path) -> Path:
    """Where the publisher keeps what it withdrew (state.Withdrawals)."""
    return Path(watermark_file).with_name("publisher-withdrawn.json")


def _trigger_names(table: str) -> dict[str, str]:
    return {op: f"{TRIGGER_PREFIX}{op}_{table}" for op in ("ins", "upd", "del")}


def _has_triggers(conn: apsw.Connection, schema: str, table: str) -> bool:
    """Whether ``table`` still carries every change-log trigger of ours."""
    found = {
        n
        for (n,) in conn.execute(
            f"SELECT name FROM {quote(schema)}.sqlite_master WHERE type = 'trigger' AND tbl_name = ?", (table,)
        )
    }
    return set(_trigger_names(table).values()) <= found


class Publisher:
    def __init__(self, data_db: str | Path, public_db: str | Path, watermark_file: str | Path | None = None):
        self.data_db = str(data_db)
        self.public_db = str(public_db)
        self.watermark_file = watermark_file
        self.writer = state.connect(self.data_db)
        # As on the cycle's connection below: a view naming a column that is
        # gone does not compile (never reads the name as a string), whichever
        # connection judges it.
        self.writer.config(apsw.SQLITE_DBCONFIG_DQS_DML, 0)
        state.ensure_schema(self.writer)
        self.conn = state.connect(self.public_db)
        self.conn.execute(f"PRAGMA page_size={settings().page_size}")  # takes effect only on a new public.db
        self.conn.execute("PRAGMA journal_mode=WAL")
        # Freed pages are zeroed: an unpublished table's bytes leave public.db
        # (and the LTX that ships the change) in the cycle that drops it.
        self.conn.execute("PRAGMA secure_delete=ON")
        # A first publish of a large table builds its pages and indexes in
        # memory and writes each page once, rather than spilling mid-cycle.
        self.conn.execute("PRAGMA cache_size=-262144")
        self.conn.execute("PRAGMA temp_store=MEMORY")
        # A row filter naming a column that is gone is an error, never the
        # column's name as a string (SQLite's double-quoted-string fallback).
        self.conn.config(apsw.SQLITE_DBCONFIG_DQS_DML, 0)
        self.conn.execute("ATTACH ? AS src", (f"file:{self.data_db}?mode=ro",))
        with state.immediate(self.conn):
            fresh = not self.conn.execute("SELECT 1 FROM main.sqlite_master WHERE name = ?", (PUBLIC_TXID,)).fetchall()
            self.conn.execute(f"CREATE TABLE IF NOT EXISTS main.{PUBLIC_TABLES} (table_name TEXT PRIMARY KEY)")
            # The instance's and the public tables' metadata, which read
            # nodes show where Datasette shows metadata.
            self.conn.execute(
                f"CREATE TABLE IF NOT EXISTS main.{PUBLIC_METADATA} (table_name TEXT PRIMARY KEY,"
                f" {', '.join(f'{k} TEXT' for k in state.METADATA_FIELDS)})"
            )
            self.conn.execute(saved_queries.PUBLIC_SCHEMA)
            if fresh:  # this transaction changes public.db: it names its own TXID too
                self.conn.execute(
                    f"CREATE TABLE main.{PUBLIC_TXID} (id INTEGER PRIMARY KEY CHECK (id = 1), txid INTEGER NOT NULL)"
                )
                self._record_txid()
        self._maintained: tuple | None = None
        # Tables whose change log has a gap (their triggers were missing, as
        # after DROP TABLE + CREATE TABLE): copied whole in the next cycle.
        self._force_copy: set[str] = set()
        # data.db's schema_version, and the public tables, when public.db
        # last matched them (a projection depends on both: foreign keys to
        # tables that are public).
        self._synced_schema: int | None = None
        self._synced_published: tuple[str, ...] | None = None
        # The last projections (and unfit tables), and what they were made of.
        self._projected_key: tuple | None = None
        self._projected: tuple[dict[str, Projection], dict[str, str]] = ({}, {})
        # A cycle erased data and public.db's WAL has not been truncated yet.
        self._checkpoint_due = False
        # Change-log entries up to _processed are in public.db; those below
        # _trimmed are deleted from data.db (never the newest: ids are
        # max + 1, so deleting the last entry would let ids repeat). Trimming is a data.db commit of
        # the publisher's own, so it happens rarely (TRIM_EVERY entries, or
        # when idle for TRIM_IDLE seconds), not once per team write.
        self._processed = 0
        self._trimmed = 0
        self._last_trim = time.monotonic()
        # Beside the watermark, off the mounts (none in a bare test publisher).
        self.cycle_log = state.CycleLog(cycle_log_path(watermark_file)) if watermark_file else None
        self.withdrawals = state.Withdrawals(withdrawals_path(watermark_file)) if watermark_file else None
        # Audit log (and saved-query log) entries up to these are told by an
        # earlier cycle.
        last = (self.cycle_log.read(1) or [{}])[0] if self.cycle_log else {}
        self._audited = last.get("audit_id", 0)
        self._queries_logged = last.get("queries_log_id", 0)
        self._processed = self._resumed_position()

    def _resumed_position(self) -> int:
        """Where the change log was applied up to when the watermark was last
        written, if nothing has moved under it since: public.db is at the
        very TXID the watermark names (no cycle committed after it), and
        data.db is not behind it. Otherwise 0: the first cycle applies again
        whatever the log holds (idempotent, only dearer). A restore puts its
        entries above every id the log had, so they are never skipped."""
        mark = state.Watermark.read(self.watermark_file) if self.watermark_file else None
        if mark is None or not mark.processed:
            return 0
        if Pos.read(self.public_db).txid != mark.public_txid or Pos.read(self.data_db).txid < mark.private_txid:
            return 0
        (newest,) = self.conn.execute("SELECT max(id) FROM src._public_changes").fetchone()
        return mark.processed if newest is not None and newest >= mark.processed else 0

    def close(self) -> None:
        self.conn.close()
        self.writer.close()

    # -- triggers on data.db -----------------------------------------------
    def _publishable(self, conn: apsw.Connection, schema: str) -> list[str]:
        listed = [r[0] for r in conn.execute(f"SELECT table_name FROM {schema}.{PUBLIC_TABLES} ORDER BY table_name")]
        tables = set(state.user_tables(conn, schema))
        return [t for t in listed if t in tables]

    def _publishable_views(
        self, conn: apsw.Connection, schema: str, projections: dict[str, Projection], broken: dict[str, str]
    ) -> list[str]:
        """Listed views that compile against the public copies: they read
        nothing but published columns of published tables (so their text
        names nothing private either). A listed view that does not compile
        at all (a table it reads dropped, a column renamed away) goes into
        ``broken``, to be withdrawn: one view never stops a cycle."""
        listed = [r[0] for r in conn.execute(f"SELECT table_name FROM {schema}.{PUBLIC_TABLES} ORDER BY table_name")]
        candidates = set(state.views(conn, schema)) & set(listed)
        public = {t: list(p.visible) for t, p in projections.items()}
        views = []
        for view in sorted(candidates):
            try:
                reads = state.view_columns(conn, schema, view)
            except state.BrokenView as exc:
                broken[view] = exc.reason
                continue
            if not state.private_reads(reads, public):
                views.append(view)
        return views

    def maintain_triggers(self) -> None:
        """Install change-log triggers on every published table and remove them
        from tables no longer published. A separate data.db transaction that
        commits before the cycle's snapshot, so writes before it are in the
        snapshot and writes after it are in the log."""
        conn = self.writer
        key = self._maintenance_key(conn)
        if key == self._maintained:
            return
        with state.immediate(conn):
            self._follow_renames(conn)
            self._forget_dropped(conn)
            self._forget_rebuilt(conn)
            self._forget_unfit(conn)
            published = self._publishable(conn, "main")
            for name in identity.orphans(conn, set(published)):
                conn.execute(f"DROP TRIGGER {quote(name)}")
            for table in self._unrecorded(conn, "main"):
                # Listed by a direct write to _public_tables: its columns
                # as the publisher first sees them are the published ones.
                identity.record(conn, table)
            wanted = {(name, table) for table in published for name in _trigger_names(table).values()}
            existing = set(
                conn.execute(
                    "SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger' AND substr(name, 1, ?) = ?",
                    (len(TRIGGER_PREFIX), TRIGGER_PREFIX),
                )
            )
            for name, _ in existing - wanted:
                conn.execute(f"DROP TRIGGER {quote(name)}")
            for table in published:
                if any((n, table) not in existing for n in _trigger_names(table).values()):
                    self._create_triggers(conn, table)
                    self._force_copy.add(table)
            conn.execute(
                "DELETE FROM _public_changes WHERE tbl NOT IN (SELECT value FROM json_each(?)) AND id < ?",
                (json.dumps(published), self._processed),
            )
        self._maintained = self._maintenance_key(conn)

    def _maintenance_key(self, conn: apsw.Connection) -> tuple:
        """What maintain_triggers depends on: data.db's schema, the listed
        tables, and which of them have no record of their columns yet."""
        return (
            conn.execute("PRAGMA schema_version").fetchone()[0],
            tuple(self._publishable(conn, "main")),
            tuple(self._unrecorded(conn, "main")),
        )

    def _unrecorded(self, conn: apsw.Connection, schema: str) -> list[str]:
        """Listed tables with no record of their columns (primary/identity.py)."""
        unrecorded = {
            t for (t,) in conn.execute(f"SELECT table_name FROM {schema}.{PUBLIC_TABLES} WHERE column_identity IS NULL")
        }
        return [t for t in self._publishable(conn, schema) if t in unrecorded]

    @staticmethod
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
                state.audit(conn, "unpublish", old, actor)
                state.audit(conn, "publish", table, actor)
                listed = (listed - {old}) | {table}
                log("publisher", f"{old!r} was renamed to {table!r}; it stays public under its new name")

    @staticmethod
    def _forget_dropped(conn: apsw.Connection) -> None:
        # A published table that is dropped stops being public, so that a new
        # table created under its name starts out private.
        existing = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
        for (table,) in conn.execute(f"SELECT table_name FROM {PUBLIC_TABLES}").fetchall():
            if table not in existing:
                state.fail_closed(conn, table, "table was dropped")
                log("publisher", f"{table!r} no longer exists in data.db; it is no longer public")

    def _forget_rebuilt(self, conn: apsw.Connection) -> None:
        # Our triggers go with the table they sit on. A published table that
        # public.db already holds but that has lost them is not the table that
        # was published: dropped and created again under its name (in one
        # transaction or between two cycles), or rebuilt by a schema tool.
        # Fail closed: it is private until someone publishes it again
        # (Datasette's alter-table does so for its own rebuilds, see
        # primary/plugin.py).
        copied = set(state.user_tables(self.conn, "main"))
        for table in self._publishable(conn, "main"):
            if table in copied and not _has_triggers(conn, "main", table):
                state.fail_closed(conn, table, state.REBUILT_REASON)
                log("publisher", f"{table!r} was re-created or rebuilt under its name; it is private until published again")

    @staticmethod
    def _forget_unfit(conn: apsw.Connection) -> None:
        # A spec that no longer fits its table (a listed, excluded or filtered
        # column dropped or renamed, or one of its names now denoting another
        # column) is never applied loosely: the table is private until
        # someone publishes it with a spec that fits.
        tables = state.user_tables(conn)
        for table, spec in state.public_specs(conn).items():
            if spec.whole or table not in tables:
                continue
            problem = misfit(conn, "main", table, spec, TableShape.read(conn, table, "main"))
            if problem is not None:
                state.fail_closed(conn, table, f"spec no longer fits: {problem}")
                log("publisher", f"{table!r}: its publish spec no longer fits ({problem}); it is private")

    @staticmethod
    def _create_triggers(conn: apsw.Connection, table: str) -> None:
        names = _trigger_names(table)
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

    def _record_txid(self) -> None:
        """Inside a write transaction on public.db: record the TXID it will
        become. The publisher is public.db's only writer and holds its write
        lock, and LiteFS gives each commit the next TXID."""
        txid = Pos.read(self.public_db).txid + 1
        self.conn.execute(f"INSERT OR REPLACE INTO main.{PUBLIC_TXID} (id, txid) VALUES (1, ?)", (txid,))

    # -- one cycle ---------------------------------------------------------
    def run_cycle(self) -> Cycle | None:
        """Bring public.db up to date with data.db. Returns the cycle, or None
        when there was nothing to publish."""
        self.maintain_triggers()
        started_at, t0 = state.now(), time.perf_counter()
        before = Pos.read(self.data_db)
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            plan = self._plan()  # the first read of src starts its snapshot
            if plan.empty:
                conn.execute("ROLLBACK")
                self.checkpoint()
                self._synced_schema = plan.schema_version
                self._synced_published = tuple(plan.published)
                self._processed = max(self._processed, plan.max_change or 0)
                self._audited = max(self._audited, plan.audit_id)  # flips that changed nothing public
                self._queries_logged = max(self._queries_logged, plan.queries_log_id)
                self._follow_up(plan, before.txid)
                return None
            rows_changed = self._apply(plan)
            self._record_txid()
            commit_started = time.perf_counter()
            conn.execute("COMMIT")
            if plan.erases:
                self._checkpoint_due = True
            self.checkpoint()
            commit_ms = (time.perf_counter() - commit_started) * 1000
            self._force_copy.difference_update(plan.copy)
            self._synced_schema = plan.schema_version
            self._synced_published = tuple(plan.published)
        except BaseException:
            if not conn.getautocommit():
                conn.execute("ROLLBACK")
            raise
        public = Pos.read(self.public_db)
        created = [v for v in plan.create_views if v in plan.views and v not in plan.present_views]
        gone = sorted(plan.present_views - set(plan.views))
        cycle = Cycle(
            # The snapshot began after ``before`` was read, so it holds at
            # least that transaction: a safe answer for "is TXID n public yet".
            private_txid=before.txid,
            public_txid=public.txid,
            started_at=started_at,
            duration_ms=(time.perf_counter() - t0) * 1000,
            tables_copied=tuple(plan.copy),
            tables_dropped=tuple(plan.drop),
            rows_changed=rows_changed,
            commit_ms=commit_ms,
            published=tuple(t for t in plan.copy if t not in plan.recopied and t not in plan.failed) + tuple(created),
            unpublished=tuple(t for t in plan.drop if t not in plan.copy) + tuple(gone),
            recopied=tuple(t for t in plan.recopied if t not in plan.failed),
            rows_by_table=dict(plan.rows_by_table),
            actors=dict(plan.actors),
            metadata_changed=plan.metadata is not None,
            audit_id=max(plan.audit_id, self._audited),
            queries_changed=plan.queries_changed,
            query_changes=dict(plan.query_changes),
            queries_log_id=max(plan.queries_log_id, self._queries_logged),
        )
        self._audited = cycle.audit_id
        self._queries_logged = cycle.queries_log_id
        self._processed = max(self._processed, plan.max_change or 0)
        self._record(cycle)
        self._follow_up(plan, before.txid, public.txid)
        self.trim(idle=False)
        return cycle

    def _follow_up(self, plan: "_Plan", private_txid: int, public_txid: int | None = None) -> None:
        """After a cycle: tables it left out are dealt with at once (rebuilt
        or unfit ones made private and audit-logged, newly listed ones given
        their triggers, which wakes the next cycle), and the watermark moves
        only if nothing listed is still waiting to be copied, so that a
        bookmark never points before a publish it promises."""
        withdrawn = {t: f"could not be copied: {why}" for t, why in plan.failed.items()}
        withdrawn |= {v: f"view no longer compiles: {why}" for v, why in plan.broken_views.items()}
        if withdrawn:
            with state.immediate(self.writer):
                for name, reason in withdrawn.items():
                    # Judged again in the writer's snapshot: a view fixed meanwhile stays.
                    if name in plan.broken_views and self._still_broken(name) is None:
                        continue
                    if state.fail_closed(self.writer, name, reason):
                        log("publisher", f"{name!r} withdrawn: {reason}")
        if plan.queries_left_out:
            for name in saved_queries.withdraw(self.writer, plan.queries_left_out):
                log("publisher", f"saved query {name!r} withdrawn: {plan.queries_left_out[name][1]}")
        if plan.rebuilt or plan.unfit or plan.waiting or plan.failed:
            self._maintained = None
            self.maintain_triggers()
        # A table left out (waiting for triggers, rebuilt, unfit) is made
        # private or copied by the cycle this follow-up wakes: the watermark
        # moves then, so no bookmark claims a TXID that lacks a publish.
        if not (plan.waiting or plan.rebuilt or plan.unfit):
            self._advance(private_txid, public_txid)
        if self.withdrawals is not None:
            self.withdrawals.update(self.writer)

    def _still_broken(self, view: str) -> str | None:
        try:
            state.view_columns(self.writer, "main", view)
        except state.BrokenView as exc:
            return exc.reason
        return None

    def checkpoint(self) -> None:
        """After a cycle that erased data, its pages (zeroed by secure_delete)
        are in the WAL, and the pages they replace in older WAL frames:
        checkpoint and truncate the WAL so that public.db's WAL on the
        primary holds no erased row. LiteFS may refuse while it reads the WAL
        itself: then the next cycle (or idle pass) tries again. (main only:
        data.db, attached read-only, cannot be checkpointed from here.)"""
        if not self._checkpoint_due:
            return
        try:
            busy, _, _ = self.conn.execute("PRAGMA main.wal_checkpoint(TRUNCATE)").fetchone()
        except apsw.Error as exc:
            log("publisher", f"WAL checkpoint deferred: {exc}")
            return
        self._checkpoint_due = bool(busy)

    def _advance(self, private_txid: int, public_txid: int | None = None) -> None:
        if self.watermark_file is not None:
            if public_txid is None:
                public_txid = Pos.read(self.public_db).txid
            state.Watermark(private_txid, public_txid, self._processed).write(self.watermark_file)

    def _plan(self) -> _Plan:
        conn = self.conn
        present = set(state.user_tables(conn, "main"))
        published = self._publishable(conn, "src")
        # The identity check again, inside this cycle's snapshot: a listed
        # table without the change-log triggers was re-created after
        # maintain_triggers looked (left out, so dropped from public.db, and
        # made private right after the cycle), or listed after it looked (it
        # waits for its triggers and is copied next cycle).
        untracked = [t for t in published if not _has_triggers(conn, "src", t)]
        rebuilt = [t for t in untracked if t in present]
        # Listed by a direct write since maintain_triggers looked, its
        # columns not recorded yet: it waits for the next cycle too.
        unrecorded = set(self._unrecorded(conn, "src"))
        waiting = [t for t in untracked if t not in present] + [t for t in published if t in unrecorded and t not in untracked]
        published = [t for t in published if t not in untracked and t not in unrecorded]
        plan = _Plan(published=published, rebuilt=rebuilt, waiting=waiting)
        specs = state.public_specs(conn, "src")
        records = dict(conn.execute(f"SELECT table_name, column_identity FROM src.{PUBLIC_TABLES}").fetchall())
        plan.schema_version = conn.execute("PRAGMA src.schema_version").fetchone()[0]
        # Projections follow data.db's schema, the public tables, their
        # specs and column records alone: computed again only when one of
        # those has changed, not on every team write.
        key = (plan.schema_version, tuple((t, specs[t].to_json(), records[t]) for t in published))
        if key != self._projected_key:
            self._projected = _projections(conn, published, specs)
            self._projected_key = key
        plan.projections, plan.unfit = dict(self._projected[0]), dict(self._projected[1])
        published = plan.published = [t for t in published if t not in plan.unfit]
        plan.drop = sorted(present - set(published))
        # Schemas need comparing only when data.db's has changed since the
        # last cycle (public.db's changes only through the publisher), or
        # which tables are public has (foreign keys follow them).
        recheck = plan.schema_version != self._synced_schema or tuple(published) != self._synced_published
        for table in published:
            projection = plan.projections[table]
            if (
                table not in present
                or table in self._force_copy
                or (recheck and projection.signature() != copied_signature(conn, table))
            ):
                plan.copy.append(table)
        plan.max_change = conn.execute("SELECT max(id) FROM src._public_changes").fetchone()[0]
        if plan.max_change is not None:
            for tbl, rid in conn.execute(
                "SELECT tbl, rid FROM src._public_changes WHERE id > ? AND id <= ? ORDER BY id",
                (self._processed, plan.max_change),
            ):
                if tbl in published and tbl not in plan.copy:
                    if rid is None:
                        # A WITHOUT ROWID table, or a new spec: copied whole.
                        plan.copy.append(tbl)
                        plan.rows.pop(tbl, None)
                    else:
                        plan.rows.setdefault(tbl, []).append(rid)
        plan.recopied = [t for t in plan.copy if t in present]
        plan.views = self._publishable_views(conn, "src", {t: plan.projections[t] for t in published}, plan.broken_views)
        present_views = {name: sql for name, sql in conn.execute("SELECT name, sql FROM main.sqlite_master WHERE type = 'view'")}
        wanted_views = {v: _view_sql(conn, "src", v) for v in plan.views}
        # Stale views go before the tables change; new ones come after.
        plan.drop_views = [v for v, sql in present_views.items() if wanted_views.get(v) != sql]
        plan.create_views = [v for v in plan.views if v in plan.drop_views or v not in present_views]
        plan.present_views = set(present_views)
        # Who asked for what this cycle publishes: the flips since the last
        # cycle, read in this same snapshot.
        for audit_id, actor, table in conn.execute(
            "SELECT id, actor, table_name FROM src._public_audit_log WHERE id > ? ORDER BY id", (self._audited,)
        ):
            plan.actors[table] = actor or ""
            plan.audit_id = audit_id
        for log_id, actor, name in conn.execute(
            "SELECT id, actor, name FROM src._public_queries_log WHERE id > ? AND operation IN ('save', 'remove')"
            " ORDER BY id",
            (self._queries_logged,),
        ):
            plan.query_actors[name] = actor
            plan.queries_log_id = log_id
        current = [n for (n,) in conn.execute(f"SELECT table_name FROM main.{PUBLIC_TABLES} ORDER BY table_name")]
        plan.public_tables_changed = current != sorted(published + plan.views)
        shown = {state.INSTANCE, *published, *plan.views}
        wanted = {t: m for t, m in state.metadata(conn, "src").items() if t in shown and m}
        if wanted != state.metadata(conn, "main"):
            plan.metadata = wanted
        plan.queries_public = saved_queries.published(conn, "main")
        plan.queries_live = saved_queries.published(conn, "src", live=True)
        plan.queries_due = plan.queries_live != plan.queries_public
        return plan

    def _apply(self, plan: _Plan) -> int:
        conn = self.conn
        for view in plan.drop_views:
            conn.execute(f"DROP VIEW IF EXISTS main.{quote(view)}")
        for table in plan.drop:
            log("publisher", f"unpublishing {table!r}")
            _drop(conn, table)
        rows = 0
        for table in plan.copy:
            started = time.perf_counter()
            copied = self._isolated(plan, table, lambda t=table: _drop(conn, t) or _copy_table(conn, plan.projections[t]))
            if copied is not None:
                rows += copied
                plan.rows_by_table[table] = copied
                log("publisher", f"copied {table!r}: {copied} rows in {(time.perf_counter() - started) * 1000:.0f} ms")
        for table, rids in plan.rows.items():
            if table in plan.failed:
                continue
            try:
                conn.execute("SAVEPOINT rows")
                changed = _copy_rows(conn, plan.projections[table], rids)
                conn.execute("RELEASE rows")
                rows += changed
                plan.rows_by_table[table] = changed
            except apsw.ConstraintError:
                # A REPLACE on data.db removed a row through a UNIQUE conflict
                # without firing a delete trigger: re-copy the table whole.
                conn.execute("ROLLBACK TO rows")
                conn.execute("RELEASE rows")
                log("publisher", f"constraint conflict applying rows of {table!r}; copying it whole")
                copied = self._isolated(plan, table, lambda t=table: _drop(conn, t) or _copy_table(conn, plan.projections[t]))
                rows += copied or 0
            except apsw.Error:
                conn.execute("ROLLBACK TO rows")
                conn.execute("RELEASE rows")
                self._isolated(plan, table, lambda t=table: _copy_rows(conn, plan.projections[t], rids))
        for view in plan.create_views:
            try:
                conn.execute("SAVEPOINT view")
                conn.execute(_view_sql(conn, "src", view))
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
            plan.queries_changed, plan.queries_left_out, after = saved_queries.publish_into(
                conn, plan.published + plan.views, plan.queries_live, plan.queries_public
            )
            plan.query_changes = saved_queries.changes(
                plan.queries_changed, plan.queries_public, after, plan.queries_left_out, plan.query_actors
            )
        if plan.metadata is not None:
            conn.execute(f"DELETE FROM main.{PUBLIC_METADATA}")
            for table, fields in plan.metadata.items():
                keys = list(fields)
                conn.execute(
                    f"INSERT INTO main.{PUBLIC_METADATA} (table_name, {', '.join(keys)})"
                    f" VALUES (?, {', '.join('?' for _ in keys)})",
                    (table, *fields.values()),
                )
        if plan.public_tables_changed:
            conn.execute(f"DELETE FROM main.{PUBLIC_TABLES}")
            conn.execute(
                f"INSERT INTO main.{PUBLIC_TABLES} (table_name) SELECT value FROM json_each(?)",
                (json.dumps(plan.published + plan.views),),
            )
        return rows

    def _isolated(self, plan: "_Plan", table: str, work):
        """Run one table's work in a savepoint. Should SQLite refuse it (a
        collation or function data.db has and this process lacks, say), the
        table is left out of public.db, nothing of it stays there, it is made
        private after the cycle (plan.failed), and every other table's
        changes go on: one table can never wedge publishing."""
        conn = self.conn
        conn.execute("SAVEPOINT one_table")
        try:
            result = work()
            conn.execute("RELEASE one_table")
            return result
        except apsw.Error as exc:
            conn.execute("ROLLBACK TO one_table")
            conn.execute("RELEASE one_table")
            _drop(conn, table)
            plan.failed[table] = str(exc)
            if table in plan.published:
                plan.published.remove(table)
            plan.public_tables_changed = True
            log("publisher", f"{table!r} could not be copied ({exc}); it is left out and made private")
            return None

    TRIM_EVERY = 10_000
    TRIM_IDLE = 30.0

    def trim(self, idle: bool) -> bool:
        """Delete change-log entries that are in public.db, when enough have
        gathered (or, when ``idle``, after TRIM_IDLE seconds): one data.db
        commit of the publisher's own for many team writes. Returns whether
        it committed. The watermark moves past that commit, since it changes
        nothing public."""
        pending = self._processed - self._trimmed
        due = pending >= self.TRIM_EVERY or (idle and pending > 0 and time.monotonic() - self._last_trim >= self.TRIM_IDLE)
        if not due:
            return False
        mark = state.Watermark.read(self.watermark_file) if self.watermark_file else None
        with state.immediate(self.writer):
            before = Pos.read(self.data_db).txid  # nobody else can commit now
            # Strictly below: the newest processed entry stays, so that the
            # next entry's id (max + 1) is above everything processed.
            self.writer.execute("DELETE FROM _public_changes WHERE id < ?", (self._processed,))
        after = Pos.read(self.data_db).txid
        self._trimmed, self._last_trim = self._processed, time.monotonic()
        self.own_txid = after if after == before + 1 else None
        if self.own_txid is not None and mark is not None and mark.private_txid >= before:
            self._advance(after, mark.public_txid)
        return True

    own_txid: int | None = None  # data.db TXID of the publisher's own last trim

    def _record(self, cycle: Cycle) -> None:
        if self.cycle_log is not None:
            self.cycle_log.append(
                {
                    "started_at": cycle.started_at,
                    "duration_ms": round(cycle.duration_ms, 3),
                    "commit_ms": round(cycle.commit_ms, 3),
                    "private_txid": cycle.private_txid,
                    "public_txid": cycle.public_txid,
                    "tables_copied": list(cycle.tables_copied),
                    "tables_dropped": list(cycle.tables_dropped),
                    "rows_changed": cycle.rows_changed,
                    "published": list(cycle.published),
                    "unpublished": list(cycle.unpublished),
                    "recopied": list(cycle.recopied),
                    "rows_by_table": cycle.rows_by_table,
                    "actors": cycle.actors,
                    "metadata_changed": cycle.metadata_changed,
                    "audit_id": cycle.audit_id,
                    "queries_changed": list(cycle.queries_changed),
                    "query_changes": cycle.query_changes,
                    "queries_log_id": cycle.queries_log_id,
                }
            )


# -- table copying (on the publisher's public.db connection, src attached) ---

def _view_sql(conn: apsw.Connection, schema: str, view: str) -> str:
    return conn.execute(f"SELECT sql FROM {schema}.sqlite_master WHERE type = 'view' AND name = ?", (view,)).fetchone()[0]


def _drop(conn: apsw.Connection, table: str) -> None:
    for name, _ in fts_companions(conn, "main", table):
        conn.execute(f"DROP TABLE IF EXISTS main.{quote(name)}")
    conn.execute(f"DROP TABLE IF EXISTS main.{quote(table)}")


def _copy_table(conn: apsw.Connection, projection: Projection) -> int:
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
    if projection.filter_sql:
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
    """Insert the published columns of the published rows, with data.db's rowids."""
    cols = ", ".join(quote(c) for c in projection.columns)
    rowid = "_rowid_, " if projection.has_rowid else ""
    t = quote(projection.table)
    where = f" WHERE 1{projection.filter_sql}" if projection.filter_sql else ""
    conn.execute(f"INSERT INTO main.{t} ({rowid}{cols}) SELECT {rowid}{cols} FROM src.{t}{where}")
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


def _copy_rows(conn: apsw.Connection, projection: Projection, rids: list[int]) -> int:
    """Make the given rows of public.db's table equal to data.db's: delete
    them, then insert those that still exist and pass the row filter."""
    t = quote(projection.table)
    ids = json.dumps(sorted(set(rids)))
    cols = ", ".join(quote(c) for c in projection.columns)
    conn.execute(f"DELETE FROM main.{t} WHERE _rowid_ IN (SELECT value FROM json_each(?))", (ids,))
    conn.execute(
        f"INSERT INTO main.{t} (_rowid_, {cols}) SELECT _rowid_, {cols} FROM src.{t}"
        f" WHERE _rowid_ IN (SELECT value FROM json_each(?)){projection.filter_sql}",
        (ids,),
    )
    return len(set(rids))


# -- the long-running process -----------------------------------------------


class Runner:
    """Runs publish cycles whenever data.db changes.

    It follows the private LiteFS node's ``/events`` stream, so a cycle starts
    within milliseconds of a commit; everything that commits while a cycle
    runs is batched into the next one. Should the stream drop, it polls
    data.db's ``-pos`` file until the stream is back.
    """

    def __init__(self, publisher: Publisher, litefs_url: str | None, poll_interval: float = 0.25):
        self.publisher = publisher
        self.litefs_url = litefs_url
        self.poll_interval = poll_interval
        self.wake = threading.Event()
        self.stopped = threading.Event()
        self.db_name = Path(publisher.data_db).name

    def _follow(self) -> None:
        while not self.stopped.is_set():
            try:
                for event in events(self.litefs_url):
                    if event is None or (
                        isinstance(event, TxEvent)
                        and event.db == self.db_name
                        # Its own trim changes nothing public: no cycle for it.
                        and event.pos.txid != self.publisher.own_txid
                    ):
                        self.wake.set()
                    if self.stopped.is_set():
                        return
            except Exception as exc:  # the stream broke: poll until it is back
                log("publisher", f"LiteFS event stream: {exc}; retrying")
            self.stopped.wait(1.0)

    def run(self) -> None:
        if self.litefs_url:
            threading.Thread(target=self._follow, daemon=True).start()
        last = None
        failures = 0
        while not self.stopped.is_set():
            self.wake.wait(self.poll_interval)
            pos = Pos.read(self.publisher.data_db)
            if not self.wake.is_set() and (pos == last or pos.txid == self.publisher.own_txid):
                self.publisher.checkpoint()  # one deferred after an erasing cycle
                self.publisher.trim(idle=True)
                continue
            self.wake.clear()
            last = pos
            try:
                cycle = self.publisher.run_cycle()
                failures = 0
            except apsw.BusyError:
                self.wake.set()
                continue
            except Exception:
                # public.db is untouched (the cycle's transaction rolled back):
                # say so loudly, back off, and try again.
                failures += 1
                log("publisher", f"publish cycle failed (attempt {failures}):\n{traceback.format_exc()}")
                self.stopped.wait(min(10.0, 0.5 * 2**failures))
                self.wake.set()
                continue
            if cycle is not None:
                log(
                    "publisher",
                    f"cycle: data.db txid {cycle.private_txid} -> public.db txid {cycle.public_txid}"
                    f" ({cycle.duration_ms:.1f} ms, commit {cycle.commit_ms:.1f} ms, {cycle.rows_changed} rows,"
                    f" copied {list(cycle.tables_copied)},"
                    f" dropped {list(cycle.tables_dropped)})",
                )

"""Deciding what one publish cycle does: which tables to drop, copy whole
or change row by row, which views and saved queries public.db should hold,
judged inside the cycle's transaction from one data.db snapshot (attached
as ``src``) against public.db as it is (``main``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import apsw

from broadsheet.names import PUBLIC_TABLES
from primary import store
from primary.store import Projection, SpecError, TableShape
from primary.store.projection import copied_signature, project

from . import staging
from .staging import Staged
from .triggers import has_triggers, publishable, unrecorded


@dataclass
class Plan:
    """What one publish cycle will do, decided inside its transaction from
    one data.db snapshot; carried out by copy.apply, and filled in as it
    goes (rows copied, tables that failed, queries withdrawn)."""

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
    # Large first copies (staging.py): tables whose staging starts this
    # cycle, goes on, is erased (unpublished or changed meanwhile) or ends
    # (listed: made public); change-log rows of staged tables; and, once
    # carried out, each staged table's progress and whether staging goes on.
    stage_start: list[str] = field(default_factory=list)
    staging: dict[str, Staged] = field(default_factory=dict)
    erase: dict[str, Staged] = field(default_factory=dict)
    finish: dict[str, Staged] = field(default_factory=dict)
    stage_rows: dict[str, list[int]] = field(default_factory=dict)
    staging_progress: dict[str, dict] = field(default_factory=dict)
    staging_more: bool = False
    staging_moved: int = 0  # pages the staging work moved, for staging.Budget.learn

    @property
    def erases(self) -> bool:
        """Whether the cycle takes data out of public.db that must not linger:
        a table dropped or copied again (a narrower spec), or rows of a
        filtered table changed (a row may have left the filter)."""
        filtered = any(self.projections[t].spec.where for t in self.rows)
        return bool(self.drop or self.recopied or filtered or self.queries_changed or self.erase)

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
            or self.stage_start
            or self.staging
            or self.erase
            or self.finish
        )


def view_sql(conn: apsw.Connection, schema: str, view: str) -> str:
    return conn.execute(f"SELECT sql FROM {schema}.sqlite_master WHERE type = 'view' AND name = ?", (view,)).fetchone()[0]


def projections(
    conn: apsw.Connection, published: list[str], specs: dict
) -> tuple[dict[str, Projection], dict[str, str]]:
    """Every published table's projection, and the tables whose spec no
    longer fits (left out: fail closed, made private after the cycle), all
    judged in this cycle's snapshot of data.db."""
    shapes = {t: TableShape.read(conn, t, "src") for t in published}
    columns: dict[str, set[str]] = {}
    unfit: dict[str, str] = {}
    for table, shape in shapes.items():
        problem = store.misfit(conn, "src", table, specs[table], shape)
        if problem is None:
            # A foreign key may reference a published column, not a masked one.
            columns[table] = set(shape.published(specs[table])) - set(specs[table].masked)
        else:
            unfit[table] = problem
    made = {}
    for table in columns:
        try:
            made[table] = project(conn, table, specs[table], columns, shapes[table])
        except SpecError as exc:
            unfit[table] = str(exc)
    return made, unfit


def publishable_views(
    conn: apsw.Connection, schema: str, projections: dict[str, Projection], broken: dict[str, str]
) -> list[str]:
    """Listed views that compile against the public copies: they read
    nothing but published columns of published tables (so their text
    names nothing private either). A listed view that does not compile
    at all (a table it reads dropped, a column renamed away) goes into
    ``broken``, to be withdrawn: one view never stops a cycle."""
    listed = [r[0] for r in conn.execute(f"SELECT table_name FROM {schema}.{PUBLIC_TABLES} ORDER BY table_name")]
    candidates = set(store.views(conn, schema)) & set(listed)
    public = {t: list(p.visible) for t, p in projections.items()}
    found = []
    for view in sorted(candidates):
        try:
            reads = store.view_columns(conn, schema, view)
        except store.BrokenView as exc:
            broken[view] = exc.reason
            continue
        if not store.private_reads(reads, public):
            found.append(view)
    return found


class Planner:
    """Plans cycles on the publisher's connection, remembering between them
    what a plan may reuse: projections follow data.db's schema, the public
    tables, their specs and column records alone (computed again only when
    one of those has changed, not on every team write), and public.db's
    schema needs comparing only when data.db's has changed, or which tables
    are public has, since public.db last matched them (``synced``)."""

    def __init__(self, conn: apsw.Connection, batch_bytes: int = 0):
        self.conn = conn
        # A first copy likely larger than this is staged (staging.py); 0: never.
        self.batch_bytes = batch_bytes
        # What each table being staged by this publisher was staged under
        # (its projection's signature and spec): a staging this process did
        # not start, or whose spec changed, is erased and starts again.
        self.staging_under: dict[str, str] = {}
        # Who asked for each staged table: told by the cycle that lists it.
        self.staging_actors: dict[str, str] = {}
        # data.db's schema_version, and the public tables, when public.db
        # last matched them (a projection depends on both: foreign keys to
        # tables that are public).
        self.synced_schema: int | None = None
        self.synced_published: tuple[str, ...] | None = None
        # The last projections (and unfit tables), and what they were made of.
        self._projected_key: tuple | None = None
        self._projected: tuple[dict[str, Projection], dict[str, str]] = ({}, {})

    def synced(self, plan: Plan) -> None:
        """public.db matches ``plan``'s snapshot now."""
        self.synced_schema = plan.schema_version
        self.synced_published = tuple(plan.published)

    def plan(self, processed: int, force_copy: set[str], audited: int, queries_logged: int) -> Plan:
        """Plan the next cycle (inside its transaction on public.db: the
        first read of ``src`` starts the snapshot it is made from), given
        how far the change log, the audit log and the saved-query log were
        taken in, and the tables whose change log has a gap."""
        conn = self.conn
        staged = staging.read(conn)
        # A staged table is no copy yet: never listed, its rows not public.
        present = set(store.user_tables(conn, "main")) - set(staged)
        published = publishable(conn, "src")
        # The identity check again, inside this cycle's snapshot: a listed
        # table without the change-log triggers was re-created after
        # maintain_triggers looked (left out, so dropped from public.db, and
        # made private right after the cycle), or listed after it looked (it
        # waits for its triggers and is copied next cycle).
        untracked = [t for t in published if not has_triggers(conn, "src", t)]
        rebuilt = [t for t in untracked if t in present]
        # Listed by a direct write since maintain_triggers looked, its
        # columns not recorded yet: it waits for the next cycle too.
        not_recorded = set(unrecorded(conn, "src"))
        waiting = [t for t in untracked if t not in present] + [t for t in published if t in not_recorded and t not in untracked]
        published = [t for t in published if t not in untracked and t not in not_recorded]
        plan = Plan(published=published, rebuilt=rebuilt, waiting=waiting)
        specs = store.public_specs(conn, "src")
        records = dict(conn.execute(f"SELECT table_name, column_identity FROM src.{PUBLIC_TABLES}").fetchall())
        plan.schema_version = conn.execute("PRAGMA src.schema_version").fetchone()[0]
        # Projections follow data.db's schema, the public tables, their
        # specs and column records alone: computed again only when one of
        # those has changed, not on every team write.
        key = (plan.schema_version, tuple((t, specs[t].to_json(), records[t]) for t in published))
        if key != self._projected_key:
            self._projected = projections(conn, published, specs)
            self._projected_key = key
        plan.projections, plan.unfit = dict(self._projected[0]), dict(self._projected[1])
        published = plan.published = [t for t in published if t not in plan.unfit]
        for table, state in staged.items():
            projection = plan.projections.get(table)
            under = self.staging_under.get(table)
            if (
                state.state == staging.ERASING
                or projection is None
                or table not in published
                or table in force_copy
                or under != _staging_key(projection)
                or projection.signature() != copied_signature(conn, table)
            ):
                plan.erase[table] = state  # its staged rows go; it starts again once they have
                self.staging_under.pop(table, None)
            elif state.state == staging.DONE:
                plan.finish[table] = state
                present.add(table)  # a copy now: listed by this cycle
                self.staging_under.pop(table, None)
            else:
                plan.staging[table] = state
        # Listed once their copy is whole: not while staged or being erased.
        held = set(plan.staging) | set(plan.erase)
        plan.drop = sorted(present - set(published))
        # Schemas need comparing only when data.db's has changed since the
        # last cycle (public.db's changes only through the publisher), or
        # which tables are public has (foreign keys follow them).
        recheck = plan.schema_version != self.synced_schema or tuple(published) != self.synced_published
        for table in published:
            projection = plan.projections[table]
            if table in held:
                continue
            if table not in present and staging.wants_staging(conn, projection, self.batch_bytes):
                plan.stage_start.append(table)
                self.staging_under[table] = _staging_key(projection)
                continue
            if (
                table not in present
                or table in force_copy
                or (recheck and projection.signature() != copied_signature(conn, table))
            ):
                plan.copy.append(table)
        plan.max_change = conn.execute("SELECT max(id) FROM src._public_changes").fetchone()[0]
        if plan.max_change is not None:
            for tbl, rid in conn.execute(
                "SELECT tbl, rid FROM src._public_changes WHERE id > ? AND id <= ? ORDER BY id",
                (processed, plan.max_change),
            ):
                if tbl in plan.staging and rid is not None:
                    plan.stage_rows.setdefault(tbl, []).append(rid)
                elif tbl in published and tbl not in plan.copy and tbl not in held and tbl not in plan.stage_start:
                    if rid is None:
                        # A WITHOUT ROWID table, or a new spec: copied whole.
                        plan.copy.append(tbl)
                        plan.rows.pop(tbl, None)
                    else:
                        plan.rows.setdefault(tbl, []).append(rid)
        plan.recopied = [t for t in plan.copy if t in present]
        # What the listing, views and metadata see: staged tables are not public yet.
        held |= set(plan.stage_start)
        published = plan.published = [t for t in published if t not in held]
        plan.views = publishable_views(conn, "src", {t: plan.projections[t] for t in published}, plan.broken_views)
        present_views = {name: sql for name, sql in conn.execute("SELECT name, sql FROM main.sqlite_master WHERE type = 'view'")}
        wanted_views = {v: view_sql(conn, "src", v) for v in plan.views}
        # Stale views go before the tables change; new ones come after.
        plan.drop_views = [v for v, sql in present_views.items() if wanted_views.get(v) != sql]
        plan.create_views = [v for v in plan.views if v in plan.drop_views or v not in present_views]
        plan.present_views = set(present_views)
        # Who asked for what this cycle publishes: the flips since the last
        # cycle, read in this same snapshot.
        for audit_id, actor, table in conn.execute(
            "SELECT id, actor, table_name FROM src._public_audit_log WHERE id > ? ORDER BY id", (audited,)
        ):
            plan.actors[table] = actor or ""
            plan.audit_id = audit_id
        for log_id, actor, name in conn.execute(
            "SELECT id, actor, name FROM src._public_queries_log WHERE id > ? AND operation IN ('save', 'remove')"
            " ORDER BY id",
            (queries_logged,),
        ):
            plan.query_actors[name] = actor
            plan.queries_log_id = log_id
        for table in plan.stage_start:
            self.staging_actors[table] = plan.actors.get(table, "")
        for table in plan.finish:
            if table in self.staging_actors:
                plan.actors.setdefault(table, self.staging_actors.pop(table))
        current = [n for (n,) in conn.execute(f"SELECT table_name FROM main.{PUBLIC_TABLES} ORDER BY table_name")]
        plan.public_tables_changed = current != sorted(published + plan.views)
        shown = {store.INSTANCE, *published, *plan.views}
        wanted = {}
        for t, m in store.metadata(conn, "src").items():
            if t in shown and (m := _published_columns(conn, m, plan.projections.get(t), t)):
                wanted[t] = m
        if wanted != store.metadata(conn, "main"):
            plan.metadata = wanted
        plan.queries_public = store.queries.published(conn, "main")
        plan.queries_live = store.queries.published(conn, "src", live=True)
        plan.queries_due = plan.queries_live != plan.queries_public
        return plan


def _staging_key(projection: Projection) -> str:
    return repr((projection.signature(), projection.spec.to_json()))


def _published_columns(conn, fields: dict, projection, name: str) -> dict:
    """A metadata row as read nodes may see it: the descriptions of the
    columns the copy has only (a private column's name never reaches
    public.db), every column of a published view."""
    described = fields.get(store.COLUMNS)
    if not described:
        return fields
    if projection is not None:
        shown = set(projection.visible or projection.columns)
    elif name:  # a view: its own columns
        shown = {row[1] for row in conn.execute("SELECT * FROM pragma_table_info(?, 'src')", (name,))}
    else:
        shown = set()
    kept = {c: d for c, d in described.items() if c in shown}
    rest = {k: v for k, v in fields.items() if k != store.COLUMNS}
    return {**rest, store.COLUMNS: kept} if kept else rest

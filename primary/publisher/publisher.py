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

import time
from pathlib import Path

import apsw

from broadsheet.litefs import Pos
from broadsheet.log import log
from broadsheet.names import PUBLIC_METADATA, PUBLIC_TABLES, PUBLIC_TXID
from primary import store
from primary.settings import settings

from . import copy, published_queries, staging, triggers
from .cycle import Cycle, CycleLog, cycle_log_path
from .plan import Plan, Planner
from .watermark import Watermark
from .withdrawals import Withdrawals, withdrawals_path


class Publisher:
    """Keeps public.db equal to the published projection of data.db: one
    ``run_cycle`` plans (plan.py) and carries out (copy.py) one cycle, in
    one public.db transaction, then records it (cycle.py), moves the
    watermark (watermark.py) and withdraws what it had to leave out."""

    def __init__(
        self,
        data_db: str | Path,
        public_db: str | Path,
        watermark_file: str | Path | None = None,
        batch_bytes: int | None = None,
    ):
        self.data_db = str(data_db)
        self.public_db = str(public_db)
        self.watermark_file = watermark_file
        self.writer = store.connect(self.data_db)
        # As on the cycle's connection below: a view naming a column that is
        # gone does not compile (never reads the name as a string), whichever
        # connection judges it.
        self.writer.config(apsw.SQLITE_DBCONFIG_DQS_DML, 0)
        store.ensure_schema(self.writer)
        self.conn = store.connect(self.public_db)
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
        # public.db's TXID as the publisher's last commit left it (None: not
        # known, read it): what its next transaction will become, less one.
        self._public_txid: int | None = None
        with store.immediate(self.conn):
            fresh = not self.conn.execute("SELECT 1 FROM main.sqlite_master WHERE name = ?", (PUBLIC_TXID,)).fetchall()
            self.conn.execute(f"CREATE TABLE IF NOT EXISTS main.{PUBLIC_TABLES} (table_name TEXT PRIMARY KEY)")
            # The instance's and the public tables' metadata, which read
            # nodes show where Datasette shows metadata.
            self.conn.execute(
                f"CREATE TABLE IF NOT EXISTS main.{PUBLIC_METADATA} (table_name TEXT PRIMARY KEY,"
                f" {', '.join(f'{k} TEXT' for k in store.METADATA_FIELDS)}, {store.COLUMNS} TEXT)"
            )
            if store.COLUMNS not in {r[1] for r in self.conn.execute(f"PRAGMA main.table_info({PUBLIC_METADATA})")}:
                # A public.db from before column descriptions.
                self.conn.execute(f"ALTER TABLE main.{PUBLIC_METADATA} ADD COLUMN {store.COLUMNS} TEXT")
            self.conn.execute(published_queries.PUBLIC_SCHEMA)
            if fresh:  # this transaction changes public.db: it names its own TXID too
                self.conn.execute(
                    f"CREATE TABLE main.{PUBLIC_TXID} (id INTEGER PRIMARY KEY CHECK (id = 1), txid INTEGER NOT NULL)"
                )
                self._record_txid()
        self._maintained: tuple | None = None
        # Tables whose change log has a gap (their triggers were missing, as
        # after DROP TABLE + CREATE TABLE): copied whole in the next cycle.
        self._force_copy: set[str] = set()
        # A first copy larger than this is staged over several cycles, each
        # changing about this much of public.db (staging.py); 0: never.
        self.batch_bytes = settings().publish_batch_bytes if batch_bytes is None else batch_bytes
        self.budget = staging.Budget(self.batch_bytes, self.conn.execute("PRAGMA main.page_size").fetchone()[0])
        # Staging has more to do: the next cycle runs at once (runner.py).
        self.staging_due = False
        # What one cycle's plan may reuse from the last (plan.Planner).
        self.planner = Planner(self.conn, self.batch_bytes)
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
        self.cycle_log = CycleLog(cycle_log_path(watermark_file)) if watermark_file else None
        self.withdrawals = Withdrawals(withdrawals_path(watermark_file)) if watermark_file else None
        # Audit log (and saved-query log) entries up to these are told by an
        # earlier cycle.
        last = self.cycle_log.read(1) if self.cycle_log else []
        self._audited = last[0].audit_id if last else 0
        self._queries_logged = last[0].queries_log_id if last else 0
        self._processed = self._resumed_position()
        # Signs each commit and says when public.db was written by anyone
        # else (signer.py); None for a publisher on plain files.
        self.signer = None
        # Why the next cycle rebuilds public.db (it was written behind the
        # publisher's back), when it must.
        self._heal: str | None = None

    def sign_releases(self, data_dir: str | Path) -> None:
        """Sign every public.db commit from now on (public.db on LiteFS,
        whose data directory is ``data_dir``)."""
        from .signer import Signer, signing_key

        with store.immediate(self.writer):
            key = signing_key(self.writer)
        self.signer = Signer(self.public_db, data_dir, key)

    def check_public_db(self) -> bool:
        """Whether public.db is still what this publisher last committed;
        if not, the next cycle rebuilds it (audit-logged now)."""
        if self.signer is None or self._heal is not None:
            return self._heal is None
        why = self.signer.tampered()
        if why is None:
            return True
        self._heal = why
        log("publisher", f"public.db was written behind the publisher's back: {why}; rebuilding it")
        with store.immediate(self.writer):
            from .signer import record_heal

            record_heal(self.writer, why, self.watermark_file)
        return False

    def _resumed_position(self) -> int:
        """Where the change log was applied up to when the watermark was last
        written, if nothing has moved under it since: public.db is at the
        very TXID the watermark names (no cycle committed after it), and
        data.db is not behind it. Otherwise 0: the first cycle applies again
        whatever the log holds (idempotent, only dearer). A restore puts its
        entries above every id the log had, so they are never skipped."""
        mark = Watermark.read(self.watermark_file) if self.watermark_file else None
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
    def maintain_triggers(self) -> None:
        """Install change-log triggers on every published table and remove them
        from tables no longer published (triggers.maintain), unless nothing
        they depend on has changed since the last time."""
        key = triggers.maintenance_key(self.writer)
        if key == self._maintained:
            return
        self._force_copy |= triggers.maintain(self.writer, self.conn, self._processed)
        self._maintained = triggers.maintenance_key(self.writer)

    def _record_txid(self) -> None:
        """Inside a write transaction on public.db: record the TXID it will
        become. The publisher is public.db's only writer and holds its write
        lock, and LiteFS gives each commit the next TXID (read back after
        each cycle's commit, so a cycle reads public.db's position once)."""
        last = Pos.read(self.public_db).txid if self._public_txid is None else self._public_txid
        txid, self._public_txid = last + 1, None  # known again once the commit is read back
        self.conn.execute(f"INSERT OR REPLACE INTO main.{PUBLIC_TXID} (id, txid) VALUES (1, ?)", (txid,))

    # -- one cycle ---------------------------------------------------------
    def run_cycle(self) -> Cycle | None:
        """Bring public.db up to date with data.db. Returns the cycle, or None
        when there was nothing to publish."""
        self.maintain_triggers()
        if self.signer is not None:
            self.signer.follow_key(self.writer)
        healing = not self.check_public_db()
        if healing:
            # Every published table copied again, everything else dropped,
            # whatever the planner remembers of public.db.
            self.planner = Planner(self.conn, self.batch_bytes)
            self._force_copy |= set(store.public_tables(self.writer))
            self._public_txid = None  # read again: the writes behind its back had TXIDs too
        started_at, t0 = store.now(), time.perf_counter()
        before = Pos.read(self.data_db)
        conn = self.conn
        conn.status(apsw.SQLITE_DBSTATUS_CACHE_WRITE, True)  # pages this cycle's commit writes, from zero
        conn.execute("BEGIN IMMEDIATE")
        try:
            # The first read of src starts the snapshot the plan is made from.
            plan = self.planner.plan(self._processed, self._force_copy, self._audited, self._queries_logged)
            if plan.empty and not healing:
                conn.execute("ROLLBACK")
                self.checkpoint()
                self.planner.synced(plan)
                self._processed = max(self._processed, plan.max_change or 0)
                self._audited = max(self._audited, plan.audit_id)  # flips that changed nothing public
                self._queries_logged = max(self._queries_logged, plan.queries_log_id)
                self._follow_up(plan, before.txid)
                self.staging_due = False
                return None
            rows_changed = copy.apply(conn, plan, self.budget)
            self._record_txid()
            commit_started = time.perf_counter()
            conn.execute("COMMIT")
            if plan.erases:
                self._checkpoint_due = True
            self.checkpoint()
            commit_ms = (time.perf_counter() - commit_started) * 1000
            if plan.staging_moved:
                self.budget.learn(plan.staging_moved, conn.status(apsw.SQLITE_DBSTATUS_CACHE_WRITE, True)[0])
            self.staging_due = plan.staging_more
            self._force_copy.difference_update(plan.copy)
            self._force_copy.difference_update(plan.stage_start)  # staged from this snapshot on
            self.planner.synced(plan)
        except BaseException:
            if not conn.getautocommit():
                conn.execute("ROLLBACK")
            raise
        public = Pos.read(self.public_db)
        self._public_txid = public.txid
        if self.signer is not None:
            self.signer.committed(public)
        self._heal = None
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
            published=tuple(t for t in plan.copy if t not in plan.recopied and t not in plan.failed)
            + tuple(plan.finish)
            + tuple(created),
            unpublished=tuple(t for t in plan.drop if t not in plan.copy) + tuple(gone),
            recopied=tuple(t for t in plan.recopied if t not in plan.failed),
            rows_by_table={**dict(plan.rows_by_table), **{t: s.copied for t, s in plan.finish.items()}},
            actors=dict(plan.actors),
            metadata_changed=plan.metadata is not None,
            audit_id=max(plan.audit_id, self._audited),
            queries_changed=plan.queries_changed,
            query_changes=dict(plan.query_changes),
            queries_log_id=max(plan.queries_log_id, self._queries_logged),
            staging=dict(plan.staging_progress),
        )
        self._audited = cycle.audit_id
        self._queries_logged = cycle.queries_log_id
        self._processed = max(self._processed, plan.max_change or 0)
        self._record(cycle)
        self._follow_up(plan, before.txid, public.txid)
        self.trim(idle=False)
        return cycle

    def _follow_up(self, plan: Plan, private_txid: int, public_txid: int | None = None) -> None:
        """After a cycle: tables it left out are dealt with at once (rebuilt
        or unfit ones made private and audit-logged, newly listed ones given
        their triggers, which wakes the next cycle), and the watermark moves
        only if nothing listed is still waiting to be copied, so that a
        bookmark never points before a publish it promises."""
        withdrawn = {t: f"could not be copied: {why}" for t, why in plan.failed.items()}
        withdrawn |= {v: f"view no longer compiles: {why}" for v, why in plan.broken_views.items()}
        if withdrawn:
            with store.immediate(self.writer):
                for name, reason in withdrawn.items():
                    # Judged again in the writer's snapshot: a view fixed meanwhile stays.
                    if name in plan.broken_views and self._still_broken(name) is None:
                        continue
                    if store.fail_closed(self.writer, name, reason):
                        log("publisher", f"{name!r} withdrawn: {reason}")
        if plan.queries_left_out:
            for name in store.queries.withdraw(self.writer, plan.queries_left_out):
                log("publisher", f"saved query {name!r} withdrawn: {plan.queries_left_out[name][1]}")
        if plan.rebuilt or plan.unfit or plan.waiting or plan.failed:
            self._maintained = None
            self.maintain_triggers()
        # A table left out (waiting for triggers, rebuilt, unfit) is made
        # private or copied by the cycle this follow-up wakes: the watermark
        # moves then, so no bookmark claims a TXID that lacks a publish.
        # So does a staging (staging.py): the watermark moves with the cycle
        # that lists the staged table, whose TXID is the publish's.
        if not (plan.waiting or plan.rebuilt or plan.unfit or plan.staging_more):
            self._advance(private_txid, public_txid)
        if self.withdrawals is not None:
            self.withdrawals.update(self.writer)

    def _still_broken(self, view: str) -> str | None:
        try:
            store.view_columns(self.writer, "main", view)
        except store.BrokenView as exc:
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
            Watermark(private_txid, public_txid, self._processed).write(self.watermark_file)


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
        mark = Watermark.read(self.watermark_file) if self.watermark_file else None
        with store.immediate(self.writer):
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


    own_txid: int | None = None  # data.db TXID of the publisher's own last trim

    def _record(self, cycle: Cycle) -> None:
        if self.cycle_log is not None:
            self.cycle_log.append(cycle)

"""Datasette events for every flip, whichever path made it.

A table is made public or private from the team's Datasette (the table
action), the control plane, the CLI (through the control plane, or on a
data.db directly), or by the publisher itself (a dropped, rebuilt or unfit
table). Each of them writes ``_public_audit_log`` in the same data.db
transaction as the flip. The team's Datasette follows that log and fires one
event per entry, so a plugin loaded into it sees every flip once, from
whichever path, in the order they were made.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from datasette.events import Event

from broadsheet.litefs import Pos
from broadsheet.log import log
from primary import publishing, store

from .cycle import Cycle, CycleLog


@dataclass
class FlipEvent(Event):
    """A table's visibility changed: ``actor`` is who asked (the audit log's
    actor, ``{"id": "alice"}``); the TXIDs are data.db's and public.db's
    that hold the change (``public_txid`` None: the publisher had not got
    there in time)."""

    database: str
    table: str
    private_txid: int
    public_txid: int | None
    spec: str | None = None


@dataclass
class PublishTableEvent(FlipEvent):
    """Event name: ``broadsheet-publish``. A table was made public, or what
    of it is public changed (``spec``: the PublishSpec as JSON, null for the
    whole table)."""

    name = "broadsheet-publish"


@dataclass
class UnpublishTableEvent(FlipEvent):
    """Event name: ``broadsheet-unpublish``. A table was made private
    (``reason``: why, when broadsheet itself did it: its columns moved under
    its spec, it was dropped or rebuilt, a view no longer compiles)."""

    name = "broadsheet-unpublish"
    reason: str | None = None


def event_for(entry: dict, database: str, private_txid: int, public_txid: int | None) -> Event:
    """The event of one audit log entry (``store.audit_entries``)."""
    common = dict(
        actor={"id": entry["actor"]} if entry["actor"] else None,
        database=database,
        table=entry["table_name"],
        private_txid=private_txid,
        public_txid=public_txid,
    )
    if entry["operation"] == "publish":
        return PublishTableEvent(**common, spec=entry["spec_after"])
    return UnpublishTableEvent(**common, reason=entry.get("reason"))


CYCLES_READ = 1000


def txids_of(entry: dict, cycles: list[Cycle], private_txid: int, public_txid: int | None) -> tuple[int, int | None]:
    """The data.db and public TXIDs that hold an audited flip: the first
    publish cycle whose snapshot held the entry (``cycles``, the newest
    CYCLES_READ of the publisher's cycle log, newest first), else what the
    flip recorded, else the watermark's (``private_txid``, ``public_txid``)."""
    holding = [c for c in cycles if c.audit_id >= entry["id"]]
    # Every cycle read holding it, and more not read: the first may be older.
    if holding and (len(holding) < len(cycles) or len(cycles) < CYCLES_READ):
        return holding[-1].private_txid, holding[-1].public_txid
    if entry["public_txid"] is not None:
        return entry["private_txid"], entry["public_txid"]
    return private_txid, public_txid


class AuditFollower:
    """Fires ``track_event`` on ``datasette`` for each new audit log entry.

    Its place in the log is kept in ``cursor_file`` (beside the watermark),
    so a restart fires what arrived while it was down and nothing twice; the
    first start of all begins at the end of the log rather than replaying
    history. Each event waits (bounded) for the publisher, so that it carries
    the public TXID that holds the flip."""

    def __init__(self, datasette, data_db: str, cursor_file: str | os.PathLike, database: str,
                 cycle_log: str | os.PathLike | None = None, interval: float = 0.1, publish_timeout: float = 10.0):
        self.datasette = datasette
        self.cycle_log = cycle_log
        self.data_db = data_db
        self.cursor_file = Path(cursor_file)
        self.database = database
        self.interval = interval
        self.publish_timeout = publish_timeout
        self._seen_pos: Pos | None = None  # data.db's position when the log was last read

    def _read_cursor(self) -> int | None:
        try:
            return int(self.cursor_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _write_cursor(self, audit_id: int) -> None:
        tmp = self.cursor_file.with_name(self.cursor_file.name + ".tmp")
        tmp.write_text(f"{audit_id}\n")
        os.replace(tmp, self.cursor_file)

    async def _entries_after(self, audit_id: int | None) -> tuple[int, list[dict]]:
        """The data.db TXID (at least that of every entry returned) and the
        entries after ``audit_id``, oldest first. With
        ``audit_id`` None: only the end of the log.

        Read through Datasette's own connection to data.db, never one of
        another SQLite library in this process: closing that one's file
        would drop every POSIX lock this process holds on data.db, the
        write API's included."""
        db = self.datasette.get_database(self.database)
        try:
            if audit_id is None:
                last = (await db.execute("SELECT coalesce(max(id), 0) FROM _public_audit_log")).first()[0]
                entries = [{"id": last}]
            else:
                rows = await db.execute(
                    f"SELECT {', '.join(store.AUDIT_COLUMNS)} FROM _public_audit_log"
                    " WHERE id > ? ORDER BY id",
                    (audit_id,),
                )
                entries = [dict(zip(store.AUDIT_COLUMNS, row)) for row in rows.rows]
        except Exception as exc:  # no audit log yet (a data.db broadsheet has not touched)
            if "no such table" not in str(exc):
                raise
            entries = []
        # Read after the entries: the TXID of every one of them, or later.
        return Pos.read(self.data_db).txid, entries

    async def run(self) -> None:
        cursor = self._read_cursor()
        while True:
            try:
                cursor = await self._step(cursor)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep following whatever happens
                log("events", f"following the audit log: {exc!r}")
            await asyncio.sleep(self.interval)

    async def _step(self, cursor: int | None) -> int | None:
        # The log changes only with data.db: read it only when its LiteFS
        # position (a small file) has moved.
        pos = Pos.read(self.data_db)
        if cursor is not None and pos == self._seen_pos and pos.txid:  # (0: not on LiteFS)
            return cursor
        private_txid, entries = await self._entries_after(cursor)
        self._seen_pos = pos
        if cursor is None:
            if entries:  # (none: no audit log yet)
                cursor = entries[0]["id"]
                self._write_cursor(cursor)
            return cursor
        if not entries:
            return cursor
        try:
            public_txid = (await publishing.wait_published(private_txid, self.publish_timeout)).public_txid
        except publishing.PublishTimeout:
            public_txid = None
        # The publisher records a cycle before it moves the watermark.
        cycles = CycleLog.read_file(self.cycle_log, CYCLES_READ) if self.cycle_log else []
        for entry in entries:
            txids = txids_of(entry, cycles, private_txid, public_txid)
            await self.datasette.track_event(event_for(entry, self.database, *txids))
            cursor = entry["id"]
            self._write_cursor(cursor)
        return cursor


def cursor_file(watermark_file: str | os.PathLike) -> Path:
    return Path(watermark_file).with_name("audit-events-cursor")

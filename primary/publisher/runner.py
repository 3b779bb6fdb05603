"""The publisher as a long-running process: a publish cycle whenever
data.db changes, following the private LiteFS node's event stream, and
the embargoes (store/schedule.py) applied at their moment.

Why here: the runner is the one process on the primary that runs as long
as publishing does, already wakes every ``poll_interval`` and is the one
that makes a flip reach public.db, so a due entry is applied and copied
by the same loop, a fraction of a second after its moment. The entry and
its flip are one data.db commit, so a restart (of this process, or a
promotion that starts it on another node) applies what fell due while it
was down, once."""

from __future__ import annotations

import threading
import traceback
from datetime import datetime
from pathlib import Path

import apsw

from broadsheet.litefs import Pos, TxEvent, events
from broadsheet.log import log
from primary import store
from primary.store import schedule

from .publisher import Publisher


class Runner:
    """Runs publish cycles whenever data.db changes.

    It follows the private LiteFS node's ``/events`` stream, so a cycle starts
    within milliseconds of a commit; everything that commits while a cycle
    runs is batched into the next one. Should the stream drop, it polls
    data.db's ``-pos`` file until the stream is back.
    """

    def __init__(self, publisher: Publisher, litefs_url: str | None, poll_interval: float = 0.25, pacer=None):
        self.publisher = publisher
        # Between two staging batches: until the read nodes have the last (pacing.py).
        self.pacer = pacer
        self.litefs_url = litefs_url
        self.poll_interval = poll_interval
        self.wake = threading.Event()
        self.stopped = threading.Event()
        self.db_name = Path(publisher.data_db).name
        self._next_due: str | None = None  # the soonest pending embargo, as of _schedule_pos
        self._schedule_pos: Pos | None = None
        self._unrecorded: list[tuple[int, int]] = []  # (audit id, data.db TXID) of applied embargoes

    def _record_txids(self, cycle) -> None:
        """The public TXID of each applied embargo that ``cycle`` copied."""
        done = [(a, t) for a, t in self._unrecorded if cycle.private_txid >= t]
        for audit_id, private_txid in done:
            store.audit_txids(self.publisher.writer, audit_id, private_txid, cycle.public_txid)
        self._unrecorded = [e for e in self._unrecorded if e not in done]

    def _apply_schedule(self) -> None:
        """Apply the embargoes whose moment has come (read again from
        data.db only when data.db has changed)."""
        pos = Pos.read(self.publisher.data_db)
        # Without LiteFS (TXID 0) there is no position to tell a change by.
        if pos != self._schedule_pos or pos.txid == 0:
            self._schedule_pos, self._next_due = pos, schedule.next_moment(self.publisher.writer)
        if self._next_due is None or self._next_due > schedule.moment_text(schedule.utc_now()):
            return
        for entry, outcome, audit_id in schedule.apply_due(self.publisher.writer):
            log("publisher", f"scheduled {entry.as_dict()['operation']} of {entry.table!r} for {entry.at}: {outcome}")
            if audit_id is not None:
                # Its TXIDs go in its audit entry once a cycle has copied it,
                # as the control plane records those of the flips it makes.
                self._unrecorded.append((audit_id, Pos.read(self.publisher.data_db).txid))
        self._schedule_pos, self._next_due = None, None
        self.wake.set()

    def _wait(self) -> float:
        """How long to wait for a change: no longer than until the next embargo."""
        if self._next_due is None:
            return self.poll_interval
        due = datetime.fromisoformat(self._next_due)
        return max(0.0, min(self.poll_interval, (due - schedule.utc_now()).total_seconds()))

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
            self.wake.wait(self._wait())
            try:
                self._apply_schedule()
            except apsw.BusyError:
                pass  # a team write holds the lock: the next turn applies it
            except Exception:
                # Nothing was applied (each entry is one transaction with its
                # flip): say so, and try again on the next turn.
                log("publisher", f"applying the schedule failed:\n{traceback.format_exc()}")
            pos = Pos.read(self.publisher.data_db)
            idle = not self.wake.is_set() and (pos == last or pos.txid == self.publisher.own_txid)
            if idle and not self.publisher.check_public_db():
                idle = False  # written behind its back: a cycle rebuilds it now
            if idle:
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
            if self.publisher.staging_due:
                if self.pacer is not None and cycle is not None:
                    self.pacer.until_applied(cycle.public_txid, self.stopped)
                self.wake.set()  # a large first copy's next batch (staging.py)
            if cycle is not None and self._unrecorded:
                try:
                    self._record_txids(cycle)
                except apsw.Error as exc:
                    log("publisher", f"recording a scheduled flip's TXIDs: {exc}")
            if cycle is not None:
                log(
                    "publisher",
                    f"cycle: data.db txid {cycle.private_txid} -> public.db txid {cycle.public_txid}"
                    f" ({cycle.duration_ms:.1f} ms, commit {cycle.commit_ms:.1f} ms, {cycle.rows_changed} rows,"
                    f" copied {list(cycle.tables_copied)},"
                    f" dropped {list(cycle.tables_dropped)})",
                )

"""The publisher as a long-running process: a publish cycle whenever
data.db changes, following the private LiteFS node's event stream."""

from __future__ import annotations

import threading
import traceback
from pathlib import Path

import apsw

from broadsheet.litefs import Pos, TxEvent, events
from broadsheet.log import log

from .publisher import Publisher


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
            if cycle is not None:
                log(
                    "publisher",
                    f"cycle: data.db txid {cycle.private_txid} -> public.db txid {cycle.public_txid}"
                    f" ({cycle.duration_ms:.1f} ms, commit {cycle.commit_ms:.1f} ms, {cycle.rows_changed} rows,"
                    f" copied {list(cycle.tables_copied)},"
                    f" dropped {list(cycle.tables_dropped)})",
                )

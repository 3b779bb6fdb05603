"""What a read node does while its LiteFS stalls (SIGSTOP, a frozen VM, a
LiteFS that stops answering): it answers every visitor within a bound
instead of hanging with LiteFS.

Reads of the mount are bounded by ``replica/position.py`` (``Stalled``
after ``BROADSHEET_STALL_TIMEOUT`` seconds). A request that finds LiteFS
stalled is answered from memory if it can be (a 304 for the node's last
ETag, or a response kept at the last position, which a stalled LiteFS
cannot have moved), else with 503 and ``Retry-After``; the health check
(``/-/replication.json``) answers 503 too, so whatever routes visitors can
route around the node. A request already running when LiteFS stalls (its
SQL waiting in one of Datasette's threads) is watched: once it has run for
the bound without starting its answer, the watchdog asks LiteFS for the
position, and if that read does not come back either, the request is let go
and answered 503. Its thread finishes when LiteFS resumes; Datasette has a
fixed number of them (``num_sql_threads``), and the node reads the mount
from one thread of its own, so a stall holds a bounded number of threads.
Nothing restarts: everything answers again as soon as LiteFS does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from broadsheet.asgi import error_body, respond

from .position import PositionWatcher, Stalled

RETRY = [(b"retry-after", b"1")]


def message(exc: Stalled, txid: int) -> str:
    return (
        f"This read node's LiteFS has not answered for {exc.seconds:.1f}s: until it does, the node serves only"
        f" what it keeps in memory (public TXID {txid}). Retry shortly, or ask another node."
    )


async def refuse(send, exc: Stalled, txid: int) -> None:
    await respond(send, 503, error_body(503, message(exc, txid), txid=txid, stalled=True), RETRY)


@dataclass
class Watched:
    """One request the watchdog watches: ``send`` notes when its answer
    starts; ``abandoned`` says why it was let go, if it was."""

    since: float
    send: object = None
    started: bool = False
    abandoned: Stalled | None = None


class Watchdog:
    """The requests of one node that are past their position read, and a
    task that lets go of those LiteFS holds up (while any runs)."""

    def __init__(self, position: PositionWatcher):
        self.position = position
        self._running: dict[asyncio.Task, Watched] = {}
        self._watcher: asyncio.Task | None = None

    @contextlib.contextmanager
    def watching(self, send):
        """Watch the current request while in this block; should it be let
        go, the block ends with CancelledError and the Watched it yields says
        why (``abandoned``)."""
        task = asyncio.current_task()
        watched = Watched(time.monotonic())

        async def noting(message):
            if message["type"] == "http.response.start":
                watched.started = True
            await send(message)

        watched.send = noting
        self._running[task] = watched
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        try:
            yield watched
        finally:
            self._running.pop(task, None)

    async def _watch(self) -> None:
        bound = self.position.stall_timeout
        while self._running:
            await asyncio.sleep(bound / 2)
            now = time.monotonic()
            held = [t for t, w in self._running.items() if not w.started and not w.abandoned and now - w.since >= bound]
            if not held:
                continue
            try:
                await self.position.fresh()
                continue  # LiteFS answers: those requests are only slow
            except OSError:
                continue  # the mount is gone: LiteFS is being restarted, and the node with it
            except Stalled as exc:
                for task in held:
                    watched = self._running.get(task)
                    if watched is not None and not watched.started:
                        watched.abandoned = exc
                        task.cancel()

"""The replication position of a read node's public.db, watched once for
everyone who waits on it, and every read of the node's LiteFS mount that the
event loop needs, bounded in time.

Every request reads the position once (its cache key, ETag and listing
depend on it). Opening a file through FUSE costs several round trips to
LiteFS (lookup, open, read, release: 0.3–0.7 ms on two busy cores), so the
watcher keeps the ``-pos`` file open and reads it with one ``pread`` (about
70 µs): LiteFS answers every read of it afresh, so an open file never shows
an old position.

A read through FUSE waits for LiteFS to answer, however long that takes: a
LiteFS that stalls (SIGSTOP, a frozen VM) would hold the event loop, and
with it every visitor and the health check, for as long as it stalls. So
the event loop never reads the mount itself: one thread per node does
(``fresh``, ``call``), and a caller waits for it at most ``stall_timeout``
seconds. Once LiteFS has not answered a read for that long the node is
*stalled*: ``Stalled`` is raised at once to everyone asking, until the
read returns, which LiteFS's resuming brings about by itself. While LiteFS
is stalled it applies nothing, so the last position read is still the
node's: a response kept for it is still exact. Requests asking at once
share one read.

A visitor holding a bookmark ("at least TXID N") waits until LiteFS has
applied N. LiteFS's ``-pos`` file cannot be watched with inotify through
FUSE, so the watcher polls it: one task per node, one read per interval,
however many visitors wait, and only while someone does. Every waiter sleeps
on one event that the watcher sets when the position moves. Waits are
bounded in time and in number: a node does not park more than
``max_waits`` requests.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import os
import threading
import time
import weakref
from pathlib import Path

from broadsheet.litefs import Pos

# How often the watcher reads the -pos file while anyone waits: a bookmark is
# served at most this long after LiteFS has applied its TXID. (A read through
# FUSE costs tens of microseconds; at 5 ms a node with waiters spends under 1%
# of its event loop on them, however many there are.)
POLL_INTERVAL = 0.005
# Reads between two openings of the -pos file (about every 0.25 s while
# someone polls).
REOPEN_EVERY = 50
# How long a read of the mount may take before the node counts LiteFS as
# stalled (BROADSHEET_STALL_TIMEOUT).
STALL_TIMEOUT = 2.0


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass  # a handle on a mount that is gone


class SharedRead:
    """One answer of a coroutine function shared by everyone asking within
    ``every`` seconds (and by everyone asking while it runs): a flood of
    requests that all need the same file read (``.lag`` for a bookmark's
    504) costs one read of the mount, not one each."""

    def __init__(self, every: float = 0.5):
        self.every = every
        self._at = -math.inf
        self._value = None
        self._pending: asyncio.Future | None = None

    async def get(self, read):
        if time.monotonic() - self._at < self.every:
            return self._value
        if self._pending is None or self._pending.done():
            self._pending = asyncio.ensure_future(read())
            self._pending.add_done_callback(self._keep)
        return await asyncio.shield(self._pending)

    def _keep(self, future: asyncio.Future) -> None:
        if not future.cancelled() and future.exception() is None:
            self._at, self._value = time.monotonic(), future.result()


class TooManyWaits(Exception):
    """Every parking place is taken: the caller should come back later."""


class Stalled(Exception):
    """LiteFS has not answered a read of its mount within the node's bound."""

    def __init__(self, seconds: float):
        super().__init__(f"LiteFS has not answered a read of its mount for {seconds:.1f}s")
        self.seconds = seconds


class MountReader:
    """The one thread that reads a LiteFS mount for an event loop, one call
    at a time; ``busy_since`` is when the call it is in began (None while
    it waits for work)."""

    def __init__(self, name: str):
        self.name = name
        self.busy_since: float | None = None
        self._work: collections.deque = collections.deque()
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, fn) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._ready:
            self._work.append((fn, future, loop))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._ready.notify()
        return future

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._work:
                    self._ready.wait()
                fn, future, loop = self._work.popleft()
                self.busy_since = time.monotonic()
            try:
                result, error = fn(), None
            except BaseException as exc:  # handed to the caller
                result, error = None, exc
            finally:
                self.busy_since = None
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:
                pass  # the loop is gone (the node is stopping)


def _settle(future: asyncio.Future, result, error) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class PositionWatcher:
    """The LiteFS position of one database: ``fresh()``, read now (a
    request's position), ``last``, the one read last (no read at all),
    ``wait_for(txid, timeout)`` until it reaches a TXID (a visitor's
    bookmark: at most ``max_waits`` at once), ``changed(since, timeout)``
    until it moves at all (for the node's own followers, which bound
    themselves), and ``call(fn)``, any other read of the mount; each bounded
    by ``stall_timeout`` (``Stalled``)."""

    def __init__(
        self,
        db_path: str | os.PathLike,
        max_waits: int,
        interval: float = POLL_INTERVAL,
        stall_timeout: float = STALL_TIMEOUT,
    ):
        self.db_path = db_path
        self.max_waits = max_waits
        self.interval = interval
        self.stall_timeout = stall_timeout
        self.waiting = 0  # bookmark waits
        self.following = 0  # changed() callers
        self._pos = Pos(0)
        self._moved = asyncio.Event()
        self._poller: asyncio.Task | None = None
        self._fd: int | None = None
        self._closer: weakref.finalize | None = None
        self._reader = MountReader(f"litefs-reads:{Path(db_path).name}")
        self._lock = threading.Lock()  # guards _next, shared with the reader thread
        self._next: asyncio.Future | None = None  # a position read asked for and not begun
        self._reopen = False
        self._reads = 0

    @property
    def polling(self) -> bool:
        """Whether the watcher is reading the position file (only while
        someone waits)."""
        return self._poller is not None and not self._poller.done()

    @property
    def last(self) -> Pos:
        """The position read last: the node's own while LiteFS is stalled,
        since a stalled LiteFS applies nothing."""
        return self._pos

    @property
    def stalled(self) -> float | None:
        """Seconds LiteFS has not answered the read it is in, once that is
        ``stall_timeout`` or more; else None."""
        busy = self._reader.busy_since
        if busy is None:
            return None
        waited = time.monotonic() - busy
        return waited if waited >= self.stall_timeout else None

    async def fresh(self, reopen: bool = False) -> Pos:
        """The position LiteFS reports now, read after this call (the file
        opened again first if ``reopen``); waiters are woken if it has
        moved. Raises Stalled, or the OSError of a mount that is gone."""
        loop = asyncio.get_running_loop()
        with self._lock:
            self._reopen = self._reopen or reopen
            future = self._next
            if future is None or future.get_loop() is not loop:
                future = self._next = self._reader.submit(self._read_begun)
        pos = await self._bounded(future)
        if pos != self._pos:
            self._pos = pos
            moved, self._moved = self._moved, asyncio.Event()
            moved.set()
        return pos

    async def call(self, fn):
        """``fn()`` (a read of the mount) on the reader thread, bounded."""
        return await self._bounded(self._reader.submit(fn))

    async def _bounded(self, future: asyncio.Future):
        busy = self._reader.busy_since
        waited = time.monotonic() - busy if busy is not None else 0.0
        if waited >= self.stall_timeout:
            raise Stalled(waited)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.stall_timeout - waited)
        except TimeoutError:
            raise Stalled(self.stall_timeout) from None

    def _read_begun(self) -> Pos:
        # On the reader thread: from now on, whoever asks gets a read of
        # their own, begun after they asked.
        with self._lock:
            self._next = None
            reopen, self._reopen = self._reopen, False
        self._reads += 1
        if reopen or self._reads % REOPEN_EVERY == 0:
            # Opened afresh now and then: a mount that came back is a new file.
            self._close()
        return self._read()

    def _read(self) -> Pos:
        try:
            return self._pread()
        except OSError:
            # The mount went away under the open file (LiteFS restarted):
            # open it again, once, now.
            self._close()
            return self._pread()

    def _pread(self) -> Pos:
        if self._fd is None:
            try:
                self._fd = os.open(f"{self.db_path}-pos", os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return Pos(0)  # public.db has not arrived yet (or is not on LiteFS)
            self._closer = weakref.finalize(self, _close_quietly, self._fd)
        return Pos.parse(os.pread(self._fd, 64, 0).decode())

    def _close(self) -> None:
        if self._closer is not None:
            self._closer()
        self._fd = self._closer = None

    async def wait_for(self, txid: int, timeout: float) -> Pos:
        """The position once its TXID is at least ``txid``, or when
        ``timeout`` seconds have passed, whichever is first. Raises
        ``TooManyWaits`` rather than park more than ``max_waits`` callers,
        and Stalled if LiteFS does not answer the first read."""
        if (await self.fresh()).txid >= txid:
            return self._pos
        if self.waiting >= self.max_waits:
            raise TooManyWaits(f"{self.waiting} requests are already waiting for this node's position")
        self.waiting += 1
        try:
            return await self._until(lambda pos: pos.txid >= txid, timeout)
        finally:
            self.waiting -= 1

    async def changed(self, since: Pos, timeout: float) -> Pos:
        """The position once it differs from ``since`` (or after ``timeout``).
        Not counted against ``max_waits``: it is for the node's own
        followers (a stream, a cache), not for visitors."""
        with contextlib.suppress(Stalled, OSError):
            if await self.fresh() != since:
                return self._pos
        self.following += 1
        try:
            return await self._until(lambda pos: pos != since, timeout)
        finally:
            self.following -= 1

    async def _until(self, arrived, timeout: float) -> Pos:
        deadline = time.monotonic() + timeout
        self._watch()
        while not arrived(self._pos):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(self._moved.wait(), remaining)
            except TimeoutError:
                break
        return self._pos

    def _watch(self) -> None:
        if not self.polling:
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        while self.waiting or self.following:
            await asyncio.sleep(self.interval)
            try:
                # (The primary follows every node's position all the time,
                # so this loop rarely stops: one pread per poll.)
                await self.fresh()
            except (OSError, Stalled):
                # LiteFS is restarting, or stalled: keep watching, waiters
                # keep their deadlines.
                continue

"""The replication position of a read node's public.db, watched once for
everyone who waits on it.

Every request reads the position once (its cache key, ETag and listing
depend on it). Opening a file through FUSE costs several round trips to
LiteFS (lookup, open, read, release: 0.3–0.7 ms on two busy cores), so the
watcher keeps the ``-pos`` file open and reads it with one ``pread`` (about
70 µs): LiteFS answers every read of it afresh, so an open file never shows
an old position.

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
import os
import time
import weakref

from broadsheet.litefs import Pos

# How often the watcher reads the -pos file while anyone waits: a bookmark is
# served at most this long after LiteFS has applied its TXID. (A read through
# FUSE costs tens of microseconds; at 5 ms a node with waiters spends under 1%
# of its event loop on them, however many there are.)
POLL_INTERVAL = 0.005
# Polls between two openings of the -pos file (about every 0.25 s).
REOPEN_EVERY = 50


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass  # a handle on a mount that is gone


class TooManyWaits(Exception):
    """Every parking place is taken: the caller should come back later."""


class PositionWatcher:
    """The LiteFS position of one database: ``current()`` now,
    ``wait_for(txid, timeout)`` until it reaches a TXID (a visitor's
    bookmark: at most ``max_waits`` at once), ``changed(since, timeout)``
    until it moves at all (for the node's own followers, which bound
    themselves)."""

    def __init__(self, db_path: str | os.PathLike, max_waits: int, interval: float = POLL_INTERVAL):
        self.db_path = db_path
        self.max_waits = max_waits
        self.interval = interval
        self.waiting = 0  # bookmark waits
        self.following = 0  # changed() callers
        self._pos = Pos(0)
        self._moved = asyncio.Event()
        self._poller: asyncio.Task | None = None
        self._fd: int | None = None
        self._closer: weakref.finalize | None = None

    @property
    def polling(self) -> bool:
        """Whether the watcher is reading the position file (only while
        someone waits)."""
        return self._poller is not None and not self._poller.done()

    def current(self, reopen: bool = False) -> Pos:
        """The position LiteFS reports now (one read of the ``-pos`` file,
        opened again if ``reopen``); waiters are woken if it has moved."""
        if reopen:
            self._close()
        pos = self._read()
        if pos != self._pos:
            self._pos = pos
            moved, self._moved = self._moved, asyncio.Event()
            moved.set()
        return pos

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
        ``TooManyWaits`` rather than park more than ``max_waits`` callers."""
        if self.current().txid >= txid:
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
        if self.current() != since:
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
        polls = 0
        while self.waiting or self.following:
            await asyncio.sleep(self.interval)
            polls += 1
            try:
                # Opened afresh now and then: a mount that came back is a
                # new file. (The primary follows every node's position all
                # the time, so this loop rarely stops: one pread per poll.)
                self.current(reopen=polls % REOPEN_EVERY == 0)
            except OSError:
                # LiteFS is restarting and its mount answers nothing: keep
                # watching, waiters keep their deadlines.
                continue

"""Whole responses a read node has served, kept in memory and served again
without SQLite while the node's position stays where it was.

public.db changes only when LiteFS applies a transaction, which moves the
node's position (TXID and checksum). An anonymous GET's response is then a
function of the request (its URL and the few headers Datasette reads) and
that position, so the position is part of every key: the first request at a
new position empties the cache, and an entry can never be served at a
position other than the one it was made at.

What is kept is bounded in bytes (least recently used goes first) and per
response. What is not a function of (request, position) is never kept:
requests with a cookie or credentials, responses that set a cookie or are
not a 200 or were cut short by a time limit (``spoiled``), visitors' own
SQL (the sandbox lets it call ``random()`` and ``current_timestamp``; so
may a published view: the plugin does not ask for a key for those), and
the instance's ``/-/`` pages (process state such
as ``/-/replication.json`` and ``/-/threads``). The 405 and bookmark waits
run before a lookup, at the same position as the key. The rest of the read
node's rules (the 403 for tables that are not public, the team's metadata)
depend on nothing but the request and the position, and an entry exists
only because its request passed them at that position: a hit is answered
without asking them again (and a matching ETag with a 304).

The same request arriving while a response is being made waits for that
one (``join``) rather than asking SQLite again: right after the position
moves, everyone asking for the front page costs one SQLite run, not one each.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from dataclasses import dataclass

from broadsheet.litefs import Pos

# Request headers a response depends on: Datasette builds absolute URLs
# (``next_url``, facet toggles) from Host, and answers JSON or HTML by Accept
# (and Content-Type) on some pages; a team's plugin may compress by
# Accept-Encoding. A response whose ``Vary`` names any other is not kept.
_VARIES_ON = (b"host", b"accept", b"content-type", b"accept-encoding")
# Requests that are an actor's, not the public's.
_PERSONAL = (b"cookie", b"authorization")
# Every request header a key holds (the personal ones by their absence):
# Datasette itself sends ``Vary: Cookie, Authorization``.
_KEYED = _VARIES_ON + _PERSONAL
# Bytes of bookkeeping per entry on top of its key, headers and body
# (objects, the OrderedDict's slot): an estimate, so that many tiny entries count.
_OVERHEAD = 256


def _keyed_on_all(headers) -> bool:
    """Whether a response's headers let it be kept: it sets no cookie, and
    varies on no request header the key does not hold (nor on ``*``)."""
    for name, value in headers:
        name = name.lower()
        if name == b"set-cookie":
            return False
        if name == b"vary" and any(v.strip().lower() not in _KEYED for v in bytes(value).split(b",")):
            return False
    return True


@dataclass(frozen=True)
class Stored:
    """One response as it was sent: status, headers, body."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers) + _OVERHEAD

    async def replay(self, send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": list(self.headers)})
        await send({"type": "http.response.body", "body": self.body})


@dataclass(frozen=True)
class CacheStats:
    """What ``/-/replication.json`` shows under ``cache``."""

    hits: int
    misses: int
    bytes: int
    entries: int
    max_bytes: int


class ResponseCache:
    """At most ``max_bytes`` of responses of at most ``max_entry`` bytes
    each, for one position at a time. ``max_bytes = 0`` turns it off."""

    def __init__(self, max_bytes: int, max_entry: int):
        self.max_bytes = max_bytes
        self.max_entry = min(max_entry, max_bytes)
        self.hits = 0
        self.misses = 0
        self.bytes = 0
        self._pos: Pos | None = None
        self._entries: OrderedDict[tuple, tuple[Stored, int]] = OrderedDict()  # key -> (response, bytes)
        # Responses being made at the current position: key -> what the
        # same requests arriving meanwhile wait for (the response, or None
        # if it cannot be kept).
        self._making: dict[tuple, asyncio.Future] = {}

    def key(self, scope, pos: Pos) -> tuple | None:
        """The key of a request served at ``pos`` whose response may be
        kept, else None. (At TXID 0 public.db is not on LiteFS, or nothing
        has arrived yet: the position says nothing about the data.)"""
        if not self.max_bytes or not pos.txid or scope["method"] != "GET" or scope["path"].startswith("/-/"):
            return None
        headers = dict((k.lower(), v) for k, v in scope.get("headers", []))
        if any(name in headers for name in _PERSONAL):
            return None
        return (
            scope.get("scheme", "http"),
            scope.get("root_path", ""),
            scope["path"],
            scope.get("query_string", b""),
            *(headers.get(name) for name in _VARIES_ON),
        )

    def get(self, pos: Pos, key: tuple) -> Stored | None:
        """The response kept for ``key`` at ``pos``, if any."""
        self._at(pos)
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[0]

    def put(self, pos: Pos, key: tuple, stored: Stored) -> None:
        # The key counts too: a visitor chooses its query string.
        size = stored.size + sum(len(part) for part in key if part)
        # A response made at a position the cache has since left is of no
        # use to anyone (and must not stay under the new one).
        if pos != self._pos or size > self.max_entry:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._entries[key] = (stored, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.bytes -= evicted

    async def join(self, pos: Pos, key: tuple) -> Stored | None:
        """The response another request for ``key`` at ``pos`` is making
        now, once it is made: the same request arriving meanwhile (a page
        everyone asks for right after the TXID moved) waits for it rather
        than asking SQLite again. None if none is being made, or if it
        cannot be kept (an error, too big): then the caller makes its own."""
        making = self._making.get(key) if pos == self._pos else None
        if making is None:
            return None
        stored = await asyncio.shield(making)
        if stored is not None:
            self.hits += 1
            self.misses -= 1  # counted by get(), answered from memory after all
        return stored

    @contextlib.contextmanager
    def making(self, pos: Pos, key: tuple, send, spoiled=lambda: False):
        """``send``, which also keeps the response under ``key`` at ``pos``
        once it is complete, if it may be kept and ``spoiled()`` (a query of
        it was cut short by a time limit) is false; requests that ``join``
        meanwhile get it too, whatever happens to this one. They wait for
        the response to be made, never for it to be sent: a visitor who
        stops reading holds up no one else."""
        future = asyncio.get_running_loop().create_future()
        if pos == self._pos and key not in self._making:
            self._making[key] = future

        def done(stored: Stored | None) -> None:
            if self._making.get(key) is future:
                del self._making[key]
            if not future.done():
                future.set_result(stored)

        try:
            yield self._recording(pos, key, send, done, spoiled)
        finally:
            done(None)

    def _recording(self, pos: Pos, key: tuple, send, done, spoiled):
        """``send``, recording a response that may be kept. ``done`` is
        told the response before it is sent (or, as soon as it is known,
        that it will not be kept), so joiners never wait on a send."""
        started: dict = {}
        chunks: list[bytes] = []
        size = 0
        held: list = []  # the start of a response that may be kept, sent with its body

        async def record(message):
            nonlocal size
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                if message["status"] == 200 and _keyed_on_all(headers):
                    started.update(status=200, headers=tuple((bytes(k), bytes(v)) for k, v in headers))
                    # Not sent yet: a server's send can block on the
                    # visitor's socket from the start, and joiners must not
                    # wait on it.
                    held.append(message)
                    return
                done(None)
            elif message["type"] == "http.response.body" and started:
                body = message.get("body", b"")
                size += len(body)
                if size > self.max_entry:
                    started.clear()  # too big (a streamed CSV): stop holding it
                    chunks.clear()
                    done(None)
                else:
                    chunks.append(body)
                    if not message.get("more_body", False) and spoiled():
                        done(None)
                    elif not message.get("more_body", False):
                        stored = Stored(started["status"], started["headers"], b"".join(chunks))
                        self.put(pos, key, stored)
                        done(stored)
                    else:
                        # Sent in parts, each awaiting the visitor: joiners
                        # make their own rather than wait on this one.
                        done(None)
            if held:
                await send(held.pop())
            await send(message)

        return record

    def stats(self) -> CacheStats:
        return CacheStats(self.hits, self.misses, self.bytes, len(self._entries), self.max_bytes)

    def _at(self, pos: Pos) -> None:
        """Move the cache to ``pos``: every entry of another position goes."""
        if pos != self._pos:
            self._pos = pos
            self._entries.clear()
            self._making = {}  # those being made still reach their own waiters
            self.bytes = 0

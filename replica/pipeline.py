"""The read node's request pipeline, outermost of every ASGI wrapper: each
request is refused (writes, bad requests, visitors' SQL beyond its slots),
given its position (waiting for its bookmark), then answered at that
position, from memory if a response made there is kept, else by the node's
rules and Datasette (``read_node`` → ``at_position`` → ``serve``)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

from broadsheet.asgi import error_body, respond
from broadsheet.litefs import Pos
from broadsheet.names import PUBLIC_TXID
from broadsheet.positions import STATUS_PATH

from . import bookmarks, interruptions, metadata, queries, rule, stall, stream
from .custom_sql import Busy, Slots, runs_custom_sql
from .errors import unservable
from .guards import Guards, guards
from .position import Stalled
from .settings import BUILD, Settings, settings
from .startup import public_db
from .status import RELEASE_PATH, cut_off_note, heard_ms

RETRY = [(b"retry-after", b"1")]
# Served at any position, verified or not: they say which (replica/status.py).
UNCHECKED = (STATUS_PATH, RELEASE_PATH, "/-/versions.json")


async def _not_reached(send, node: Guards, db, conf: Settings, exc: bookmarks.NotReached) -> None:
    """A bookmark this node cannot serve: 503 (too many waiting) or 504 (it
    did not arrive), saying so when the node is cut off from the primary."""
    extra, message = {}, exc.message
    if exc.status == 504 and db is not None:
        mount = Path(db.path).parent
        try:
            lag_ms = await node.heard.get(lambda: node.position.call(lambda: heard_ms(mount)))
        except Stalled:
            lag_ms = None
        if lag_ms is not None:
            extra["last_heard_s"] = round(lag_ms / 1000, 1)
            message += cut_off_note(lag_ms, conf.replication_timeout)
    body = error_body(exc.status, message, txid=exc.txid, wanted=exc.wanted, **extra)
    await respond(send, exc.status, body, RETRY)


def wrapper(datasette):
    """The ``asgi_wrapper`` hook's answer: a function that wraps Datasette."""
    conf = settings()
    refusal = error_body(405, conf.write_error)

    def wrap(app):
        async def read_node(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
                return await respond(send, 405, refusal, [(b"allow", b"GET, HEAD, OPTIONS")])
            db = public_db(datasette)
            node = guards(datasette)
            if scope["path"] == stream.PATH and db is not None:
                return await stream.serve(scope, receive, send, node.position, node.streams, conf.node_name)
            custom_sql = runs_custom_sql(scope["path"], scope.get("query_string", b""))
            # Refused before any other work (reading the position, waiting
            # for a bookmark), so that a flood of refusals costs little.
            if custom_sql and node.custom_sql.full:
                return await _too_busy(send, node.custom_sql)
            try:
                wanted = bookmarks.wanted(scope)
            except ValueError as exc:
                return await respond(send, 400, error_body(400, str(exc)))
            refused = unservable(datasette, scope)
            if refused is not None:
                return await respond(send, refused[0], error_body(*refused))
            try:
                pos = Pos(0) if db is None else await node.position.fresh()
                if db is not None:
                    await _sized(node, db, pos)
            except Stalled as exc:
                return await _while_stalled(scope, send, node, exc, custom_sql, wanted)
            # Wait for the bookmark first: a table published at TXID N is
            # listed only from N on.
            if wanted is not None and pos.txid < wanted:
                try:
                    pos = await bookmarks.reach(node.position, pos, wanted, conf.bookmark_timeout)
                except Stalled as exc:
                    return await _while_stalled(scope, send, node, exc, custom_sql, wanted)
                except bookmarks.NotReached as exc:
                    return await _not_reached(send, node, db, conf, exc)
            if node.releases is not None and db is not None and pos.txid and scope["path"] not in UNCHECKED:
                problem = await node.releases.check(pos)
                if problem is not None:
                    body = error_body(503, f"Unverified: this node holds a position no signed release covers: {problem}.", txid=pos.txid, verified=False)
                    return await respond(send, 503, body, RETRY)
            with node.watchdog.watching(send) as watched:
                try:
                    return await at_position(scope, receive, watched.send, node, db, pos, custom_sql)
                except asyncio.CancelledError:
                    if watched.abandoned is None:
                        raise
                    asyncio.current_task().uncancel()  # let go by the watchdog: LiteFS stalled under it
                    if not watched.started:
                        await stall.refuse(send, watched.abandoned, pos.txid)

        async def at_position(scope, receive, send, node: Guards, db, pos: Pos, custom_sql: bool):
            """The request at ``pos``: from memory, or made (and kept)."""
            rule.serving_at.set(pos)  # the position this request is served at, for rule.listing()
            shown = db is None or await _shown_by_sqlite(node, db, pos)
            if db is not None:
                await queries.sync(datasette, db, pos)  # the saved queries public at this TXID
                # A saved query is visitors' SQL too: a slot, never the cache.
                custom_sql = custom_sql or queries.named_in(scope["path"], db) is not None
            etag = _etag(pos)
            key = None if custom_sql or not shown else node.responses.key(scope, pos)
            if key is not None:
                if await rule.names_volatile_view(db, scope["path"]):
                    key = None  # its rows change while the position stays
            if key is None:
                return await serve(scope, receive, send, node, db, pos, etag, custom_sql)
            # Kept, or being made right now for the same request: either way
            # made at this very position after passing the rules in serve()
            # (the 403 for a table that is not public, the team's metadata),
            # which depend on nothing but the request and the position: they
            # would pass again, so they are not asked again.
            hit = node.responses.get(pos, key) or await node.responses.join(pos, key)
            if hit is not None:
                if etag in _if_none_match(scope):
                    return await respond(send, 304, b"", _cache_headers(etag, pos, conf), content_type=None)
                return await hit.replay(send)
            cut = interruptions.collecting()
            with node.responses.making(pos, key, send, spoiled=lambda: bool(cut)) as recording:
                return await serve(scope, receive, recording, node, db, pos, etag, custom_sql)

        async def serve(scope, receive, send, node: Guards, db, pos: Pos, etag: bytes, custom_sql: bool):
            """The node's rules at ``pos``, then Datasette."""
            if db is not None:
                await metadata.sync(datasette, db, pos)  # the team's titles and licenses, at this TXID
            table = await rule.unlisted_table(datasette, scope["path"])
            if table is not None:
                message = f"Table {table!r} is not public on this node."
                return await respond(send, 403, error_body(403, message))
            if etag in _if_none_match(scope):
                return await respond(send, 304, b"", _cache_headers(etag, pos, conf), content_type=None)
            if not custom_sql:
                return await app(scope, receive, _with_cache_headers(send, etag, pos, conf))
            try:
                with node.custom_sql.claim():
                    return await app(scope, receive, _with_cache_headers(send, etag, pos, conf))
            except Busy:  # taken while this request waited for its bookmark
                return await _too_busy(send, node.custom_sql)

        return read_node

    return wrap


def _etag(pos: Pos) -> bytes:
    """The ETag of every response at ``pos``: the position and the build."""
    return f'"{pos.txid:x}-{pos.checksum:x}-{BUILD}"'.encode()



# How long a request waits for SQLite to show the TXID LiteFS reports (a
# moment: LiteFS rewrites the shared-memory index right after it sets the
# position) before it is served unkept.
SHOWN_WAIT = 0.25


async def _shown_by_sqlite(node: Guards, db, pos: Pos) -> bool:
    """Whether a read of public.db now sees the transaction LiteFS reports
    at ``pos`` (or a newer one), waiting a moment for it. LiteFS sets a
    database's position before it makes the transaction visible to SQLite
    readers, so a request that read the position in between would run on
    the previous transaction: kept in the cache under the new position, an
    unpublished table would be served until the next publish. The publisher
    records each transaction's own TXID in public.db (``_public_txid``);
    once a read sees it, every later read does. A public.db that does not
    record it (written by an older publisher) is taken as shown; a position
    not shown in time is served, and never kept."""
    if node.visible_at == pos:
        return True
    if node.unconfirmed_at == pos:
        return False
    deadline = asyncio.get_running_loop().time() + SHOWN_WAIT
    while True:
        try:
            rows = (await db.execute(f"SELECT txid FROM {PUBLIC_TXID}")).rows
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            rows = []
        if not rows or rows[0][0] >= pos.txid:
            node.visible_at = pos
            return True
        if asyncio.get_running_loop().time() >= deadline:
            node.unconfirmed_at = pos
            return False
        await asyncio.sleep(0.002)


async def _sized(node: Guards, db, pos: Pos) -> None:
    """Datasette shows public.db's size, reading it with a stat() through
    FUSE on the event loop each time: read it here instead (bounded) once
    per position, which is the only time it changes."""
    if node.sized_at != pos:
        try:
            db.cached_size = await node.position.call(lambda: os.stat(db.path).st_size)
        except OSError:
            db.cached_size = None
        node.sized_at = pos


async def _while_stalled(scope, send, node: Guards, exc: Stalled, custom_sql: bool, wanted: int | None) -> None:
    """LiteFS has not answered: the node's position is still the last one
    read (a stalled LiteFS applies nothing), so its ETag and the responses
    kept at it are still exact; anything else is a 503 (replica/stall.py)."""
    pos, conf = node.position.last, settings()
    if wanted is None or wanted <= pos.txid:
        etag = _etag(pos)
        if pos.txid and etag in _if_none_match(scope):
            return await respond(send, 304, b"", _cache_headers(etag, pos, conf), content_type=None)
        key = None if custom_sql else node.responses.key(scope, pos)
        hit = node.responses.get(pos, key) if key is not None else None
        if hit is not None:
            return await hit.replay(send)
    await stall.refuse(send, exc, pos.txid)


def _with_cache_headers(send, etag: bytes, pos: Pos, conf: "Settings"):
    """``send`` with the node's ETag, Cache-Control and TXID on a response
    that may be cached (ours replace Datasette's default_cache_ttl header),
    and the TXID on any other."""

    async def send_with_cache_headers(message):
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            cacheable = message["status"] == 200 and not any(k.lower() == b"set-cookie" for k, _ in headers)
            if cacheable:
                headers = [(k, v) for k, v in headers if k.lower() not in (b"cache-control", b"etag")]
                headers += _cache_headers(etag, pos, conf)
            else:
                headers.append((b"broadsheet-txid", str(pos.txid).encode()))
            message = {**message, "headers": headers}
        await send(message)

    return send_with_cache_headers


async def _too_busy(send, slots: Slots) -> None:
    message = (
        f"This read node is already running {slots.limit} SQL queries from visitors."
        " Retry shortly; table and row pages are not limited."
    )
    await respond(send, 429, error_body(429, message), RETRY)


def _if_none_match(scope) -> list[bytes]:
    for k, v in scope.get("headers", []):
        if k.lower() == b"if-none-match":
            return [tag.strip() for tag in v.split(b",")]
    return []


def _cache_headers(etag: bytes, pos: Pos, conf: "Settings") -> list:
    return [
        (b"etag", etag),
        (b"cache-control", f"public, max-age={conf.cache_max_age}".encode()),
        (b"broadsheet-txid", str(pos.txid).encode()),
    ]

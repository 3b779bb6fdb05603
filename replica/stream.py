"""``/-/replication/stream``: this node's position as it moves, one JSON line
per new TXID, for the primary's propagation tracker.

The tracker used to follow each read node's LiteFS ``/events``; serving the
position from Datasette instead lets a read node's LiteFS API listen on
loopback alone, where nothing else can reach it (it accepts transactions and
grants locks without authentication). What this stream says, the TXID and
checksum, is public already (``/-/replication.json``), and the number of
streams a node serves at once is small and bounded.
"""

from __future__ import annotations

import asyncio
import json

from broadsheet.asgi import error_body, respond
from broadsheet.positions import STREAM_PATH, NodePosition

from .position import PositionWatcher, Stalled, TooManyWaits

PATH = STREAM_PATH
KEEPALIVE = 15.0  # seconds between blank lines when nothing moves


class Streams:
    """At most ``limit`` streams at once; beyond, a 503 with Retry-After."""

    def __init__(self, limit: int):
        self.limit = limit
        self.open = 0


async def serve(scope, receive, send, position: PositionWatcher, streams: Streams, node: str) -> None:
    if streams.open >= streams.limit:
        message = f"This read node already serves {streams.open} position streams; poll /-/replication.json instead"
        return await respond(send, 503, error_body(503, message), [(b"retry-after", b"5")])
    streams.open += 1
    disconnected = asyncio.Event()

    async def watch_disconnect():
        while (await receive())["type"] != "http.disconnect":
            pass
        disconnected.set()

    loop = asyncio.get_running_loop()
    watcher = loop.create_task(watch_disconnect())
    gone = loop.create_task(disconnected.wait())
    change = None
    try:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/x-ndjson"), (b"cache-control", b"no-store")],
            }
        )
        try:
            pos = await position.fresh()
        except (Stalled, OSError):
            pos = position.last  # a stalled LiteFS has not moved it
        await _line(send, NodePosition.at(node, pos).as_dict())
        while not disconnected.is_set():
            change = loop.create_task(_next(position, pos))
            await asyncio.wait({change, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not change.done():
                change.cancel()
                break
            moved = change.result()
            if moved != pos:
                pos = moved
                await _line(send, NodePosition.at(node, pos).as_dict())
            else:
                await send({"type": "http.response.body", "body": b"\n", "more_body": True})
    except OSError:
        pass  # the client went away mid-send
    finally:
        streams.open -= 1
        for task in (watcher, gone, change):
            if task is not None:
                task.cancel()


async def _next(position: PositionWatcher, pos):
    """The position once it moves from ``pos``, or ``pos`` after KEEPALIVE."""
    try:
        return await position.changed(pos, KEEPALIVE)
    except TooManyWaits:
        await asyncio.sleep(1.0)  # bookmark waits hold every place: keep the stream, slower
        return pos


async def _line(send, data: dict) -> None:
    await send({"type": "http.response.body", "body": json.dumps(data).encode() + b"\n", "more_body": True})

"""``/nodes``, ``/publishes``, ``/events``, ``/watch/state`` and ``/watch``:
where every read node is, and when each publish reached it.

The /watch page itself is the team Datasette's (``/-/broadsheet/watch``,
primary/datasette/watch.py), which reads ``/watch/state`` and ``/events``
through its own routes; this one serves the same page, with the same
script, without Datasette's look, for when the team Datasette is down or
out of reach."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, AsyncIterator

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse

from ... import watch as watch_assets
from ..deps import Actor, tracker
from ..models import ERRORS, NodeInfo, PropagationRecord, WatchState

router = APIRouter(tags=["propagation"], responses=ERRORS)

WATCH_PAGE = Path(__file__).parent.parent / "templates" / "watch.html"

WatchLimit = Annotated[int, Query(ge=1, le=200, description="How many of the newest publishes")]
WatchSeconds = Annotated[int, Query(ge=0, le=600, description="How many seconds of lag samples")]


@router.get("/nodes", response_model=list[NodeInfo])
async def nodes(request: Request, actor: Actor) -> list[NodeInfo]:
    return tracker(request).node_list()


@router.get("/publishes", response_model=list[PropagationRecord])
async def publishes(
    request: Request, actor: Actor, limit: Annotated[int, Query(ge=1, le=500)] = 20
) -> list[PropagationRecord]:
    return tracker(request).recent(limit)


@router.get("/publishes/{txid}", response_model=PropagationRecord)
async def publish_record(
    request: Request,
    txid: int,
    actor: Actor,
    wait: Annotated[float, Query(ge=0, le=60, description="Seconds to wait for every node to have it")] = 0,
) -> PropagationRecord:
    """When public TXID ``txid`` reached each read node."""
    t = tracker(request)
    record = await t.wait_for(txid, wait) if wait else t.propagation(txid)
    if record is None:
        raise HTTPException(404, f"no record of public TXID {txid}")
    return record


@router.get("/watch/state", response_model=WatchState)
async def watch_state(request: Request, actor: Actor, limit: WatchLimit = 20, seconds: WatchSeconds = 300) -> WatchState:
    """What the /watch page opens with: the primary's public TXID, every
    read node (with its state: live, behind, joining, cut off), the newest
    publishes and when each node had them, and each node's lag sampled every
    ``lag_interval_s`` over the last ``seconds``. ``/events`` keeps it
    current (its ``lag`` event is the next sample)."""
    t = tracker(request)
    await asyncio.to_thread(t.public_db_bytes)
    return t.watch_state(limit, seconds)


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "`node`, `propagation` and `lag` events"}},
)
async def events(request: Request, actor: Actor) -> StreamingResponse:
    """Server-sent events: ``node`` (a node's position or state changed),
    ``propagation`` (a public TXID was committed or reached a node) and
    ``lag`` (every node's lag, sampled about once a second). The stream
    opens with every node's current position."""
    t = tracker(request)
    queue = t.subscribe()

    async def stream() -> AsyncIterator[bytes]:
        try:
            for node in t.node_list():
                yield _sse("node", node)
            while True:
                try:
                    event, data = await asyncio.wait_for(queue.get(), 15)
                except asyncio.TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                yield _sse(event, data)
        finally:
            t.unsubscribe(queue)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


@router.get("/watch", response_class=HTMLResponse, include_in_schema=False)
async def watch_page(actor: Actor) -> HTMLResponse:
    return HTMLResponse(watch_assets.page(WATCH_PAGE.read_text(), state="watch/state", events="events"))

"""``/nodes``, ``/publishes``, ``/events`` and ``/watch``: where every read
node is, and when each publish reached it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, AsyncIterator

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse

from ..deps import Actor, tracker
from ..models import ERRORS, NodeInfo, PropagationRecord

router = APIRouter(tags=["propagation"], responses=ERRORS)

WATCH_PAGE = Path(__file__).parent.parent / "templates" / "watch.html"


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


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "`node` and `propagation` events"}},
)
async def events(request: Request, actor: Actor) -> StreamingResponse:
    """Server-sent events: ``node`` (a node's position changed) and
    ``propagation`` (a public TXID was committed or reached a node). The
    stream opens with every node's current position."""
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
    return HTMLResponse(WATCH_PAGE.read_text())

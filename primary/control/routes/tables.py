"""``/tables``: which tables are public and how, and flipping them."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from ...datasette.actors import actor_label
from ...store import PublishSpec, listing
from ...store.preview import preview
from ..deps import Actor, TimeoutQuery, WaitQuery, connect
from ..flips import flip
from ..models import ERRORS, Error, FlipResult, Metadata, PreviewResult, SpecBody, TableInfo
from ..permissions import check_publish
from .metadata import set_metadata

router = APIRouter(prefix="/tables", tags=["tables"], responses=ERRORS)


@router.get("", response_model=list[TableInfo])
async def list_tables(actor: Actor) -> list[TableInfo]:
    conn = connect(readonly=True)
    try:
        return [
            TableInfo(table=t.table, public=t.public, spec=t.spec.to_dict() if t.public else None, partial=t.partial)
            for t in listing.tables(conn)
        ]
    finally:
        conn.close()


async def _flip(
    table: str, public: bool, actor: dict, wait: bool, timeout: float, spec: PublishSpec | None = None
) -> FlipResult:
    await check_publish(actor, table)
    outcome = await flip(table, public, actor_label(actor), wait, timeout, spec)
    return FlipResult(
        **vars(outcome),
        propagation=f"/publishes/{outcome.public_txid}" if outcome.public_txid else None,
    )


@router.post(
    "/{table}/publish",
    response_model=FlipResult,
    responses={400: {"model": Error}, 409: {"model": Error}, 504: {"model": Error}},
)
async def publish(
    table: str,
    actor: Actor,
    body: SpecBody | None = None,
    wait: WaitQuery = True,
    timeout: TimeoutQuery = 10,
) -> FlipResult:
    """Make a table (or a view over public tables) public: the whole table,
    or the columns and rows the body chooses. Publishing a public table with
    another spec changes its spec. Idempotent: ``changed`` says whether
    anything changed. 404: no such table; 403: an internal table, or an
    actor without the broadsheet-publish action; 409: a view that reads
    private tables; 400: a virtual table, or a spec that does not fit (the
    error says why); 504: the publisher did not get there within
    ``timeout``."""
    return await _flip(table, True, actor, wait, timeout, body.spec() if body else None)


@router.post("/{table}/preview", response_model=PreviewResult, responses={400: {"model": Error}})
async def preview_publish(table: str, actor: Actor, body: SpecBody | None = None) -> PreviewResult:
    """What publishing ``table`` with this spec would expose: the columns,
    how many rows of the total, the first rows exactly as read nodes would
    serve them, an estimate of the bytes, and for a public table what the
    change adds and removes. Computed from data.db; changes nothing."""
    await check_publish(actor, table)
    spec = body.spec() if body else PublishSpec()
    conn = connect(readonly=True)
    try:
        return PreviewResult(**(await asyncio.to_thread(preview, conn, table, spec)).as_dict())
    finally:
        conn.close()


@router.post("/{table}/unpublish", response_model=FlipResult, responses={504: {"model": Error}})
async def unpublish(table: str, actor: Actor, wait: WaitQuery = True, timeout: TimeoutQuery = 10) -> FlipResult:
    """Make a table private; its rows are erased from public.db in the same cycle."""
    return await _flip(table, False, actor, wait, timeout)


@router.put("/{table}/metadata", response_model=dict, responses={400: {"model": Error}})
async def set_table_metadata(table: str, body: Metadata, actor: Actor) -> dict:
    """Set a table's title, description, license, license_url, source,
    source_url (merged with what it has). Shown on read nodes while the
    table is public, updated without a restart."""
    await check_publish(actor, table)
    return await asyncio.to_thread(set_metadata, table, body)

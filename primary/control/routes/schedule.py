"""``/schedule``: embargoes, publishes and unpublishes set for a moment
(store/schedule.py). The publisher applies each at its moment."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from ...datasette.actors import actor_label
from ...store import schedule
from ..deps import Actor, connect
from ..models import ERRORS, Error, ScheduleBody, ScheduleEntry
from ..permissions import check_publish

router = APIRouter(prefix="/schedule", tags=["schedule"], responses=ERRORS)


def _in_data_db(work):
    conn = connect()
    try:
        return work(conn)
    finally:
        conn.close()


@router.get("", response_model=list[ScheduleEntry])
async def pending(actor: Actor) -> list[ScheduleEntry]:
    """What is set to be published or unpublished, soonest first."""
    entries = await asyncio.to_thread(_in_data_db, schedule.pending)
    return [ScheduleEntry(**e.as_dict()) for e in entries]


@router.post("", response_model=ScheduleEntry, responses={400: {"model": Error}, 409: {"model": Error}})
async def add(body: ScheduleBody, actor: Actor) -> ScheduleEntry:
    """Publish (with ``spec``) or unpublish ``table`` at ``at``, an ISO 8601
    time with a zone (``2026-12-02T09:30:00Z``). Nothing of the table
    leaves the primary before then; at the moment the flip is made and
    propagates as any flip. 400: a time in the past, unparsable, or without
    a zone, or a spec that does not fit (each says so); 404: no such table."""
    await check_publish(actor, body.table)
    spec = body.spec.spec() if body.spec is not None else None
    entry = await asyncio.to_thread(
        _in_data_db,
        lambda conn: schedule.schedule(
            conn, body.table, body.operation == "publish", body.at, actor_label(actor), spec
        ),
    )
    return ScheduleEntry(**entry.as_dict())


@router.delete("/{entry_id}", response_model=ScheduleEntry, responses={404: {"model": Error}})
async def cancel(entry_id: int, actor: Actor) -> ScheduleEntry:
    """Cancel a pending entry (404 if none is pending with that id)."""
    entries = await asyncio.to_thread(_in_data_db, schedule.pending)
    entry = next((e for e in entries if e.id == entry_id), None)
    if entry is not None:
        await check_publish(actor, entry.table)
    cancelled = await asyncio.to_thread(_in_data_db, lambda conn: schedule.cancel(conn, entry_id, actor_label(actor)))
    return ScheduleEntry(**cancelled.as_dict())

"""``/queries``: the saved queries every read node serves at
``/public/NAME``, and who saved or removed which."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query

from ... import queries, store
from ...datasette.actors import actor_label
from ...settings import settings
from ..deps import Actor, TimeoutQuery, WaitQuery, connect
from ..models import ERRORS, Error, QueryLogEntry, QueryResult, SavedQueryBody, SavedQueryInfo
from ..permissions import check_publish_queries

router = APIRouter(prefix="/queries", tags=["queries"], responses=ERRORS)


@router.get("", response_model=list[SavedQueryInfo])
async def list_queries(actor: Actor) -> list[SavedQueryInfo]:
    """Every saved query, whether read nodes serve it, and why not."""

    def read():
        conn = connect(readonly=True)
        try:
            rows = store.queries.saved(conn)
        finally:
            conn.close()
        try:
            public = store.queries.connect_public(settings().public_db)
        except Exception:
            return rows, {}
        try:
            return rows, store.queries.published(public)
        finally:
            public.close()

    rows, public = await asyncio.to_thread(read)
    fields = ("name", "sql", "title", "description")
    return [
        SavedQueryInfo(**row, published=public.get(row["name"]) == store.queries.SavedQuery(*(row[f] for f in fields)))
        for row in rows
    ]


async def _query_result(work) -> QueryResult:
    outcome = await work
    return QueryResult(
        **vars(outcome), propagation=f"/publishes/{outcome.public_txid}" if outcome.public_txid else None
    )


@router.post("", response_model=QueryResult, responses={400: {"model": Error}, 504: {"model": Error}})
async def save_query(
    body: SavedQueryBody, actor: Actor, wait: WaitQuery = True, timeout: TimeoutQuery = 10
) -> QueryResult:
    """Save (or replace) a query and publish it: every read node serves it
    at ``/public/NAME`` (``.json``, ``.csv``). 400 if it reads anything that
    is not public, writes, or is not one statement (the error says what);
    403 unless the actor may use broadsheet-publish on the whole database."""
    await check_publish_queries(actor)
    query = store.queries.SavedQuery(body.name, body.sql, body.title, body.description)
    return await _query_result(queries.save_and_wait(query, actor_label(actor), wait, timeout))


@router.delete("/{name}", response_model=QueryResult, responses={504: {"model": Error}})
async def remove_query(name: str, actor: Actor, wait: WaitQuery = True, timeout: TimeoutQuery = 10) -> QueryResult:
    """Remove a saved query: read nodes stop serving it (403) from the
    returned public TXID, and its text is erased from public.db."""
    await check_publish_queries(actor)
    return await _query_result(queries.remove_and_wait(name, actor_label(actor), wait, timeout))


@router.get("/log", response_model=list[QueryLogEntry])
async def query_log(
    actor: Actor, name: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[QueryLogEntry]:
    """Who saved or removed which query, and which the publisher withdrew, newest first."""
    conn = connect(readonly=True)
    try:
        return [QueryLogEntry(**entry) for entry in store.queries.log_entries(conn, name, limit)]
    finally:
        conn.close()

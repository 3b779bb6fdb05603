"""``/metadata``: the titles, descriptions, licenses and sources read nodes
show, for the instance (and, through ``/tables/{table}/metadata``, each
table)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from ... import store
from ..deps import Actor, connect
from ..models import ERRORS, Error, Metadata, MetadataAll
from ..permissions import check_instance_metadata

router = APIRouter(tags=["metadata"], responses=ERRORS)


def set_metadata(table: str, body: Metadata) -> dict:
    """Merge ``body`` into what ``table`` (or store.INSTANCE) has; a
    PublishError names a field that cannot be set so."""
    conn = connect()
    try:
        return store.set_metadata(conn, table, body.model_dump(exclude_unset=True))
    finally:
        conn.close()


@router.get("/metadata", response_model=MetadataAll)
async def get_metadata(actor: Actor) -> MetadataAll:
    conn = connect(readonly=True)
    try:
        rows = store.metadata(conn)
    finally:
        conn.close()
    return MetadataAll(instance=rows.pop(store.INSTANCE, {}), tables=rows)


@router.put("/metadata", response_model=dict, responses={400: {"model": Error}})
async def set_instance_metadata(body: Metadata, actor: Actor) -> dict:
    """Set the public instance's title, description, license, source and
    their URLs (merged with what it has). 403 unless the actor may use the
    broadsheet-publish action on the whole database."""
    await check_instance_metadata(actor)
    return await asyncio.to_thread(set_metadata, store.INSTANCE, body)

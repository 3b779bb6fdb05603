"""``/audit`` and ``/bookmarks``: who flipped what, and the public TXID
that holds a data.db TXID."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from broadsheet.bookmark import Bookmark as BookmarkRecord
from broadsheet.bookmark import PrivateTxid
from broadsheet.litefs import Pos

from ... import store
from ...publishing import wait_published
from ...settings import settings
from ..deps import Actor, TimeoutQuery, connect
from ..models import ERRORS, AuditEntry, Bookmark, Error

router = APIRouter(tags=["audit"], responses=ERRORS)


@router.get("/audit", response_model=list[AuditEntry])
async def audit_log(actor: Actor, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[AuditEntry]:
    conn = connect(readonly=True)
    try:
        return [AuditEntry(**entry) for entry in store.audit_entries(conn, limit=limit)]
    finally:
        conn.close()


@router.get("/bookmarks", response_model=Bookmark, responses={504: {"model": Error}})
async def bookmark(
    actor: Actor,
    private_txid: Annotated[int | None, Query(ge=0, description="data.db TXID (default: the current one)")] = None,
    timeout: TimeoutQuery = 10,
) -> Bookmark:
    """The public TXID that holds everything up to a data.db TXID, waiting
    (bounded) for the publisher if it is not there yet."""
    wanted = Pos.read(settings().data_db).txid if private_txid is None else private_txid
    mark = await wait_published(wanted, timeout)
    return Bookmark.of(BookmarkRecord(PrivateTxid(wanted), mark.public_txid))

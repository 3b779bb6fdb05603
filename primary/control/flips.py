"""Flipping a table, as the control plane does it for every team interface
(its own API, the Datasette table action, the CLI): one data.db transaction
with an audit entry, then a bounded wait for the publisher, so that the
caller learns the public TXID that holds the change."""

from __future__ import annotations

import asyncio

from broadsheet.litefs import Pos

from .. import store
from ..publishing import Outcome, wait_published
from ..settings import settings
from ..store import PublishSpec


async def flip(
    table: str,
    public: bool,
    actor: str,
    wait: bool = True,
    timeout: float = 10.0,
    spec: PublishSpec | None = None,
) -> Outcome:
    """Raises store.PublishError for a table (or spec) that cannot be
    flipped, and PublishTimeout if the publisher does not get there in time."""
    conn = store.connect(settings().data_db)
    try:
        result = await asyncio.to_thread(store.set_public, conn, table, public, actor, spec)
    finally:
        conn.close()
    # Read after our commit: at least our transaction's TXID.
    private_txid = Pos.read(settings().data_db).txid
    if not wait:
        return Outcome(table, public, result.changed, private_txid, None)
    mark = await wait_published(private_txid, timeout, table)
    if result.changed and result.audit_id is not None:
        await asyncio.to_thread(_record_txids, result.audit_id, private_txid, mark.public_txid)
    return Outcome(table, public, result.changed, private_txid, mark.public_txid)


def _record_txids(audit_id: int, private_txid: int, public_txid: int) -> None:
    conn = store.connect(settings().data_db)
    try:
        store.audit_txids(conn, audit_id, private_txid, public_txid)
    finally:
        conn.close()

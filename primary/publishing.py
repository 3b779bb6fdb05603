"""Flipping a table, as every team interface does it (the Datasette table
action, the control plane, the CLI): one data.db transaction with an audit
entry, then a bounded wait for the publisher, so that the caller learns the
public TXID that holds the change."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from broadsheet.litefs import Pos

from . import store
from .publisher import Watermark
from .settings import settings
from .store import PublishSpec


class PublishTimeout(Exception):
    status = 504

    def __init__(self, private_txid: int, timeout: float):
        self.message = f"the publisher has not reached data.db TXID {private_txid} within {timeout:g}s"
        super().__init__(self.message)


@dataclass(frozen=True)
class Outcome:
    table: str
    public: bool
    changed: bool
    private_txid: int
    public_txid: int | None


async def wait_published(private_txid: int, timeout: float) -> Watermark:
    """Wait until the publisher has reflected data.db TXID ``private_txid``
    and return its watermark; PublishTimeout if it has not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        mark = Watermark.read(settings().watermark_file)
        if mark is not None and mark.private_txid >= private_txid:
            return mark
        if time.monotonic() > deadline:
            raise PublishTimeout(private_txid, timeout)
        await asyncio.sleep(0.005)


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
    mark = await wait_published(private_txid, timeout)
    if result.changed and result.audit_id is not None:
        await asyncio.to_thread(_record_txids, result.audit_id, private_txid, mark.public_txid)
    return Outcome(table, public, result.changed, private_txid, mark.public_txid)


def _record_txids(audit_id: int, private_txid: int, public_txid: int) -> None:
    conn = store.connect(settings().data_db)
    try:
        store.audit_txids(conn, audit_id, private_txid, public_txid)
    finally:
        conn.close()


def actor_label(actor: dict) -> str:
    return str(actor.get("id") or actor)

"""What every team interface that changes published data tells its caller:
the flip's outcome, and the bounded wait for the publisher that gives the
public TXID holding a data.db change (the control plane's flips and saved
queries, the team Datasette's ``Broadsheet-Wait: public``, its publish
events)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from broadsheet.bookmark import PrivateTxid, PublicTxid

from .publisher import Watermark
from .settings import settings


class PublishTimeout(Exception):
    status = 504

    def __init__(self, private_txid: int, timeout: float, table: str | None = None):
        self.message = f"the publisher has not reached data.db TXID {private_txid} within {timeout:g}s"
        self.table = table
        super().__init__(self.message)


@dataclass(frozen=True)
class Outcome:
    """A flip: ``public_txid`` holds it (None: not waited for)."""

    table: str
    public: bool
    changed: bool
    private_txid: PrivateTxid
    public_txid: PublicTxid | None


async def wait_published(
    private_txid: int, timeout: float, table: str | None = None, watermark_file: str | None = None
) -> Watermark:
    """Wait until the publisher has reflected data.db TXID ``private_txid``
    and return its watermark (``watermark_file``, default this primary's);
    PublishTimeout (naming ``table``, if given) if it has not within
    ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        mark = Watermark.read(watermark_file or settings().watermark_file)
        if mark is not None and mark.private_txid >= private_txid:
            return mark
        if time.monotonic() > deadline:
            raise PublishTimeout(private_txid, timeout, table)
        await asyncio.sleep(0.005)

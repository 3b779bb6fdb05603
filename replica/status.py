"""A read node's replication status, read from its LiteFS mount."""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass
from pathlib import Path

from broadsheet.litefs import Pos

from .cache import CacheStats


@dataclass(frozen=True)
class ReplicaStatus:
    node: str
    region: str
    url: str  # how visitors reach this node, when it knows ("" otherwise)
    txid: int
    checksum: str
    primary: str | None  # the primary's hostname while connected to it
    primary_reachable: bool
    # Milliseconds since this node last heard from the primary (LiteFS's
    # ``.lag`` file); None before the first sync.
    lag_ms: int | None
    checked_at: str
    # Requests parked on a bookmark, and running visitors' SQL, right now.
    bookmark_waits: int = 0
    custom_sql: int = 0
    # The response cache's hits and misses since start, and what it holds.
    cache: CacheStats | None = None

    @classmethod
    def read(
        cls,
        db_path: Path,
        node: str,
        region: str = "",
        url: str = "",
        cache: CacheStats | None = None,
        pos: Pos | None = None,
        **load: int,
    ) -> "ReplicaStatus":
        mount = db_path.parent
        pos = Pos.read(db_path) if pos is None else pos
        try:
            primary = (mount / ".primary").read_text().strip() or None
        except OSError:
            primary = None
        try:
            lag = int((mount / ".lag").read_text().strip())
            lag_ms = None if lag < 0 or lag >= 2**31 - 1 else lag  # MaxInt32: never synced
        except (OSError, ValueError):
            lag_ms = None
        return cls(
            node=node,
            region=region,
            url=url,
            txid=pos.txid,
            checksum=f"{pos.checksum:016x}",
            primary=primary,
            primary_reachable=primary is not None,
            lag_ms=lag_ms,
            checked_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
            cache=cache,
            **load,
        )

    def as_dict(self) -> dict:
        return asdict(self)

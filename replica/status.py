"""A read node's replication status (``/-/replication.json``), read from its
LiteFS mount: its position (broadsheet/positions.py) and how it is doing."""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass
from pathlib import Path

from datasette.utils.asgi import Response

from broadsheet.bookmark import PublicTxid
from broadsheet.litefs import Pos
from broadsheet.positions import NodePosition

from . import stall
from .cache import CacheStats
from .guards import guards
from .position import Stalled
from .settings import settings
from .startup import public_db


@dataclass(frozen=True)
class ReplicaStatus:
    node: str
    region: str
    url: str  # how visitors reach this node, when it knows ("" otherwise)
    txid: PublicTxid
    checksum: str
    primary: str | None  # the primary's hostname while LiteFS follows (or tries to follow) it
    # Whether the node hears from the primary: LiteFS follows it and its
    # last word (a transaction, or the heartbeat it sends every second) is
    # less than BROADSHEET_REPLICATION_TIMEOUT old. False while the link is
    # cut, however the cut looks from here.
    primary_reachable: bool
    # Milliseconds since this node last heard from the primary (LiteFS's
    # ``.lag`` file); None before the first sync.
    lag_ms: int | None
    checked_at: str
    # The same in seconds, for people: how old the node's view of the
    # primary is. How many TXIDs it lacks only the primary knows (its
    # control plane's /nodes, /health and `broadsheet status`).
    last_heard_s: float | None = None
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
        timeout: float = 5.0,
        **load: int,
    ) -> "ReplicaStatus":
        mount = db_path.parent
        position = NodePosition.at(node, Pos.read(db_path) if pos is None else pos)
        try:
            primary = (mount / ".primary").read_text().strip() or None
        except OSError:
            primary = None
        lag_ms = heard_ms(mount)
        return cls(
            node=position.node,
            region=region,
            url=url,
            txid=position.txid,
            checksum=position.checksum,
            primary=primary,
            primary_reachable=primary is not None and lag_ms is not None and lag_ms < timeout * 1000,
            lag_ms=lag_ms,
            last_heard_s=None if lag_ms is None else round(lag_ms / 1000, 1),
            checked_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
            cache=cache,
            **load,
        )

    @property
    def position(self) -> NodePosition:
        return NodePosition(self.node, self.txid, self.checksum)

    def as_dict(self) -> dict:
        return asdict(self)


def heard_ms(mount: Path) -> int | None:
    """Milliseconds since this node's LiteFS last heard from the primary
    (its ``.lag`` file: the last heartbeat's age); None before the first
    sync. A read of the mount: call it on the node's reader thread."""
    try:
        lag = int((mount / ".lag").read_text().strip())
    except (OSError, ValueError):
        return None
    return None if lag < 0 or lag >= 2**31 - 1 else lag  # MaxInt32: never synced


def cut_off_note(lag_ms: int | None, timeout: float) -> str:
    """What a visitor is told, beside a bookmark's 504, when the node is cut
    off from the primary ("" while it hears from it)."""
    if lag_ms is None or lag_ms < timeout * 1000:
        return ""
    return (
        f" It has not heard from the primary for {lag_ms / 1000:.0f}s (its link to the primary is down):"
        " it serves what it has until the link returns, then catches up by itself."
    )


async def replication_status(datasette, request):
    """This node's replication state, for people, load balancers and the
    primary's propagation tracker."""
    db = public_db(datasette)
    conf = settings()
    node = guards(datasette)
    try:
        pos = await node.position.fresh()  # the watcher's open file: one pread, not an open through FUSE
        status = await node.position.call(
            lambda: ReplicaStatus.read(
                Path(db.path),
                pos=pos,
                node=conf.node_name,
                region=conf.region,
                url=conf.public_url,
                bookmark_waits=node.position.waiting,
                custom_sql=node.custom_sql.taken,
                cache=node.responses.stats(),
                timeout=conf.replication_timeout,
            )
        )
        if node.releases is not None and pos.txid:
            await node.releases.check(pos)  # its release comes just after it: wait as a request does
    except Stalled as exc:
        # The health check fails while LiteFS does not answer.
        last = node.position.last
        body = {"ok": False, **NodePosition.at(conf.node_name, last).as_dict(), "stalled": True,
                "stalled_for_s": round(exc.seconds, 1), "error": stall.message(exc, last.txid)}
        return Response.json(body, status=503, headers={"Retry-After": "1"})
    body = status.as_dict()
    if node.releases is None:
        return Response.json(body)
    # A position no signed release covers fails the health check too.
    body |= node.releases.status(pos)
    return Response.json(body, status=200 if body["verified"] or not pos.txid else 503)


RELEASE_PATH = "/-/broadsheet/release.json"


async def release_status(datasette, request):
    """The signed release this node serves: TXID, digest, LiteFS checksum,
    signature and key, for anyone to check with ``broadsheet verify``."""
    node = guards(datasette)
    if node.releases is None:
        return Response.json({"ok": False, "error": "this node does not check signed releases"}, status=404)
    try:
        pos = await node.position.fresh()
    except Stalled as exc:
        return Response.json({"ok": False, "error": stall.message(exc, node.position.last.txid)}, status=503)
    problem = await node.releases.check(pos) if pos.txid else "public.db has not arrived"
    current = node.releases.current
    body = {
        "ok": problem is None,
        "txid": pos.txid,
        "checksum": f"{pos.checksum:016x}",
        "verified": problem is None,
        "problem": problem,
        "release": current.as_dict() if current is not None and problem is None else None,
        "key": str(node.releases.key) if node.releases.key else None,
    }
    return Response.json(body, status=200 if problem is None else 503)

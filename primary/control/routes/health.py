"""``/health``: the primary's databases, read nodes and standby at a
glance, with what broadsheet withdrew by itself. Needs no team actor."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from fastapi import APIRouter, Request

from broadsheet.litefs import Pos

from ...publisher import Watermark, Withdrawals, withdrawals_path
from ...publisher.signer import heals_path, read_heals
from ...settings import settings
from ..deps import connect, tracker
from ..models import Bookmark, Health, OffsiteInfo, StandbyInfo, Withdrawn

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
async def health(request: Request) -> Health:
    conf = settings()
    nodes = tracker(request).node_list()
    mark = Watermark.read(conf.watermark_file)
    data_db_txid = Pos.read(conf.data_db).txid
    return Health(
        ok=Path(conf.data_db).exists() and Path(conf.public_db).exists(),
        data_db_txid=data_db_txid,
        public_db_txid=Pos.read(conf.public_db).txid,
        published_up_to=Bookmark.of(mark.bookmark) if mark else None,
        nodes_connected=sum(n["connected"] for n in nodes),
        nodes=len(nodes),
        subscribers=tracker(request).subscriber_count,
        epoch=await asyncio.to_thread(_epoch),
        standby=await standby_info(conf.standby_url, data_db_txid) if conf.standby_url else None,
        withdrawn=[Withdrawn(**vars(w)) for w in Withdrawals.read_file(withdrawals_path(conf.watermark_file))],
        cut_off_nodes=[n["name"] for n in nodes if n.get("primary_reachable") is False],
        unverified_nodes=[n["name"] for n in nodes if n.get("verified") is False],
        heals=read_heals(heals_path(conf.watermark_file)),
        offsite=offsite_info(conf.offsite_status, data_db_txid) if conf.offsite_status else None,
    )


def offsite_info(path: str, data_db_txid: int) -> OffsiteInfo:
    from ...offsite import status

    found = status.read(path)
    if found is None:
        return OffsiteInfo(state="starting", behind_txids=data_db_txid, last_error="the uploader has written no status yet")
    return OffsiteInfo(**status.lag(found, data_db_txid))


_epoch_seen: list[int] = []


def _epoch() -> int:
    """data.db's epoch, read once: it changes only when a standby is
    promoted, which starts a new control plane. (No data.db connection per
    health check: see the README's Known limits on LiteFS.)"""
    from ...backup import epoch_of

    if not _epoch_seen:
        try:
            conn = connect(readonly=True)
        except Exception:
            return 1
        try:
            _epoch_seen.append(epoch_of(conn))
        finally:
            conn.close()
    return _epoch_seen[0]


async def standby_info(url: str, data_db_txid: int) -> StandbyInfo:
    """What the standby at ``url`` says of its copy of data.db, against this
    primary's TXID ``data_db_txid`` (``connected`` false, and why, if it
    does not answer as a standby)."""
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            response = await client.get(f"{url}/status")
        if response.status_code != 200:
            raise ValueError(f"{url}/status answered HTTP {response.status_code}: not a broadsheet standby?")
        status = response.json()
        standby_txid = int(status["txid"])
    except (httpx.HTTPError, ValueError, TypeError, KeyError) as exc:
        return StandbyInfo(url=url, connected=False, error=str(exc) or type(exc).__name__)
    behind = max(0, data_db_txid - standby_txid)
    lag: float | None = 0.0
    if behind:
        committed_at = status.get("committed_at")
        lag = max(0.0, (time.time() - float(committed_at)) * 1000) if committed_at else None
    refused = status.get("refused")
    if refused:
        lag = None  # it holds another data.db than this primary's: no lag to speak of
    return StandbyInfo(
        url=url, connected=True, txid=standby_txid, behind_txids=behind, lag_ms=lag, epoch=status.get("epoch"),
        acknowledged_txid=status.get("acknowledged_txid"), following=status.get("following"),
        refused=refused.get("reason") if isinstance(refused, dict) else None,
    )

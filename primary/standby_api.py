"""The standby's status API (primary/standby.py runs it on the private
network): ``GET /status``, its data.db position and when its newest
transaction was committed on the primary, which the primary's control plane
shows on ``/health``; ``GET /wait?txid=N``, which answers once the standby
has data.db TXID N (``Broadsheet-Wait: standby`` on the team's writes)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from pathlib import Path

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse

from broadsheet.litefs import Pos, events


class _Newest:
    """The commit time of the newest data.db transaction this standby has,
    from its LiteFS's events (stamped by the primary when it committed)."""

    def __init__(self, litefs_url: str, db_name: str):
        self.committed_at: float | None = None
        self.txid = 0
        self.litefs_url, self.db_name = litefs_url, db_name
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        while True:
            try:
                for event in events(self.litefs_url):
                    if event is not None and event.db == self.db_name and event.pos.txid >= self.txid:
                        self.txid, self.committed_at = event.pos.txid, event.committed_at
            except Exception:
                pass
            time.sleep(1.0)


_newest: _Newest | None = None


def _data_db() -> str:
    return os.environ.get("BROADSHEET_STANDBY_DATA_DB", "/var/lib/broadsheet/private/mnt/data.db")


@contextlib.asynccontextmanager
async def _lifespan(app):
    global _newest
    _newest = _Newest(os.environ.get("BROADSHEET_STANDBY_LITEFS_URL", "http://127.0.0.1:20202"), Path(_data_db()).name)
    yield


app = FastAPI(
    title="broadsheet standby", description="The standby's copy of data.db: position, lag, waits.", lifespan=_lifespan
)


def _position(pos: Pos) -> dict:
    return {"txid": pos.txid, "checksum": f"{pos.checksum:016x}"}


def _status() -> dict:
    pos = Pos.read(_data_db())
    committed_at = _newest.committed_at if _newest is not None and _newest.txid == pos.txid else None
    return {"role": "standby", **_position(pos), "committed_at": committed_at}


@app.get("/status")
async def status() -> dict:
    """This standby's data.db position and when its newest transaction was
    committed on the primary (seconds since the epoch; null until known)."""
    return await asyncio.to_thread(_status)


@app.get("/wait")
async def wait(
    txid: int = Query(ge=0, description="data.db TXID to wait for"),
    timeout: float = Query(5.0, gt=0, le=60, description="Seconds to wait"),
):
    """200 once this standby has data.db TXID ``txid``; 504 if not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        pos = Pos.read(_data_db())
        if pos.txid >= txid:
            return {"ok": True, **_position(pos)}
        if time.monotonic() > deadline:
            return JSONResponse(
                {"ok": False, "error": f"the standby has data.db TXID {pos.txid}, not {txid}, after {timeout:g}s", "txid": pos.txid},
                status_code=504,
            )
        await asyncio.sleep(0.005)

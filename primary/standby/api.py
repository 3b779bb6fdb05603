"""The standby's status API (node.py runs it on the private
network): ``GET /status``, its data.db position, which data.db it is, when
its newest transaction was committed on the primary, what it acknowledged
and whether its guard follows the primary or refuses it, which the
primary's control plane shows on ``/health``; ``GET /wait?txid=N``, which
answers once the standby has data.db TXID N (``Broadsheet-Wait: standby``
on the team's writes), having recorded it as acknowledged first.

The same process runs the guard (``guard.py``) that the
standby's LiteFS streams data.db through.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse

from broadsheet.config import Env, split_addr
from broadsheet.h2relay import silence_from_env
from broadsheet.litefs import NewestLtx, Pos
from primary.backup import Identity, identity_of_file

from .acknowledged import Acknowledged, kept
from .guard import Guard
from .node import DATA_DB


class Standby:
    """This standby's copy of data.db, what it acknowledged, and its guard."""

    def __init__(self, environ=None):
        # Set by StandbyNode.start, which has checked them (from_env).
        env = Env(environ)
        self.root = Path(env.str("BROADSHEET_STANDBY_ROOT", "/var/lib/broadsheet"))
        self.data_db = Path(env.str("BROADSHEET_STANDBY_DATA_DB", str(self.root / "private" / "mnt" / DATA_DB)))
        self.data_dir = Path(env.str("BROADSHEET_STANDBY_LITEFS_DATA_DIR", str(self.root / "private" / "litefs")))
        self.guard_addr = env.str("BROADSHEET_STANDBY_GUARD_ADDR", "127.0.0.1:20201")
        split_addr(self.guard_addr, "BROADSHEET_STANDBY_GUARD_ADDR")
        self.acknowledged = Acknowledged.read(self.root)
        self._identity: Identity | None = None
        self._acknowledging = asyncio.Lock()
        self.guard = Guard(
            env.url("BROADSHEET_PRIVATE_PRIMARY_URL", "http://primary-private:20202"),
            DATA_DB,
            spool=self.root,
            kept=self._kept,
            on_snapshot=self._forget_identity,
            key=env.optional("BROADSHEET_STANDBY_REPLICATION_KEY"),
            silence=silence_from_env(environ),
        )

    def identity(self) -> Identity:
        """The copy's identity, read once (through the mount) and again
        after a snapshot replaced the copy; while it has no generation yet
        (a data.db of an older broadsheet), at every ask."""
        if self._identity is None or self._identity.generation is None:
            self._identity = identity_of_file(self.data_db)
        return self._identity

    def _forget_identity(self) -> None:
        self._identity = None

    async def _kept(self, pos: Pos) -> list:
        return kept(pos, await asyncio.to_thread(self.identity), self.acknowledged)

    def status(self) -> dict:
        pos = Pos.read(self.data_db)
        newest = NewestLtx.read(self.data_dir, DATA_DB)
        identity = self.identity() if pos.txid else Identity()
        return {
            "role": "standby",
            **position(pos),
            # From the newest LTX file's header: known after a restart too,
            # not only from the next transaction on.
            "committed_at": newest.committed_at if newest is not None and newest.pos.txid == pos.txid else None,
            "cluster_id": identity.cluster_id,
            "epoch": identity.epoch,
            "generation": identity.generation,
            "acknowledged_txid": self.acknowledged.txid if self.acknowledged else 0,
            **self.guard.status(),
        }

    async def acknowledge(self, pos: Pos) -> None:
        """Record ``pos`` as acknowledged, durably, before the answer goes."""
        async with self._acknowledging:
            if self.acknowledged is not None and self.acknowledged.txid >= pos.txid:
                return
            mark = Acknowledged(pos.txid, await asyncio.to_thread(self.identity), time.time())
            await asyncio.to_thread(mark.write, self.root)
            self.acknowledged = mark


_standby: Standby | None = None


@contextlib.asynccontextmanager
async def _lifespan(app):
    global _standby
    _standby = Standby()
    await _standby.guard.start(*split_addr(_standby.guard_addr, "BROADSHEET_STANDBY_GUARD_ADDR"))
    try:
        yield
    finally:
        await _standby.guard.close()


app = FastAPI(
    title="broadsheet standby", description="The standby's copy of data.db: position, lag, waits.", lifespan=_lifespan
)


def position(pos: Pos) -> dict:
    return {"txid": pos.txid, "checksum": f"{pos.checksum:016x}"}


@app.get("/status")
async def status() -> dict:
    """This standby's data.db position and identity (cluster, epoch,
    generation), when its newest transaction was committed on the primary
    (seconds since the epoch; null if unknown), the highest TXID it
    acknowledged, and its guard's state: ``following`` the primary, or the
    reason it ``refused`` the primary's data.db (then it keeps its own)."""
    return await asyncio.to_thread(_standby.status)


@app.get("/wait")
async def wait(
    txid: int = Query(ge=0, description="data.db TXID to wait for"),
    timeout: float = Query(5.0, gt=0, le=60, description="Seconds to wait"),
):
    """200 once this standby has data.db TXID ``txid`` (recorded as
    acknowledged first); 504 if not within ``timeout``; 409 at once while
    its guard refuses the primary's data.db."""
    deadline = time.monotonic() + timeout
    while True:
        if (refusal := _standby.guard.refusal) is not None:
            pos = Pos.read(_standby.data_db)
            return JSONResponse({"ok": False, "error": refusal.reason, "txid": pos.txid}, status_code=409)
        pos = Pos.read(_standby.data_db)
        if pos.txid >= txid:
            await _standby.acknowledge(pos)
            return {"ok": True, **position(pos)}
        if time.monotonic() > deadline:
            return JSONResponse(
                {"ok": False, "error": f"the standby has data.db TXID {pos.txid}, not {txid}, after {timeout:g}s", "txid": pos.txid},
                status_code=504,
            )
        await asyncio.sleep(0.005)

"""What a standby acknowledged: the highest data.db TXID it told a primary
it holds (``Broadsheet-Wait: standby``), which no snapshot may take from
it; and the primary's side of that wait."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import httpx

from broadsheet.litefs import Pos
from primary.backup import Identity
from primary.settings import settings

from .guard import Kept

ACKNOWLEDGED = "standby-acknowledged.json"


@dataclass(frozen=True)
class Acknowledged:
    """The highest data.db TXID this standby told a primary it holds
    (``/wait``: a write acknowledged with ``Broadsheet-Wait: standby``), and
    of which data.db. Kept under the standby's root, outside its LiteFS
    directories: nothing LiteFS does can replace it."""

    txid: int
    identity: Identity
    at: float

    @classmethod
    def read(cls, root: Path) -> "Acknowledged | None":
        try:
            data = json.loads((Path(root) / ACKNOWLEDGED).read_text())
            return cls(int(data["txid"]), Identity(data.get("cluster_id"), int(data.get("epoch", 1)), data.get("generation")), float(data["at"]))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def write(self, root: Path) -> None:
        record = {"txid": self.txid, "at": self.at, "cluster_id": self.identity.cluster_id,
                  "epoch": self.identity.epoch, "generation": self.identity.generation}
        write_durably(Path(root) / ACKNOWLEDGED, json.dumps(record))


def write_durably(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fp:
        fp.write(text)
        fp.flush()
        os.fsync(fp.fileno())
    os.replace(tmp, path)


def kept(pos: Pos, copy: Identity, acknowledged: "Acknowledged | None") -> list:
    """What a snapshot must not take from a standby whose LiteFS holds
    data.db at ``pos`` (of identity ``copy``) and which acknowledged
    ``acknowledged``."""
    found = []
    if pos.txid:
        found.append(Kept("this standby's copy", pos.txid, copy, strict=True))
    if acknowledged is not None and acknowledged.txid:
        found.append(Kept("the writes this standby acknowledged (Broadsheet-Wait: standby)", acknowledged.txid, acknowledged.identity))
    return found


async def wait_for(txid: int) -> str | None:
    """Wait (bounded: BROADSHEET_STANDBY_WAIT_TIMEOUT) until the standby has
    data.db TXID ``txid``: None once it has, else why not, for a 504."""
    conf = settings()
    try:
        async with httpx.AsyncClient(timeout=conf.standby_wait + 2) as client:
            response = await client.get(f"{conf.standby_url}/wait", params={"txid": txid, "timeout": conf.standby_wait})
    except httpx.HTTPError as exc:
        return f"the write is committed on the primary (data.db TXID {txid}), but the standby did not answer: {exc or type(exc).__name__}"
    if response.status_code == 200:
        return _same_data_db(response.json(), txid, Pos.read(conf.data_db))
    if response.status_code == 409:  # its guard refuses this primary's data.db
        return f"the write is committed on the primary (data.db TXID {txid}), but the standby does not follow this primary: {response.json().get('error')}"
    return (
        f"the write is committed on the primary (data.db TXID {txid}), but the standby has not confirmed it"
        f" within {conf.standby_wait:g}s: it would be lost if the primary were lost now"
    )


def _same_data_db(answer: dict, txid: int, primary: Pos) -> str | None:
    """None if the standby's position (``answer`` from its /wait) can be
    this primary's data.db at or past ``txid``; else why not. A standby
    ahead of the primary, or at the primary's TXID with another checksum,
    holds another data.db (an older primary's, until LiteFS resyncs it)."""
    try:
        at, checksum = int(answer["txid"]), int(answer.get("checksum", "0"), 16)
    except (KeyError, TypeError, ValueError):
        return f"the write is committed on the primary (data.db TXID {txid}), but the standby's answer is not a position: {answer!r}"
    if at > primary.txid or (at == primary.txid and answer.get("checksum") is not None and checksum != primary.checksum):
        return (
            f"the write is committed on the primary (data.db TXID {txid}), but the standby holds another data.db"
            f" (TXID {at}, checksum {checksum:016x}; the primary is at {primary}): not a copy of this write"
        )
    return None

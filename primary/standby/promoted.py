"""The record of a promotion (``promoted.json`` under the node's root,
outside anything LiteFS writes): the epoch it made, the TXID it started
from, and what it lost."""

from __future__ import annotations

import json
from pathlib import Path

from .acknowledged import write_durably

PROMOTED = "promoted.json"


def promotion(root: Path) -> dict | None:
    try:
        return json.loads((Path(root) / PROMOTED).read_text())
    except (FileNotFoundError, ValueError):
        return None


def record_epoch(root: Path, epoch: int) -> None:
    """The epoch a promotion made, once known (see ``promote``)."""
    record = promotion(root) or {}
    write_durably(Path(root) / PROMOTED, json.dumps({**record, "epoch": epoch}))


def loss_window(record: dict) -> str:
    """What a promotion recorded in ``record`` lost, in words that are true
    of it: the writes after its TXID; and none acknowledged with
    ``Broadsheet-Wait: standby``, since ``promote`` refuses a copy older
    than those."""
    import datetime

    when = ""
    if record.get("committed_at"):
        moment = datetime.datetime.fromtimestamp(record["committed_at"], datetime.timezone.utc)
        when = f", committed at {moment.isoformat(timespec='milliseconds')}"
    acknowledged = record.get("acknowledged_txid") or 0
    kept = (
        f"every write acknowledged with Broadsheet-Wait: standby (up to TXID {acknowledged}) is in it"
        if acknowledged
        else "no write was acknowledged with Broadsheet-Wait: standby"
    )
    return (
        f"writes the old primary committed after data.db TXID {record['data_db_txid']}{when} are lost;"
        f" {kept}"
    )

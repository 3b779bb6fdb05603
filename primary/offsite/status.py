"""The uploader's status file (``offsite-status.json`` in the primary's
root): what it has uploaded, and its last error. ``/health`` and
``broadsheet status`` read it, with data.db's own position, for the lag."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

STATUS_FILE = "offsite-status.json"


def write(path: str | os.PathLike, status: dict) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**status, "updated_at": time.time()}))
    os.replace(tmp, path)


def read(path: str | os.PathLike) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, ValueError):
        return None


def lag(status: dict, data_db_txid: int, now: float | None = None) -> dict:
    """How far the bucket is behind data.db: in TXIDs, and in seconds since
    the oldest transaction not yet uploaded was committed."""
    now = time.time() if now is None else now
    uploaded = int(status.get("uploaded_txid") or 0)
    behind = max(0, data_db_txid - uploaded)
    seconds = 0.0
    if behind:
        since = status.get("pending_since") or status.get("updated_at") or now
        seconds = max(0.0, now - float(since))
    return {
        "url": status.get("url"), "state": status.get("state"), "generation": status.get("generation"),
        "epoch": status.get("epoch"), "uploaded_txid": uploaded, "behind_txids": behind,
        "lag_seconds": round(seconds, 3), "last_upload_at": status.get("last_upload_at"),
        "last_error": status.get("last_error"), "last_error_at": status.get("last_error_at"),
        "objects": status.get("objects"), "updated_at": status.get("updated_at"),
    }

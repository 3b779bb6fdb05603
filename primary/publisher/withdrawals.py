"""What broadsheet itself took off the read nodes, and why, kept by the
publisher in a file beside the watermark so that the control plane names
them on /health without opening data.db."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import apsw

from broadsheet.names import PUBLIC_QUERIES
from primary.store import views


def withdrawals_path(watermark_file: str | Path) -> Path:
    """Where the publisher keeps what it withdrew (Withdrawals)."""
    return Path(watermark_file).with_name("publisher-withdrawn.json")


@dataclass(frozen=True)
class Withdrawal:
    """Something broadsheet itself took off the read nodes, and why: a table
    whose spec no longer fits (its columns moved, one it names is gone) or
    that could not be copied or was rebuilt, a view that no longer compiles,
    a saved query that no longer compiles against the public copy. It stays
    private until someone publishes (or saves) it again."""

    name: str
    kind: str  # "table", "view" or "query"
    reason: str
    at: str  # when (the audit or saved-query log entry's timestamp)


class Withdrawals:
    """What broadsheet has withdrawn and not been published again since,
    kept by the publisher in a file beside the watermark (the control plane
    names them on /health without opening data.db). Read from the audit log
    (unpublish entries with a reason) and the saved-query log (withdraw
    entries), from where the file says it got to."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        saved = self.read_file(self.path, raw=True)
        self.audit_id = saved.get("audit_id", 0)
        self.queries_log_id = saved.get("queries_log_id", 0)
        self.items = {(w["kind"] == "query", w["name"]): Withdrawal(**w) for w in saved.get("withdrawn", [])}

    @staticmethod
    def read_file(path: str | os.PathLike, raw: bool = False):
        try:
            with open(path) as fp:
                data = json.load(fp)
        except (FileNotFoundError, ValueError):
            data = {}
        return data if raw else [Withdrawal(**w) for w in data.get("withdrawn", [])]

    def update(self, conn: apsw.Connection) -> None:
        """Take in the log entries since the last update, drop what is public
        (or saved) again or no longer exists, and write the file if anything
        changed."""
        before = (self.audit_id, self.queries_log_id, dict(self.items))
        views_now = set(views(conn))
        for id_, operation, table, reason, timestamp in conn.execute(
            "SELECT id, operation, table_name, reason, timestamp FROM _public_audit_log WHERE id > ? ORDER BY id",
            (self.audit_id,),
        ).fetchall():
            self.audit_id = id_
            if operation == "unpublish" and reason:
                kind = "view" if table in views_now else "table"
                self.items[(False, table)] = Withdrawal(table, kind, reason, timestamp)
            else:
                self.items.pop((False, table), None)
        for id_, operation, name, reason, timestamp in conn.execute(
            "SELECT id, operation, name, reason, timestamp FROM _public_queries_log WHERE id > ? ORDER BY id",
            (self.queries_log_id,),
        ).fetchall():
            self.queries_log_id = id_
            if operation == "withdraw":
                self.items[(True, name)] = Withdrawal(name, "query", reason or "", timestamp)
            else:
                self.items.pop((True, name), None)
        if self.items:
            names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
            saved = {n for (n,) in conn.execute(f"SELECT name FROM {PUBLIC_QUERIES}")}
            self.items = {k: w for k, w in self.items.items() if w.name in (saved if k[0] else names)}
        if (self.audit_id, self.queries_log_id, self.items) != before:
            tmp = f"{self.path}.tmp"
            with open(tmp, "w") as fp:
                json.dump(
                    {
                        "audit_id": self.audit_id,
                        "queries_log_id": self.queries_log_id,
                        "withdrawn": [vars(w) for w in sorted(self.items.values(), key=lambda w: (w.at, w.name))],
                    },
                    fp,
                )
            os.replace(tmp, self.path)

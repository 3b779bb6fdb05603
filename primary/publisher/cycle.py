"""One publish cycle's record: the one type that says what a cycle did,
from the publisher that makes it, through the cycle log file beside the
watermark, to the control plane's propagation record, the team Datasette's
events and the benchmark."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Cycle:
    """One publish cycle: the data.db position it reflects and the public.db
    position it produced."""

    private_txid: int
    public_txid: int
    started_at: str
    duration_ms: float
    tables_copied: tuple[str, ...] = ()
    tables_dropped: tuple[str, ...] = ()
    rows_changed: int = 0
    commit_ms: float = 0.0  # of duration_ms: LiteFS turning the transaction into an LTX
    # What the cycle did, as the propagation record tells it: tables (and
    # views) newly public, made private, copied again over their old copy,
    # rows changed per table; and who asked, from the audit log entries in
    # this cycle's own data.db snapshot (table -> actor of its newest flip
    # since the previous cycle). ``audit_id``: the newest entry seen.
    published: tuple[str, ...] = ()
    unpublished: tuple[str, ...] = ()
    recopied: tuple[str, ...] = ()
    rows_by_table: dict[str, int] = field(default_factory=dict)
    actors: dict[str, str] = field(default_factory=dict)
    metadata_changed: bool = False
    audit_id: int = 0
    queries_changed: tuple[str, ...] = ()  # saved queries published, changed or withdrawn
    # Each of those: what happened to it and who asked, from the saved-query
    # log entries in this cycle's snapshot (name -> {"action": "published" |
    # "changed" | "removed" | "withdrawn", "actor": ..., "reason": ...});
    # ``queries_log_id``: the newest entry seen.
    query_changes: dict[str, dict] = field(default_factory=dict)
    queries_log_id: int = 0
    # Large first copies under way (staging.py): table -> {"state":
    # "copying" | "done" | "erasing" | "erased", "copied": rows so far,
    # "total": rows to copy}. A staged table is not public until a cycle
    # lists it (that cycle's ``published`` names it).
    staging: dict[str, dict] = field(default_factory=dict)

    # What a propagation record (the control plane's CycleSummary) carries
    # of a cycle: what it changed and who asked; the rest is the
    # publisher's own timing and bookkeeping.
    SUMMARY = ("published", "unpublished", "recopied", "rows_by_table", "actors", "queries_changed", "query_changes", "staging")

    def summary(self) -> dict:
        return {k: v for k, v in self.to_json().items() if k in self.SUMMARY}

    def to_json(self) -> dict:
        """The cycle log's line for this cycle (as JSON: lists, not tuples)."""
        return {
            "started_at": self.started_at,
            "duration_ms": round(self.duration_ms, 3),
            "commit_ms": round(self.commit_ms, 3),
            "private_txid": self.private_txid,
            "public_txid": self.public_txid,
            "tables_copied": list(self.tables_copied),
            "tables_dropped": list(self.tables_dropped),
            "rows_changed": self.rows_changed,
            "published": list(self.published),
            "unpublished": list(self.unpublished),
            "recopied": list(self.recopied),
            "rows_by_table": self.rows_by_table,
            "actors": self.actors,
            "metadata_changed": self.metadata_changed,
            "audit_id": self.audit_id,
            "queries_changed": list(self.queries_changed),
            "query_changes": self.query_changes,
            "queries_log_id": self.queries_log_id,
            "staging": self.staging,
        }

    @classmethod
    def from_json(cls, data: dict) -> "Cycle":
        """A cycle log line read back. A line of an older publisher lacks
        the fields added since: they take their defaults."""
        return cls(
            private_txid=int(data.get("private_txid") or 0),
            public_txid=int(data.get("public_txid") or 0),
            started_at=data.get("started_at") or "",
            duration_ms=float(data.get("duration_ms") or 0.0),
            tables_copied=tuple(data.get("tables_copied") or ()),
            tables_dropped=tuple(data.get("tables_dropped") or ()),
            rows_changed=int(data.get("rows_changed") or 0),
            commit_ms=float(data.get("commit_ms") or 0.0),
            published=tuple(data.get("published") or ()),
            unpublished=tuple(data.get("unpublished") or ()),
            recopied=tuple(data.get("recopied") or ()),
            rows_by_table=dict(data.get("rows_by_table") or {}),
            actors=dict(data.get("actors") or {}),
            metadata_changed=bool(data.get("metadata_changed")),
            audit_id=int(data.get("audit_id") or 0),
            queries_changed=tuple(data.get("queries_changed") or ()),
            query_changes=dict(data.get("query_changes") or {}),
            queries_log_id=int(data.get("queries_log_id") or 0),
            staging=dict(data.get("staging") or {}),
        )


def cycle_log_path(watermark_file: str | Path) -> Path:
    return Path(watermark_file).with_name("publisher-cycles.jsonl")


class CycleLog:
    """The publisher's record of its cycles, one JSON line each, in a file
    beside the watermark: writing it costs no data.db commit (a team write
    is one commit, and wakes the publisher once). Keeps the newest
    ``keep`` records."""

    def __init__(self, path: str | os.PathLike, keep: int = 10_000):
        self.path = str(path)
        self.keep = keep
        self._lines = self._count()

    def _count(self) -> int:
        try:
            with open(self.path, "rb") as fp:
                return sum(1 for _ in fp)
        except FileNotFoundError:
            return 0

    def append(self, cycle: Cycle) -> None:
        with open(self.path, "a") as fp:
            fp.write(json.dumps(cycle.to_json()) + "\n")
        self._lines += 1
        if self._lines > 2 * self.keep:
            kept = self.read(self.keep)[::-1]
            tmp = f"{self.path}.tmp"
            with open(tmp, "w") as fp:
                fp.writelines(json.dumps(c.to_json()) + "\n" for c in kept)
            os.replace(tmp, self.path)
            self._lines = len(kept)

    @staticmethod
    def read_file(path: str | os.PathLike, limit: int = 100) -> list[Cycle]:
        """The newest ``limit`` records, newest first."""
        try:
            with open(path) as fp:
                lines = fp.readlines()
        except FileNotFoundError:
            return []
        records = []
        for line in reversed(lines[-limit:]):
            try:
                records.append(Cycle.from_json(json.loads(line)))
            except (ValueError, TypeError, AttributeError):
                continue  # a line cut short by a crash
        return records

    def read(self, limit: int = 100) -> list[Cycle]:
        return self.read_file(self.path, limit)

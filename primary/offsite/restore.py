"""What the bucket can restore, and restoring it.

A generation's objects form a timeline: each epoch's objects are good up to
the TXID where a newer epoch's stream starts (its ``base``); past it they
are a branch a promotion left behind. A restore to TXID N starts from the
newest snapshot at or before N that a chain of objects leads on from, and
takes the coarsest object at each step (L3 before L2 before L1 before L0),
the last L0 read only up to N: at most one snapshot, and a few objects of
each level. Each object is checked as it is applied (its name against its
header, its checksum before against the one the chain is at), and the file
at the end against LiteFS's own checksum for TXID N and SQLite's integrity
check. Anything wrong is an ObjectError naming the object, and nothing is
changed.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

import apsw

from .crypto import ObjectError
from .objects import BaseMark, ObjectName, decode, file_checksum, iso
from .store import Store

INFINITY = 1 << 62


class RestoreError(Exception):
    """No such moment in the bucket, or it cannot be put together."""


@dataclass
class Timeline:
    """One generation's objects, as a restore sees them."""

    generation: str
    objects: list[ObjectName]
    bases: list[BaseMark]

    def limit(self, epoch: int) -> int:
        """The last TXID of this epoch's stream that still counts: where a
        newer epoch's stream starts, if one does."""
        later = [b.txid for b in self.bases if b.epoch > epoch]
        return min(later) if later else INFINITY

    def usable_end(self, o: ObjectName) -> int | None:
        """The furthest TXID object ``o`` may take a restore to (None: it is
        past its epoch's limit, a branch left behind)."""
        limit = self.limit(o.epoch)
        if o.max_txid <= limit:
            return o.max_txid
        if o.level == "L0" and o.min_txid <= limit:
            return limit  # transactions one by one: used up to the limit
        return None

    @property
    def valid(self) -> list[ObjectName]:
        return [o for o in self.objects if self.usable_end(o) is not None]

    @property
    def branches(self) -> list[ObjectName]:
        return [o for o in self.objects if self.usable_end(o) is None]

    def _after(self) -> dict[int, list[ObjectName]]:
        by_start: dict[int, list[ObjectName]] = {}
        for o in self.valid:
            if not o.is_snapshot:
                by_start.setdefault(o.min_txid - 1, []).append(o)
        return by_start

    def _walk(self, snapshot: ObjectName, target: int) -> list[tuple[ObjectName, int]] | None:
        by_start = self._after()
        steps = [(snapshot, snapshot.max_txid)]
        at = snapshot.max_txid
        while at < target:
            options = by_start.get(at, [])
            whole = [o for o in options if self.usable_end(o) <= target]
            if whole:
                # The furthest, and of those the coarsest level: fewest objects.
                best = max(whole, key=lambda o: (self.usable_end(o), o.rank, o.epoch))
                steps.append((best, self.usable_end(best)))
                at = self.usable_end(best)
                continue
            partial = [o for o in options if o.level == "L0" and self.usable_end(o) > target]
            if not partial:
                return None
            steps.append((max(partial, key=lambda o: o.epoch), target))
            at = target
        return steps

    def plan(self, target: int) -> list[tuple[ObjectName, int]]:
        """The objects to read for TXID ``target``, each with the TXID to
        stop at. RestoreError when no chain reaches it."""
        snapshots = sorted((o for o in self.valid if o.is_snapshot and o.max_txid <= target),
                           key=lambda o: (o.max_txid, o.epoch), reverse=True)
        for snapshot in snapshots:
            if (steps := self._walk(snapshot, target)) is not None:
                return steps
        raise RestoreError(f"generation {self.generation}: no chain of objects reaches TXID {target}"
                           + ("" if snapshots else " (no snapshot at or before it)"))

    def newest(self) -> int:
        """The newest TXID a restore can reach (0: none)."""
        best = 0
        for snapshot in (o for o in self.valid if o.is_snapshot):
            at = snapshot.max_txid
            by_start = self._after()
            while options := by_start.get(at):
                at = max(self.usable_end(o) for o in options)
            best = max(best, at)
        return best

    def oldest(self) -> int:
        snapshots = [o.max_txid for o in self.valid if o.is_snapshot]
        return min(snapshots) if snapshots else 0

    def time_of(self, txid: int) -> int | None:
        for o in self.valid:
            if o.max_txid == txid:
                return o.last_ms
            if o.min_txid == txid:
                return o.first_ms
        return None


def timelines(store: Store) -> dict[str, Timeline]:
    objects, bases, _ = store.list()
    found: dict[str, Timeline] = {}
    for o in objects:
        found.setdefault(o.generation, Timeline(o.generation, [], [])).objects.append(o)
    for b in bases:
        if b.generation in found:
            found[b.generation].bases.append(b)
    return found


def describe(store: Store) -> list[dict]:
    """What ``broadsheet backups list`` shows: each generation, newest
    first, with the TXIDs and times it can restore."""
    rows = []
    for line in timelines(store).values():
        newest = line.newest()
        valid = line.valid
        rows.append({
            "generation": line.generation,
            "epochs": sorted({o.epoch for o in line.objects}),
            "from_txid": line.oldest(), "to_txid": newest,
            "from": iso(min((o.last_ms for o in valid if o.is_snapshot), default=0)) if valid else None,
            "to": iso(line.time_of(newest) or 0) if newest else None,
            "objects": len(line.objects), "bytes": sum(o.size for o in line.objects),
            "snapshots": sum(o.is_snapshot for o in line.objects),
            "left_behind": [str(o) for o in line.branches],
            "newest_ms": max((o.last_ms for o in line.objects), default=0),
        })
    return sorted(rows, key=lambda r: r["newest_ms"], reverse=True)


def parse_moment(text: str) -> int:
    """ISO 8601 with a zone (…Z or +hh:mm), as ms since the epoch."""
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise RestoreError(f"{text!r} is not a moment (ISO 8601 with a zone, e.g. 2026-12-01T10:41:59Z)") from None
    if moment.tzinfo is None:
        raise RestoreError(f"{text!r} has no zone: say Z (UTC) or +hh:mm")
    return int(moment.timestamp() * 1000)


def choose(store: Store, generation: str | None = None, txid: int | None = None, at_ms: int | None = None
           ) -> tuple[Timeline, int]:
    """The timeline and TXID a restore means: ``txid``, or the last one
    committed at or before ``at_ms``, or the newest; in ``generation``, or
    the newest generation (for a moment, the newest that reaches back to it)."""
    lines = timelines(store)
    if not lines:
        raise RestoreError(f"{store.location} holds no backups")
    if generation is not None:
        if generation not in lines:
            raise RestoreError(f"{store.location} holds no generation {generation} (`broadsheet backups list`)")
        candidates = [lines[generation]]
    else:
        candidates = sorted(lines.values(), key=lambda t: max(o.last_ms for o in t.objects), reverse=True)
    if at_ms is None:
        if len(candidates) > 1:
            # A primary started on an empty volume streams a generation of
            # its own before anything is restored into it: which one is meant
            # is the user's to say.
            listed = "; ".join(
                f"{t.generation} (to TXID {t.newest()}, {iso(max(o.last_ms for o in t.objects))})" for t in candidates
            )
            raise RestoreError(f"{store.location} holds several generations of data.db: {listed}. Say which with"
                               " --generation (or give a moment with --at)")
        line = candidates[0]
        target = txid if txid is not None else line.newest()
        if target == 0:
            raise RestoreError(f"generation {line.generation} has no snapshot to restore from")
        return line, target
    for line in candidates:
        first = [o.last_ms for o in line.valid if o.is_snapshot]
        if not first or min(first) > at_ms:
            continue
        return line, txid_at(store, line, at_ms)
    raise RestoreError(f"no generation in {store.location} reaches back to {iso(at_ms)}")


def txid_at(store: Store, line: Timeline, at_ms: int) -> int:
    """The last TXID committed at or before ``at_ms``."""
    best = max((line.usable_end(o) for o in line.valid if o.last_ms <= at_ms and line.usable_end(o) == o.max_txid),
               default=0)
    for o in line.valid:
        if o.level == "L0" and o.first_ms <= at_ms < o.last_ms and line.usable_end(o) > best:
            _, txns = decode(store.get(o.key))
            for txn, pages in txns:
                for _ in pages:
                    pass
                if txn.ts_ms <= at_ms and txn.max_txid <= line.usable_end(o):
                    best = max(best, txn.max_txid)
    if best == 0:
        raise RestoreError(f"nothing in generation {line.generation} was committed at or before {iso(at_ms)}")
    return best


@dataclass(frozen=True)
class Materialized:
    path: Path
    generation: str
    txid: int
    checksum: int
    committed_ms: int
    cluster_id: str
    objects: list[str]
    bytes_read: int


def materialize(store: Store, line: Timeline, target: int, dest: Path) -> Materialized:
    """Write data.db as it was at TXID ``target`` to ``dest`` and check it;
    ObjectError naming the object (and ``dest`` removed) when anything does
    not hold."""
    steps = line.plan(target)
    dest = Path(dest)
    try:
        return _materialize(store, line, steps, target, dest)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def _materialize(store: Store, line: Timeline, steps, target: int, dest: Path) -> Materialized:
    fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    at, checksum, ts, page_size, commit, cluster = 0, 0, 0, 0, 0, ""
    read = 0
    with os.fdopen(fd, "r+b") as out:
        for name, stop in steps:
            plaintext = store.get(name.key)

            def counted(pieces):
                nonlocal read
                for piece in pieces:
                    read += len(piece)
                    yield piece

            try:
                header, txns = decode(counted(plaintext))
            except (ValueError, KeyError, TypeError) as exc:
                raise ObjectError(f"{name}: not an object this broadsheet can read: {exc}") from None
            said = (header.generation, header.epoch, header.level, header.min_txid, header.max_txid)
            if said != (name.generation, name.epoch, name.level, name.min_txid, name.max_txid):
                raise ObjectError(f"{name}: holds {said}, not what its name says")
            cluster = header.cluster_id
            if name.is_snapshot:
                out.truncate(0)
                at = 0
            for txn, pages in txns:
                if txn.min_txid > stop:
                    break
                if not name.is_snapshot and (txn.min_txid != at + 1 or txn.pre != checksum):
                    raise ObjectError(
                        f"{name}: TXIDs {txn.min_txid}-{txn.max_txid} do not follow TXID {at}"
                        f" (checksum {checksum:016x}, theirs before {txn.pre:016x})"
                    )
                page_size = header.page_size
                for pgno, page in pages:
                    out.seek((pgno - 1) * page_size)
                    out.write(page)
                out.truncate(txn.commit * page_size)
                at, checksum, ts, commit = txn.max_txid, txn.post, txn.ts_ms, txn.commit
            if at != stop:
                raise ObjectError(f"{name}: ends at TXID {at}, the restore needed it to reach {stop}")
        out.flush()
        os.fsync(out.fileno())
        found = file_checksum(out, page_size, commit)
    if found != checksum:
        raise ObjectError(
            f"the restored data.db at TXID {target} has checksum {found:016x}, LiteFS's for TXID {target} is"
            f" {checksum:016x}: objects {', '.join(str(s[0]) for s in steps)}"
        )
    conn = apsw.Connection(f"file:{dest}?mode=ro&immutable=1", flags=apsw.SQLITE_OPEN_URI | apsw.SQLITE_OPEN_READONLY)
    try:
        check = conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()
    if check != [("ok",)]:
        raise ObjectError(f"the restored data.db at TXID {target} fails SQLite's integrity check: {check[0][0]}")
    return Materialized(dest, line.generation, target, checksum, ts, cluster, [str(s[0]) for s in steps], read)


def as_backup_file(done: Materialized) -> None:
    """Make a materialized data.db a backup file ``primary/backup.py``
    restores (rollback journal, its ``_public_backup`` row)."""
    from .. import store as data_store
    from ..backup import BACKUP_TABLE

    conn = data_store.connect(str(done.path))
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
        with data_store.immediate(conn):
            conn.execute(f"CREATE TABLE {BACKUP_TABLE} (txid INTEGER NOT NULL, cluster_id TEXT, taken_at TEXT NOT NULL)")
            conn.execute(f"INSERT INTO {BACKUP_TABLE} VALUES (?, ?, ?)", (done.txid, done.cluster_id, iso(done.committed_ms)))
    finally:
        conn.close()
    for extra in ("-wal", "-shm", "-journal"):
        Path(f"{done.path}{extra}").unlink(missing_ok=True)

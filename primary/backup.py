"""Backups of data.db, and bringing a primary back from one.

A backup is one self-contained SQLite file (rollback journal, no ``-wal``
beside it): data.db as it was at one LiteFS TXID, taken with SQLite's backup
API inside a read transaction whose snapshot is known to be that TXID, plus
a one-row ``_public_backup`` table saying which TXID, when, and of which
cluster. It is written under a hidden temporary name and renamed once
complete and checked, so the final name never holds half a file; the newest
``keep`` are kept.

Every data.db records the cluster it belongs to (``_public_cluster``, one
row, written when the primary first starts on it, from
``BROADSHEET_CLUSTER_ID`` or, by default, derived from the deployment's
``DATASETTE_SECRET``). A primary refuses to start on a data.db of another
cluster, and ``restore`` refuses a backup of another cluster, a file that is
not SQLite, one cut short, or a SQLite file that is not a broadsheet data.db,
each before anything is changed.

Restoring imports the file into the private LiteFS (its ``/import`` API: one
new TXID, which a standby receives like any other) and marks every public
table of the restored data.db to be copied whole, so the publisher rebuilds
public.db from it in its next cycle and read nodes converge.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import apsw
import httpx

from broadsheet.litefs import Pos
from broadsheet.names import PUBLIC_TABLES

from . import store

CLUSTER_TABLE = "_public_cluster"
BACKUP_TABLE = "_public_backup"
SQLITE_MAGIC = b"SQLite format 3\x00"
# data-20261127T034512.123Z-txid42.db: sorted by name is sorted by time.
NAME = re.compile(r"^data-(\d{8}T\d{6}\.\d{3}Z)-txid(\d+)\.db$")


class BackupError(Exception):
    """A backup that cannot be taken, or a file that cannot be restored; the
    message says why, and nothing was changed."""


def service(name: str, data_db: Path, dest: Path, keep: int, interval: float, litefs: str):
    """The supervised process that takes a backup every ``interval`` seconds
    (``broadsheet run-backups``), on the primary or the standby."""
    import sys

    from broadsheet.supervisor import Service

    return Service(
        name=name,
        argv=[
            sys.executable, "-m", "broadsheet.cli", "run-backups", "--data-db", str(data_db),
            "--to", str(dest), "--keep", str(keep), "--interval", str(interval),
        ],
        restart=True,
        depends_on=(litefs,),
    )


def check_schedule(interval: float, keep: int) -> None:
    """Refuse (ConfigError) a backup schedule a node cannot run."""
    from broadsheet.config import ConfigError

    if interval < 0 or keep < 1:
        raise ConfigError("BROADSHEET_BACKUP_INTERVAL must be 0 or more seconds, BROADSHEET_BACKUP_KEEP 1 or more")


def default_cluster_id(secret: str) -> str:
    """The cluster id every node of one deployment agrees on without being
    told: a digest of the secret they share (never the secret itself)."""
    return hashlib.sha256(f"broadsheet cluster\0{secret}".encode()).hexdigest()[:16]


def ensure_cluster(conn: apsw.Connection, cluster_id: str) -> str:
    """Record ``cluster_id`` in a data.db that has none; refuse (BackupError)
    a data.db that belongs to another cluster."""
    with store.immediate(conn):
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {CLUSTER_TABLE}"
            " (cluster_id TEXT NOT NULL, created_at TEXT NOT NULL, epoch INTEGER NOT NULL DEFAULT 1)"
        )
        columns = {r[1] for r in conn.execute(f"PRAGMA table_info({CLUSTER_TABLE})")}
        if "public_litefs_id" not in columns:
            conn.execute(f"ALTER TABLE {CLUSTER_TABLE} ADD COLUMN public_litefs_id TEXT")
        if "generation" not in columns:
            conn.execute(f"ALTER TABLE {CLUSTER_TABLE} ADD COLUMN generation TEXT")
        found = cluster_of(conn)
        if found is None:
            conn.execute(
                f"INSERT INTO {CLUSTER_TABLE} (cluster_id, created_at, generation) VALUES (?, ?, ?)",
                (cluster_id, store.now(), new_generation()),
            )
            return cluster_id
        # A data.db made by an older broadsheet: its generation starts now.
        conn.execute(f"UPDATE {CLUSTER_TABLE} SET generation = ? WHERE generation IS NULL", (new_generation(),))
    if found != cluster_id:
        raise BackupError(
            f"data.db belongs to cluster {found}, and this node is configured for cluster {cluster_id}"
            " (BROADSHEET_CLUSTER_ID, or derived from DATASETTE_SECRET): refusing to start on it"
        )
    return found


def new_generation() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True)
class Identity:
    """Which data.db this is: its cluster, its epoch (one more for each
    promotion) and its generation, a random id made with the data.db and
    kept by every transaction, promotion and restore after it. Two copies
    of one generation are one history; a data.db made afresh (a primary
    started on an empty volume) is another, whatever its TXID."""

    cluster_id: str | None = None
    epoch: int = 1
    generation: str | None = None

    def __str__(self) -> str:
        return f"epoch {self.epoch}, generation {self.generation or 'unknown'}"


def identity_of(conn: apsw.Connection) -> Identity:
    """data.db's identity (an empty Identity for a database that has no
    ``_public_cluster``, as a data.db before its first start has not)."""
    try:
        columns = {r[1] for r in conn.execute(f"PRAGMA table_info({CLUSTER_TABLE})")}
        if not columns:
            return Identity()
        generation = "generation" if "generation" in columns else "NULL"
        row = conn.execute(f"SELECT cluster_id, epoch, {generation} FROM {CLUSTER_TABLE} LIMIT 1").fetchone()
    except apsw.Error:
        return Identity()
    return Identity(row[0], int(row[1]), row[2]) if row else Identity()


def identity_of_file(path: str | os.PathLike, immutable: bool = False) -> Identity:
    """The identity of the data.db at ``path``, opened read-only (and
    ``immutable``: a copy nothing writes, with no WAL beside it). An empty
    Identity if there is no such file or it is not SQLite."""
    if not Path(path).exists():
        return Identity()
    try:
        conn = store.connect(f"file:{path}?immutable=1" if immutable else str(path), readonly=True)
    except apsw.Error:
        return Identity()
    try:
        return identity_of(conn)
    finally:
        conn.close()


def epoch_of(conn: apsw.Connection) -> int:
    """data.db's epoch: 1, and one more for each promotion of a standby."""
    try:
        row = conn.execute(f"SELECT epoch FROM {CLUSTER_TABLE} LIMIT 1").fetchone()
    except apsw.SQLError:
        return 1
    return int(row[0]) if row else 1


def set_epoch(conn: apsw.Connection, epoch: int) -> None:
    with store.immediate(conn):
        conn.execute(f"UPDATE {CLUSTER_TABLE} SET epoch = ? WHERE epoch < ?", (epoch, epoch))


def record_public_litefs_id(conn: apsw.Connection, litefs_id: str) -> None:
    """Keep the public cluster's LiteFS id in data.db, so that a promoted
    standby (or a primary rebuilt from a backup) starts the public cluster
    with the id its read nodes know."""
    with store.immediate(conn):
        conn.execute(
            f"UPDATE {CLUSTER_TABLE} SET public_litefs_id = ? WHERE public_litefs_id IS NOT ?", (litefs_id, litefs_id)
        )


def public_litefs_id(data_db: str | os.PathLike) -> str | None:
    """The public cluster's LiteFS id recorded in ``data_db``, if any."""
    if not Path(data_db).exists():
        return None
    try:
        conn = store.connect(str(data_db), readonly=True)
        try:
            row = conn.execute(f"SELECT public_litefs_id FROM {CLUSTER_TABLE} LIMIT 1").fetchone()
        finally:
            conn.close()
    except apsw.Error:
        return None
    return row[0] if row and row[0] else None


def cluster_of(conn: apsw.Connection, schema: str = "main") -> str | None:
    try:
        row = conn.execute(f"SELECT cluster_id FROM {schema}.{CLUSTER_TABLE} LIMIT 1").fetchone()
    except apsw.SQLError:  # no such table
        return None
    return row[0] if row else None


@dataclass(frozen=True)
class Backup:
    """One backup file and what it holds."""

    path: Path
    txid: int  # data.db's LiteFS TXID at the snapshot
    cluster_id: str
    taken_at: str

    def as_dict(self) -> dict:
        return {"path": str(self.path), "txid": self.txid, "cluster_id": self.cluster_id, "taken_at": self.taken_at}


def _snapshot(conn: apsw.Connection, data_db: str | os.PathLike) -> Pos:
    """Open a read transaction on ``conn`` and return the TXID its snapshot
    is at. The snapshot starts while another connection holds the write
    lock: no commit is in flight then, and LiteFS records a commit's TXID
    (the -pos file) before it lets go of the writer's lock, so the position
    read under that lock is exactly the snapshot's. A commit becomes visible
    to readers a moment before LiteFS has recorded it: reading the position
    without the lock could name the TXID before the one copied. On a
    replica (the standby) LiteFS applies each transaction under the same
    lock. The lock is held for microseconds, never for the copy."""
    lock = apsw.Connection(str(data_db))
    # Never the last connection's checkpoint on close (a replica is read-only).
    lock.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
    lock.set_busy_timeout(10_000)
    try:
        lock.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("BEGIN")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchall()  # the snapshot starts here
            return Pos.read(data_db)
        finally:
            lock.execute("ROLLBACK")
    except apsw.BusyError:
        raise BackupError("data.db stayed locked by a writer for 10 s: no moment to start a snapshot") from None
    finally:
        lock.close()


def take(data_db: str | os.PathLike, dest: str | os.PathLike, keep: int | None = None) -> Backup:
    """Write a consistent backup of ``data_db`` into directory ``dest`` and,
    with ``keep``, delete all but the newest ``keep`` backups there."""
    dest = Path(dest)
    if not Path(data_db).exists():
        raise BackupError(f"{data_db} does not exist")
    tmp = dest / f".data-{os.getpid()}-{time.time_ns()}.db.tmp"
    try:
        # Private data: a directory made here, and every backup, are the
        # owner's alone, whatever the umask.
        dest.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise BackupError(f"cannot write backups into {dest}: {exc.strerror or exc}") from None
    try:
        src = apsw.Connection(f"file:{data_db}?mode=ro", flags=apsw.SQLITE_OPEN_URI | apsw.SQLITE_OPEN_READONLY)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    src.set_busy_timeout(10_000)
    try:
        pos = _snapshot(src, data_db)
        try:
            cluster_id = cluster_of(src) or ""
            out = apsw.Connection(str(tmp))
            with out.backup("main", src, "main") as copy:
                copy.step(-1)
        finally:
            src.execute("ROLLBACK")
        taken = datetime.datetime.now(datetime.timezone.utc)
        taken_at = taken.isoformat(timespec="milliseconds")
        # One file, readable with nothing beside it.
        out.execute("PRAGMA journal_mode=DELETE")
        with store.immediate(out):
            out.execute(f"CREATE TABLE {BACKUP_TABLE} (txid INTEGER NOT NULL, cluster_id TEXT, taken_at TEXT NOT NULL)")
            out.execute(f"INSERT INTO {BACKUP_TABLE} VALUES (?, ?, ?)", (pos.txid, cluster_id, taken_at))
        check = out.execute("PRAGMA integrity_check").fetchall()
        out.close()
        if check != [("ok",)]:
            raise BackupError(f"the copy failed SQLite's integrity check: {check[:5]}")
        _fsync(tmp)
        final = dest / f"data-{taken.strftime('%Y%m%dT%H%M%S')}.{taken.microsecond // 1000:03d}Z-txid{pos.txid}.db"
        os.replace(tmp, final)
        _fsync(dest)
    except (apsw.Error, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise BackupError(f"backing up {data_db} into {dest} failed: {exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        src.close()
    if keep is not None:
        prune(dest, keep, spare=final)
    return Backup(final, pos.txid, cluster_id, taken_at)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backups(dest: str | os.PathLike) -> list[Path]:
    """The backups in ``dest``, oldest first."""
    try:
        names = sorted(p.name for p in Path(dest).iterdir() if NAME.match(p.name))
    except FileNotFoundError:
        return []
    return [Path(dest) / n for n in names]


def prune(dest: str | os.PathLike, keep: int, spare: Path | None = None) -> list[Path]:
    """Delete all but the newest ``keep`` backups in ``dest`` (and
    temporary files a crashed backup left); return what was deleted. Never
    ``spare`` (the backup just taken), even when a clock set back gives an
    older backup a later name."""
    if keep < 1:
        raise BackupError("keep at least one backup")
    found = [p for p in backups(dest) if p != spare]
    old = found[: max(0, len(found) - (keep - (spare is not None)))]
    for path in old:
        path.unlink(missing_ok=True)
    for stale in Path(dest).glob(".data-*.db.tmp"):
        if time.time() - stale.stat().st_mtime > 3600:
            stale.unlink(missing_ok=True)
    return old


def inspect(path: str | os.PathLike) -> Backup:
    """What a backup file holds; BackupError, naming what is wrong, for a
    file that is not a whole broadsheet data.db."""
    path = Path(path)
    if not path.is_file():
        raise BackupError(f"{path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as fp:
        header = fp.read(100)
    if not header.startswith(SQLITE_MAGIC):
        raise BackupError(f"{path}: not an SQLite database (it does not start with the SQLite header)")
    if len(header) < 100:
        raise BackupError(f"{path}: truncated: {size} bytes, shorter than an SQLite header")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    if page_size < 512 or page_size & (page_size - 1):
        raise BackupError(f"{path}: not an SQLite database (page size {page_size})")
    if size < page_size * pages or size % page_size:
        raise BackupError(
            f"{path}: truncated: {size} bytes where its header promises {pages} pages of {page_size}"
            f" ({page_size * pages} bytes)"
        )
    if header[18] == 2 and Path(f"{path}-wal").exists():
        raise BackupError(f"{path}: has a -wal file beside it; open it once with sqlite3 to fold that in")
    try:
        conn = apsw.Connection(f"file:{path}?mode=ro&immutable=1", flags=apsw.SQLITE_OPEN_URI | apsw.SQLITE_OPEN_READONLY)
        try:
            check = conn.execute("PRAGMA integrity_check").fetchall()
            if check != [("ok",)]:
                raise BackupError(f"{path}: damaged: SQLite's integrity check says {check[0][0]}")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if PUBLIC_TABLES not in tables or CLUSTER_TABLE not in tables:
                raise BackupError(f"{path}: an SQLite database, but not a broadsheet data.db (no {PUBLIC_TABLES} or {CLUSTER_TABLE})")
            cluster_id = cluster_of(conn) or ""
            txid, taken_at = 0, ""
            if BACKUP_TABLE in tables:
                row = conn.execute(f"SELECT txid, taken_at FROM {BACKUP_TABLE} LIMIT 1").fetchone()
                if row:
                    txid, taken_at = int(row[0]), str(row[1])
        finally:
            conn.close()
    except apsw.Error as exc:
        raise BackupError(f"{path}: not a readable SQLite database: {exc}") from None
    return Backup(path, txid, cluster_id, taken_at)


@dataclass(frozen=True)
class Restored:
    backup: Backup
    private_txid: int  # data.db's TXID once the backup is in
    tables: list[str]  # public tables the publisher copies again


def restore(path: str | os.PathLike, data_db: str | os.PathLike, litefs_url: str, workdir: str | os.PathLike | None = None) -> Restored:
    """Replace the running primary's data.db with backup ``path``, through
    its private LiteFS at ``litefs_url``. Every check comes first: on
    BackupError nothing has changed."""
    backup = inspect(path)
    if not Path(data_db).exists():
        raise BackupError(f"{data_db} does not exist: start the primary first (it makes an empty data.db)")
    current = store.connect(str(data_db), readonly=True)
    try:
        here = cluster_of(current)
        epoch = epoch_of(current)
        generation = identity_of(current).generation
        last_change = current.execute("SELECT max(id) FROM _public_changes").fetchone()[0] or 0
    finally:
        current.close()
    if here is not None and backup.cluster_id != here:
        raise BackupError(
            f"{path} is a data.db of cluster {backup.cluster_id or '(none)'}, and this primary's is cluster {here}:"
            " refusing to restore another cluster's data"
        )
    scratch = Path(tempfile.mkdtemp(prefix="broadsheet-restore-", dir=workdir))
    try:
        staged = scratch / "data.db"
        try:
            shutil.copyfile(path, staged)
        except OSError as exc:
            # Scheduled backups may prune it meanwhile.
            raise BackupError(f"{path} could not be read for the restore: {exc.strerror or exc}") from None
        conn = store.connect(str(staged))
        try:
            # A backup taken by an older broadsheet: brought up to this
            # one's internal tables before the running primary reads it.
            store.ensure_schema(conn)
            # The running primary's epoch, generation and public cluster id
            # carry over: a backup from before a promotion must not make this
            # node look no newer than the old primary, nor bring back a
            # public LiteFS id the read nodes no longer follow; and its
            # standby, which follows the import like any transaction, still
            # holds one history with it.
            ensure_cluster(conn, here or backup.cluster_id)
            set_epoch(conn, epoch)
            if generation:
                with store.immediate(conn):
                    conn.execute(f"UPDATE {CLUSTER_TABLE} SET generation = ?", (generation,))
            if public_id := public_litefs_id(data_db):
                record_public_litefs_id(conn, public_id)
            with store.immediate(conn):
                conn.execute(f"DROP TABLE IF EXISTS {BACKUP_TABLE}")
                public = [r[0] for r in conn.execute(f"SELECT table_name FROM {PUBLIC_TABLES} ORDER BY table_name")]
                # Above every change id the running publisher has seen, so
                # that it reads them: each public table copied whole.
                top = max(last_change, conn.execute("SELECT max(id) FROM _public_changes").fetchone()[0] or 0)
                for n, table in enumerate(public, start=1):
                    conn.execute("INSERT INTO _public_changes (id, tbl, rid) VALUES (?, ?, NULL)", (top + n, table))
            # data.db runs in WAL mode: the imported header says so too.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        if Path(f"{staged}-wal").exists() and Path(f"{staged}-wal").stat().st_size:
            raise BackupError("could not fold the staged copy's WAL into it")
        with open(staged, "rb") as body:
            try:
                response = httpx.post(
                    f"{litefs_url}/import", params={"name": Path(data_db).name}, content=body, timeout=300
                )
            except httpx.HTTPError as exc:
                raise BackupError(f"the private LiteFS at {litefs_url} did not take the import: {exc}") from None
        if response.status_code != 200:
            raise BackupError(f"the private LiteFS refused the import: HTTP {response.status_code} {response.text.strip()}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Restored(backup, Pos.read(data_db).txid, public)

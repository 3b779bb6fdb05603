"""The uploader: on the primary, data.db's transactions into the bucket.

It only reads. It follows the private LiteFS's ``/events`` stream for each
data.db commit and reads the LTX file LiteFS wrote for it (in LiteFS's
data directory, never written here), and takes snapshots through LiteFS's
``/export`` (every page at one position, which is found again by LiteFS's
own checksum). Team writes never wait for it: when the store is down or
slow, the uploader falls behind (its status file says by how much) and
drains the backlog when the store returns. A backlog older than LiteFS's
LTX retention is no longer on disk: the uploader then starts a new chain
from a fresh snapshot, so a restore never meets a gap.

Every ``levels`` interval it compacts the objects of the level below into
one (L1 from L0 …), and every snapshot interval it takes a snapshot; what
no restore within the retention needs is deleted. An uploader that finds a
newer epoch in the bucket (its primary was replaced by a promoted standby)
uploads nothing more.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import httpx

from broadsheet.config import ConfigError, Env
from broadsheet.litefs import LTX_TRAILER_SIZE, Pos, events
from broadsheet.log import log

from . import crypto, status
from .crypto import ObjectError
from .objects import SNAPSHOT, BaseMark, Header, ObjectName, Txn, decode, encode, lock_pgno, page_checksum
from .restore import Timeline
from .store import Store, StoreError

DB = "data.db"
L0_MAX_TXNS = 2000
L0_MAX_BYTES = 32 << 20
# How long an L0 object gathers commits after the first: a few uploads a
# second however fast the team writes (each upload costs CPU on the
# primary, which its writes share), within the loss window.
GATHER = 0.3


def duration(text: str, name: str) -> float:
    """``90``, ``90s``, ``5m``, ``24h``, ``7d`` as seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    value = text.strip().lower()
    factor = units.get(value[-1:], None)
    try:
        seconds = float(value[:-1] if factor else value) * (factor or 1)
    except ValueError:
        seconds = -1
    if seconds <= 0:
        raise ConfigError(f"{name} must be a duration (90s, 5m, 24h, 7d), not {text!r}")
    return seconds


@dataclass(frozen=True)
class Config:
    url: str
    retention: float = 7 * 86400.0
    levels: tuple[float, ...] = (30.0, 300.0, 3600.0)  # L1, L2, L3 (Litestream 0.5's defaults)
    snapshot_interval: float = 86400.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Config | None":
        """None when BROADSHEET_BACKUP_URL is not set. Checks the key too."""
        from .store import Location

        env = Env(environ)
        url = env.optional("BROADSHEET_BACKUP_URL")
        if not url:
            return None
        Location.parse(url)
        crypto.key_from_env(environ)
        levels = tuple(duration(t, "BROADSHEET_BACKUP_LEVELS") for t in env.str("BROADSHEET_BACKUP_LEVELS", "30s,5m,1h").split(",") if t.strip())
        if not levels or list(levels) != sorted(levels) or len(levels) > 9:
            raise ConfigError("BROADSHEET_BACKUP_LEVELS must be 1 to 9 increasing durations, e.g. 30s,5m,1h")
        return cls(
            url=url,
            retention=duration(env.str("BROADSHEET_BACKUP_RETENTION", "7d"), "BROADSHEET_BACKUP_RETENTION"),
            levels=levels,
            snapshot_interval=duration(env.str("BROADSHEET_BACKUP_SNAPSHOT_INTERVAL", "24h"), "BROADSHEET_BACKUP_SNAPSHOT_INTERVAL"),
        )


class Fenced(Exception):
    """A newer epoch writes this stream: this primary was replaced."""


class Gap(Exception):
    """The next transaction is not on disk any more (LiteFS's retention), or
    does not follow: the chain starts again from a snapshot."""


def ltx_path(ltx_dir: Path, txid: int) -> Path:
    exact = ltx_dir / f"{txid:016x}-{txid:016x}.ltx"
    if exact.exists():
        return exact
    for name in os.listdir(ltx_dir):
        if name.startswith(f"{txid:016x}-") and name.endswith(".ltx"):
            return ltx_dir / name
    raise Gap(f"the LTX file of TXID {txid} is gone (LiteFS's retention)")


def ltx_post(path: Path) -> int:
    with open(path, "rb") as fp:
        fp.seek(-LTX_TRAILER_SIZE, os.SEEK_END)
        return struct.unpack(">Q", fp.read(8))[0]


class Uploader:
    def __init__(self, config: Config, store: Store, data_db: str, litefs_url: str, litefs_data_dir: str,
                 status_file: str, workdir: str):
        self.config, self.store = config, store
        self.data_db, self.litefs_url = data_db, litefs_url.rstrip("/")
        self.ltx_dir = Path(litefs_data_dir) / "dbs" / DB / "ltx"
        self.status_file, self.workdir = status_file, Path(workdir)
        self.stopped, self.wake = threading.Event(), threading.Event()
        self.head: tuple[int, int, int] | None = None  # (txid, checksum, commit ms) uploaded, chain's end
        self.generation = self.cluster_id = ""
        self.epoch = 0
        self.objects: list[ObjectName] = []  # this generation's, as listed and since uploaded
        self.bases: list[BaseMark] = []
        self.commit_times: dict[int, float] = {}
        self.pending_since: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_upload_at: float | None = None
        self.state = "starting"
        self.due: dict[str, float] = {}
        self.restart = False  # the next begin starts a new chain (a snapshot)

    # -- the loop --------------------------------------------------------------
    def run(self) -> None:
        threading.Thread(target=self._follow, daemon=True).start()
        backoff = 0.5
        while not self.stopped.is_set():
            try:
                if self.head is None:
                    self.begin()
                self.upload_pending()
                self.maintain()
                self.last_error, backoff = None, 0.5
                self.state = "uploading"
            except Fenced as exc:
                self._failed(str(exc), "fenced")
                self.head = None
                backoff = 10.0
            except Gap as exc:
                log("offsite", f"{exc}: starting a new chain from a snapshot")
                self.head, self.restart = None, True
                continue
            except (StoreError, ObjectError, OSError, httpx.HTTPError, ValueError) as exc:
                self._failed(str(exc), "behind")
                backoff = min(backoff * 2, 5.0)
            self.write_status()
            if self.last_error:
                self.stopped.wait(backoff)
            else:
                self.wake.wait(1.0)
            self.wake.clear()

    def _failed(self, message: str, state: str) -> None:
        if message != self.last_error:
            log("offsite", f"error: {message}")
        self.last_error, self.last_error_at, self.state = message, time.time(), state

    def _follow(self) -> None:
        """data.db's commits, as LiteFS announces them: wake the loop, and
        remember when each was committed (the lag in seconds)."""
        while not self.stopped.is_set():
            try:
                for event in events(self.litefs_url):
                    if event is not None and event.db == DB:
                        self.commit_times[event.pos.txid] = event.committed_at or time.time()
                        self.wake.set()
                    if self.stopped.is_set():
                        return
            except (httpx.HTTPError, ValueError):
                pass
            self.stopped.wait(1.0)

    def write_status(self) -> None:
        pos = Pos.read(self.data_db)
        uploaded = self.head[0] if self.head else 0
        if pos.txid > uploaded:
            times = [t for txid, t in self.commit_times.items() if txid > uploaded]
            if self.pending_since is None:
                self.pending_since = min(times) if times else time.time()
        else:
            self.pending_since = None
        for txid in [t for t in self.commit_times if t <= uploaded]:
            del self.commit_times[txid]
        status.write(self.status_file, {
            "url": str(self.store.location), "state": self.state, "generation": self.generation,
            "epoch": self.epoch, "uploaded_txid": uploaded, "data_db_txid": pos.txid,
            "pending_since": self.pending_since, "last_upload_at": self.last_upload_at,
            "last_error": self.last_error, "last_error_at": self.last_error_at, "objects": len(self.objects),
        })

    # -- where the stream is -----------------------------------------------------
    def _identity(self) -> None:
        from ..backup import identity_of_file

        ident = identity_of_file(self.data_db)
        if not ident.generation:
            raise ValueError(f"{self.data_db} has no generation yet (the primary writes it at start)")
        self.generation, self.epoch, self.cluster_id = ident.generation, ident.epoch, ident.cluster_id or ""

    def _list(self) -> Timeline:
        objects, bases, _ = self.store.list()
        self.objects = [o for o in objects if o.generation == self.generation]
        self.bases = [b for b in bases if b.generation == self.generation]
        newer = {o.epoch for o in self.objects if o.epoch > self.epoch} | {b.epoch for b in self.bases if b.epoch > self.epoch}
        if newer:
            raise Fenced(
                f"epoch {max(newer)} writes this backup stream and this data.db is at epoch {self.epoch}:"
                " this primary was replaced (a standby promoted); uploading nothing"
            )
        return Timeline(self.generation, self.objects, self.bases)

    def begin(self) -> None:
        """Find where the bucket's stream of this data.db ends and continue
        it; or start one (a base mark for a new epoch, and a snapshot)."""
        self._identity()
        line = self._list()
        pos = Pos.read(self.data_db)
        mark = next((b for b in self.bases if b.epoch == self.epoch), None)
        newest = line.newest()
        if self.restart:
            self.restart = False
        elif newest and newest <= pos.txid:
            checksum, ms = self._position(line, newest)
            try:
                following = self._ltx_pre(newest + 1) if pos.txid > newest else pos.checksum
            except Gap:
                following = None
            if following == checksum:
                if mark is None:
                    self._put_base(newest)
                self.head = (newest, checksum, ms)
                log("offsite", f"continuing {self.store.location} (generation {self.generation}, epoch"
                    f" {self.epoch}) after TXID {newest}")
                return
        elif newest and newest > pos.txid and any(o.epoch == self.epoch for o in line.valid):
            raise ValueError(
                f"the bucket's stream of this data.db (epoch {self.epoch}) reaches TXID {newest}, and data.db is at"
                f" TXID {pos.txid}: refusing to upload a second history under one epoch"
            )
        self.snapshot(restart=True)

    def _ltx_pre(self, txid: int) -> int:
        from broadsheet.litefs import LTX_HEADER_SIZE, LtxHeader

        with open(ltx_path(self.ltx_dir, txid), "rb") as fp:
            return LtxHeader.parse(fp.read(LTX_HEADER_SIZE)).pre_apply_checksum

    def _position(self, line: Timeline, txid: int) -> tuple[int, int]:
        """The checksum and commit time at ``txid``, from the object that ends there."""
        name, stop = line.plan(txid)[-1]
        _, txns = decode(self.store.get(name.key))
        found = None
        for txn, pages in txns:
            for _ in pages:
                pass
            if txn.max_txid <= stop:
                found = (txn.post, txn.ts_ms)
        if found is None:
            raise ObjectError(f"{name}: holds no transaction up to TXID {stop}")
        return found

    def _put_base(self, txid: int) -> None:
        base = BaseMark(self.generation, self.epoch, txid)
        self.store.put(base.key, [b"{}"])
        self.bases.append(base)

    # -- uploading ---------------------------------------------------------------
    def _header(self, level: str, page_size: int, lo: int, hi: int, kind: str = "changes") -> Header:
        return Header(kind, self.cluster_id, self.generation, self.epoch, level, page_size, lo, hi)

    def upload_pending(self) -> None:
        while not self.stopped.is_set():
            pos = Pos.read(self.data_db)
            txid, checksum, _ = self.head
            if pos.txid <= txid:
                return
            waiting = [t for n, t in list(self.commit_times.items()) if n > txid]
            if waiting and (left := min(waiting) + GATHER - time.time()) > 0 and not self.last_error:
                self.stopped.wait(min(left, GATHER))
                continue
            batch, size = [], 0
            from broadsheet.release import read_ltx

            t = txid + 1
            while t <= pos.txid and len(batch) < L0_MAX_TXNS and size < L0_MAX_BYTES:
                path = ltx_path(self.ltx_dir, t)
                try:
                    header, pages, post = read_ltx(path)
                except FileNotFoundError:
                    raise Gap(f"the LTX file of TXID {t} is gone (LiteFS's retention)") from None
                expected = batch[-1][0].post if batch else checksum
                if header.pre_apply_checksum != expected:
                    raise Gap(f"TXID {t} does not follow TXID {t - 1} (checksum {expected:016x})")
                txn = Txn(header.min_txid, header.max_txid, header.commit, header.pre_apply_checksum, post,
                          header.timestamp_ms, len(pages))
                batch.append((txn, pages, header.page_size))
                size += len(pages) * header.page_size
                t = header.max_txid + 1
            # One page size per object: a VACUUM that changed it starts the next.
            page_size = batch[0][2]
            batch = [b for b in _same_size(batch, page_size)]
            lo, hi = batch[0][0].min_txid, batch[-1][0].max_txid
            name = ObjectName(self.generation, self.epoch, "L0", lo, hi, batch[0][0].ts_ms, batch[-1][0].ts_ms)
            body = encode(self._header("L0", page_size, lo, hi),
                          [(txn, sorted(pages.items())) for txn, pages, _ in batch])
            sent = self.store.put(name.key, body, small=size < (64 << 20))
            self.objects.append(dataclasses.replace(name, size=sent))
            last = batch[-1][0]
            self.head = (last.max_txid, last.post, last.ts_ms)
            self.last_upload_at = time.time()
            self.write_status()

    def snapshot(self, restart: bool = False) -> ObjectName:
        """A snapshot of data.db through LiteFS's /export: every page at
        one position, which LiteFS's checksum names. With ``restart``, the
        chain goes on from it (a new stream, or after a gap)."""
        if restart:
            self._identity()
            self._list()
        before = Pos.read(self.data_db)
        self.workdir.mkdir(parents=True, exist_ok=True)
        fd, spool_name = tempfile.mkstemp(prefix=".offsite-snapshot-", dir=self.workdir)
        spool = Path(spool_name)
        try:
            with os.fdopen(fd, "r+b") as out:
                page_size, pages, checksum = self._export(out)
                txid, ms = self._which_txid(before, checksum)
                name = ObjectName(self.generation, self.epoch, SNAPSHOT, txid, txid, ms, ms)
                header = self._header(SNAPSHOT, page_size, txid, txid, kind="snapshot")
                lock = lock_pgno(page_size)
                count = pages - (1 if pages >= lock else 0)

                def spooled():
                    out.seek(0)
                    for pgno in range(1, pages + 1):
                        page = out.read(page_size)
                        if pgno != lock:
                            yield pgno, page

                txn = Txn(txid, txid, pages, 0, checksum, ms, count)
                if restart and not any(b.epoch == self.epoch for b in self.bases):
                    self._put_base(txid)
                sent = self.store.put(name.key, encode(header, [(txn, spooled())]), small=pages * page_size < (32 << 20))
        finally:
            spool.unlink(missing_ok=True)
        self.objects.append(dataclasses.replace(name, size=sent))
        if restart or self.head is None:
            self.head = (txid, checksum, ms)
        self.due["snapshot"] = time.time() + self.config.snapshot_interval
        self.last_upload_at = time.time()
        log("offsite", f"snapshot of data.db at TXID {txid} ({pages} pages): {name}")
        return name

    def _export(self, out) -> tuple[int, int, int]:
        """data.db's pages from LiteFS's /export into ``out`` (on the
        primary's volume, removed once sent): page size, pages, checksum."""
        total, page_size, pgno, buffer = 0, 0, 0, bytearray()
        with httpx.Client(timeout=httpx.Timeout(10, read=60)) as client:
            with client.stream("GET", f"{self.litefs_url}/export", params={"name": DB}) as response:
                if response.status_code != 200:
                    raise ValueError(f"LiteFS's /export answered HTTP {response.status_code}: {response.read()[:200]!r}")
                for piece in response.iter_bytes(1 << 20):
                    buffer += piece
                    if not page_size and len(buffer) >= 100:
                        (size,) = struct.unpack(">H", bytes(buffer[16:18]))
                        page_size = 65536 if size == 1 else size
                    while page_size and len(buffer) >= page_size:
                        pgno += 1
                        page = bytes(buffer[:page_size])
                        del buffer[:page_size]
                        if pgno != lock_pgno(page_size):
                            total ^= page_checksum(pgno, page)
                        out.write(page)
        if buffer or not pgno:
            raise ValueError(f"LiteFS's /export sent {pgno} pages and {len(buffer)} bytes more")
        out.flush()
        return page_size, pgno, (1 << 63) | total

    def _which_txid(self, before: Pos, checksum: int) -> tuple[int, int]:
        """The TXID whose checksum ``checksum`` is (the export's position),
        and its commit time."""
        from broadsheet.litefs import LTX_HEADER_SIZE, LtxHeader

        def committed(txid):
            try:
                with open(ltx_path(self.ltx_dir, txid), "rb") as fp:
                    return LtxHeader.parse(fp.read(LTX_HEADER_SIZE)).timestamp_ms
            except (Gap, OSError, ValueError):
                return int(self.commit_times.get(txid, time.time()) * 1000)

        if checksum == before.checksum:
            return before.txid, committed(before.txid)
        for txid in range(before.txid + 1, Pos.read(self.data_db).txid + 1):
            try:
                if ltx_post(ltx_path(self.ltx_dir, txid)) == checksum:
                    return txid, committed(txid)
            except (Gap, OSError):
                continue
        raise ValueError("the export matches no TXID's checksum: trying again")

    # -- compaction, snapshots, retention -----------------------------------------
    def maintain(self) -> None:
        now = time.time()
        for level, interval in enumerate(self.config.levels, start=1):
            key = f"L{level}"
            if now >= self.due.setdefault(key, now + interval):
                self.compact(level)
                self.due[key] = now + interval
        if now >= self.due.setdefault("snapshot", now + self.config.snapshot_interval):
            self.snapshot()
        if now >= self.due.setdefault("retention", now + min(60.0, self.config.retention / 4)):
            self.prune()
            self.due["retention"] = now + min(60.0, self.config.retention / 4)

    def compact(self, level: int) -> ObjectName | None:
        """The level-below objects of this epoch since the newest object of
        ``level``, one run of consecutive TXIDs, as one object of ``level``."""
        below, here = f"L{level - 1}", f"L{level}"
        mine = [o for o in self.objects if o.epoch == self.epoch]
        done = max((o.max_txid for o in mine if o.level == here), default=0)
        run: list[ObjectName] = []
        for o in sorted((o for o in mine if o.level == below and o.min_txid > done), key=lambda o: o.min_txid):
            if run and o.min_txid != run[-1].max_txid + 1:
                break
            run.append(o)
        if len(run) < 2:
            return None
        lo, hi = run[0].min_txid, run[-1].max_txid
        with tempfile.TemporaryFile(dir=self.workdir) as spool:
            where: dict[int, int] = {}
            first_pre = last = page_size = None
            for o in run:
                header, txns = decode(self.store.get(o.key))
                page_size = header.page_size
                for txn, pages in txns:
                    if first_pre is None:
                        first_pre = txn.pre
                    elif txn.pre != last.post:
                        raise ObjectError(f"{o}: TXID {txn.min_txid} does not follow TXID {last.max_txid}")
                    for pgno, page in pages:
                        spool.seek(0, os.SEEK_END)
                        where[pgno] = spool.tell()
                        spool.write(page)
                    for pgno in [p for p in where if p > txn.commit]:
                        del where[pgno]
                    last = txn

            def pages():
                for pgno in sorted(where):
                    spool.seek(where[pgno])
                    yield pgno, spool.read(page_size)

            txn = Txn(lo, hi, last.commit, first_pre, last.post, last.ts_ms, len(where))
            name = ObjectName(self.generation, self.epoch, here, lo, hi, run[0].first_ms, run[-1].last_ms)
            sent = self.store.put(name.key, encode(self._header(here, page_size, lo, hi), [(txn, pages())]),
                                  small=len(where) * page_size < (32 << 20))
        self.objects.append(dataclasses.replace(name, size=sent))
        return name

    def prune(self) -> list[str]:
        """Delete what no restore within the retention needs: in this
        generation, everything up to the newest snapshot older than the
        retention (and that snapshot's predecessors), branches left behind
        older than it; other generations once their newest object is."""
        cutoff = (time.time() - self.config.retention) * 1000
        objects, bases, _ = self.store.list()
        line = Timeline(self.generation, [o for o in objects if o.generation == self.generation],
                        [b for b in bases if b.generation == self.generation])
        gone: list[str] = []
        old = [o for o in line.valid if o.is_snapshot and o.last_ms <= cutoff]
        if old:
            base = max(old, key=lambda o: o.max_txid)
            gone += [o.key for o in line.valid if o != base and o.max_txid <= base.max_txid and o.last_ms <= cutoff]
        gone += [o.key for o in line.branches if o.last_ms <= cutoff]
        for generation in {o.generation for o in objects} - {self.generation}:
            theirs = [o for o in objects if o.generation == generation]
            if max(o.last_ms for o in theirs) <= cutoff:
                gone += [o.key for o in theirs] + [b.key for b in bases if b.generation == generation]
        if gone:
            self.store.delete(gone)
            log("offsite", f"retention: deleted {len(gone)} objects older than {self.config.retention:g}s")
        keep = set(gone)
        self.objects = [o for o in objects if o.generation == self.generation and o.key not in keep]
        return gone


def _same_size(batch, page_size):
    for item in batch:
        if item[2] != page_size:
            return
        yield item


def run(data_db: str, litefs_url: str, litefs_data_dir: str, status_file: str, workdir: str) -> None:
    """``broadsheet run-offsite``: upload until SIGTERM."""
    import signal

    config = Config.from_env()
    if config is None:
        raise ConfigError("BROADSHEET_BACKUP_URL is not set")
    uploader = Uploader(config, Store(config.url, crypto.key_from_env()), data_db, litefs_url, litefs_data_dir,
                        status_file, workdir)

    def stop(*_):
        uploader.stopped.set()
        uploader.wake.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    uploader.run()

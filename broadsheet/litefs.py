"""What broadsheet knows about LiteFS: positions, the ``-pos`` file, the events
stream, and the environment that drives the shared ``litefs.yml``."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx

from .config import Env, http_url, split_addr

# The top-level litefs.yml, packaged with broadsheet (a link in the source
# tree, a copy in a wheel), so that an installed broadsheet has it too.
PACKAGED_CONFIG = Path(__file__).resolve().parent / "litefs.yml"


def litefs_binary() -> str:
    """The LiteFS binary: ``$BROADSHEET_LITEFS``, else ``litefs`` beside the
    running Python (a virtualenv's ``bin/``, where ``scripts/setup`` links
    it), else ``litefs`` on ``PATH``."""
    if env := Env().optional("BROADSHEET_LITEFS"):
        return env
    beside = Path(sys.executable).parent / "litefs"
    if beside.exists():
        return str(beside)
    found = shutil.which("litefs")
    if found is None:
        raise FileNotFoundError(
            "no litefs binary: set BROADSHEET_LITEFS, or build it with scripts/setup"
        )
    return found


def litefs_config() -> Path:
    """The ``litefs.yml`` every LiteFS process runs with:
    ``$BROADSHEET_LITEFS_CONFIG``, else the one packaged with broadsheet."""
    return Path(Env().optional("BROADSHEET_LITEFS_CONFIG") or PACKAGED_CONFIG)


@dataclass(frozen=True, order=True)
class Pos:
    """A database's replication position, as LiteFS reports it: the TXID of the
    last applied transaction and the checksum of the database after it."""

    txid: int
    checksum: int = 0

    @classmethod
    def parse(cls, text: str) -> "Pos":
        """Parse the ``-pos`` file format: ``%016x/%016x``."""
        txid, _, checksum = text.strip().partition("/")
        return cls(int(txid, 16), int(checksum or "0", 16))

    @classmethod
    def read(cls, db_path: str | os.PathLike) -> "Pos":
        """Read the position of a database on a LiteFS mount; TXID 0 if the
        database does not exist yet."""
        try:
            with open(f"{db_path}-pos") as fp:
                return cls.parse(fp.read())
        except FileNotFoundError:
            return cls(0, 0)

    def __str__(self) -> str:
        return f"{self.txid:016x}/{self.checksum:016x}"


# An LTX file (superfly/ltx v0.3): a 100-byte header, the pages (LZ4-framed
# when the header's flag says so), a 16-byte trailer.
LTX_HEADER_SIZE = 100
LTX_TRAILER_SIZE = 16
LTX_COMPRESSED = 0x1
_LTX_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.ltx$")


@dataclass(frozen=True)
class LtxHeader:
    """What an LTX file's header says: the TXIDs it carries (a snapshot
    starts at TXID 1 and holds every page), the position it applies to, the
    database's size after it (0 pages: the database is deleted) and when it
    was committed."""

    flags: int
    page_size: int
    commit: int  # database size after it, in pages
    min_txid: int
    max_txid: int
    timestamp_ms: int
    pre_apply_checksum: int

    @classmethod
    def parse(cls, data: bytes) -> "LtxHeader":
        if len(data) < LTX_HEADER_SIZE or data[:4] != b"LTX1":
            raise ValueError("not an LTX header")
        flags, page_size, commit, min_txid, max_txid, ts, pre = struct.unpack(">IIIQQqQ", data[4:48])
        return cls(flags, page_size, commit, min_txid, max_txid, ts, pre)

    @property
    def is_snapshot(self) -> bool:
        return self.min_txid == 1

    @property
    def compressed(self) -> bool:
        return bool(self.flags & LTX_COMPRESSED)


def snapshot_to_sqlite(ltx_path: str | os.PathLike, dest: str | os.PathLike) -> LtxHeader:
    """Write the database a snapshot LTX file holds (every page of it) to
    ``dest`` as a plain SQLite file, to look inside it before LiteFS applies
    it. Raises ValueError for anything but a whole snapshot."""
    size = os.path.getsize(ltx_path)
    with open(ltx_path, "rb") as fp, open(dest, "wb") as out:
        header = LtxHeader.parse(fp.read(LTX_HEADER_SIZE))
        if not header.is_snapshot or header.commit == 0:
            raise ValueError(f"not a snapshot: TXIDs {header.min_txid}-{header.max_txid}, {header.commit} pages")
        out.truncate(header.commit * header.page_size)
        for pgno, page in ltx_pages(fp, header, size):
            out.seek((pgno - 1) * header.page_size)
            out.write(page)
    return header


def ltx_pages(fp, header: LtxHeader, size: int) -> Iterator[tuple[int, bytes]]:
    """The pages of the LTX file ``fp`` (read past its header, ``size``
    bytes in all): (page number, content), in order."""
    body = _ltx_body(fp, size - LTX_HEADER_SIZE - LTX_TRAILER_SIZE, header.compressed)
    record = 4 + header.page_size
    buffer = bytearray()
    for piece in body:
        buffer += piece
        while len(buffer) >= 4:
            (pgno,) = struct.unpack(">I", buffer[:4])
            if pgno == 0:
                return  # the end of the page block
            if len(buffer) < record:
                break
            if pgno > header.commit:
                raise ValueError(f"page {pgno} beyond the database's {header.commit} pages")
            yield pgno, bytes(buffer[4:record])
            del buffer[:record]
    raise ValueError("the LTX file's page block has no end")


def _ltx_body(fp, length: int, compressed: bool, block: int = 1 << 20) -> Iterator[bytes]:
    if compressed:
        import lz4.frame

        decompressor = lz4.frame.LZ4FrameDecompressor()
    while length > 0:
        piece = fp.read(min(block, length))
        if not piece:
            raise ValueError("the LTX file is cut short")
        length -= len(piece)
        yield decompressor.decompress(piece) if compressed else piece


@dataclass(frozen=True)
class NewestLtx:
    """A database's newest LTX file in a LiteFS data directory: its position
    and when it was committed. LiteFS never removes the newest one, so this
    is the database's position even while LiteFS is not running."""

    pos: Pos
    committed_at: float  # seconds since the epoch

    @classmethod
    def read(cls, data_dir: str | os.PathLike, db_name: str) -> "NewestLtx | None":
        """None when the database has no LTX file there (never created, or
        the directory is empty: a new volume)."""
        ltx_dir = Path(data_dir) / "dbs" / db_name / "ltx"
        try:
            names = [n for n in os.listdir(ltx_dir) if _LTX_NAME.match(n)]
        except FileNotFoundError:
            return None
        for name in sorted(names, key=lambda n: int(_LTX_NAME.match(n).group(2), 16), reverse=True):
            try:
                with open(ltx_dir / name, "rb") as fp:
                    header = LtxHeader.parse(fp.read(LTX_HEADER_SIZE))
                    fp.seek(-LTX_TRAILER_SIZE, os.SEEK_END)
                    (checksum,) = struct.unpack(">Q", fp.read(8))
            except (OSError, ValueError, struct.error):
                continue  # removed by retention meanwhile, or being written
            return cls(Pos(header.max_txid, checksum), header.timestamp_ms / 1000)
        return None


@dataclass(frozen=True)
class TxEvent:
    """One ``tx`` event from a LiteFS node's ``/events`` stream."""

    db: str
    pos: Pos
    committed_at: float | None  # seconds since the epoch, from the LTX header

    @classmethod
    def parse(cls, line: str) -> "TxEvent | None":
        """A TxEvent from one line of the stream; None for a blank line or
        another kind of event (``init``, ``primaryChange``)."""
        if not line.strip():
            return None
        event = json.loads(line)
        if event.get("type") != "tx":
            return None
        data = event.get("data") or {}
        return cls(
            db=event.get("db", ""),
            pos=Pos(int(data["txID"], 16), int(data.get("postApplyChecksum") or "0", 16)),
            committed_at=_timestamp(data.get("timestamp")),
        )


def _timestamp(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def events(url: str, timeout: float = 5.0) -> Iterator[TxEvent | None]:
    """Follow a LiteFS node's ``/events`` stream (one JSON object per line).

    Yields a TxEvent for every transaction and None for other events (the
    initial ``init`` event, primary changes) so that a caller learns the stream
    is connected. Raises httpx errors when the stream breaks.
    """
    with httpx.Client(timeout=httpx.Timeout(timeout, read=None)) as client:
        with client.stream("GET", f"{url}/events") as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if line.strip():
                    yield TxEvent.parse(line)


@dataclass(frozen=True)
class MountConfig:
    """One LiteFS process: where it mounts, where it keeps data, how it leases.

    ``env()`` fills in every variable of the shared ``litefs.yml``.
    """

    mount_dir: Path
    data_dir: Path
    http_addr: str
    primary_url: str
    primary_hostname: str
    candidate: bool
    skip_sync: bool = False
    compress: bool = True
    retention: str = "10m"
    # LiteFS's default is a minute; a few seconds keeps the window in which
    # erased rows linger in LTX files close to ``retention`` itself.
    retention_monitor_interval: str = "5s"
    # How long the primary may take to send a new replica a snapshot. LiteFS
    # defaults it to the retention (a minute here), which cuts off every
    # snapshot a link cannot carry in that time: a node joining a 2 GB
    # public.db behind 100 Mbit/s (about 3 minutes) retried for ever.
    snapshot_timeout: str = "1h"
    # LiteFS's own cluster id (LFSC + 16 hex digits), written into the data
    # directory before LiteFS first starts there. LiteFS makes a random one
    # otherwise, and a replica refuses a primary whose id differs: a
    # deterministic one lets a promoted standby or a rebuilt primary be
    # followed by the replicas that followed the one before.
    litefs_cluster_id: str | None = None

    def write_cluster_id(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / "clusterid"
        if self.litefs_cluster_id and not path.exists():
            path.write_text(self.litefs_cluster_id)

    def env(self) -> dict[str, str]:
        return {
            "LITEFS_DIR": str(self.mount_dir),
            "LITEFS_DATA_DIR": str(self.data_dir),
            "LITEFS_HTTP_ADDR": self.http_addr,
            "LITEFS_PRIMARY_URL": self.primary_url,
            "LITEFS_PRIMARY_HOSTNAME": self.primary_hostname,
            "LITEFS_CANDIDATE": _bool(self.candidate),
            "LITEFS_SKIP_SYNC": _bool(self.skip_sync),
            "LITEFS_COMPRESS": _bool(self.compress),
            "LITEFS_RETENTION": self.retention,
            "LITEFS_RETENTION_MONITOR_INTERVAL": self.retention_monitor_interval,
            "LITEFS_SNAPSHOT_TIMEOUT": self.snapshot_timeout,
        }

    def argv(self) -> list[str]:
        return [litefs_binary(), "mount", "-config", str(litefs_config())]

    @property
    def url(self) -> str:
        """This LiteFS's HTTP API as processes on the same node reach it."""
        return http_url(*split_addr(self.http_addr, "LITEFS_HTTP_ADDR"))


def _bool(value: bool) -> str:
    return "true" if value else "false"


def derived_cluster_id(seed: str, cluster: str) -> str:
    """A LiteFS cluster id (``LFSC`` + 16 hex digits) that every node given
    the same ``seed`` derives alike for ``cluster`` ("private", "public")."""
    import hashlib

    return "LFSC" + hashlib.sha256(f"{seed}\0{cluster}".encode()).hexdigest()[:16].upper()


def is_mounted(path: str | os.PathLike) -> bool:
    target = os.path.realpath(path)
    with open("/proc/mounts") as fp:
        return any(line.split()[1] == target for line in fp)


def unmount(path: str | os.PathLike) -> None:
    """Unmount a FUSE mount that its LiteFS process left behind (after a
    SIGKILL, say). Lazy, so that a process still holding a file open cannot
    keep the mount alive."""
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False, capture_output=True)


FUSE_CONNECTIONS = "/sys/fs/fuse/connections"


def abort_connection(path: str | os.PathLike) -> bool:
    """Abort the FUSE connection of the mount at ``path`` (through
    /sys/fs/fuse/connections, found from mountinfo without touching the
    mount, which may not answer). False where there is none to abort."""
    target = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as fp:
            devices = [line.split()[2] for line in fp if line.split()[4] == target]
    except OSError:
        return False
    try:
        unmounted_fusectl = bool(devices) and not os.listdir(FUSE_CONNECTIONS)
    except OSError:
        return False  # no FUSE control filesystem here at all
    if unmounted_fusectl:
        # The fusectl filesystem is where connections are aborted; most
        # systems mount it at boot, a bare VM or a container may not.
        subprocess.run(["mount", "-t", "fusectl", "fusectl", FUSE_CONNECTIONS], check=False, capture_output=True)
    for device in devices:
        minor = device.partition(":")[2]
        try:
            with open(f"{FUSE_CONNECTIONS}/{minor}/abort", "w") as fp:
                fp.write("1")
            return True
        except OSError:
            continue
    return False


def wait_for_file(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.05)
    return path.exists()

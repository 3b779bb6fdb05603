"""What the bucket holds: object names, and what an object's plaintext is.

Names (under the URL's prefix)::

    <generation>/<epoch:08d>/snapshot/<txid:016x>-<txid:016x>-<t0>-<t1>.bsob
    <generation>/<epoch:08d>/L<n>/<min:016x>-<max:016x>-<t0>-<t1>.bsob
    <generation>/<epoch:08d>/base-<txid:016x>.bsob

``generation`` is data.db's random generation id (primary/backup.py), the
epoch is data.db's, the TXIDs are LiteFS's, t0/t1 the commit times of the
first and last transaction (UTC, ms). Nothing in a name comes from the
team's data. A ``base`` object marks where an epoch's stream starts: a
promoted standby continues its predecessor's stream from that TXID, and
whatever an older epoch holds past it is a branch that the promotion left
behind (listed, never restored by default).

An object's plaintext (LZ4-framed, then sealed by crypto.py) is a header
(JSON) and transactions, each a JSON line of its TXIDs, size after it in
pages, LiteFS's checksums before and after it and its commit time, then its
pages (4-byte page number, the page). A snapshot is one such transaction
holding every page; an L0 object holds the transactions LiteFS committed,
one by one; a compacted object (L1 and up) one transaction spanning them.
"""

from __future__ import annotations

import datetime
import json
import re
import struct
from dataclasses import asdict, dataclass, field
from typing import BinaryIO, Iterable, Iterator

SUFFIX = ".bsob"
SNAPSHOT = "snapshot"
_TIME = "%Y%m%dT%H%M%S"
_NAME = re.compile(
    r"^(?P<generation>[0-9a-z]+)/(?P<epoch>\d{8})/(?P<level>snapshot|L\d)/"
    r"(?P<min>[0-9a-f]{16})-(?P<max>[0-9a-f]{16})-(?P<t0>\d{8}T\d{9}Z)-(?P<t1>\d{8}T\d{9}Z)\.bsob$"
)
_BASE = re.compile(r"^(?P<generation>[0-9a-z]+)/(?P<epoch>\d{8})/base-(?P<txid>[0-9a-f]{16})\.bsob$")


def format_time(ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)
    return moment.strftime(_TIME) + f"{ms % 1000:03d}Z"


def parse_time(text: str) -> int:
    moment = datetime.datetime.strptime(text[:15], _TIME).replace(tzinfo=datetime.timezone.utc)
    return int(moment.timestamp()) * 1000 + int(text[15:18])


def iso(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, order=True)
class ObjectName:
    """One object of the stream, from its name alone."""

    generation: str
    epoch: int
    level: str  # "snapshot", "L0", "L1" …
    min_txid: int
    max_txid: int
    first_ms: int  # commit time of min_txid
    last_ms: int  # commit time of max_txid
    size: int = field(default=0, compare=False)  # bytes in the store (from the listing)

    @property
    def key(self) -> str:
        return (
            f"{self.generation}/{self.epoch:08d}/{self.level}/{self.min_txid:016x}-{self.max_txid:016x}"
            f"-{format_time(self.first_ms)}-{format_time(self.last_ms)}{SUFFIX}"
        )

    @property
    def rank(self) -> int:
        """0 for L0, 1 for L1 …; snapshots above every level."""
        return 99 if self.level == SNAPSHOT else int(self.level[1:])

    @property
    def is_snapshot(self) -> bool:
        return self.level == SNAPSHOT

    @classmethod
    def parse(cls, key: str, size: int = 0) -> "ObjectName | None":
        m = _NAME.match(key)
        if not m:
            return None
        return cls(m["generation"], int(m["epoch"]), m["level"], int(m["min"], 16), int(m["max"], 16),
                   parse_time(m["t0"]), parse_time(m["t1"]), size)

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True)
class BaseMark:
    """Where an epoch's stream starts (its first object continues TXID ``txid``)."""

    generation: str
    epoch: int
    txid: int

    @property
    def key(self) -> str:
        return f"{self.generation}/{self.epoch:08d}/base-{self.txid:016x}{SUFFIX}"

    @classmethod
    def parse(cls, key: str) -> "BaseMark | None":
        m = _BASE.match(key)
        return cls(m["generation"], int(m["epoch"]), int(m["txid"], 16)) if m else None


# -- LiteFS's checksum ------------------------------------------------------------
CHECKSUM_FLAG = 1 << 63
PENDING_BYTE = 0x40000000


def page_checksum(pgno: int, page: bytes) -> int:
    """LiteFS's checksum of one page (CRC-64/ISO of its number and content)."""
    import fastcrc

    return CHECKSUM_FLAG | fastcrc.crc64.go_iso(struct.pack(">I", pgno) + page)


def lock_pgno(page_size: int) -> int:
    return PENDING_BYTE // page_size + 1


def file_checksum(fp: BinaryIO, page_size: int, pages: int) -> int:
    """LiteFS's checksum of a database file: its page checksums XORed,
    the lock page left out as LiteFS leaves it."""
    total = 0
    lock = lock_pgno(page_size)
    fp.seek(0)
    for pgno in range(1, pages + 1):
        page = fp.read(page_size)
        if len(page) != page_size:
            page = page.ljust(page_size, b"\0")
        if pgno != lock:
            total ^= page_checksum(pgno, page)
    return CHECKSUM_FLAG | total


# -- what an object holds ----------------------------------------------------------
@dataclass(frozen=True)
class Txn:
    """One transaction of an object (several, compacted, for L1 and up)."""

    min_txid: int
    max_txid: int
    commit: int  # database size after it, in pages
    pre: int  # LiteFS's checksum before it (0 for a snapshot)
    post: int  # and after it
    ts_ms: int  # commit time of max_txid
    pages: int  # how many pages follow

    def line(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()


@dataclass(frozen=True)
class Header:
    kind: str  # "snapshot" or "changes"
    cluster_id: str
    generation: str
    epoch: int
    level: str
    page_size: int
    min_txid: int
    max_txid: int
    version: int = 1


def _framed(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def encode(header: Header, txns: Iterable[tuple[Txn, Iterable[tuple[int, bytes]]]]) -> Iterator[bytes]:
    """An object's plaintext, LZ4-framed, in pieces."""
    import lz4.frame

    compressor = lz4.frame.LZ4FrameCompressor()
    yield compressor.begin()
    yield compressor.compress(_framed(json.dumps(asdict(header)).encode()))
    for txn, pages in txns:
        yield compressor.compress(_framed(txn.line()))
        count = 0
        batch = []
        for pgno, page in pages:
            if len(page) != header.page_size:
                raise ValueError(f"page {pgno}: {len(page)} bytes, not {header.page_size}")
            batch.append(struct.pack(">I", pgno) + page)
            count += 1
            if len(batch) >= 64:
                yield compressor.compress(b"".join(batch))
                batch = []
        if batch:
            yield compressor.compress(b"".join(batch))
        if count != txn.pages:
            raise ValueError(f"TXIDs {txn.min_txid}-{txn.max_txid}: {count} pages, the record says {txn.pages}")
    yield compressor.compress(struct.pack(">I", 0))
    yield compressor.flush()


class _Reader:
    def __init__(self, pieces: Iterable[bytes]):
        import lz4.frame

        self._pieces = iter(pieces)
        self._lz4 = lz4.frame.LZ4FrameDecompressor()
        self._buf = b""
        self._at = 0

    def read(self, n: int) -> bytes:
        # An offset into what was decompressed, not a buffer cut from the
        # front on every read (which copies the rest each time).
        while len(self._buf) - self._at < n:
            piece = next(self._pieces, None)
            if piece is None:
                raise ValueError("the object ends early")
            self._buf = self._buf[self._at:] + (self._lz4.decompress(piece) if piece else b"")
            self._at = 0
        data = self._buf[self._at:self._at + n]
        self._at += n
        return data

    def framed(self) -> bytes | None:
        (length,) = struct.unpack(">I", self.read(4))
        return self.read(length) if length else None


def decode(plaintext: Iterable[bytes]) -> tuple[Header, Iterator[tuple[Txn, Iterator[tuple[int, bytes]]]]]:
    """An object's header and its transactions, each with its pages (read
    them in order: the pages of one before the next)."""
    reader = _Reader(plaintext)
    header = Header(**json.loads(reader.framed()))
    if header.version != 1:
        raise ValueError(f"object format {header.version}: made by a newer broadsheet")

    def txns():
        while (line := reader.framed()) is not None:
            txn = Txn(**json.loads(line))

            def pages(txn=txn):
                for _ in range(txn.pages):
                    (pgno,) = struct.unpack(">I", reader.read(4))
                    yield pgno, reader.read(header.page_size)

            yield txn, pages()

    return header, txns()

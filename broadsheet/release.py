"""Signed releases: what the publisher signs for every public TXID, and what
a read node (or anyone holding the primary's public key) checks.

A release is ``(TXID, digest, LiteFS checksum)`` signed with the primary's
Ed25519 key. The digest is the root of a Merkle tree over public.db's pages
(SHA-256 of each page, paired up level by level), so that a transaction
that changes k pages costs k page hashes and k·log₂(n) node hashes to
follow, whatever the database's size: the tree is updated from the pages
each LTX file carries (``PageTree.apply_ltx``). LiteFS's own checksum is a
CRC64 sum of the pages, which anyone can make collide; it is carried too,
as a cheap first check and to name the position LiteFS reports.

Releases travel in ``releases.db``, a second database of the public LiteFS
cluster that holds nothing but release records and public keys: read nodes
receive it over the stream they already have, right after the public.db
transaction it signs, and never serve it as a Datasette database. Anyone
who can write to it can delete releases (the node then refuses to serve)
but cannot make one: that needs the private key.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .litefs import LTX_HEADER_SIZE, LTX_TRAILER_SIZE, LtxHeader, Pos, ltx_pages

RELEASES_DB = "releases.db"
KEY_PREFIX = "ed25519:"
_MESSAGE = b"broadsheet-release-v1\0"
_KEY_MESSAGE = b"broadsheet-key-v1\0"
_LEAF, _NODE, _ROOT = b"\x00", b"\x01", b"\x02"
_H = 32  # bytes of one hash in the tree

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS releases (txid INTEGER PRIMARY KEY, digest TEXT NOT NULL,"
    " checksum TEXT NOT NULL, key_id TEXT NOT NULL, signature TEXT NOT NULL)",
    # Each key the publisher signs with; a key after the first is signed by
    # the key before it (rotation, a promoted standby's new key).
    "CREATE TABLE IF NOT EXISTS keys (key_id TEXT PRIMARY KEY, public_key TEXT NOT NULL,"
    " signed_by TEXT, signature TEXT, added_at TEXT NOT NULL)",
)
# Releases kept in releases.db: enough for a node that is behind, or a copy
# of public.db being checked, to find the one for its TXID.
KEEP = 1000


# -- the digest ---------------------------------------------------------------
def _leaf(page: bytes, pgno: int = 0) -> bytes:
    if pgno == 1:
        # The header's bookkeeping, which a copy made with SQLite's backup
        # API rewrites while the content stays: the journal-mode bytes (18,
        # 19), the change counter (24), the schema cookie (40), the
        # version-valid-for number and the writer's SQLite version (92).
        page = page[:18] + b"\0\0" + page[20:24] + b"\0" * 4 + page[28:40] + b"\0" * 4 + page[44:92] + b"\0" * 8 + page[100:]
    return hashlib.sha256(_LEAF + page).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE + left + right).digest()


class PageTree:
    """A Merkle tree over a database's pages, at a LiteFS position.

    ``levels[0]`` holds one leaf hash per page (page n at index n-1);
    each level above pairs the one below (an odd last node is carried up
    unchanged). ``digest`` binds the root to the page count and size.

    Each level is one ``bytearray`` of 32-byte hashes, not a list of
    ``bytes`` objects: about 64 bytes per page in all (the leaves and
    every level above them), so 8 MiB for a 2 GiB database of 16 KiB
    pages (a list of ``bytes`` took about 146 bytes per page). Nothing
    here ever holds a database's pages: building reads them one at a
    time, following an LTX file keeps only the hashes of its pages."""

    def __init__(self, page_size: int, leaves: Iterable[bytes], pos: Pos = Pos(0)):
        self.page_size = page_size
        self.pos = pos
        level = bytearray()
        for leaf in leaves:
            level += leaf
        self.levels: list[bytearray] = [level]
        self._build()

    def _build(self) -> None:
        """Every level above the leaves, afresh."""
        del self.levels[1:]
        below = self.levels[0]
        while (n := len(below) // _H) > 1:
            here = bytearray()
            for j in range(0, n - 1, 2):
                here += _node(below[j * _H : (j + 1) * _H], below[(j + 1) * _H : (j + 2) * _H])
            if n % 2:
                here += below[(n - 1) * _H :]
            self.levels.append(here)
            below = here

    def _rehash(self, dirty: set[int], old_len: int) -> None:
        """Recompute the nodes above ``dirty`` leaves, the leaf level having
        had ``old_len`` entries: each level's new entries, and its last one
        when its length changed (it may have gained or lost a sibling)."""
        level = 0
        while True:
            below = self.levels[level]
            n = len(below) // _H
            if n != old_len:
                dirty = dirty | set(range(max(min(old_len, n) - 1, 0), n))
            if n <= 1:
                del self.levels[level + 1 :]
                return
            if level + 1 == len(self.levels):
                self.levels.append(bytearray())
            here = self.levels[level + 1]
            old_len, size = len(here) // _H, (n + 1) // 2
            if len(here) > size * _H:
                del here[size * _H :]
            else:
                here.extend(bytes(size * _H - len(here)))
            dirty = {i // 2 for i in dirty if i < n}
            for i in dirty:
                j = 2 * i
                if j + 1 < n:
                    here[i * _H : (i + 1) * _H] = _node(below[j * _H : (j + 1) * _H], below[(j + 1) * _H : (j + 2) * _H])
                else:
                    here[i * _H : (i + 1) * _H] = below[j * _H : (j + 1) * _H]
            level += 1

    @property
    def pages(self) -> int:
        return len(self.levels[0]) // _H

    @property
    def nbytes(self) -> int:
        """The memory its hashes take (every level)."""
        return sum(len(level) for level in self.levels)

    @property
    def digest(self) -> str:
        root = bytes(self.levels[-1][:_H]) if self.levels[0] else b"\0" * 32
        return hashlib.sha256(_ROOT + struct.pack(">II", self.page_size, self.pages) + root).hexdigest()

    @classmethod
    def of_litefs(cls, data_dir: str | os.PathLike, db_name: str, pos: Pos) -> "PageTree":
        """The tree of a database as LiteFS holds it (see ``litefs_pages``),
        read one page at a time."""
        page_size, count, pages = litefs_pages(data_dir, db_name)
        with contextlib.closing(pages):
            return cls(page_size, (_leaf(page, n) for n, page in pages), pos)

    @classmethod
    def of_file(cls, path: str | os.PathLike, pos: Pos = Pos(0)) -> "PageTree":
        """The tree of a plain SQLite file (no WAL beside it to apply)."""
        with open(path, "rb") as fp:
            header = fp.read(100)
            if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
                raise ValueError(f"{path} is not a SQLite database")
            (size,) = struct.unpack(">H", header[16:18])
            page_size = 65536 if size == 1 else size
            fp.seek(0)

            def leaves():
                n = 0
                while page := fp.read(page_size):
                    n += 1
                    yield _leaf(page.ljust(page_size, b"\0"), n)

            return cls(page_size, leaves(), pos)

    def update(self, pages: dict[int, bytes], commit: int, pos: Pos) -> None:
        """Pages changed by one transaction (pgno -> content), the database's
        size after it, in pages, and the position it leaves."""
        self.update_leaves({pgno: _leaf(data, pgno) for pgno, data in pages.items()}, commit, pos)

    def update_leaves(self, leaves: dict[int, bytes], commit: int, pos: Pos) -> None:
        """As ``update``, given the changed pages' leaf hashes (``leaf``)."""
        level = self.levels[0]
        old_len = len(level) // _H
        del level[commit * _H :]
        missing = commit - len(level) // _H
        if missing > 0:  # the lock page, never written
            level.extend(_leaf(b"\0" * self.page_size) * missing)
        for pgno, leaf in leaves.items():
            level[(pgno - 1) * _H : pgno * _H] = leaf
        self._rehash({pgno - 1 for pgno in leaves}, old_len)
        self.pos = pos

    def apply_ltx(self, path: str | os.PathLike) -> LtxHeader:
        """Follow one LTX file: a snapshot replaces the tree, any other must
        start where the tree is (ValueError otherwise). Its pages are read
        one at a time and only their hashes kept."""
        size = os.path.getsize(path)
        with open(path, "rb") as fp:
            header = LtxHeader.parse(fp.read(LTX_HEADER_SIZE))
            if header.page_size != self.page_size and not header.is_snapshot:
                raise ValueError(f"page size {header.page_size}, the tree's is {self.page_size}")
            if not header.is_snapshot and (
                header.min_txid != self.pos.txid + 1 or header.pre_apply_checksum != self.pos.checksum
            ):
                raise ValueError(f"LTX {header.min_txid}-{header.max_txid} does not follow {self.pos}")
            leaves = {pgno: _leaf(page, pgno) for pgno, page in ltx_pages(fp, header, size)}
            fp.seek(size - LTX_TRAILER_SIZE)
            (post,) = struct.unpack(">Q", fp.read(8))
        if header.is_snapshot:
            self.page_size = header.page_size
            self.levels = [bytearray()]
        self.update_leaves(leaves, header.commit, Pos(header.max_txid, post))
        return header


def read_ltx(path: str | os.PathLike) -> tuple[LtxHeader, dict[int, bytes], int]:
    """An LTX file's header, its pages and its post-apply checksum."""
    size = os.path.getsize(path)
    with open(path, "rb") as fp:
        header = LtxHeader.parse(fp.read(LTX_HEADER_SIZE))
        pages = dict(ltx_pages(fp, header, size))
        fp.seek(size - LTX_TRAILER_SIZE)
        (post,) = struct.unpack(">Q", fp.read(8))
    return header, pages, post


def ltx_path(data_dir: str | os.PathLike, db_name: str, min_txid: int, max_txid: int) -> Path:
    return Path(data_dir) / "dbs" / db_name / "ltx" / f"{min_txid:016x}-{max_txid:016x}.ltx"


# -- keys and signatures ----------------------------------------------------------
def _ed25519():
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519


def new_private_key() -> str:
    """A new signing key, as its key file holds it (base64 of the 32 raw bytes)."""
    return base64.b64encode(os.urandom(32)).decode()


@dataclass(frozen=True)
class PublicKey:
    """A publisher's public key: ``ed25519:<base64>``, as the README tells a
    team to publish it."""

    raw: bytes

    @classmethod
    def parse(cls, text: str) -> "PublicKey":
        text = text.strip()
        if text.startswith(KEY_PREFIX):
            text = text[len(KEY_PREFIX) :]
        try:
            raw = base64.b64decode(text, validate=True)
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise ValueError(f"not an Ed25519 public key: {text[:60]!r} (expected ed25519:<base64 of 32 bytes>)")
        return cls(raw)

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()[:16]

    def __str__(self) -> str:
        return KEY_PREFIX + base64.b64encode(self.raw).decode()

    def verifies(self, signature: bytes, message: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature

        try:
            _ed25519().Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except InvalidSignature:
            return False
        return True


class SigningKey:
    """The publisher's private key (its key file's contents)."""

    def __init__(self, text: str):
        self.text = text.strip()
        self._key = _ed25519().Ed25519PrivateKey.from_private_bytes(base64.b64decode(self.text))
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        self.public = PublicKey(self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def release(self, txid: int, digest: str, checksum: int) -> "Release":
        unsigned = Release(txid, digest, f"{checksum:016x}", self.public.key_id, "")
        return Release(**{**asdict(unsigned), "signature": base64.b64encode(self.sign(unsigned.message)).decode()})

    def endorse(self, key: PublicKey) -> str:
        """This key's signature on the next one (rotation)."""
        return base64.b64encode(self.sign(_KEY_MESSAGE + key.raw)).decode()


def endorses(old: PublicKey, new: PublicKey, signature: str) -> bool:
    try:
        return old.verifies(base64.b64decode(signature), _KEY_MESSAGE + new.raw)
    except ValueError:
        return False


@dataclass(frozen=True)
class Release:
    """One signed public TXID: its digest, LiteFS's checksum, the signer."""

    txid: int
    digest: str  # PageTree.digest, hex
    checksum: str  # LiteFS's checksum after the TXID, 16 hex digits
    key_id: str
    signature: str  # base64, over ``message``

    @property
    def message(self) -> bytes:
        return _MESSAGE + struct.pack(">Q", self.txid) + bytes.fromhex(self.digest) + bytes.fromhex(self.checksum)

    def signed_by(self, key: PublicKey) -> bool:
        if key.key_id != self.key_id:
            return False
        try:
            return key.verifies(base64.b64decode(self.signature), self.message)
        except ValueError:
            return False

    def problem(self, key: PublicKey, txid: int, digest: str, checksum: int | None = None) -> str | None:
        """Why this release does not cover ``txid`` with ``digest`` (and
        LiteFS's ``checksum``) under ``key``; None if it does."""
        if self.txid != txid:
            return f"the release is for TXID {self.txid}, not {txid}"
        if not self.signed_by(key):
            return f"the release for TXID {txid} is not signed by key {key.key_id}"
        if checksum is not None and int(self.checksum, 16) != checksum:
            return f"TXID {txid}: LiteFS's checksum {checksum:016x} is not the signed {self.checksum}"
        if self.digest != digest:
            return f"TXID {txid}: the digest {digest[:16]}… is not the signed {self.digest[:16]}…"
        return None

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Release":
        return cls(int(data["txid"]), str(data["digest"]), str(data["checksum"]), str(data["key_id"]), str(data["signature"]))


# -- releases.db ---------------------------------------------------------------
def release_at(conn, txid: int) -> Release | None:
    """The release for ``txid`` in releases.db (any DB-API-like connection)."""
    try:
        rows = list(conn.execute("SELECT txid, digest, checksum, key_id, signature FROM releases WHERE txid = ?", (txid,)))
    except Exception as exc:  # releases.db not there yet, or no table in it
        if "no such table" in str(exc):
            return None
        raise
    return Release(*rows[0]) if rows else None


def keys(conn) -> list[tuple[PublicKey, str | None, str | None]]:
    """Each public key in releases.db, oldest first, with the key that
    signed it and that signature."""
    try:
        rows = list(conn.execute("SELECT public_key, signed_by, signature FROM keys ORDER BY rowid"))
    except Exception as exc:
        if "no such table" in str(exc):
            return []
        raise
    return [(PublicKey.parse(k), by, sig) for k, by, sig in rows]


def trusted_keys(pinned: PublicKey, listed: list[tuple[PublicKey, str | None, str | None]]) -> dict[str, PublicKey]:
    """The pinned key and every key a trusted key signed, by key id."""
    trusted = {pinned.key_id: pinned}
    for key, signed_by, signature in listed:
        signer = trusted.get(signed_by or "")
        if signer is not None and signature and endorses(signer, key, signature):
            trusted[key.key_id] = key
    return trusted


def ensure_schema(conn) -> None:
    for statement in SCHEMA:
        conn.execute(statement)


def record(conn, release: Release, keep: int = KEEP) -> None:
    """Add ``release`` to releases.db (in the caller's transaction), keeping
    the newest ``keep``."""
    conn.execute(
        "INSERT OR REPLACE INTO releases (txid, digest, checksum, key_id, signature) VALUES (?, ?, ?, ?, ?)",
        (release.txid, release.digest, release.checksum, release.key_id, release.signature),
    )
    conn.execute("DELETE FROM releases WHERE txid <= ?", (release.txid - keep,))


def list_key(conn, key: PublicKey, added_at: str, signer: "SigningKey | None" = None) -> None:
    """List ``key`` in releases.db's keys (endorsed by ``signer``, the key
    before it, when there is one)."""
    if any(k.key_id == key.key_id for k, _, _ in keys(conn)):
        return
    conn.execute(
        "INSERT INTO keys (key_id, public_key, signed_by, signature, added_at) VALUES (?, ?, ?, ?, ?)",
        (key.key_id, str(key), signer.public.key_id if signer else None, signer.endorse(key) if signer else None, added_at),
    )


_WAL_MAGIC = (b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83")


def litefs_pages(data_dir: str | os.PathLike, db_name: str) -> tuple[int, int, Iterator[tuple[int, bytes]]]:
    """A database as LiteFS holds it in its data directory: its page size,
    its size in pages, and its pages in order (page number, content; the
    ``database`` file with the committed frames of the ``wal`` beside it
    applied, a page neither holds as zeros). The pages are read one at a
    time as the iterator is consumed (close it when done): what is kept is
    the WAL's index, the offset of each page's newest committed frame."""
    base = Path(data_dir) / "dbs" / db_name
    db_path, wal_path = base / "database", base / "wal"
    with open(db_path, "rb") as fp:
        header = fp.read(100)
    if not header.startswith(b"SQLite format 3\0"):
        raise ValueError(f"{db_path} is not a SQLite database")
    (size,) = struct.unpack(">H", header[16:18])
    page_size = 65536 if size == 1 else size
    file_pages = -(-os.path.getsize(db_path) // page_size)
    (in_header,) = struct.unpack(">I", header[28:32])
    count = in_header or file_pages
    frames: dict[int, int] = {}  # page number -> offset of its newest committed frame's content
    try:
        wal = open(wal_path, "rb")
    except FileNotFoundError:
        wal = None
    if wal is not None:
        with wal:
            wal_size = os.fstat(wal.fileno()).st_size
            head = wal.read(32)
            if len(head) == 32 and head[:4] in _WAL_MAGIC:
                salts, frame = head[16:24], 24 + page_size
                pending: dict[int, int] = {}
                at = 32
                while at + frame <= wal_size:
                    wal.seek(at)
                    frame_header = wal.read(24)
                    pgno, commit = struct.unpack(">II", frame_header[:8])
                    if frame_header[8:16] != salts:
                        break
                    pending[pgno] = at + 24
                    if commit:
                        frames.update(pending)
                        pending = {}
                        count = commit
                    at += frame

    def pages() -> Iterator[tuple[int, bytes]]:
        with open(db_path, "rb") as db, (open(wal_path, "rb") if frames else contextlib.nullcontext()) as wal:
            for n in range(1, count + 1):
                at = frames.get(n)
                if at is not None:
                    wal.seek(at)
                    page = wal.read(page_size)
                elif n <= file_pages:
                    db.seek((n - 1) * page_size)
                    page = db.read(page_size)
                else:
                    page = b""
                yield n, page.ljust(page_size, b"\0")

    return page_size, count, pages()


def verdict(tree_digest: str, pos: Pos, release: Release | None, trusted: dict[str, PublicKey]) -> str | None:
    """Why the content with ``tree_digest`` at ``pos`` is not covered by a
    signature (None: it is)."""
    if release is None:
        return f"TXID {pos.txid} of public.db is not covered by a signed release (yet)"
    key = trusted.get(release.key_id)
    if key is None:
        return f"the release for TXID {pos.txid} is signed by key {release.key_id}, which this node does not trust"
    return release.problem(key, pos.txid, tree_digest, pos.checksum)

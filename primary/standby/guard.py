"""The standby's guard on data.db's replication stream.

LiteFS (v0.5.14, ``http/server.go`` ``streamDB``) replaces a replica's
database with a snapshot whenever the primary decides to send one: when the
position the replica sends is ahead of the primary's, at the primary's TXID
with another checksum, or when the LTX files that would bring it forward
are gone (older than the primary's retention). The replica cannot refuse
it (``store.go`` ``processLTXStreamFrame`` applies any snapshot), and it
reconnects to the primary by itself. A primary started on an empty volume
would therefore wipe the standby the moment the two could talk.

So the standby's LiteFS never talks to the primary directly: the primary
URL of its lease is this guard, on the standby's loopback, which relays
``POST /stream`` (and nothing else) to the primary's private LiteFS, LiteFS
stream frame by frame. An LTX file that continues the standby's copy is
passed on as it comes: LiteFS itself refuses one whose pre-apply position is
not the copy's. A snapshot is held (spooled to the standby's volume) and
opened: it passes only if it does not move the standby backwards, that is,
if the data.db it holds is of the same generation (the random id a data.db
is made with, ``primary/backup.py``) as the standby's copy and as what the
standby acknowledged, and either of a later epoch (a promotion) or of the
same epoch at a later TXID. Otherwise the stream is cut before LiteFS has
seen a byte of it, the standby keeps its copy, and the refusal is on its
``/status`` (and so on the primary's ``/health``) until a stream syncs
again. A standby with nothing to keep (no data.db, nothing acknowledged)
takes any snapshot: that is how it gets its first copy.

LiteFS's replication speaks HTTP/2 without TLS (prior knowledge) both ways
(its ``/stream`` refuses HTTP/1.1), so the guard is an HTTP/2 server towards
the standby's LiteFS and an HTTP/2 client towards the primary's, built from
the relay every gate of broadsheet shares (``broadsheet/h2relay.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

from broadsheet.gate import KEY_HEADER
from broadsheet.h2relay import SILENCE, Downstream, Request, Server, Target, Upstream
from broadsheet.litefs import LTX_HEADER_SIZE, LtxHeader, Pos, snapshot_to_sqlite
from primary.backup import Identity, identity_of_file

# LiteFS stream frames (client.go): a 4-byte type, then its fields.
LTX, READY, END, DROP_DB, HANDOFF, HWM, HEARTBEAT = range(1, 8)
# Seconds a refused primary waits before the guard asks it again (doubling).
FIRST_BACKOFF, MAX_BACKOFF = 1.0, 30.0


@dataclass(frozen=True)
class Kept:
    """What a snapshot must not take from the standby: its copy of data.db
    (``strict``: another data.db at the copy's own TXID is not it), or the
    writes it acknowledged (``Broadsheet-Wait: standby``) up to a TXID."""

    what: str
    txid: int
    identity: Identity
    strict: bool = False


def judge(header: LtxHeader, db_name: str, theirs: Identity | None, kept: list[Kept]) -> str | None:
    """Why the LTX file ``header`` begins must not reach the standby's
    LiteFS, or None if it may. ``theirs``: the identity of the data.db a
    snapshot holds (needed only for a snapshot, when something is kept)."""
    if not kept:
        return None
    if header.commit == 0:
        return f"the primary's LiteFS is deleting {db_name} (TXID {header.max_txid}), which would delete {kept[0].what} (TXID {kept[0].txid})"
    if not header.is_snapshot:
        return None  # LiteFS applies it only on top of the copy's own position
    assert theirs is not None
    for k in kept:
        why = None
        if k.identity.cluster_id and theirs.cluster_id and theirs.cluster_id != k.identity.cluster_id:
            why = "it belongs to another cluster"
        elif k.identity.generation and theirs.generation != k.identity.generation:
            why = "it is another data.db (made afresh, as a primary on an empty volume makes one), not a later state of this one"
        elif theirs.epoch < k.identity.epoch:
            why = "it is of an older epoch: a primary this one's promotion replaced"
        elif theirs.epoch == k.identity.epoch and (header.max_txid < k.txid or (k.strict and header.max_txid == k.txid)):
            why = "it is behind" if header.max_txid < k.txid else "it holds other writes at the same TXID"
        if why:
            return (
                f"the primary's data.db (TXID {header.max_txid}, {theirs}) would replace {k.what}"
                f" (TXID {k.txid}, {k.identity}): {why}"
            )
    return None


@dataclass
class Refusal:
    reason: str
    primary_txid: int
    primary: Identity
    at: float  # time.time()

    def as_dict(self) -> dict:
        return {
            "reason": self.reason,
            "primary_txid": self.primary_txid,
            "primary_epoch": self.primary.epoch,
            "primary_generation": self.primary.generation,
            "at": self.at,
        }


class Refused(Exception):
    pass


class Guard:
    """The relay. ``kept(pos)`` says what the standby holds, given the
    position its LiteFS sent; ``on_snapshot`` runs after a snapshot has
    passed (the copy is another state now)."""

    def __init__(
        self,
        primary_url: str,
        db_name: str,
        spool: Path,
        kept: Callable[[Pos], Awaitable[list[Kept]]],
        on_snapshot: Callable[[], None] = lambda: None,
        log: Callable[[str], None] = lambda line: print(f"guard: {line}", flush=True),
        key: str | None = None,
        silence: float = SILENCE,
    ):
        self.silence = silence  # a connection silent this long is dead (broadsheet/h2relay.py)
        self.key = key  # what the primary's data.db gate admits (broadsheet/gate.py)
        self.primary_url = primary_url
        self.upstream = Target.from_url(primary_url)
        self.db_name = db_name
        self.spool = spool
        self.kept = kept
        self.on_snapshot = on_snapshot
        self.log = log
        self.refusal: Refusal | None = None
        self.following = False  # a stream is open and has synced
        self._retry_at = 0.0
        self._backoff = FIRST_BACKOFF
        self._server: Server | None = None

    def status(self) -> dict:
        return {"following": self.following, "refused": self.refusal.as_dict() if self.refusal else None}

    async def start(self, host: str, port: int) -> None:
        self._server = Server(self._request, self.log, silence=self.silence)
        self._server.on_close = self._closed
        await self._server.start(host, port)

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()

    def _closed(self) -> None:
        self.following = False

    # -- towards the standby's LiteFS (broadsheet/h2relay.py) -----------------
    async def _request(self, request: Request, down: Downstream) -> None:
        target, headers, body = request.target, request.headers, request.body
        try:
            if request.method != "POST" or request.path != "/stream":
                await down.respond(403, b"the standby's guard relays LiteFS's /stream and nothing else\n")
                return
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                # A primary refused a moment ago: LiteFS's request waits
                # here (its client has no timeout) instead of reconnecting
                # every second.
                await asyncio.sleep(wait)
            await self._stream(target, headers, body, down)
        except Refused as exc:
            self._refuse(exc.args[0])
            down.reset()
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
            if down.started:
                down.reset()
            else:
                with contextlib.suppress(Exception):  # LiteFS may have gone meanwhile
                    await down.respond(502, f"the primary's private LiteFS at {self.primary_url}: {exc!r}\n".encode())
        except Exception as exc:  # HTTP/2 on either side (a stream closed under it): LiteFS reconnects
            self.log(f"stream from {self.primary_url} ended: {exc!r}")
            down.reset()
        finally:
            self.following = False

    def _refuse(self, refusal: Refusal) -> None:
        if self.refusal is None or self.refusal.reason != refusal.reason:
            self.log(
                f"refusing data.db from {self.primary_url}, keeping this standby's copy: {refusal.reason}."
                " Promote this standby (broadsheet promote), or, to follow that primary, empty this standby's"
                " volume (its copy is then gone)"
            )
        self.refusal = refusal
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)

    # -- HTTP/2 towards the primary's private LiteFS ----------------------------
    async def _stream(self, target: str, headers: dict, body: bytes, down: Downstream) -> None:
        ours = position_of(body, self.db_name)
        forwarded = [(k, v) for k, v in headers.items() if k.lower().startswith("litefs-")]
        if self.key:
            forwarded.append((KEY_HEADER, self.key))
        upstream = await Upstream.open(self.upstream, "POST", target, forwarded, body, silence=self.silence)
        try:
            status, response_headers = upstream.status, upstream.headers
            if status != 200:
                await down.respond(status, await upstream.rest(limit=65536))
                return
            await down.start(200, [(k, v) for k, v in response_headers.items() if k.startswith("litefs-")])
            await self._relay(upstream, down, ours)
            down.end()
        finally:
            upstream.close()

    async def _relay(self, upstream: Upstream, down: Downstream, ours: Pos) -> None:
        txid = ours.txid  # the copy's TXID, as the files passed move it
        while True:
            try:
                kind = await upstream.read(4)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    raise
                return  # the primary ended the stream
            (frame_type,) = struct.unpack(">I", kind)
            if frame_type == LTX:
                fixed = await upstream.read(12)
                _, name_n = struct.unpack(">QI", fixed)
                name = (await upstream.read(name_n)).decode()
                moved_to = await self._ltx(kind + fixed + name.encode(), name, upstream, down, txid)
                if name == self.db_name:
                    txid = moved_to
                continue
            if frame_type in (READY, END):
                rest = b""
            elif frame_type in (DROP_DB, HANDOFF):
                n = await upstream.read(4)
                rest = n + await upstream.read(struct.unpack(">I", n)[0])
            elif frame_type == HWM:
                fixed = await upstream.read(12)
                rest = fixed + await upstream.read(struct.unpack(">QI", fixed)[1])
            elif frame_type == HEARTBEAT:
                rest = await upstream.read(8)
            else:
                raise ValueError(f"unknown LiteFS stream frame type {frame_type}")
            await down.send(kind + rest)
            if frame_type == READY:
                self.following = True
                if self.refusal is not None:
                    self.log(f"following {self.primary_url} again")
                self.refusal, self._backoff = None, FIRST_BACKOFF

    async def _ltx(self, frame: bytes, name: str, upstream: Upstream, down: Downstream, txid: int) -> int:
        """One LTX frame, passed on or refused; returns the TXID it brings
        the database to. Its payload is a chunked byte stream (2-byte size,
        bytes; size 0 ends it) whose first 100 bytes are the LTX header."""
        raw, payload = bytearray(), bytearray()
        while len(payload) < LTX_HEADER_SIZE:
            size = await upstream.read(2)
            raw += size
            (n,) = struct.unpack(">H", size)
            if n == 0:
                raise ValueError("an LTX file shorter than its header")
            piece = await upstream.read(n)
            raw += piece
            payload += piece
        header = LtxHeader.parse(bytes(payload[:LTX_HEADER_SIZE]))
        ordinary = name != self.db_name or (not header.is_snapshot and header.commit)
        kept = [] if ordinary else await self.kept(Pos(txid))
        if not (kept and header.is_snapshot and header.commit):
            reason = judge(header, name, None, kept)
            if reason:
                raise Refused(Refusal(reason, header.max_txid, Identity(), time.time()))
            await down.send(frame + raw)
            while True:
                size = await upstream.read(2)
                (n,) = struct.unpack(">H", size)
                await down.send(size + (await upstream.read(n) if n else b""))
                if n == 0:
                    if header.is_snapshot and name == self.db_name:
                        self.on_snapshot()
                    return header.max_txid
        # A snapshot while the standby has something to keep: held whole,
        # and opened, before LiteFS sees any of it.
        work = Path(tempfile.mkdtemp(prefix=".guard-", dir=self.spool))
        try:
            relayed, ltx = work / "relayed", work / "snapshot.ltx"
            with open(relayed, "wb") as out, open(ltx, "wb") as body:
                out.write(frame + raw)
                body.write(payload)
                while True:
                    size = await upstream.read(2)
                    (n,) = struct.unpack(">H", size)
                    piece = await upstream.read(n) if n else b""
                    out.write(size + piece)
                    body.write(piece)
                    if n == 0:
                        break
            theirs = await asyncio.to_thread(_identity_in, ltx, work / "data.db")
            reason = judge(header, name, theirs, kept)
            if reason:
                raise Refused(Refusal(reason, header.max_txid, theirs, time.time()))
            self.log(f"a snapshot of {name} from {self.primary_url} (TXID {header.max_txid}, {theirs}) passed: {kept[0].what} is older")
            with open(relayed, "rb") as fp:
                while piece := fp.read(1 << 20):
                    await down.send(piece)
            self.on_snapshot()
            return header.max_txid
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _identity_in(ltx: Path, scratch: Path) -> Identity:
    try:
        snapshot_to_sqlite(ltx, scratch)
    except ValueError:
        return Identity()
    return identity_of_file(scratch, immutable=True)


def position_of(body: bytes, db_name: str) -> Pos:
    """The position of ``db_name`` in the map a LiteFS replica sends to the
    primary (http.go ``WritePosMapTo``): a count, then per database its
    name's length and name, its TXID and checksum."""
    (count,), at = struct.unpack_from(">I", body, 0), 4
    for _ in range(count):
        (n,) = struct.unpack_from(">I", body, at)
        name = body[at + 4 : at + 4 + n].decode()
        txid, checksum = struct.unpack_from(">QQ", body, at + 4 + n)
        at += 4 + n + 16
        if name == db_name:
            return Pos(txid, checksum)
    return Pos(0)

"""The publisher's signatures: after every public.db commit of its own, a
signed release (broadsheet/release.py) in releases.db, the public cluster's
second database; and, before every cycle, the check that public.db is still
what the publisher last committed and signed (else the publisher heals it).

The signing key lives in data.db (``_public_release_keys``): on the private
side only, so the standby has it from the replication it already does, a
promoted standby signs with the same key, and a backup restores it; nothing
in data.db whose name starts with ``_public_`` can ever be published. The
Merkle tree over public.db's pages is kept in the publisher's memory, built
once at start from LiteFS's copy of public.db and then followed from the LTX
file of each commit, so a cycle's signature costs what its change costs.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import apsw

from broadsheet import release
from broadsheet.litefs import Pos
from broadsheet.log import log
from broadsheet.sqlite import connect, immediate

KEYS_TABLE = "_public_release_keys"
# Every time public.db was found written behind the publisher's back and
# rebuilt: the audit log's sibling (that log holds flips only).
HEALS_TABLE = "_public_heals"


def heals_path(watermark_file: str | Path) -> Path:
    return Path(watermark_file).with_name("publisher-heals.jsonl")


def read_heals(path: str | Path, limit: int = 5) -> list[dict]:
    """The newest heals the publisher recorded beside its watermark, newest first."""
    try:
        lines = Path(path).read_text().splitlines()[-limit:]
    except FileNotFoundError:
        return []
    out = []
    for line in reversed(lines):
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def record_heal(writer, reason: str, watermark_file: str | Path | None = None) -> None:
    """In the caller's data.db transaction: a heal in data.db's log of them
    and (for /health, which opens no data.db connection) beside the watermark."""
    if watermark_file is not None:
        with open(heals_path(watermark_file), "a") as fp:
            fp.write(json.dumps({"at": _now(), "reason": reason}) + "\n")
    writer.execute(
        f"CREATE TABLE IF NOT EXISTS {HEALS_TABLE} (id INTEGER PRIMARY KEY, at TEXT NOT NULL, reason TEXT NOT NULL)"
    )
    writer.execute(f"INSERT INTO {HEALS_TABLE} (at, reason) VALUES (?, ?)", (_now(), reason))


def newest_key(conn) -> str | None:
    """data.db's newest signing key (as SigningKey takes it), None if it has none."""
    try:
        row = conn.execute(f"SELECT private_key FROM {KEYS_TABLE} ORDER BY id DESC LIMIT 1").fetchone()
    except apsw.SQLError:  # no table: data.db from before signing
        return None
    return row[0] if row else None


def _store_key(writer, text: str) -> None:
    """In the caller's data.db transaction: ``text`` as data.db's newest key."""
    writer.execute(
        f"CREATE TABLE IF NOT EXISTS {KEYS_TABLE} (id INTEGER PRIMARY KEY, private_key TEXT NOT NULL, created_at TEXT NOT NULL)"
    )
    writer.execute(f"INSERT INTO {KEYS_TABLE} (private_key, created_at) VALUES (?, ?)", (text, _now()))


def signing_key(writer) -> release.SigningKey:
    """data.db's newest signing key, made (in the caller's transaction) if it has none."""
    text = newest_key(writer)
    if text is None:
        text = release.new_private_key()
        _store_key(writer, text)
    return release.SigningKey(text)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


class Signer:
    """Signs public.db's positions that the publisher itself committed."""

    def __init__(self, public_db: str | Path, data_dir: str | Path, key: release.SigningKey):
        self.public_db = Path(public_db)
        self.data_dir = Path(data_dir)
        self.key = key
        self.conn = connect(str(self.public_db.with_name(release.RELEASES_DB)))
        self.conn.execute("PRAGMA journal_mode=WAL")
        with immediate(self.conn):
            release.ensure_schema(self.conn)
            release.list_key(self.conn, key.public, _now())
        self.tree = self._build()
        newest = self._newest()
        # The position last signed, which public.db must still be at.
        self.signed: Pos | None = None
        if newest is None:
            # The first start of signing: public.db is what the publisher made.
            self._sign(self.tree.pos)
        elif newest.txid == self.tree.pos.txid and newest.digest == self.tree.digest:
            self.signed = self.tree.pos

    def close(self) -> None:
        self.conn.close()

    def follow_key(self, writer) -> None:
        """Sign with data.db's newest key from now on: a restore brings back
        the key the read nodes pinned (a primary rebuilt on an empty volume
        made a key of its own before it). data.db without one (restored
        from before signing) is given this signer's."""
        text = newest_key(writer)
        if text is None:
            with immediate(writer):
                _store_key(writer, self.key.text)
            return
        if text.strip() == self.key.text:
            return
        key = release.SigningKey(text)
        log("publisher", f"signing with data.db's key {key.public.key_id} from now on (was {self.key.public.key_id})")
        with immediate(self.conn):
            # Endorsed by the key it replaces: nodes that pinned that one follow.
            release.list_key(self.conn, key.public, _now(), signer=self.key)
        self.key = key
        if self.signed is not None and Pos.read(self.public_db) == self.signed == self.tree.pos:
            self._sign(self.signed)  # what public.db holds, now under this key too

    def _build(self) -> release.PageTree:
        """The tree of public.db as LiteFS holds it now (read from its data
        directory, off the mount)."""
        pos = Pos.read(self.public_db)
        return release.PageTree.of_litefs(self.data_dir, self.public_db.name, pos)

    def _newest(self) -> release.Release | None:
        row = self.conn.execute("SELECT txid FROM releases ORDER BY txid DESC LIMIT 1").fetchone()
        return release.release_at(self.conn, row[0]) if row else None

    def tampered(self) -> str | None:
        """Why public.db is not at the position the publisher last committed
        and signed (someone else wrote to it); None if it is."""
        now = Pos.read(self.public_db)
        if self.signed is None:
            return f"public.db is at TXID {now.txid}, which no release of this publisher covers"
        if now != self.signed:
            return f"public.db is at TXID {now.txid} ({now}), the publisher last committed {self.signed}"
        return None

    def committed(self, pos: Pos) -> release.Release:
        """Sign ``pos``, the position of the publisher's own commit just made:
        the tree follows that commit's LTX file; if the tree is not where
        the commit started (a write by someone else came between, healed
        by this commit), it is built again from LiteFS's copy."""
        path = release.ltx_path(self.data_dir, self.public_db.name, pos.txid, pos.txid)
        try:
            if self.signed is None or self.tree.pos != self.signed or pos.txid != self.signed.txid + 1:
                raise ValueError("not the next transaction after the last signed one")
            self.tree.apply_ltx(path)
            if self.tree.pos != pos:
                raise ValueError(f"the LTX file leaves {self.tree.pos}, LiteFS reports {pos}")
        except (OSError, ValueError) as exc:
            log("publisher", f"release tree built again from public.db at {pos}: {exc}")
            self.tree = self._build()
        return self._sign(self.tree.pos)

    def _sign(self, pos: Pos) -> release.Release:
        signed = self.key.release(pos.txid, self.tree.digest, pos.checksum)
        with immediate(self.conn):
            release.record(self.conn, signed)
        self.signed = pos
        return signed

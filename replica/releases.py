"""A read node's check of what it serves: each public.db position it
reaches is served only once a release signed by the publisher's key
(broadsheet/release.py) covers it.

The node keeps the Merkle tree of its public.db in memory, built once from
LiteFS's copy in its data directory and then followed from the LTX file of
each transaction LiteFS applies (a position reached by a snapshot, or whose
LTX files are gone, builds it again). The releases arrive in releases.db, the
public cluster's second database, right after the transaction they sign: a
request at a position with no release yet waits up to ``SIGNATURE_WAIT``
seconds for one, then gets a 503 that says why, as does every request at a
position whose content is not what a release says (a forged transaction).

The key: ``BROADSHEET_RELEASE_KEY`` when set (what the team publishes, the
strongest check), else the first key releases.db lists, pinned in a file
beside the node's data directory on first contact: later keys count only
when signed by a key already trusted (rotation).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from broadsheet import release
from broadsheet.litefs import Pos

SIGNATURE_WAIT = 1.0
DB_NAME = "public.db"


class Releases:
    """The checks of one read node."""

    def __init__(self, public_db: str | Path, data_dir: str | Path, configured_key: str = ""):
        self.public_db = Path(public_db)
        self.releases_db = self.public_db.with_name(release.RELEASES_DB)
        self.data_dir = Path(data_dir)
        self.pin_file = self.data_dir.parent / "release-key.pub"
        self.configured = release.PublicKey.parse(configured_key) if configured_key else None
        self.tree: release.PageTree | None = None
        self.verified: Pos | None = None  # the newest position found covered
        self.current: release.Release | None = None  # its release
        self.problem: tuple[Pos, str] | None = None  # the newest position found not covered, and why
        self._lock = asyncio.Lock()
        self.key: release.PublicKey | None = self.configured  # the key trusted first

    # -- on a worker thread ---------------------------------------------------
    def _follow(self, pos: Pos) -> str:
        """The tree's digest at ``pos``."""
        tree = self.tree
        try:
            if tree is None or tree.pos.txid >= pos.txid:
                raise ValueError("no tree before this position")
            for txid in range(tree.pos.txid + 1, pos.txid + 1):
                tree.apply_ltx(release.ltx_path(self.data_dir, DB_NAME, txid, txid))
            if tree.pos != pos:
                raise ValueError("the LTX files do not lead to this position")
        except (OSError, ValueError):
            tree = self.tree = release.PageTree.of_litefs(self.data_dir, DB_NAME, pos)
        return tree.digest

    def _trusted(self, conn) -> dict[str, release.PublicKey]:
        listed = release.keys(conn)
        pinned = self.configured
        if pinned is None:
            try:
                pinned = release.PublicKey.parse(self.pin_file.read_text())
            except FileNotFoundError:
                if not listed:
                    return {}
                pinned = listed[0][0]
                self.pin_file.write_text(str(pinned) + "\n")
        self.key = pinned
        return release.trusted_keys(pinned, listed)

    def _release(self, txid: int) -> tuple[release.Release | None, dict[str, release.PublicKey]]:
        try:
            conn = sqlite3.connect(f"file:{self.releases_db}?mode=ro", uri=True, timeout=1)
        except sqlite3.OperationalError:
            return None, {}
        try:
            return release.release_at(conn, txid), self._trusted(conn)
        except sqlite3.DatabaseError:
            return None, {}
        finally:
            conn.close()

    def _check(self, pos: Pos) -> tuple[str | None, release.Release | None]:
        found, trusted = self._release(pos.txid)
        if found is None:
            return release.verdict("", pos, None, trusted), None
        digest = self._follow(pos)
        return release.verdict(digest, pos, found, trusted), found

    # -- on the event loop ------------------------------------------------------
    async def check(self, pos: Pos, wait: float = SIGNATURE_WAIT) -> str | None:
        """None once a signed release covers ``pos``; else, after waiting up
        to ``wait`` seconds for its release, why not."""
        if pos == self.verified:
            return None
        deadline = time.monotonic() + wait
        while True:
            async with self._lock:
                if pos == self.verified:
                    return None
                problem, found = await asyncio.to_thread(self._check, pos)
                if problem is None:
                    if self.verified is None or pos.txid >= self.verified.txid:
                        self.verified, self.current, self.problem = pos, found, None
                    return None
                self.problem = (pos, problem)
            if found is not None or time.monotonic() >= deadline:
                return problem  # a release that does not match: no use waiting
            await asyncio.sleep(0.02)

    def status(self, pos: Pos) -> dict:
        """What /-/replication.json says of it at ``pos``."""
        ok = pos == self.verified
        reason = None if ok else (self.problem[1] if self.problem and self.problem[0] == pos else "not checked yet")
        return {"verified": ok, "verification": reason}

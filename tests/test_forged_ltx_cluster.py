"""A transaction no publisher made, posted straight to one read node's
loopback LiteFS (``POST /tx``, which LiteFS accepts on any node): it lands
on that node alone, and its Datasette never serves the forged row: no
signed release covers that position (docs/security.md), so every request
there is a 503 that says so, its health check fails, the other node is
unaffected, and the next signed TXID heals it."""

from __future__ import annotations

import shutil
import sqlite3
import time

import httpx

from broadsheet.client import ControlClient
from broadsheet.litefs import Pos
from broadsheet.tokens import mint
from conftest import create_table, rows, settle, wait_until
from ltx_forge import after, ltx


def _pages(data: bytes) -> dict[int, bytes]:
    size = int.from_bytes(data[16:18], "big") or 65536  # as the SQLite header says (1: 65536)
    return {i // size + 1: data[i : i + size] for i in range(0, len(data), size)}


def test_a_forged_ltx_on_one_read_node_lands_there_alone(new_cluster, tmp_path):
    cluster = new_cluster(replicas=2)
    create_table(cluster, "forge_t", [{"id": 1, "v": "real"}])
    ControlClient(cluster.primary.control_url, mint(cluster.primary.secret, "tester")).publish("forge_t")
    settle(cluster)
    victim, other = cluster.replicas
    for n in cluster.replicas:
        wait_until(lambda n=n: rows(n.url, "forge_t") == [{"id": 1, "v": "real"}], timeout=20,
                   message=f"{n.name} serves the table")

    pos = Pos.read(victim.public_db)
    copy = tmp_path / "copy.db"
    shutil.copyfile(victim.public_db, copy)
    before = _pages(copy.read_bytes())
    conn = sqlite3.connect(copy)
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute("UPDATE forge_t SET v = 'FORGED' WHERE id = 1")
    conn.commit()
    conn.close()
    forged = _pages(copy.read_bytes())
    changed = {n: p for n, p in forged.items() if before.get(n) != p}
    assert changed
    post = after(pos.checksum, {n: before[n] for n in changed if n in before}, changed)
    body = ltx(changed, len(forged), pos.txid + 1, pos.txid + 1, pos.checksum, post,
               page_size=len(changed[min(changed)]), timestamp_ms=int(time.time() * 1000))
    r = httpx.post(f"{victim.litefs.url}/tx", params={"name": "public.db"}, content=body, timeout=10)
    assert r.status_code < 300, r.text

    wait_until(lambda: Pos.read(victim.public_db) == Pos(pos.txid + 1, post), timeout=10,
               message="the forged transaction applied on the victim")
    assert Pos.read(other.public_db).txid == pos.txid
    assert rows(other.url, "forge_t") == [{"id": 1, "v": "real"}]

    # The victim never serves the forged row: its position has no signed release.
    for path in ("/public/forge_t.json", "/public/forge_t", "/public.json?sql=select+v+from+forge_t"):
        response = httpx.get(f"{victim.url}{path}", params={"_shape": "objects"}, timeout=10)
        assert response.status_code == 503 and "unverified" in response.text.lower(), (path, response.text)
        assert "FORGED" not in response.text
    status = httpx.get(f"{victim.url}/-/replication.json", timeout=10)
    assert status.status_code == 503 and status.json()["verified"] is False, status.text
    assert f"TXID {pos.txid + 1} of public.db is not covered" in status.json()["verification"], status.text
    assert httpx.get(f"{other.url}/-/replication.json", timeout=10).json()["verified"] is True

    # The next signed TXID heals it (LiteFS sees its position is not the
    # primary's and takes a snapshot), and the real row is served again.
    create_table(cluster, "forge_next", [{"id": 1}])
    ControlClient(cluster.primary.control_url, mint(cluster.primary.secret, "tester")).publish("forge_next")
    settle(cluster)
    wait_until(lambda: httpx.get(f"{victim.url}/-/broadsheet/release.json", timeout=5).json().get("verified"),
               timeout=60, message="the victim verified again")
    assert rows(victim.url, "forge_t") == [{"id": 1, "v": "real"}]

"""Signed releases on a real cluster: every public TXID the publisher
commits is signed, read nodes serve only what a signature covers, and a
public.db forged behind the publisher's back (LiteFS's /import on the
primary's public node, as anyone reaching that port could) is never served
by a read node and is rebuilt by the publisher's next cycle."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time

import httpx
from click.testing import CliRunner

from broadsheet.cli import cli
from broadsheet.tokens import mint
from conftest import wait_until

FORGED = "FORGED-ROW-7f3a"


def _publish(cluster, table: str) -> int:
    token = mint(cluster.primary.secret, "tester")
    r = httpx.post(f"{cluster.primary.control_url}/tables/{table}/publish",
                   headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["public_txid"]


def _verify(*args) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["verify", *args])
    return result.exit_code, result.output


def test_releases_are_signed_checked_and_a_forged_public_db_is_never_served(new_cluster, tmp_path):
    cluster = new_cluster(replicas=2)
    txid = _publish(cluster, "airports")
    cluster.wait_for_replicas(txid, timeout=30)

    key = None
    for node in cluster.replicas:
        wait_until(lambda: httpx.get(f"{node.url}/-/broadsheet/release.json").status_code == 200, 15,
                   f"{node.name} verifies TXID {txid}")
        body = httpx.get(f"{node.url}/-/broadsheet/release.json").json()
        assert body["verified"] and body["txid"] >= txid and body["release"]["txid"] == body["txid"]
        key = key or body["key"]
        assert body["key"] == key  # every node trusts the one key: the publisher's
        printed = CliRunner().invoke(cli, ["release-key", "--data-db", str(cluster.primary.data_db)])
        assert printed.exit_code == 0 and printed.output.strip() == key, printed.output
        status = httpx.get(f"{node.url}/-/replication.json")
        assert status.status_code == 200 and status.json()["verified"] is True
        code, out = _verify(node.url, "--key", key)
        assert code == 0, out
        assert httpx.get(f"{node.url}/public/airports.json?_size=1").status_code == 200

    # A copy of public.db checks against the release of its TXID; a tampered one fails.
    node = cluster.replicas[0]
    copy = tmp_path / "copy.db"
    src = sqlite3.connect(f"file:{node.public_db}?mode=ro", uri=True)
    dst = sqlite3.connect(copy)
    src.backup(dst)
    src.close()
    dst.execute("PRAGMA journal_mode=DELETE")
    dst.close()
    release_txid = httpx.get(f"{node.url}/-/broadsheet/release.json").json()["txid"]
    code, out = _verify(node.url, "--key", key, "--file", str(copy))
    assert code == 0, out
    tampered = tmp_path / "tampered.db"
    shutil.copy(copy, tampered)
    conn = sqlite3.connect(tampered)
    conn.execute("UPDATE airports SET name = ? WHERE rowid = (SELECT min(rowid) FROM airports)", (FORGED,))
    conn.commit()
    conn.close()
    code, out = _verify(node.url, "--key", key, "--file", str(tampered))
    assert code == 1 and f"TXID {release_txid}" in out, out

    # A forged public.db imported on the primary's public LiteFS.
    forged = tmp_path / "forged.db"
    shutil.copy(tampered, forged)
    seen_forged: list[str] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            for n in cluster.replicas:
                try:
                    r = httpx.get(f"{n.url}/public/airports.json?_size=1", timeout=5)
                except httpx.HTTPError:
                    continue
                if r.status_code == 200 and FORGED in r.text:
                    seen_forged.append(n.name)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        before = cluster.public_pos().txid
        r = httpx.post(f"{cluster.primary.public.url}/import?name=public.db", content=forged.read_bytes(), timeout=30)
        assert r.status_code == 200, r.text
        # The publisher notices and rebuilds: a newer signed position, on every node.
        wait_until(lambda: cluster.public_pos().txid >= before + 2, 20, "the publisher rebuilds public.db")
        healed = cluster.public_pos().txid
        cluster.wait_for_replicas(healed, timeout=30)
        for n in cluster.replicas:
            wait_until(lambda: httpx.get(f"{n.url}/-/broadsheet/release.json").json().get("verified"), 90,
                       f"{n.name} verifies the rebuilt public.db")
    finally:
        stop.set()
        watcher.join()
    assert not seen_forged, f"forged row served by {sorted(set(seen_forged))}"
    for n in cluster.replicas:
        r = httpx.get(f"{n.url}/public/airports.json?_size=1")
        assert r.status_code == 200 and r.json()["rows"] and FORGED not in r.text, r.text
        code, out = _verify(n.url, "--key", key)
        assert code == 0, out
    health = httpx.get(f"{cluster.primary.control_url}/health").json()
    assert "public.db is at TXID" in health["heals"][0]["reason"], health["heals"]
    wait_until(lambda: not httpx.get(f"{cluster.primary.control_url}/health").json()["unverified_nodes"], 15,
               "no node reported unverified")

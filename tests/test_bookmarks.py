"""Invariant 3: a reader holding a public TXID gets data at least that new
from any read node, or a clear timeout."""

import threading
import time

import httpx

from conftest import wait_until
from primary import store


def test_bookmark_waits_for_a_txid_the_node_does_not_have_yet(new_cluster):
    cluster = new_cluster(replicas=1)
    node = cluster.replicas[0]
    sup = cluster.supervisor
    txid = cluster.public_pos().txid
    # With the publisher stopped, a team write is not public yet: the node
    # cannot have TXID txid + 1 until the publisher runs again.
    sup.stop("publisher")
    conn = store.connect(str(cluster.primary.data_db))
    with store.immediate(conn):
        conn.execute("INSERT INTO airports (faa, name) VALUES ('BKM', 'Bookmark Field')")
        conn.execute("CREATE TABLE fresh (id INTEGER PRIMARY KEY, text TEXT)")
        conn.execute("INSERT INTO fresh VALUES (1, 'just published')")
    store.set_public(conn, "fresh", True, actor="test")
    conn.close()

    results = {}

    def read(key, path, params):
        started = time.monotonic()
        results[key] = httpx.get(f"{node.url}{path}", params={**params, "_txid": txid + 1, "_shape": "objects"}, timeout=30)
        results[key + "-waited"] = time.monotonic() - started

    readers = [
        threading.Thread(target=read, args=("row", "/public/airports.json", {"faa": "BKM"})),
        # A table that becomes public at TXID txid + 1 is not a 403 for a
        # reader holding that bookmark: the node waits, then serves it.
        threading.Thread(target=read, args=("table", "/public/fresh.json", {})),
    ]
    for reader in readers:
        reader.start()
    time.sleep(0.5)  # the readers are now waiting on the node
    assert "row" not in results and "table" not in results
    sup.start(sup._services["publisher"])  # the writes get published, the node catches up
    for reader in readers:
        reader.join(30)
    response = results["row"]
    assert response.status_code == 200
    assert [r["name"] for r in response.json()["rows"]] == ["Bookmark Field"]
    assert int(response.headers["broadsheet-txid"]) >= txid + 1
    assert results["row-waited"] >= 0.5
    assert results["table"].status_code == 200
    assert [r["text"] for r in results["table"].json()["rows"]] == ["just published"]


def test_bookmark_header_and_impossible_txid(cluster):
    node = cluster.replicas[0]
    current = cluster.public_pos().txid
    cluster.wait_for_replicas(current)
    ok = httpx.get(f"{node.url}/public/airports.json?_size=1", headers={"Broadsheet-Min-Txid": str(current)}, timeout=10)
    assert ok.status_code == 200

    started = time.monotonic()
    late = httpx.get(f"{node.url}/public/airports.json?_size=1&_txid={current + 10_000}", timeout=30)
    assert late.status_code == 504
    body = late.json()
    assert body["wanted"] == current + 10_000 and body["txid"] >= current
    assert "did not arrive" in body["error"]
    assert 4 <= time.monotonic() - started < 15

    bad = httpx.get(f"{node.url}/public/airports.json?_txid=banana", timeout=5)
    assert bad.status_code == 400 and "TXID" in bad.json()["error"]


def test_etag_and_304(cluster, db):
    node = cluster.replicas[0]
    first = httpx.get(f"{node.url}/public/airports.json?_size=3", timeout=5)
    etag = first.headers["etag"]
    assert first.headers["cache-control"].startswith("public, max-age=")
    again = httpx.get(f"{node.url}/public/airports.json?_size=3", headers={"If-None-Match": etag}, timeout=5)
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag

    with store.immediate(db):
        db.execute("UPDATE airports SET name = name || '' WHERE faa = 'JFK'")
        db.execute("UPDATE airports SET alt = alt + 1 WHERE faa = 'JFK'")
    wait_until(lambda: httpx.get(f"{node.url}/public/airports.json?_size=3", timeout=5).headers["etag"] != etag)
    changed = httpx.get(f"{node.url}/public/airports.json?_size=3", headers={"If-None-Match": etag}, timeout=5)
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    # Anonymous 403s are not cacheable as public data.
    assert "etag" not in httpx.get(f"{node.url}/public/planes.json", timeout=5).headers


def test_replication_status_endpoint(cluster):
    for node in cluster.replicas:
        status = httpx.get(f"{node.url}/-/replication.json", timeout=5).json()
        assert status["node"] == node.name
        assert status["txid"] >= 1
        assert status["primary_reachable"] is True
        assert status["primary"] == "primary"

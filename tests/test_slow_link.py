"""A large first publish through a slow link (cluster): LiteFS v0.5.14 holds
a read node's read locks while an LTX arrives, and SQLite fails a read that
waits about ten seconds with "locking protocol" (docs/internals.md, "Known
limits"). Staged in bounded batches (primary/publisher/staging.py), a table
that would take longer than that to cross the link arrives with no read-node
error, and appears at once: never listed half copied."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

import httpx

from broadsheet.litefs import Pos
from conftest import create_table, wait_until
from local.links import parse_links
from primary import store

# 2 Mbit/s (250 KB/s) and 130 ms each way: 3 MB takes ~12 s to cross, more
# than the ~10 s a read waits for a lock before "locking protocol".
LINK = "syd=130ms:rate=2mbit"
BATCH = 128 * 1024  # ~0.5 s on that link: a read waiting on it stays inside the 1 s sql_time_limit_ms
ROWS = 3000  # of ~1 KB of random bytes: ~3 MB


def test_a_large_first_publish_crosses_a_slow_link_without_read_errors_and_appears_at_once(new_cluster):
    c = new_cluster(
        replicas=1,
        sample=False,
        links=parse_links([LINK]),
        primary_env={"BROADSHEET_PUBLISH_BATCH_BYTES": str(BATCH)},
    )
    node = c.replicas[0]
    create_table(c, "marker", [{"id": 1, "v": "here"}])
    conn = store.connect(str(c.primary.data_db))
    try:
        with store.immediate(conn):
            conn.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, b BLOB)")
            conn.execute(
                "WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM i WHERE x < ?)"
                " INSERT INTO big SELECT x, randomblob(1000) FROM i",
                (ROWS,),
            )
        store.set_public(conn, "marker", True, actor="test")
        wait_until(lambda: httpx.get(f"{node.url}/public/marker.json", timeout=5).status_code == 200,
                   timeout=60, message="the marker table on the read node")
        start = Pos.read(c.primary.public_db).txid
    finally:
        conn.close()
    # Published from the CLI, which follows the staging's progress once the
    # control plane stops waiting for the publish (10 s).
    cli = subprocess.Popen(
        [sys.executable, "-m", "broadsheet.cli", "publish", "big", "--watch", "--dir", str(c.root)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )

    # Visitors keep reading the node while the table crosses the link: each
    # request a new URL (no cached answer), so each one reads public.db.
    results: list[tuple[float, int, float, str]] = []
    counts: list[int] = []  # big's row count each time the node answered for it
    database_pages: list[int] = []  # the database page's statuses
    stop = threading.Event()

    failures: list[BaseException] = []  # what a visitor's thread found wrong

    def visit(i: int) -> None:
        try:
            _visit(i)
        except BaseException as exc:  # told by the test, not lost with the thread
            failures.append(exc)

    def _visit(i: int) -> None:
        with httpx.Client(timeout=30) as client:
            n = 0
            while not stop.is_set():
                n += 1
                began = time.monotonic()
                r = client.get(f"{node.url}/public/marker.json", params={"_v": f"{i}-{n}"})
                results.append((began, r.status_code, time.monotonic() - began, r.text[:200]))
                database = client.get(f"{node.url}/public.json", params={"_v": f"{i}-{n}"})
                listed = database.status_code == 200 and "big" in {t["name"] for t in database.json()["tables"]}
                database_pages.append(database.status_code)
                big = client.get(f"{node.url}/public/big.json", params={"_size": 1, "_extra": "count", "_v": f"{i}-{n}"})
                if big.status_code == 200:
                    counts.append(big.json()["count"])
                else:
                    assert big.status_code == 403, big.text[:200]  # not listed yet: not served
                    assert not listed  # nor in the database's list of tables
                time.sleep(0.1)

    threads = [threading.Thread(target=visit, args=(i,), daemon=True) for i in range(2)]
    began = time.monotonic()
    for t in threads:
        t.start()
    try:
        wait_until(lambda: counts, timeout=120, message="big on the read node")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=35)
    took = time.monotonic() - began
    try:
        out, err = cli.communicate(timeout=40)
    finally:
        cli.kill()
    assert cli.returncode == 0, err
    print(out)
    # Progress while it was staged, then the publish's TXID and its arrival.
    assert re.search(rf"big: [\d,]+ of {ROWS:,} rows staged", out), out
    txid = int(re.findall(r"public TXID (\d+)", out)[-1])
    assert re.search(rf"^txid {txid} \(big published by cli \({ROWS:,} rows\)\): replica-1 ✓", out, re.M), out
    errors = [r for r in results if r[1] != 200]
    slowest = max(r[2] for r in results)
    print(f"big ({ROWS} rows) reached the read node in {took:.1f} s; {len(results)} reads, slowest {slowest:.2f} s")
    assert not failures, failures
    assert not errors, errors[:3]
    assert set(database_pages) == {200}, database_pages
    # It appeared whole, at once.
    assert counts and set(counts) == {ROWS}, counts
    # In several transactions, each small enough to cross in time, the last
    # one the publish's: the publisher's log says so.
    txids = Pos.read(c.primary.public_db).txid - start
    assert txids >= 8, txids
    assert slowest < 8, slowest
    log = (c.root / "logs" / "publisher.log").read_text()
    assert "'big' staged whole" in log
    for name in ("replica-1-datasette.log", "replica-1-litefs.log"):
        assert "locking protocol" not in (c.root / "logs" / name).read_text()

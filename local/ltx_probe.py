"""What an LTX of a given size does to a read node behind a slow link: the
probe behind docs/internals.md's "Large first copies" figures.

    scripts/slow-link-ltx --link syd=130ms:rate=10mbit --sizes 8,12,16

A local cluster (one read node behind the link, LTX compression off) is
brought up in a scratch directory; for each size a table of that many MB of
random bytes (incompressible) is published, while three visitors read a
small published table on the read node every 0.2 s from the flip on, each request a new URL
(so none is answered from the node's response cache). One JSON line per
size: the LTX's size on the primary, how long it took to reach the read
node, the slowest read and every read that failed. ``--batch-bytes`` is the
publisher's BROADSHEET_PUBLISH_BATCH_BYTES (default 0: one transaction, the
behaviour of LiteFS itself; give 4194304 to see staging at work).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx

from broadsheet.litefs import Pos
from local.cluster import LocalCluster
from local.links import parse_links
from primary import store


def _write(db: Path, sql: str, args=()) -> None:
    conn = store.connect(str(db))
    try:
        with store.immediate(conn):
            conn.execute(sql, args)
    finally:
        conn.close()


def _publish(db: Path, table: str) -> None:
    conn = store.connect(str(db))
    try:
        store.set_public(conn, table, True, actor="probe")
    finally:
        conn.close()


def probe(cluster: LocalCluster, mb: float, timeout: float = 180.0) -> dict:
    node = cluster.replicas[0]
    data = cluster.primary.data_db
    name = "big_" + str(mb).replace(".", "_")
    _write(data, f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, b BLOB)")
    _write(
        data,
        f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
        f" INSERT INTO {name} SELECT i, randomblob(1000) FROM n",
        (int(mb * 1024 * 1024 / 1000),),
    )
    before = Pos.read(cluster.primary.public_db).txid
    reads: list[tuple[float, object, float, str]] = []
    stop = threading.Event()
    started = time.monotonic()

    def visit(i: int) -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                began = time.monotonic()
                try:
                    r = client.get(f"{node.url}/public/marker.json", params={"_v": f"{i}-{len(reads)}-{began}"})
                    reads.append((began - started, r.status_code, time.monotonic() - began, "" if r.status_code == 200 else r.text[:160]))
                except httpx.HTTPError as exc:
                    reads.append((began - started, "error", time.monotonic() - began, repr(exc)[:160]))
                time.sleep(0.2)

    # Visitors read the node from the flip on, through every batch.
    threads = [threading.Thread(target=visit, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    _publish(data, name)
    deadline = time.monotonic() + timeout
    txid = None
    while time.monotonic() < deadline:
        conn = store.connect(str(cluster.primary.public_db))
        try:
            listed = conn.execute("SELECT 1 FROM _public_tables WHERE table_name = ?", (name,)).fetchall()
        finally:
            conn.close()
        if listed:  # the publish's TXID (its listing cycle, when staged)
            txid = Pos.read(cluster.primary.public_db).txid
            break
        time.sleep(0.02)
    arrived = None
    while txid is not None and time.monotonic() < deadline:
        if Pos.read(node.public_db).txid >= txid:
            arrived = time.monotonic() - started
            break
        time.sleep(0.05)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(timeout=35)
    txid = txid or Pos.read(cluster.primary.public_db).txid
    ltx = [
        p.stat().st_size
        for t in range(before + 1, txid + 1)
        for p in cluster.primary.root.rglob(f"{t:016x}-{t:016x}.ltx")
        if "public.db" in str(p)
    ]
    failed = [r for r in reads if r[1] != 200]
    return {
        "mb": mb,
        "transactions": txid - before,
        "largest_ltx_bytes": max(ltx, default=None),
        "arrived_s": None if arrived is None else round(arrived, 2),
        "reads": len(reads),
        "slowest_read_s": round(max((r[2] for r in reads), default=0), 2),
        "failed_reads": len(failed),
        "first_failures": failed[:3],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--link", default="syd=130ms:rate=10mbit")
    parser.add_argument("--sizes", default="8,12,16", help="MB of table per publish, comma-separated")
    parser.add_argument("--batch-bytes", default="0", help="the publisher's BROADSHEET_PUBLISH_BATCH_BYTES")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ltx-probe-"))
    cluster = LocalCluster(
        root, replicas=1, sample=False, compress=False, links=parse_links([args.link]), quiet=True,
        primary_env={"BROADSHEET_PUBLISH_BATCH_BYTES": args.batch_bytes},
    )
    cluster.start()
    try:
        _write(cluster.primary.data_db, "CREATE TABLE marker (id INTEGER PRIMARY KEY, v TEXT)")
        _write(cluster.primary.data_db, "INSERT INTO marker VALUES (1, 'x')")
        _publish(cluster.primary.data_db, "marker")
        node = cluster.replicas[0]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{node.url}/public/marker.json", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        for size in args.sizes.split(","):
            print(json.dumps(probe(cluster, float(size))), flush=True)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

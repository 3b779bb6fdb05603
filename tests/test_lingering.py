"""Unpublished bytes do not linger: after an unpublish, and the window the
README states (LTX retention plus LiteFS's retention check), a marker that
was published is in no byte under any read node's directory (database, LTX
files, mount) nor anywhere in the primary's public cluster (WAL, LTX)."""

from __future__ import annotations

import pytest

from local.cluster import LocalCluster
from conftest import create_table, file_bytes, rows, status, wait_until
from primary import store

MARKER = b"UNPUBLISHED-LINGER-MARKER-91c4"
RETENTION = "3s"  # the test's window: retention + the 5 s retention check


def holders(cluster: LocalCluster) -> list[str]:
    """Every file, on the read nodes and in the primary's public cluster, that
    holds the marker."""
    roots = [node.root for node in cluster.replicas] + [cluster.primary.root / "public"]
    return [str(path) for root in roots for path, data in file_bytes(root) if MARKER in data]


@pytest.mark.cluster  # starts LiteFS itself
def test_unpublished_rows_leave_every_copy_within_the_window(tmp_path):
    cluster = LocalCluster(tmp_path / "cluster", replicas=2, compress=False)
    cluster.primary.retention = RETENTION
    for node in cluster.replicas:
        node.retention = RETENTION
    try:
        cluster.start()
        create_table(cluster, "leaving", [{"id": i, "text": f"{MARKER.decode()} {i}"} for i in range(50)])
        create_table(cluster, "staying", [{"id": 0, "text": "stays"}])
        db = store.connect(str(cluster.primary.data_db))
        for table in ("leaving", "staying"):
            store.set_public(db, table, True, actor="test")
        for node in cluster.replicas:
            wait_until(lambda: len(rows(node.url, "leaving")) == 50, message=f"leaving on {node.name}")
        cluster.wait_for_replicas()
        # The scan can fail: the published marker is found on every read node.
        found = holders(cluster)
        assert all(any(str(node.root) in path for path in found) for node in cluster.replicas), found

        store.set_public(db, "leaving", False, actor="test")
        for node in cluster.replicas:
            wait_until(lambda: status(node.url, "/public/leaving.json") == 403, message=f"403 on {node.name}")
        # Later cycles, as a working cluster has them.
        for i in range(1, 4):
            with store.immediate(db):
                db.execute("INSERT INTO staying (id, text) VALUES (?, 'later')", (i,))
        db.close()
        wait_until(lambda: holders(cluster) == [], timeout=30, message="the marker gone from every copy")
    finally:
        cluster.stop()

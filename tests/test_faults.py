"""Surviving faults: read nodes and the primary going away and coming back."""

import httpx

from broadsheet.litefs import Pos
from conftest import count, rows, status, wait_until
from primary import state


def test_read_node_restarts_while_primary_is_down_then_catches_up(new_cluster):
    cluster = new_cluster(replicas=1)
    node = cluster.replicas[0]
    sup = cluster.supervisor
    wait_until(lambda: status(node.url, "/public/airports.json") == 200)
    before = count(node.url, "airports")

    # The primary's public cluster goes away (publisher first: it holds public.db open).
    sup.stop("publisher")
    sup.stop("public-litefs")
    cluster.stop_replica(node)
    cluster.start_replica(node)  # skip-sync: serves what it has on disk
    assert status(node.url, "/public/airports.json") == 200
    assert count(node.url, "airports") == before

    # The team keeps writing while the public side is down: nothing is lost.
    conn = state.connect(str(cluster.primary.data_db))
    with state.immediate(conn):
        conn.execute("INSERT INTO airports (faa, name) VALUES ('CUP', 'Caught Up Field')")
    conn.close()

    sup.start(sup._services["public-litefs"])
    sup.start(sup._services["publisher"])
    wait_until(lambda: rows(node.url, "airports", faa="CUP"), timeout=30, message="read node caught up")
    assert Pos.read(node.public_db).txid == Pos.read(cluster.primary.public_db).txid

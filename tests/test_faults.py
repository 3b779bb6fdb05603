"""Surviving faults: read nodes and the primary going away and coming back."""

import time


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


def test_crashed_processes_lose_nothing_and_converge(new_cluster):
    """Invariant 5: kill -9 the publisher and a read node's Datasette in the
    middle of a stream of team writes: every committed write reaches the read
    node, and public.db is valid throughout."""
    import sqlite3
    import threading

    cluster = new_cluster(replicas=1)
    node = cluster.replicas[0]
    sup = cluster.supervisor
    conn = state.connect(str(cluster.primary.data_db))
    with state.immediate(conn):
        conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, n INTEGER)")
    state.set_public(conn, "events", True, actor="test")

    done = threading.Event()

    def writer():
        for i in range(300):
            with state.immediate(conn):
                conn.execute("INSERT INTO events (n) VALUES (?)", (i,))
            time.sleep(0.005)
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(0.3)
    sup.crash("publisher")
    time.sleep(0.3)
    sup.crash(node.datasette_service)
    time.sleep(0.3)
    sup.crash("publisher")
    thread.join(60)
    assert done.is_set()
    wait_until(lambda: count(node.url, "events") == 300, timeout=60, message="all 300 writes on the read node")
    assert [r["n"] for r in rows(node.url, "events", _sort="n", _size="max")] == list(range(300))
    check = sqlite3.connect(f"file:{node.public_db}?mode=ro", uri=True)
    assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    check.close()
    conn.close()

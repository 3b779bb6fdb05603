"""A read node cannot be written to."""

import sqlite3

import httpx
import pytest

from conftest import count


def test_write_api_on_read_node_is_refused_clearly(cluster):
    node = cluster.replicas[0]
    before = count(node.url, "airports")
    response = httpx.post(
        f"{node.url}/public/airports/-/insert",
        json={"row": {"faa": "NOP", "name": "Nope"}},
        timeout=5,
    )
    assert response.status_code == 405
    error = response.json()["errors"][0]
    assert "read-only" in error and cluster.primary.url in error
    assert count(node.url, "airports") == before


def test_sqlite_write_on_replica_mount_fails_and_changes_nothing(cluster):
    node = cluster.replicas[0]
    conn = sqlite3.connect(node.public_db, timeout=1)
    before = conn.execute("SELECT count(*) FROM airports").fetchone()[0]
    pos_before = (node.public_db.parent / "public.db-pos").read_text()
    with pytest.raises(sqlite3.OperationalError):
        conn.execute("INSERT INTO airports (faa, name) VALUES ('NOP', 'Nope')")
        conn.commit()
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM airports WHERE faa = 'NOP'").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM airports").fetchone()[0] == before
    assert (node.public_db.parent / "public.db-pos").read_text() == pos_before
    conn.close()

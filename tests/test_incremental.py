"""Invariant 4: changing k rows of a published table costs work and
replicated bytes in proportion to k, not to the table's size."""

import apsw

from broadsheet.litefs import Pos
from conftest import rows, wait_until
from primary import store
from primary.publisher import CycleLog

ROWS = 200_000


def ltx_size(node, txid: int) -> int:
    """Bytes of the LTX file that carried ``txid`` to a read node."""
    return node.ltx_path(txid).stat().st_size


def test_one_row_update_in_200k_row_table_ships_a_small_ltx(cluster, control, db):
    with store.immediate(db):
        db.execute("CREATE TABLE readings (id INTEGER PRIMARY KEY, station TEXT, value REAL, note TEXT)")
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " INSERT INTO readings SELECT i, 'station-' || (i % 97), i * 0.5, hex(randomblob(16)) FROM n",
            (ROWS,),
        )
        db.execute("CREATE INDEX readings_station ON readings (station)")
    published = control.publish("readings")
    cluster.wait_for_replicas(published["public_txid"])
    full_copy = ltx_size(cluster.replicas[0], published["public_txid"])
    assert full_copy > 5_000_000  # the first publish copies the whole table

    with store.immediate(db):
        db.execute("UPDATE readings SET value = -1, note = 'changed' WHERE id = 123456")
    wait_until(lambda: rows(cluster.replicas[0].url, "readings", id=123456)[0]["note"] == "changed")
    txid = Pos.read(cluster.primary.public_db).txid
    cluster.wait_for_replicas(txid)
    for node in cluster.replicas:
        size = ltx_size(node, txid)
        assert size < 64 * 1024, f"{size} bytes shipped for a one-row update"
        assert size * 100 < full_copy

    # The published copy equals the private table, row for row.
    pub = apsw.Connection(f"file:{cluster.replicas[1].public_db}?mode=ro", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    checksum = "SELECT count(*), sum(id), total(value), group_concat(note, '') FROM (SELECT * FROM readings ORDER BY id)"
    assert pub.execute(checksum).fetchone() == db.execute(checksum).fetchone()
    pub.close()


def test_writes_by_any_writer_are_captured_in_one_cycle(cluster, control, db):
    """A write that bypasses broadsheet entirely (plain sqlite3 on data.db),
    inserting, updating and deleting at once, arrives as one public TXID."""
    import sqlite3

    with store.immediate(db):
        db.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, amount INTEGER)")
        db.execute("INSERT INTO ledger VALUES (1, 10), (2, 20), (3, 30)")
    control.publish("ledger")
    before = Pos.read(cluster.primary.public_db).txid
    conn = sqlite3.connect(cluster.primary.data_db, isolation_level=None)
    conn.execute("BEGIN")
    conn.execute("INSERT INTO ledger VALUES (4, 40)")
    conn.execute("UPDATE ledger SET amount = 21 WHERE id = 2")
    conn.execute("DELETE FROM ledger WHERE id = 1")
    conn.execute("COMMIT")
    conn.close()
    node = cluster.replicas[0]
    wait_until(lambda: [r["id"] for r in rows(node.url, "ledger")] == [2, 3, 4])
    assert rows(node.url, "ledger", id=2)[0]["amount"] == 21
    assert Pos.read(cluster.primary.public_db).txid == before + 1


def test_one_team_write_is_one_data_db_commit(cluster, token, db):
    """The publisher's bookkeeping (its cycle records, trimming the change
    log) adds no data.db commit per write: N writes through the write API
    move data.db's TXID by N (at most one more, should the publisher trim
    its change log meanwhile), and every write reaches the read nodes."""
    import httpx

    from conftest import create_table, settle
    from primary.publisher import cycle_log_path

    create_table(cluster, "tally", [{"id": 0, "n": 0}])
    store.set_public(db, "tally", True, actor="test")
    settle(cluster)
    before = Pos.read(cluster.primary.data_db).txid
    cycles_before = len(CycleLog.read_file(cycle_log_path(cluster.primary.watermark_file), 10_000))
    writes = 30
    for i in range(1, writes + 1):
        response = httpx.post(
            f"{cluster.primary.url}/data/tally/-/insert", json={"row": {"id": i, "n": i}},
            headers={"Authorization": f"Bearer {token}"}, timeout=30,
        )
        assert response.status_code == 201, response.text
    settle(cluster)
    commits = Pos.read(cluster.primary.data_db).txid - before
    assert writes <= commits <= writes + 1, f"{commits} data.db commits for {writes} writes"
    cluster.wait_for_replicas()
    assert len(rows(cluster.replicas[0].url, "tally", _size="max")) == writes + 1
    # The cycles are still recorded, beside the watermark.
    cycles = CycleLog.read_file(cycle_log_path(cluster.primary.watermark_file), 10_000)
    assert len(cycles) > cycles_before and cycles[0].public_txid == Pos.read(cluster.primary.public_db).txid

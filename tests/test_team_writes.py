"""The team's Datasette under a stream of write-API inserts while the same
Datasette flips a table public and private again and again from its Make
public page and saves the table's metadata: every acknowledged insert is in
data.db, every flip and metadata save took effect, and the private LiteFS
never failed a commit (it was not restarted). Before the team's Datasette
sent its changes to the control plane, its apsw connections to data.db
(a second SQLite library beside Datasette's) made this fail every time:
500s, "cannot write to WAL frame header without WRITE lock", LiteFS exiting.
See README, Known limits: one SQLite library per process."""

from __future__ import annotations

import httpx

from broadsheet.tokens import mint
from conftest import create_table, wait_until
from fault_tools import WriteStream, create_stream_table, ids_in
from primary import store

STREAM = "team_writes_stream"
FLIPPED = "team_writes_flipped"
FLIPS = 12


def test_flips_and_metadata_beside_write_api_inserts_lose_nothing(new_cluster):
    cluster = new_cluster(replicas=1, sample=False)
    sup, data_db = cluster.supervisor, cluster.primary.data_db
    create_stream_table(data_db, STREAM)
    create_table(cluster, FLIPPED, [{"id": 1, "headline": "annual"}])
    token = mint(cluster.primary.secret, "tester")
    litefs = sup.pid("private-litefs")
    datasette = sup.pid("primary-datasette")
    pages = httpx.Client(
        base_url=f"{cluster.primary.url}/-/broadsheet", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    with pages, WriteStream(cluster.primary.url, token, STREAM, pause=0) as stream:
        wait_until(lambda: len(stream.acked) >= 5, timeout=20, message="inserts acknowledged")
        for i in range(FLIPS):
            public = i % 2 == 0
            flipped = pages.post(
                f"/visibility/data/{FLIPPED}", data={"operation": "publish" if public else "unpublish"}
            )
            assert flipped.status_code == 200, flipped.text[-2000:]
            saved = pages.post(f"/metadata/data/{FLIPPED}", data={"description": f"version {i}"})
            assert saved.status_code == 200, saved.text[-2000:]
            conn = store.connect(str(data_db), readonly=True)
            try:
                assert (FLIPPED in store.public_tables(conn)) == public
                assert store.metadata(conn)[FLIPPED]["description"] == f"version {i}"
            finally:
                conn.close()
        before = len(stream.acked)
        wait_until(lambda: len(stream.acked) > before, timeout=20, message="inserts after the flips")
    print(f"\n{FLIPS} flips and metadata saves beside {len(stream.acked)} acknowledged inserts")
    assert len(stream.acked) > FLIPS
    missing = stream.ids - ids_in(data_db, STREAM)
    assert not missing, f"{len(missing)} acknowledged inserts lost: {sorted(missing)[:10]}"
    conn = store.connect(str(data_db), readonly=True)
    try:
        flips = store.audit_entries(conn, table=FLIPPED, limit=100)
    finally:
        conn.close()
    assert len(flips) == FLIPS
    assert sup.running("private-litefs") and sup.pid("private-litefs") == litefs
    assert sup.pid("primary-datasette") == datasette
    log = (sup.log_dir / "broadsheet.log").read_text() if (sup.log_dir / "broadsheet.log").exists() else ""
    assert "restarting" not in log and "exited with" not in log, log[-2000:]

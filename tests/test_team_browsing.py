"""A team member browsing the team's Datasette while scripts write to it:
every page that shows which tables are public (the database page's badges,
a table's actions) reads publish state through Datasette's own connection,
so the private LiteFS never fails a commit and nothing restarts. (A
connection of apsw's SQLite in that process, opened and closed per page,
dropped the process's POSIX locks on data.db, the write API's included:
LiteFS then failed a commit and was restarted with what uses it.)"""

from __future__ import annotations

import time

import httpx

from broadsheet.cli import _mint_token
from conftest import wait_until
from fault_tools import WriteStream, create_stream_table, ids_in
from primary import state

BROWSE_SECONDS = 10


def test_browsing_while_writing_fails_nothing(new_cluster):
    cluster = new_cluster(replicas=1)
    data_db = str(cluster.primary.data_db)
    create_stream_table(data_db, "stream")
    conn = state.connect(data_db)
    state.set_public(conn, "stream", True, actor="test")
    conn.close()
    token = _mint_token(cluster.primary.secret, "tester")
    before = cluster.supervisor.pids()
    pages = 0
    with WriteStream(cluster.primary.url, token, "stream") as stream, httpx.Client(
        headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as team:
        wait_until(lambda: len(stream.acked) >= 10, message="writes flowing")
        end = time.monotonic() + BROWSE_SECONDS
        while time.monotonic() < end:
            for path in ("/data", "/data/stream", "/data/airports"):
                page = team.get(f"{cluster.primary.url}{path}")
                assert page.status_code == 200, (path, page.status_code)
                pages += 1
        assert "broadsheet-badge" in team.get(f"{cluster.primary.url}/data").text
    log = (cluster.supervisor.log_dir / "private-litefs.log").read_text()
    assert "fatal error" not in log
    assert cluster.supervisor.pids() == before, "a process was restarted"
    assert stream.ids and stream.ids <= ids_in(data_db, "stream")
    print(f"\n{pages} team pages while {len(stream.ids)} writes were acknowledged")


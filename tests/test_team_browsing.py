"""A team member using the team's Datasette while scripts write to it:
browsing (the database page's public badges, a table's actions) and
flipping tables from the Make public page. data.db stays whole, the private
LiteFS never fails a commit and nothing restarts. (A connection of apsw's
SQLite in the team Datasette's process shares that process's POSIX locks
with Datasette's own connections unknowingly: its writes ran beside the
write API's and corrupted data.db, and closing it dropped the write API's
locks, so LiteFS failed a commit.)"""

from __future__ import annotations

import time

import httpx

from broadsheet.tokens import mint
from conftest import wait_until
from fault_tools import WriteStream, create_stream_table, ids_in
from primary import store

BROWSE_SECONDS = 10


def while_writing(cluster, step) -> tuple[int, int]:
    """``step(team, url, n)`` (a team member's request) over and over for
    BROWSE_SECONDS while a script writes; then nothing may have failed.
    Returns the steps taken and the writes acknowledged."""
    data_db = str(cluster.primary.data_db)
    create_stream_table(data_db, "stream")
    conn = store.connect(data_db)
    store.set_public(conn, "stream", True, actor="test")
    conn.close()
    token = mint(cluster.primary.secret, "tester")
    before = cluster.supervisor.pids()
    steps = 0
    with WriteStream(cluster.primary.url, token, "stream") as stream, httpx.Client(
        headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as team:
        wait_until(lambda: len(stream.acked) >= 10, message="writes flowing")
        end = time.monotonic() + BROWSE_SECONDS
        while time.monotonic() < end:
            step(team, cluster.primary.url, steps)
            steps += 1
    assert "fatal error" not in (cluster.supervisor.log_dir / "private-litefs.log").read_text()
    assert cluster.supervisor.pids() == before, "a process was restarted"
    assert stream.ids and stream.ids <= ids_in(data_db, "stream")
    conn = store.connect(data_db, readonly=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()
    return steps, len(stream.ids)


def test_browsing_while_writing_fails_nothing(new_cluster):
    def browse(team, url, n):
        path = ("/data", "/data/stream", "/data/airports")[n % 3]
        page = team.get(f"{url}{path}")
        assert page.status_code == 200, (path, page.status_code)
        if path == "/data":
            assert "broadsheet-badge" in page.text

    pages, writes = while_writing(new_cluster(replicas=1), browse)
    print(f"\n{pages} team pages while {writes} writes were acknowledged")


def test_flipping_from_the_team_page_while_writing_keeps_data_db_whole(new_cluster):
    def flip(team, url, n):
        operation = "unpublish" if n % 2 == 0 else "publish"
        page = team.post(f"{url}/-/broadsheet/visibility/data/planes", data={"operation": operation})
        assert page.status_code == 200, page.text[-2000:]

    flips, writes = while_writing(new_cluster(replicas=1), flip)
    print(f"\n{flips} flips from the team page while {writes} writes were acknowledged")

"""A read node whose LiteFS stalls (SIGSTOP for 20 s: a frozen VM, a long
pause) keeps answering within a bound: what it keeps in memory for its last
position (which a stalled LiteFS cannot move), else 503 with Retry-After,
its health check failing; requests already running when LiteFS stopped are
let go too. Nothing is restarted, and it serves again by itself once LiteFS
runs, with every write the team made meanwhile."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import httpx
from click.testing import CliRunner

from broadsheet.cli import cli
from broadsheet.tokens import mint
from broadsheet.litefs import Pos
from conftest import wait_until
from fault_tools import WriteStream, create_stream_table

STALL = 20.0
STALL_TIMEOUT = 2.0  # the read node's default (BROADSHEET_STALL_TIMEOUT)
# A request asking while LiteFS is stalled waits at most STALL_TIMEOUT for
# its position read; one already running when LiteFS stopped is let go
# within about 2.5 STALL_TIMEOUT (the watchdog looks every half bound, then
# reads the position). A second of slack for a loaded machine.
BOUND = 3 * STALL_TIMEOUT + 1.0
# Three billion rows: it runs until the node's time limit (1 s) cuts it,
# so it is inside SQLite when LiteFS stops 0.2 s after it was sent.
SLOW = "select count(*) from airports a, airports b, airports c"


def _timed(url: str) -> tuple[str, int, float, dict, str]:
    started = time.monotonic()
    try:
        r = httpx.get(url, timeout=STALL + 30)
    except httpx.HTTPError as exc:
        return url, 0, time.monotonic() - started, {}, repr(exc)
    return url, r.status_code, time.monotonic() - started, dict(r.headers), r.text


def test_a_stalled_litefs_leaves_its_read_node_answering_and_it_recovers(new_cluster):
    cluster = new_cluster(replicas=2)
    node, other = cluster.replicas
    sup = cluster.supervisor
    token = mint(cluster.primary.secret, "tester")
    create_stream_table(cluster.primary.data_db, "stream")
    r = httpx.post(f"{cluster.primary.control_url}/tables/stream/publish",
                   headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    cluster.wait_for_replicas(r.json()["public_txid"], timeout=30)

    health = f"{node.url}/-/replication.json"
    kept = f"{node.url}/public/airports.json?_size=3"
    kept_page = f"{node.url}/public/airports?_size=2"
    assert httpx.get(health).status_code == 200
    first = httpx.get(kept)
    # Nothing is written now: these are kept at the position LiteFS stops at.
    for url in (kept, kept_page, kept, kept_page):
        assert httpx.get(url).status_code == 200
    before = sup.pids()
    litefs = before[node.litefs_service]

    answers: list[tuple[str, int, float, dict, str]] = []
    with ThreadPoolExecutor(8) as pool:
        # A visitor's query inside SQLite when LiteFS stops: it holds public.db
        # through FUSE (its read lock is LiteFS's to release) and cannot end.
        inside = pool.submit(_timed, f"{node.url}/public/-/query.json?sql={quote(SLOW)}")
        time.sleep(0.2)
        os.kill(litefs, signal.SIGSTOP)
        try:
            stopped = time.monotonic()
            # Asked the moment LiteFS stopped: some of these are running
            # (their SQL waiting on the mount) before the node knows.
            running = [pool.submit(_timed, f"{node.url}/public/airports.json?_size=1&tz={n}") for n in range(4)]
            with WriteStream(cluster.primary.url, token, "stream") as streaming:  # the team writes on
                n = 0
                while time.monotonic() < stopped + STALL:
                    n += 1
                    # Every kind of page: kept ones (the position cannot
                    # have moved), cold ones, a row, the database page, a
                    # bookmark, the health check.
                    for url in (kept, kept_page, health, f"{node.url}/public/airports.json?_size=2&n={n}",
                                f"{node.url}/public/airports/JFK.json?n={n}", f"{node.url}/public?n={n}",
                                f"{node.url}/public/airports.json?_txid=1&n={n}"):
                        answers.append(_timed(url))
                    # The other read node is untouched.
                    assert httpx.get(f"{other.url}/public/airports.json?_size=1", timeout=5).status_code == 200
                    if n == 2:
                        failing = CliRunner().invoke(cli, ["healthcheck", health])
                        assert failing.exit_code != 0 and "503" in failing.output, failing.output
                    time.sleep(0.5)
            answers += [f.result(timeout=BOUND) for f in running]
            answers.append(held := inside.result(timeout=BOUND))
        finally:
            os.kill(litefs, signal.SIGCONT)
    resumed = time.monotonic()
    slowest = max(answers, key=lambda a: a[2])
    assert slowest[2] < BOUND, f"a visitor waited {slowest[2]:.1f}s for {slowest[0]} while LiteFS was stopped"
    for url, code, took, headers, text in answers:
        assert code in (200, 304, 503) or url.startswith(f"{node.url}/public/-/query"), (url, code, text[:300])
        if code == 503:
            assert headers.get("retry-after") == "1" and "LiteFS has not answered" in text, (url, text[:300])
    by_url = {}
    for url, code, *_ in answers:
        by_url.setdefault(url, []).append(code)
    # What the node keeps was served all along, byte for byte; the health
    # check failed; pages it never made could not be made.
    assert set(by_url[kept]) == {200} and set(by_url[kept_page]) == {200}
    assert [a for a in answers if a[0] == kept][-1][4] == first.text
    assert 503 in by_url[health]
    # The query LiteFS held was let go, not left hanging for the stall.
    assert held[1] == 503 and held[2] < BOUND + 0.2, held[:3]
    cold = [code for url, code, *_ in answers if "&n=" in url or "?n=" in url]
    assert cold and set(cold) == {503}
    print(f"\nSIGSTOP of {node.litefs_service} for {STALL:g}s: {len(answers)} requests, slowest"
          f" {slowest[2]:.2f}s ({slowest[0].removeprefix(node.url)}), {cold.count(503)} cold ones 503;"
          f" the query inside SQLite when LiteFS stopped: {held[1]} after {held[2]:.2f}s")

    # It recovers by itself: the health check passes, pages are made
    # again, and every write made meanwhile arrives.
    wait_until(lambda: httpx.get(health, timeout=5).status_code == 200, timeout=15, message="the health check passing")
    recovered = time.monotonic() - resumed
    assert httpx.get(f"{node.url}/public/airports.json?_size=2&after=1", timeout=5).status_code == 200
    assert CliRunner().invoke(cli, ["healthcheck", health]).exit_code == 0
    assert streaming.acked, "no team write was acknowledged during the stall"
    wait_until(lambda: Pos.read(node.public_db).txid >= Pos.read(cluster.primary.public_db).txid, timeout=30,
               message="the read node caught up")
    rows = httpx.get(f"{node.url}/public/stream.json", params={"_shape": "array", "_size": "max"}, timeout=10).json()
    assert streaming.ids <= {row["id"] for row in rows}
    assert sup.pids() == before, "a stall is not a crash: nothing is restarted"
    print(f"serving again {recovered:.2f}s after SIGCONT, with {len(streaming.acked)} writes made during the stall")

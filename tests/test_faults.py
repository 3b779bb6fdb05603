"""Surviving faults: read nodes and the primary going away and coming back,
and every kind of process crashing or stalling under a stream of team writes.

The crash and stall tests share one cluster (each leaves it whole again, which
is what they assert); they run in a few seconds each.
"""

import os
import signal
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from broadsheet.tokens import mint
from local.cluster import LocalCluster, free_port
from broadsheet.litefs import Pos, is_mounted
from broadsheet.supervisor import processes_of
from conftest import count, rows, status, wait_until
from primary import store
from fault_tools import WriteStream, argv, create_stream_table, ids_in, kill_everything, started_in

TABLE = "stream"
# How long a node may take to serve again after one of its processes died,
# and every public.db copy to hold every acknowledged write (measured: 1-6 s).
RECOVERY = 20.0
CONVERGENCE = 20.0


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
    conn = store.connect(str(cluster.primary.data_db))
    with store.immediate(conn):
        conn.execute("INSERT INTO airports (faa, name) VALUES ('CUP', 'Caught Up Field')")
    conn.close()

    sup.start(sup._services["public-litefs"])
    sup.start(sup._services["publisher"])
    wait_until(lambda: rows(node.url, "airports", faa="CUP"), timeout=30, message="read node caught up")
    assert Pos.read(node.public_db).txid == Pos.read(cluster.primary.public_db).txid


@pytest.fixture(scope="module")
def healing(tmp_path_factory):
    """A primary and two read nodes, with a published table the write streams
    fill. Shared by the crash and stall tests: each leaves it whole again."""
    cluster = LocalCluster(tmp_path_factory.mktemp("healing"), replicas=2, compress=False, sample=False)
    try:
        cluster.start()
        create_stream_table(cluster.primary.data_db, TABLE)
        conn = store.connect(str(cluster.primary.data_db))
        store.set_public(conn, TABLE, True, actor="test")
        conn.close()
        for node in cluster.replicas:
            wait_until(lambda: status(node.url, f"/public/{TABLE}.json") == 200, message=f"{TABLE} on {node.name}")
        yield cluster, mint(cluster.primary.secret, "tester")
    finally:
        cluster.stop()


def _next_id(cluster) -> int:
    return max(ids_in(cluster.primary.data_db, TABLE), default=0) + 1


def _copies(cluster):
    """Every public.db: the primary's and each read node's."""
    return [cluster.primary.public_db, *(node.public_db for node in cluster.replicas)]


def _assert_nothing_lost_and_converged(cluster, stream: WriteStream) -> None:
    acked = stream.ids
    assert acked, "no write was acknowledged"
    assert acked <= ids_in(cluster.primary.data_db, TABLE), "an acknowledged write is missing from data.db"

    def converged():
        positions = {Pos.read(db) for db in _copies(cluster)}
        return len(positions) == 1 and all(acked <= ids_in(db, TABLE) for db in _copies(cluster))

    wait_until(converged, timeout=CONVERGENCE, message="every public.db copy at one position with every acknowledged write")
    for db in _copies(cluster):
        check = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok", db
        check.close()


def _serving(cluster, stream: WriteStream, since: float) -> bool:
    """The whole cluster serves: a write acknowledged after ``since`` is on
    every read node's Datasette, and the team's Datasette and the control
    plane answer."""
    written = stream.acked_after(since)
    return (
        written is not None
        and all(rows(node.url, TABLE, id=written) for node in cluster.replicas)
        and status(cluster.primary.url, "/-/login") == 200
        and status(cluster.primary.control_url, "/health") == 200
    )


def _janitors(cluster, mount) -> list[int]:
    """The LiteFS pid each janitor watching ``mount`` waits for."""
    # python -m broadsheet.janitor SUPERVISOR_PID LITEFS_PID MOUNT
    return [int(argv(pid)[-2]) for pid in started_in(cluster.root, "broadsheet.janitor") if argv(pid)[-1] == str(mount)]


KILLED = [
    "private-litefs",
    "public-litefs",
    "replica-1-litefs",
    "publisher",
    "primary-datasette",
    "replica-1-datasette",
    "control-plane",
]


@pytest.mark.parametrize("service", KILLED)
def test_killed_process_is_restarted_with_what_uses_it_and_nothing_is_lost(healing, service):
    """Invariant 5, per kind of process: kill -9 in the middle of a stream of
    team writes; the supervisor restarts it, and after it what used it (a
    LiteFS's dead mount is unmounted first), the cluster serves again within
    seconds, no acknowledged write is lost and every public.db copy
    converges."""
    cluster, token = healing
    sup = cluster.supervisor
    before = sup.pids()
    restarted = {service, *sup.dependents(service)}
    with WriteStream(cluster.primary.url, token, TABLE, first_id=_next_id(cluster)) as stream:
        wait_until(lambda: len(stream.acked) >= 10, message="writes flowing")
        killed_at = time.monotonic()
        sup.crash(service)
        wait_until(
            lambda: all(sup.running(n) and sup.pid(n) != before[n] for n in restarted),
            timeout=RECOVERY, message=f"{sorted(restarted)} restarted",
        )
        wait_until(lambda: _serving(cluster, stream, killed_at), timeout=RECOVERY, message="the cluster serving again")
        recovered = time.monotonic() - killed_at
        wait_until(lambda: stream.acked_after(time.monotonic() - 0.5), message="writes still flowing")
    print(f"\nkill -9 {service}: restarted {sorted(restarted)}, serving again after {recovered:.1f}s")

    # Exactly it and what uses it were restarted.
    assert {n for n, pid in sup.pids().items() if pid != before[n]} == restarted
    assert set(sup.pids()) == set(before)
    mount = sup._services[service].mount
    if mount is not None:
        assert is_mounted(mount)
        # The dead LiteFS's janitor left, without touching the new mount.
        wait_until(lambda: _janitors(cluster, mount) == [sup.pid(service)], timeout=5, message="one janitor, for the new LiteFS")
    _assert_nothing_lost_and_converged(cluster, stream)


# For each LiteFS: a request that has to wait for it, and one that must not.
STALLED = {
    "private-litefs": (lambda c: f"{c.primary.url}/data/{TABLE}.json?_size=1", lambda c: f"{c.replicas[0].url}/public/{TABLE}.json?_size=1"),
    "public-litefs": (lambda c: f"{c.primary.control_url}/health", lambda c: f"{c.replicas[0].url}/public/{TABLE}.json?_size=1"),
}
# (A read node's own LiteFS stalling is tests/test_stall.py's: its visitors
# are answered within a bound rather than queued.)
STALL = 3.0


def _timed_get(url: str, headers: dict) -> tuple[int, float]:
    response = httpx.get(url, headers=headers, timeout=STALL + 30)
    return response.status_code, time.monotonic()


@pytest.mark.parametrize("service", list(STALLED))
def test_stalled_litefs_is_waited_for_not_restarted(healing, service):
    """A LiteFS that stops answering for a while (SIGSTOP: a long GC pause, a
    frozen VM) is not a crash: requests that need it queue, everything else
    keeps answering, and once it runs again the queue drains, nothing is
    restarted and nothing is lost."""
    cluster, token = healing
    sup = cluster.supervisor
    waits, other = (url(cluster) for url in STALLED[service])
    # The team's token for the team's Datasette; visitors come without one.
    headers = {"Authorization": f"Bearer {token}"} if waits.startswith(cluster.primary.url) else {}
    before = sup.pids()
    with WriteStream(cluster.primary.url, token, TABLE, first_id=_next_id(cluster)) as stream, \
            ThreadPoolExecutor(8) as pool:
        wait_until(lambda: len(stream.acked) >= 10, message="writes flowing")
        os.kill(before[service], signal.SIGSTOP)
        try:
            stalled_at = time.monotonic()
            queued = [pool.submit(_timed_get, waits, headers) for _ in range(8)]
            while time.monotonic() < stalled_at + STALL:
                # A read node answers at once: at its last signed position,
                # or, when public.db's LiteFS stopped between a commit and
                # its signature, with the 503 that says so (security.md).
                r = httpx.get(other, timeout=2)
                assert r.status_code == 200 or (r.status_code == 503 and "Unverified" in r.text), r.text
                time.sleep(0.2)
        finally:
            os.kill(before[service], signal.SIGCONT)
        resumed = time.monotonic()
        answers = [f.result(timeout=15) for f in queued]
        wait_until(lambda: stream.acked_after(time.monotonic() - 0.5), message="writes flowing after the stall")
    assert [code for code, _ in answers] == [200] * len(answers)
    waited = [at for _, at in answers if at > resumed]
    assert waited, "no request waited for the stopped LiteFS"
    print(f"\nSIGSTOP {service} for {STALL:g}s: {len(waited)} of {len(answers)} requests waited for it,"
          f" answered within {max(waited) - resumed:.2f}s of SIGCONT")
    assert sup.pids() == before
    _assert_nothing_lost_and_converged(cluster, stream)


@pytest.mark.cluster  # starts LiteFS itself
def test_primary_role_heals_litefs_and_starts_over_what_a_crashed_one_left(tmp_path):
    """`broadsheet primary` (what the container runs, under tini) heals as the
    local cluster does: its LiteFS killed, it is back with the processes that
    use it. Its supervisor killed at a bad moment (the publisher stalled,
    the janitors gone), the next `broadsheet primary` on the same root stops
    the leftovers and comes up with the team's data."""
    from test_roles import run_role, stop

    root = (tmp_path / "primary").resolve()
    team, control = free_port(), free_port()
    env = {
        "DATASETTE_SECRET": "s" * 64,
        "BROADSHEET_TEAM_PASSWORD": "correct horse",
        "BROADSHEET_ROOT": str(root),
        "BROADSHEET_PORT": str(team),
        "BROADSHEET_CONTROL_PORT": str(control),
        "BROADSHEET_PRIVATE_LITEFS_PORT": str(free_port()),
        "BROADSHEET_PUBLIC_LITEFS_ADDR": f"127.0.0.1:{free_port()}",
    }
    team_url, data_db = f"http://127.0.0.1:{team}", root / "private" / "mnt" / "data.db"

    def up():
        return status(team_url, "/-/login") == 200 and status(f"http://127.0.0.1:{control}", "/health") == 200

    first = run_role("primary", env, tmp_path / "primary.log")
    second = None
    try:
        wait_until(up, timeout=60, message="primary up")
        create_stream_table(data_db, TABLE)
        token = mint(env["DATASETTE_SECRET"], "tester")
        with WriteStream(team_url, token, TABLE) as stream:
            wait_until(lambda: len(stream.acked) >= 10, message="writes flowing")
            litefs = f"LITEFS_DIR={root}/private/mnt"
            [private] = started_in(root, litefs)
            killed_at = time.monotonic()
            os.kill(private, signal.SIGKILL)
            wait_until(lambda: started_in(root, litefs) not in ([], [private]) and up(), timeout=RECOVERY,
                       message="a new private LiteFS, the primary serving")
            back = time.monotonic()
            wait_until(lambda: stream.acked_after(back), timeout=RECOVERY, message="writes after the LiteFS crash")
            print(f"\nbroadsheet primary: kill -9 of its private LiteFS, writing again after {time.monotonic() - killed_at:.1f}s")

            left = processes_of(root)
            for pid in started_in(root, "broadsheet.janitor"):
                os.kill(pid, signal.SIGKILL)
            [publisher] = started_in(root, "run-publisher")
            os.kill(publisher, signal.SIGSTOP)
            first.kill()
            first.wait()
            crashed_at = time.monotonic()
            assert publisher in processes_of(root)
            second = run_role("primary", env, tmp_path / "primary-again.log")
            wait_until(up, timeout=60, message="primary up again")
            assert not set(left) & set(processes_of(root)), "the crashed primary's processes are still there"
            assert len(started_in(root, "run-publisher")) == 1
            wait_until(lambda: stream.acked_after(time.monotonic() - 0.5), timeout=RECOVERY, message="writes again")
            print(f"broadsheet primary again after kill -9 of the last one: serving after {time.monotonic() - crashed_at:.1f}s")
        assert stream.ids <= ids_in(data_db, TABLE)
        assert stop(second) == 0
    finally:
        for proc in (first, second):
            if proc is not None:
                stop(proc)
        kill_everything(root)
    assert processes_of(root) == []


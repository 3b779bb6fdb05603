"""Fixtures: real LiteFS mounts, real Datasette processes, real HTTP.

One cluster (primary + 2 read nodes) is shared by the tests that only read and
write data; tests that stop or crash processes start their own. Every cluster
is stopped, and every mount unmounted, even when a test fails.

Two layers: every test that starts LiteFS (through a fixture of
CLUSTER_FIXTURES, or by itself: those carry ``@pytest.mark.cluster``) is
marked ``cluster``; the rest is the fast layer (tests/inprocess.py: the
control plane and the team's Datasette in-process, the publisher on plain
files), which ``scripts/test --fast`` runs alone (``-m "not cluster"``). In
a fast run (BROADSHEET_FAST_TESTS set), starting LiteFS fails the test at
once, so a test that needs it and is not marked cannot hide there.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import pytest
import sqlite_utils

from broadsheet.litefs import unmount
from local.cluster import LocalCluster
from primary import store
from primary.publisher import Watermark

# Fixtures that start LiteFS (a local cluster, a role's processes) or
# containers. A test that uses one, directly or through another fixture, is
# marked ``cluster`` (pytest_collection_modifyitems).
CLUSTER_FIXTURES = frozenset({
    "cluster",  # here, and test_promote.py's own
    "new_cluster",
    "healing",  # test_faults.py
    "flips",  # test_flip_paths.py
    "mapped",  # test_read_node_plugins.py
    "compose",  # deploy/: Docker Compose
})

FAST = "BROADSHEET_FAST_TESTS"  # set by scripts/test --fast


def pytest_collection_modifyitems(config, items):
    for item in items:
        if CLUSTER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


def no_litefs_in_a_fast_run(what: str) -> None:
    if os.environ.get(FAST):
        pytest.fail(
            f"{what} starts LiteFS, in a fast run ({FAST} is set, -m 'not cluster'):"
            " mark the test @pytest.mark.cluster, or use a fixture of conftest.CLUSTER_FIXTURES",
            pytrace=False,
        )


class MountWatch:
    """Every mount under the session's temporary directory seen while a test
    runs (read from /proc/mounts every 20 ms): in a fast run, any is a LiteFS
    a test started, even through a child process whose environment the test
    chose (test_roles.run_role)."""

    def __init__(self, base: str):
        self.base, self.seen = base, set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _mounts(self) -> set[str]:
        with open("/proc/mounts") as fp:
            return {line.split()[1] for line in fp if line.split()[1].startswith(self.base)}

    def _watch(self) -> None:
        while not self.stop.wait(0.02):
            self.seen |= self._mounts()

    def take(self) -> set[str]:
        seen, self.seen = self.seen | self._mounts(), set()
        return seen


@pytest.fixture(scope="session")
def _mount_watch(tmp_path_factory):
    watch = MountWatch(str(tmp_path_factory.getbasetemp()))
    yield watch
    watch.stop.set()


@pytest.fixture(autouse=True)
def _fast_runs_start_no_litefs(request, monkeypatch, tmp_path_factory):
    """In a fast run, a LocalCluster started here, or LiteFS started by a
    child process (``broadsheet up``, a role), fails the test loudly."""
    if not os.environ.get(FAST):
        yield
        return
    original = LocalCluster.start

    def start(self):
        no_litefs_in_a_fast_run("LocalCluster.start")
        return original(self)

    monkeypatch.setattr(LocalCluster, "start", start)
    refuse = tmp_path_factory.getbasetemp() / "litefs-refused-in-a-fast-run"
    if not refuse.exists():
        refuse.write_text(
            "#!/bin/sh\necho 'LiteFS started in a fast run (BROADSHEET_FAST_TESTS): mark the test cluster' >&2\nexit 97\n"
        )
        refuse.chmod(0o755)
    monkeypatch.setenv("BROADSHEET_LITEFS", str(refuse))
    watch = request.getfixturevalue("_mount_watch")
    watch.take()
    yield
    if mounted := watch.take():
        no_litefs_in_a_fast_run(f"this test (it mounted {sorted(mounted)[0]})")


# The container tests need an engine and a built image; scripts/test-containers
# provides both and runs them (after the suite, in .ci/run).
if not os.environ.get("BROADSHEET_CONTAINER_TESTS"):
    collect_ignore = ["deploy"]


def primary_services(primary) -> list[str]:
    """The names of every process a primary node runs (its LiteFS mounts,
    their gates, the publisher, the team's Datasette, the control plane),
    in the order they stop in: what a test stops to take the primary away."""
    return [s.name for s in reversed([*primary.litefs_services(), *primary.app_services()])]


def wait_until(condition, timeout: float = 10.0, message: str = "condition"):
    """Poll ``condition`` until it returns a truthy value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # not there yet (connection refused, …)
            last_error = exc
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}" + (f": {last_error!r}" if last_error else ""))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    no_litefs_in_a_fast_run("the cluster fixture")
    # LTX compression off so that privacy tests can scan every byte as stored.
    # First copies in one transaction (no staging: tests/test_publish_staging.py
    # and test_slow_link.py have it), so tests can measure one publish's LTX.
    c = LocalCluster(tmp_path_factory.mktemp("cluster"), replicas=2, compress=False,
                     primary_env={"BROADSHEET_PUBLISH_BATCH_BYTES": "0"})
    c.start()
    yield c
    c.stop()


@pytest.fixture
def new_cluster(tmp_path):
    """A cluster of the test's own, for tests that stop or crash its processes."""
    clusters = []

    def make(**kwargs):
        no_litefs_in_a_fast_run("the new_cluster fixture")
        kwargs.setdefault("compress", False)
        c = LocalCluster(tmp_path / f"cluster{len(clusters)}", **kwargs)
        clusters.append(c)
        c.start()
        return c

    yield make
    for c in clusters:
        c.stop()


@pytest.fixture
def s3_server(tmp_path):
    """A real S3-compatible server (versitygw) on 127.0.0.1 with one bucket,
    stopped after the test (tests/s3server.py)."""
    from s3server import S3Server

    server = S3Server(tmp_path / "s3")
    server.start()
    try:
        server.store().ensure_bucket()
        yield server
    finally:
        server.stop()


@pytest.fixture
def usr1():
    """``broadsheet promote --dir`` signals the process that runs the local
    cluster (SIGUSR1), which is the test's own when it runs the cluster in
    process: caught, as ``broadsheet up`` catches it; the test then does
    what ``up`` does on it (``LocalCluster.promote_standby``)."""
    import signal

    received = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: received.append(True))
    yield received
    signal.signal(signal.SIGUSR1, previous)


@pytest.fixture(scope="session", autouse=True)
def no_leftover_mounts(tmp_path_factory):
    """After the session, nothing of ours may stay mounted."""
    yield
    base = str(tmp_path_factory.getbasetemp())
    with open("/proc/mounts") as fp:
        left = [line.split()[1] for line in fp if line.split()[1].startswith(base)]
    for mount in left:
        unmount(mount)
    assert not left, f"mounts left behind: {left}"


@pytest.fixture
def db(cluster):
    """A write connection to the cluster's private data.db."""
    conn = store.connect(str(cluster.primary.data_db))
    yield conn
    conn.close()


def rows(node_url: str, table: str, **params) -> list[dict]:
    response = httpx.get(f"{node_url}/public/{table}.json", params={"_shape": "objects", **params}, timeout=5)
    response.raise_for_status()
    return response.json()["rows"]


def count(node_url: str, table: str) -> int:
    response = httpx.get(f"{node_url}/public/{table}.json", params={"_size": 0, "_extra": "count"}, timeout=5)
    response.raise_for_status()
    return response.json()["count"]


def status(node_url: str, path: str) -> int:
    return httpx.get(f"{node_url}{path}", timeout=5).status_code


def settle(cluster, timeout: float = 10.0) -> None:
    """Wait until the publisher has caught up with data.db (its watermark has
    reached data.db's TXID), so that nothing is still on its way."""
    from broadsheet.litefs import Pos

    def caught_up():
        mark = Watermark.read(cluster.primary.watermark_file)
        return mark is not None and mark.private_txid >= Pos.read(cluster.primary.data_db).txid

    wait_until(caught_up, timeout=timeout, message="the publisher caught up")


def team_db(cluster) -> sqlite_utils.Database:
    """data.db as a team member's script opens it (with sqlite-utils)."""
    db = sqlite_utils.Database(cluster.primary.data_db)
    # The publisher writes its bookkeeping to data.db too: wait for it.
    db.execute("PRAGMA busy_timeout = 10000")
    return db


def create_table(cluster, name: str, rows_: list[dict], pk: str = "id") -> None:
    """Create a table in data.db the way a team member's script would."""
    db = team_db(cluster)
    # Take the write lock up front: a deferred transaction that reads the
    # schema first fails at once (no busy wait) if the publisher commits in
    # between.
    db.execute("BEGIN IMMEDIATE")
    db[name].insert_all(rows_, pk=pk)
    db.conn.commit()
    db.close()


def file_bytes(root: Path):
    """Every regular file under ``root`` with its bytes."""
    for dirpath, _, files in os.walk(root):
        for f in files:
            path = Path(dirpath) / f
            try:
                yield path, path.read_bytes()
            except OSError:
                continue


@pytest.fixture(scope="session")
def token(cluster):
    """A team token, minted with the cluster's secret as `broadsheet create-token` does."""
    from broadsheet.tokens import mint

    return mint(cluster.primary.secret, "tester")


@pytest.fixture(scope="session")
def control(cluster, token):
    from broadsheet.client import ControlClient

    return ControlClient(cluster.primary.control_url, token)


def read_only_rows(path, sql: str) -> list:
    """The rows ``sql`` returns from the SQLite file at ``path``, opened read-only."""
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()

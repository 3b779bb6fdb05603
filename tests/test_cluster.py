"""Bringing a cluster up and down."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from broadsheet.tokens import mint
from broadsheet.cluster_file import load_state
from broadsheet.supervisor import processes_of
from conftest import rows, status, wait_until
from primary import store
from fault_tools import WriteStream, create_stream_table, ids_in, kill_everything, started_in


def test_every_read_node_answers_versions(cluster):
    for node in cluster.replicas:
        response = httpx.get(f"{node.url}/-/versions.json", timeout=5)
        assert response.status_code == 200
        assert response.json()["datasette"]["version"] == "1.0a41"


def test_sample_public_table_is_served_and_private_one_is_not(cluster):
    for node in cluster.replicas:
        assert len(rows(node.url, "airports", _size=5)) == 5
        assert status(node.url, "/public/planes.json") == 403
        assert status(node.url, "/public/planes") == 403
    # The team's own Datasette is closed to anonymous visitors.
    assert status(cluster.primary.url, "/data/planes.json") == 401


def test_private_litefs_listens_on_loopback_and_no_read_node_joins_it(cluster):
    assert cluster.primary.private.http_addr.startswith("127.0.0.1:")
    for node in cluster.replicas:
        # Its LiteFS streams through its own gate, on loopback, which goes
        # to the primary's public gate, never to data.db's LiteFS.
        assert node.litefs.primary_url == node.gate_url and node.gate_url.startswith("http://127.0.0.1:")
        assert node.primary_public_url == cluster.primary.public.primary_url
        assert node.primary_public_url not in (cluster.primary.private.url, cluster.primary.private.primary_url)
        assert not node.litefs.candidate
        # Only public.db, and releases.db beside it (signed releases: no
        # table data), exist on a read node's mount.
        dbs = {p.name for p in node.root.joinpath("mnt").iterdir() if not p.name.startswith(".")}
        allowed = {f"{db}{suffix}" for db in ("public.db", "releases.db") for suffix in ("", "-pos", "-shm", "-wal")}
        assert dbs <= allowed, dbs


def _ours(root):
    with open("/proc/mounts") as fp:
        mounts = [line.split()[1] for line in fp if line.split()[1].startswith(str(root))]
    procs = subprocess.run(["pgrep", "-f", str(root)], capture_output=True, text=True).stdout.split()
    return mounts, procs


@pytest.mark.cluster  # starts LiteFS itself
def test_up_prints_urls_and_ctrl_c_stops_everything(tmp_path):
    root = tmp_path / "up"
    proc = _up(root, 19301)
    try:
        text = _wait_up(proc)
        assert "broadsheet is up" in text, text[-3000:]
        info = load_state(root)
        replica_url = info["replicas"][0]["datasette"]
        assert replica_url in text
        assert httpx.get(f"{replica_url}/public/airports.json", timeout=5).status_code == 200
        assert all(_ours(root))

        # The CLI finds this cluster through --dir.
        def bs(*args):
            done = subprocess.run([sys.executable, "-m", "broadsheet.cli", *args, "--dir", str(root)],
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            return done.stdout

        tables = {t["table"]: t for t in json.loads(bs("tables", "--json"))}
        assert tables["airports"]["public"] and not tables["planes"]["public"]
        assert tables["planes"]["rows"] == 3322
        published = bs("publish", "planes", "--watch")
        assert "planes is now public" in published and "replica-1 ✓" in published
        assert httpx.get(f"{replica_url}/public/planes.json", timeout=5).status_code == 200
        shown = bs("status")
        primary_txid = re.search(r"^primary\s+public.db txid (\d+)", shown, re.M).group(1)
        assert re.search(rf"^replica-1\s+public.db txid {primary_txid}\s+behind 0 .* connected", shown, re.M), shown
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(60)
        assert proc.returncode == 0
        wait_until(lambda: _ours(root) == ([], []), timeout=10, message="nothing left")
        assert not (root / "cluster.json").exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.cluster  # starts LiteFS itself
def test_killed_supervisor_takes_its_processes_with_it(tmp_path):
    """Even a supervisor killed with SIGKILL leaves no process and no mount
    behind."""
    root = tmp_path / "crash"
    proc = subprocess.Popen(
        [sys.executable, "-m", "broadsheet.cli", "up", "--dir", str(root), "--replicas", "1", "--port", "19401"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(lambda: (root / "cluster.json").exists(), timeout=120, message="cluster up")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # Each janitor gives LiteFS 15 s to unmount itself before it kills it
        # and unmounts; servers with open streams take a while to stop.
        wait_until(lambda: _ours(root) == ([], []), timeout=60, message="children and mounts gone")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        kill_everything(root)
    assert _ours(root) == ([], [])


def _up(root, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "broadsheet.cli", "up", "--dir", str(root), "--replicas", "1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _wait_up(proc: subprocess.Popen, timeout: float = 120, keep: list[str] | None = None) -> str:
    """What `up` printed until it was up; the rest of its output is read from
    then on (into ``keep``, else dropped), so that a full pipe never blocks it."""
    output = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        output.append(line)
        if "Ctrl-C stops" in line:
            rest = proc.stdout.read if keep is None else (lambda: keep.extend(iter(proc.stdout.readline, "")))
            threading.Thread(target=rest, daemon=True).start()
            return "".join(output)
    raise AssertionError("`up` did not come up:\n" + "".join(output)[-3000:])


@pytest.mark.cluster  # starts LiteFS itself
def test_up_again_after_a_crashed_up_clears_what_it_left(tmp_path):
    """kill -9 of `broadsheet up` at a bad moment (a read node's LiteFS
    stalled, so the SIGTERM the kernel sends cannot end it; the janitors
    gone too), in the middle of a stream of team writes: `up` again on the
    same directory stops the leftovers, unmounts what they left and comes up
    with every acknowledged write. While an `up` runs, another on its
    directory refuses, naming it."""
    root = (tmp_path / "again").resolve()
    first = _up(root, 19501)
    again = None
    try:
        _wait_up(first)
        info = load_state(root)
        refused = subprocess.run(
            [sys.executable, "-m", "broadsheet.cli", "up", "--dir", str(root), "--port", "19601"],
            capture_output=True, text=True, timeout=60,
        )
        assert refused.returncode != 0
        assert f"in use by a running broadsheet (pid {first.pid})" in refused.stderr, refused.stderr
        assert load_state(root) == info  # the running one is untouched

        data_db = info["primary"]["data_db"]
        create_stream_table(data_db, "stream")
        conn = store.connect(data_db)
        store.set_public(conn, "stream", True, actor="test")
        conn.close()
        token = mint(open(info["primary"]["secret_file"]).read().strip(), "tester")
        with WriteStream(info["primary"]["datasette"], token, "stream") as stream:
            wait_until(lambda: len(stream.acked) >= 10, message="writes flowing")
            left = processes_of(root)
            [stalled] = started_in(root, f"LITEFS_DIR={root}/replica-1/mnt")
            for pid in started_in(root, "broadsheet.janitor"):
                os.kill(pid, signal.SIGKILL)
            os.kill(stalled, signal.SIGSTOP)
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
            crashed_at = time.monotonic()
            assert stalled in processes_of(root)

            again = _up(root, 19501)
            _wait_up(again)
            back = time.monotonic() - crashed_at
            assert not set(left) & set(processes_of(root)), "the crashed up's processes are still there"
            wait_until(lambda: stream.acked_after(time.monotonic() - 0.5), timeout=30, message="writes flowing again")
        print(f"\nup again after kill -9 of up: serving after {back:.1f}s")
        info = load_state(root)
        assert info["pid"] == again.pid
        replica = info["replicas"][0]
        assert httpx.get(f"{replica['datasette']}/public/airports.json", timeout=5).status_code == 200
        acked = stream.ids
        assert acked <= ids_in(data_db, "stream")
        wait_until(lambda: acked <= ids_in(replica["public_db"], "stream"), timeout=20,
                   message="every acknowledged write on the read node")

        os.killpg(again.pid, signal.SIGINT)
        again.wait(60)
        assert again.returncode == 0
        wait_until(lambda: _ours(root)[0] == [] and processes_of(root) == [], timeout=10, message="nothing left")
    finally:
        for proc in (first, again):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        kill_everything(root)


# The figure: `broadsheet up`, left idle this long (the control plane
# still polls every read node every few seconds), prints no line per request.
IDLE_SECONDS = 30
ACCESS_LINE = re.compile(r'"(GET|HEAD|POST|PUT|DELETE) \S+ HTTP/[\d.]+" \d{3}')


@pytest.mark.cluster  # starts LiteFS itself
def test_up_prints_lifecycle_lines_not_a_line_per_request(tmp_path):
    root = tmp_path / "quiet"
    proc = _up(root, 19701)
    printed: list[str] = []
    try:
        banner = _wait_up(proc, keep=printed)
        info = load_state(root)
        replica_log = root / "logs" / "replica-1-datasette.log"
        logged_before = replica_log.read_text()
        # A visitor, then nobody: only the control plane's health polls.
        assert httpx.get(f"{info['replicas'][0]['datasette']}/public/airports.json", timeout=5).status_code == 200
        time.sleep(IDLE_SECONDS)
        idle_output = "".join(printed)
        logged = replica_log.read_text()[len(logged_before):]
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # The requests happened and are in the log files…
    assert "GET /public/airports.json" in logged
    assert len(re.findall(r"GET /-/replication.json", logged)) >= IDLE_SECONDS // 10, logged
    # …but the terminal showed none of them, at start-up nor while idle.
    assert not ACCESS_LINE.search(banner), banner
    assert idle_output.strip() == "", idle_output
    # What it does show: each process starting and stopping.
    assert "supervisor             | started replica-1-datasette" in banner
    wait_until(lambda: "every mount unmounted" in "".join(printed), message="`up` said it stopped")
    stopped = "".join(printed)
    assert "stopped replica-1-datasette" in stopped and "stopped private-litefs" in stopped
    assert not ACCESS_LINE.search(stopped), stopped


def test_errors_and_warnings_reach_the_terminal_of_a_quiet_up():
    from broadsheet.supervisor import is_chatter

    assert is_chatter('INFO:     127.0.0.1:5 - "GET /-/replication.json HTTP/1.1" 200 OK')
    assert is_chatter('level=INFO msg="stream connected (127.0.0.1:46532)"')
    assert is_chatter("publisher: cycle: data.db txid 54 -> public.db txid 3 (10.5 ms)")
    for line in (
        "ERROR:    Exception in ASGI application",
        "Traceback (most recent call last):",
        'level=WARN msg="cannot connect to primary"',
        "panic: runtime error: invalid memory address",
        "publisher: publish cycle failed (attempt 1):",
        "publisher: 'notes' was re-created or rebuilt under its name; it is private until published again",
    ):
        assert not is_chatter(line), line


@pytest.mark.cluster  # starts LiteFS itself
def test_up_with_a_standby_makes_it_the_primary_on_promote_dir(tmp_path):
    """`broadsheet up --standby`, then `broadsheet promote --dir` from another
    terminal: the running `up` makes the standby the primary on the same
    addresses (SIGUSR1), with the write acknowledged on the standby."""
    root = tmp_path / "promoted"
    proc = subprocess.Popen(
        [sys.executable, "-m", "broadsheet.cli", "up", "--dir", str(root), "--replicas", "1", "--port", "19501",
         "--no-sample", "--standby"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    later: list[str] = []
    try:
        text = _wait_up(proc, keep=later)
        assert "standby (private)" in text, text[-3000:]
        info = load_state(root)
        assert info["standby"]["root"] == str(root / "standby")
        team = info["primary"]["datasette"]
        headers = {"Authorization": f"Bearer {mint(open(info['primary']['secret_file']).read().strip(), 'tester')}"}
        r = httpx.post(f"{team}/data/-/create", headers=headers, json={"table": "t", "pk": "id", "rows": [{"id": 1}]})
        assert r.status_code == 201, r.text
        r = httpx.post(f"{team}/data/t/-/insert", headers={**headers, "Broadsheet-Wait": "standby"},
                       json={"row": {"id": 2}}, timeout=30)
        assert r.status_code == 201, r.text

        # The primary still runs: --force (promote says so without it).
        refused = subprocess.run([sys.executable, "-m", "broadsheet.cli", "promote", "--dir", str(root)],
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1 and "must not start as a second primary" in refused.stderr, refused.stderr
        done = subprocess.run([sys.executable, "-m", "broadsheet.cli", "promote", "--dir", str(root), "--force"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "is in it" in done.stdout and f"told the running cluster (pid {proc.pid})" in done.stdout, done.stdout
        wait_until(lambda: "the standby is the primary now" in "".join(later), timeout=120, message="up promoting")
        assert load_state(root)["primary"]["root"] == str(root / "standby")
        health = wait_until(lambda: httpx.get(f"{info['primary']['control']}/health").json(), timeout=60,
                            message="the promoted control plane on the primary's port")
        assert health["epoch"] == 2
        rows_ = httpx.get(f"{team}/data/t.json?_shape=array", headers=headers).json()
        assert [row["id"] for row in rows_] == [1, 2]
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(60)
        assert proc.returncode == 0
        wait_until(lambda: _ours(root) == ([], []), timeout=10, message="nothing left")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        kill_everything(root)

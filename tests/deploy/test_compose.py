"""The deployment, for real: docker-compose.yml with the built image, each node
its own container reaching the others only over the compose network.

Run by ``scripts/test-containers`` (which installs the engine, builds the
image and sets BROADSHEET_CONTAINER_TESTS=1); not part of the quick suite.
The tests run in file order against one compose project and build on each
other (scale to 3, then stop the primary). The project comes down with its
volumes afterwards, pass or fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]
DOCKER = os.environ.get("DOCKER", "docker")
COMPOSE = os.environ.get("COMPOSE", "docker-compose").split()
IMAGE = os.environ.get("BROADSHEET_IMAGE", "broadsheet:latest")
PRIVATE_SENTINEL = "PRIVATE-SENTINEL-c0ntainer-7f3a"
PUBLIC_MARKER = "PUBLIC-MARKER-c0ntainer-2b9e"


def free_port() -> int:
    from local.cluster import free_port as free

    return free()


class Compose:
    """One compose project of docker-compose.yml, in a directory of its own
    (with its own broadsheet.env), on free host ports."""

    def __init__(self, workdir: Path):
        self.project = f"bstest{uuid.uuid4().hex[:8]}"
        self.workdir = workdir
        shutil.copy(ROOT / "docker-compose.yml", workdir / "docker-compose.yml")
        self.secret = uuid.uuid4().hex + uuid.uuid4().hex
        (workdir / "broadsheet.env").write_text(
            f"DATASETTE_SECRET={self.secret}\nBROADSHEET_TEAM_PASSWORD=container-test\n"
        )
        self.replication_key = uuid.uuid4().hex
        (workdir / "replication.env").write_text(f"BROADSHEET_REPLICATION_KEY={self.replication_key}\n")
        self.team_port = free_port()
        self.control_port = free_port()
        self.env = {
            **os.environ,
            "BROADSHEET_IMAGE": IMAGE,
            "BROADSHEET_HOST_TEAM_PORT": str(self.team_port),
            "BROADSHEET_HOST_CONTROL_PORT": str(self.control_port),
            # The sample tables: airports is public from the start.
            "BROADSHEET_SAMPLE": "true",
            # Raw LTX files, so that the byte scan below sees every page.
            "BROADSHEET_LTX_COMPRESS": "false",
        }

    def __call__(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [*COMPOSE, "-p", self.project, *args],
            cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done

    def docker(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done

    def containers(self, service: str, stopped: bool = False) -> list[str]:
        """The service's running containers (and the others with ``stopped``:
        one its restart policy keeps starting again is one of those)."""
        out = self.docker(
            "ps", "-aq" if stopped else "-q",
            "--filter", f"label=com.docker.compose.project={self.project}",
            "--filter", f"label=com.docker.compose.service={service}",
        ).stdout
        return sorted(out.split())

    def exec(self, container: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.docker("exec", container, *cmd, check=check)

    def host_url(self, container: str, port: int = 8001) -> str:
        out = self.docker("port", container, f"{port}/tcp").stdout.split()
        host_port = next(line.rsplit(":", 1)[1] for line in out if line.startswith("0.0.0.0:"))
        return f"http://127.0.0.1:{host_port}"

    def down(self) -> None:
        """Print the project's last log lines, take it down with its
        volumes, and fail if anything of it is left."""
        logs = self("logs", "--no-color", "--tail", "60", check=False, timeout=60)
        print(logs.stdout[-20000:])
        self("down", "-v", "--remove-orphans", "--timeout", "30", check=False, timeout=300)
        left = self.leftovers()
        assert not left, f"compose down left {left}"

    def leftovers(self) -> list[str]:
        label = f"label=com.docker.compose.project={self.project}"
        found = []
        for kind in (["ps", "-aq"], ["network", "ls", "-q"], ["volume", "ls", "-q"]):
            out = self.docker(*kind, "--filter", label, check=False).stdout.split()
            found += [f"{kind[0]} {x}" for x in out]
        return found


@pytest.fixture(scope="module")
def compose(tmp_path_factory):
    c = Compose(tmp_path_factory.mktemp("compose"))
    try:
        c("up", "-d", timeout=600)
        yield c
    finally:
        c.down()


@pytest.fixture(scope="module")
def token(compose):
    from broadsheet.tokens import mint

    return mint(compose.secret, "container-test")


def team(compose: Compose, token: str):
    return httpx.Client(
        base_url=f"http://127.0.0.1:{compose.team_port}", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def control(compose: Compose, token: str):
    return httpx.Client(
        base_url=f"http://127.0.0.1:{compose.control_port}", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def replica_urls(compose: Compose) -> dict[str, str]:
    return {c: compose.host_url(c) for c in compose.containers("replica")}


def status_code(url: str) -> int:
    return httpx.get(url, timeout=5).status_code


def json_get(url: str) -> dict:
    response = httpx.get(url, timeout=5)
    response.raise_for_status()
    return response.json()


def wait_for_nodes(compose: Compose, token: str, count: int, txid: int | None = None, timeout: float = 90) -> list:
    """Wait until the control plane lists ``count`` connected read nodes, each at
    ``txid`` or later (default: the primary's public TXID)."""

    def ready():
        with control(compose, token) as c:
            health = c.get("/health").json()
            nodes = c.get("/nodes").json()
        want = txid if txid is not None else health["public_db_txid"]
        good = [n for n in nodes if n["connected"] and n["txid"] >= want]
        return nodes if len(nodes) == count and len(good) == count else None

    return wait_until(ready, timeout=timeout, message=f"{count} read nodes connected and current")


def publish(compose: Compose, token: str, table: str, public: bool = True) -> int:
    with control(compose, token) as c:
        response = c.post(f"/tables/{table}/{'publish' if public else 'unpublish'}")
    assert response.status_code == 200, response.text
    return response.json()["public_txid"]


def test_cluster_comes_up_and_discovers_its_read_nodes(compose, token):
    assert len(compose.containers("primary")) == 1
    replicas = compose.containers("replica")
    assert len(replicas) == 2
    wait_until(lambda: all(status_code(f"{u}/-/replication.json") == 200 for u in replica_urls(compose).values()),
               timeout=120, message="read nodes answering")
    nodes = wait_for_nodes(compose, token, 2)
    # Each node is named by its host name (the container's id) and found by DNS.
    hostnames = {compose.exec(c, "hostname").stdout.strip() for c in replicas}
    assert {n["name"] for n in nodes} == hostnames
    # The sample data: airports is public on every read node.
    for url in replica_urls(compose).values():
        assert json_get(f"{url}/public/airports.json?_size=1")["rows"]


def test_a_table_published_on_the_primary_is_served_by_every_read_node(compose, token):
    with team(compose, token) as t:
        response = t.post("/data/-/create", json={
            "table": "notices", "pk": "id",
            "rows": [{"id": 1, "text": PUBLIC_MARKER}, {"id": 2, "text": "second"}],
        })
        assert response.status_code == 201, response.text
        # A private table with a sentinel that must never reach a read node.
        response = t.post("/data/-/create", json={
            "table": "staff_secrets", "pk": "id", "rows": [{"id": 1, "secret": PRIVATE_SENTINEL}],
        })
        assert response.status_code == 201, response.text
    txid = publish(compose, token, "notices")
    for url in replica_urls(compose).values():
        body = json_get(f"{url}/public/notices.json?_txid={txid}&_shape=objects")
        assert [r["text"] for r in body["rows"]] == [PUBLIC_MARKER, "second"]
        assert status_code(f"{url}/public/staff_secrets.json") == 403

    txid = publish(compose, token, "notices", public=False)
    for url in replica_urls(compose).values():
        assert status_code(f"{url}/public/notices.json?_txid={txid}") == 403
    # And back, for the scans below.
    txid = publish(compose, token, "notices")
    wait_for_nodes(compose, token, 2, txid)


def test_a_read_node_cannot_reach_the_private_side(compose, token):
    probe = (
        "import socket, sys\n"
        "host, port = sys.argv[1], int(sys.argv[2])\n"
        "try:\n"
        "    socket.create_connection((host, port), timeout=5).close()\n"
        "    print('open')\n"
        "except ConnectionRefusedError:\n"
        "    print('refused')\n"
        "except OSError as exc:\n"
        "    print('error', exc)\n"
    )
    for container in compose.containers("replica"):
        # The public cluster's port answers (so the network works) ...
        assert compose.exec(container, "python3", "-c", probe, "primary", "20203").stdout.strip() == "open"
        # ... and the private cluster's refuses: it listens on the primary's loopback.
        assert compose.exec(container, "python3", "-c", probe, "primary", "20202").stdout.strip() == "refused"
    # A read node's LiteFS API (it takes transactions and grants locks
    # unauthenticated) listens on its own loopback: no other container, not
    # even the primary, reaches it; the node itself does.
    first, second = compose.containers("replica")[:2]
    other = compose.exec(second, "python3", "-c", "import socket; print(socket.gethostbyname(socket.gethostname()))").stdout.strip()
    primary = compose.containers("primary")[0]
    for container in (first, primary):
        assert compose.exec(container, "python3", "-c", probe, other, "20202").stdout.strip() == "refused"
    assert compose.exec(second, "python3", "-c", probe, "127.0.0.1", "20202").stdout.strip() == "open"
    for container in compose.containers("replica"):
        # data.db exists nowhere in a read-node container.
        found = compose.exec(
            container, "find", "/", "(", "-path", "/proc", "-o", "-path", "/sys", ")", "-prune",
            "-o", "-name", "data.db*", "-print",
        ).stdout
        assert found.strip() == "", found
    # The primary publishes only the team's ports, on the host's loopback.
    primary = compose.containers("primary")[0]
    published = compose.docker("port", primary).stdout.split("\n")
    assert sorted(p.split(" -> ")[0] for p in published if p) == ["8001/tcp", "8004/tcp"]
    assert all(p.split(" -> ")[1].startswith("127.0.0.1:") for p in published if p)
    for container in compose.containers("replica"):
        assert compose.docker("port", container).stdout.split(" -> ")[0] == "8001/tcp"


def test_from_a_read_node_container_the_gate_refuses_all_but_streaming(compose, token):
    """Issue 21: the primary's public port, as a (compromised) read node
    reaches it, with the replication key it holds, lets nothing but
    POST /stream through; without the key, not even that."""
    probe = (
        "import os, httpx\n"
        "key = {'broadsheet-replication-key': os.environ['BROADSHEET_REPLICATION_KEY']}\n"
        "c = httpx.Client(http1=False, http2=True, timeout=10)\n"
        "g = 'http://primary:20203'\n"
        "print(c.post(g + '/import?name=public.db', content=b'SQLite format 3' + bytes(4096), headers=key).status_code,\n"
        "      c.post(g + '/halt?name=public.db&id=1', headers=key).status_code,\n"
        "      c.post(g + '/tx?name=public.db&lockID=1', content=b'LTX1' + bytes(200), headers=key).status_code,\n"
        "      c.get(g + '/export?name=public.db', headers=key).status_code,\n"
        "      c.get(g + '/debug/pprof/', headers=key).status_code,\n"
        "      c.post(g + '/stream', content=bytes(4)).status_code)\n"
        "with c.stream('POST', g + '/stream', content=bytes(4), headers=key) as r:\n"
        "    print(r.status_code)\n"
    )
    for container in compose.containers("replica"):
        out = compose.exec(container, "python3", "-c", probe).stdout.split("\n")
        assert out[0].split() == ["403", "403", "403", "403", "403", "401"], out
        assert out[1] == "200", out
        # No team secret came with the key.
        env = compose.exec(container, "env").stdout
        assert "DATASETTE_SECRET" not in env and "BROADSHEET_TEAM_PASSWORD" not in env


def test_no_private_byte_reaches_a_read_node(compose, token):
    # More publish cycles while the private table changes too.
    with team(compose, token) as t:
        for i in range(2, 6):
            r = t.post("/data/staff_secrets/-/insert", json={"row": {"id": i, "secret": f"{PRIVATE_SENTINEL} {i}"}})
            assert r.status_code == 201, r.text
            r = t.post("/data/notices/-/insert", headers={"Broadsheet-Wait": "public"},
                       json={"row": {"id": 10 + i, "text": f"{PUBLIC_MARKER} {i}"}})
            assert r.status_code == 201, r.text
    txid = int(r.headers["broadsheet-public-txid"])
    wait_for_nodes(compose, token, 2, txid)
    for container in compose.containers("replica"):
        # grep -c counts matching files' lines; exit 1 means no match at all.
        scan = ["grep", "-r", "-a", "-l", "-F"]
        private = compose.exec(container, *scan, PRIVATE_SENTINEL, "/var/lib/broadsheet", check=False)
        assert private.returncode == 1 and private.stdout == "", private.stdout
        # The same scan finds what was published: it can fail.
        public = compose.exec(container, *scan, PUBLIC_MARKER, "/var/lib/broadsheet/litefs", check=False)
        assert public.returncode == 0 and public.stdout.strip(), public.stderr


def test_scaling_adds_a_read_node_that_catches_up_and_serves(compose, token):
    compose("up", "-d", "--no-recreate", "--scale", "replica=3", timeout=300)
    replicas = compose.containers("replica")
    assert len(replicas) == 3
    with control(compose, token) as c:
        txid = c.get("/health").json()["public_db_txid"]
    nodes = wait_for_nodes(compose, token, 3, txid, timeout=120)
    assert len({n["name"] for n in nodes}) == 3
    for url in replica_urls(compose).values():
        wait_until(lambda: status_code(f"{url}/public/notices.json?_txid={txid}") == 200, timeout=60,
                   message=f"{url} serving notices")


def test_read_nodes_outlive_the_primary_and_catch_up(compose, token):
    urls = replica_urls(compose)
    primary = compose.containers("primary")[0]
    compose.docker("stop", "-t", "30", primary, timeout=120)
    try:
        for url in urls.values():
            body = json_get(f"{url}/public/notices.json?_shape=objects")
            assert any(r["text"] == PUBLIC_MARKER for r in body["rows"])
            assert json_get(f"{url}/-/replication.json")["txid"] > 0
    finally:
        compose.docker("start", primary, timeout=120)
    wait_until(lambda: status_code(f"http://127.0.0.1:{compose.control_port}/health") == 200,
               timeout=120, message="primary back")
    # A write after the restart reaches every node, and the control plane
    # shows them all current.
    with team(compose, token) as t:
        r = t.post("/data/notices/-/insert", headers={"Broadsheet-Wait": "public"},
                   json={"row": {"id": 99, "text": "after the outage"}})
        assert r.status_code == 201, r.text
    txid = int(r.headers["broadsheet-public-txid"])
    wait_for_nodes(compose, token, 3, txid, timeout=120)
    for url in urls.values():
        body = json_get(f"{url}/public/notices.json?_txid={txid}&_shape=objects")
        assert "after the outage" in [r["text"] for r in body["rows"]]
    with control(compose, token) as c:
        assert all(n["behind_txids"] == 0 for n in c.get("/nodes").json())


def test_a_killed_litefs_heals_inside_its_container(compose, token):
    """kill -9 of LiteFS inside a container: the supervisor there (the
    container's own process) unmounts, restarts LiteFS and what uses it; the
    container itself keeps running."""
    replica = compose.containers("replica")[0]
    primary = compose.containers("primary")[0]
    url = compose.host_url(replica)
    started = {c: compose.docker("inspect", "-f", "{{.State.StartedAt}}", c).stdout for c in (replica, primary)}
    litefs_pids = (
        "import os, signal, sys\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try:\n"
        "        cmd = open(f'/proc/{pid}/cmdline', 'rb').read()\n"
        "    except OSError:\n"
        "        continue\n"
        "    if cmd.startswith(b'/opt/broadsheet/bin/litefs\\x00mount'):\n"
        "        print(pid)\n"
        "        if sys.argv[1:] == ['kill']:\n"
        "            os.kill(int(pid), signal.SIGKILL)\n"
    )
    killed = {c: set(compose.exec(c, "python3", "-c", litefs_pids, "kill").stdout.split()) for c in (replica, primary)}
    assert len(killed[replica]) == 1 and len(killed[primary]) == 2  # the primary runs both clusters
    wait_until(lambda: status_code(f"{url}/public/notices.json") == 200, timeout=60, message="read node serving again")
    wait_until(lambda: status_code(f"http://127.0.0.1:{compose.control_port}/health") == 200, timeout=60,
               message="primary answering again")
    with team(compose, token) as t:
        r = wait_until(
            lambda: (x := t.post("/data/notices/-/insert", headers={"Broadsheet-Wait": "public"},
                                 json={"row": {"id": 500, "text": "after the kill"}})).status_code == 201 and x,
            timeout=60, message="a write acknowledged after the kill",
        )
    txid = int(r.headers["broadsheet-public-txid"])
    body = json_get(f"{url}/public/notices.json?_txid={txid}&_shape=objects")
    assert "after the kill" in [row["text"] for row in body["rows"]]
    for container, pids in killed.items():
        now = set(compose.exec(container, "python3", "-c", litefs_pids).stdout.split())
        assert len(now) == len(pids) and not now & pids  # new LiteFS processes, as many as before
    for container, when in started.items():
        assert compose.docker("inspect", "-f", "{{.State.StartedAt}}", container).stdout == when


def test_a_read_node_that_leaves_is_dropped(compose, token):
    compose("up", "-d", "--no-recreate", "--scale", "replica=2", timeout=300)
    remaining = {compose.exec(c, "hostname").stdout.strip() for c in compose.containers("replica")}
    assert len(remaining) == 2

    def only_remaining():
        with control(compose, token) as c:
            return {n["name"] for n in c.get("/nodes").json()} == remaining

    wait_until(only_remaining, timeout=30, message="the removed node gone from /nodes")

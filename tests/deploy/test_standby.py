"""The standby with real containers and networks (docker-compose.yml, profile
"standby"): it follows the primary over the private network, which no read
node is on; then the primary's container and volume are destroyed in the
middle of a stream of team writes, the standby is promoted and takes the DNS
name read nodes use, and everything that was promised holds.

Run by ``scripts/test-containers``. The tests run in file order against one
compose project (the second destroys the primary); it comes down with its
volumes afterwards, pass or fail.
"""

from __future__ import annotations

import json

import httpx
import pytest

from conftest import wait_until
from fault_tools import LedgerWriter
from test_compose import Compose, json_get, replica_urls, status_code

SENTINEL = "STANDBY-SENTINEL-c0ntainer-41d2"
PROBE = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()\n"
    "    print('open')\n"
    "except OSError as exc:\n"
    "    print('closed', type(exc).__name__)\n"
)
TXID = "from broadsheet.litefs import Pos; print(Pos.read('/var/lib/broadsheet/private/mnt/data.db').txid)"
STATUS = "import httpx; print(httpx.get('http://127.0.0.1:8006/status').text)"


@pytest.fixture(scope="module")
def compose(tmp_path_factory):
    c = Compose(tmp_path_factory.mktemp("standby"))
    c.env.update({
        "COMPOSE_PROFILES": "standby",
        "BROADSHEET_STANDBY_URL": "http://standby-private:8006",
        "BROADSHEET_STANDBY_WAIT_TIMEOUT": "3",
        "BROADSHEET_HOST_STANDBY_TEAM_PORT": str(_free()),
        "BROADSHEET_HOST_STANDBY_CONTROL_PORT": str(_free()),
    })
    try:
        c("up", "-d", "--scale", "replica=2", timeout=600)
        yield c
    finally:
        logs = c("logs", "--no-color", "--tail", "40", check=False, timeout=60)
        print(logs.stdout[-20000:])
        c("down", "-v", "--remove-orphans", "--timeout", "30", check=False, timeout=300)
        left = c.leftovers()
        assert not left, f"compose down left {left}"


def _free() -> int:
    from local.cluster import free_port

    return free_port()


@pytest.fixture(scope="module")
def token(compose):
    from broadsheet.tokens import mint

    return mint(compose.secret, "container-test")


def ip_on(compose: Compose, container: str, network: str) -> str:
    nets = json.loads(compose.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", container).stdout)
    return nets[f"{compose.project}_{network}"]["IPAddress"]


def test_the_standby_follows_on_the_private_network_alone(compose, token):
    (primary,) = compose.containers("primary")
    (standby,) = compose.containers("standby")
    control = f"http://127.0.0.1:{compose.control_port}"
    wait_until(lambda: json_get(f"{control}/health")["standby"]["connected"], timeout=120, message="standby connected")
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{compose.team_port}", headers=headers, timeout=30) as t:
        r = t.post("/data/-/create", json={"table": "vault", "pk": "id", "rows": [{"id": 0, "s": SENTINEL}]})
        assert r.status_code == 201, r.text
        for i in range(1, 11):
            r = t.post("/data/vault/-/insert", headers={"Broadsheet-Wait": "standby"}, json={"row": {"id": i, "s": SENTINEL}})
            assert r.status_code == 201, r.text
            txid = int(r.headers["broadsheet-standby-txid"])
            assert int(compose.exec(standby, "python3", "-c", TXID).stdout) >= txid
    health = json_get(f"{control}/health")
    assert health["standby"]["txid"] is not None and health["standby"]["lag_ms"] is not None

    # data.db reached the standby, and no read node.
    scan = ["grep", "-r", "-a", "-l", "-F", SENTINEL, "/var/lib/broadsheet"]
    assert compose.exec(standby, *scan, check=False).stdout.strip()
    for replica in compose.containers("replica"):
        found = compose.exec(replica, *scan, check=False)
        assert found.returncode == 1 and found.stdout == "", found.stdout

    # The private LiteFS port: the standby reaches it; nothing on the public
    # network does, by name or by the primary's private address.
    private_ip = ip_on(compose, primary, "private")
    assert compose.exec(standby, "python3", "-c", PROBE, "primary-private", "20202").stdout.startswith("open")
    for replica in compose.containers("replica"):
        for host in ("primary", private_ip, "primary-private"):
            out = compose.exec(replica, "python3", "-c", PROBE, host, "20202").stdout
            assert out.startswith("closed"), (host, out)
        # Nor the standby's status API.
        assert compose.exec(replica, "python3", "-c", PROBE, "standby-private", "8006").stdout.startswith("closed")


COUNT = "import sqlite3, sys; print(sqlite3.connect('file:/var/lib/broadsheet/private/mnt/data.db?mode=ro', uri=True).execute(sys.argv[1]).fetchone()[0])"


def logs_of(compose: Compose, container: str) -> str:
    done = compose.docker("logs", container, check=False)
    return done.stdout + done.stderr


def refusing(compose: Compose, words: str):
    """The primary service's container (kept restarting by its policy), once
    its logs say ``words``."""

    def found():
        for container in compose.containers("primary", stopped=True):
            if words in logs_of(compose, container):
                return container
        return None

    return found


def test_backup_wipe_restore_and_everyone_converges(compose, token):
    (primary,) = compose.containers("primary")
    (standby,) = compose.containers("standby")
    headers = {"Authorization": f"Bearer {token}"}
    team = f"http://127.0.0.1:{compose.team_port}"
    control = f"http://127.0.0.1:{compose.control_port}"
    r = httpx.post(f"{team}/data/-/create", headers=headers, timeout=30,
                   json={"table": "archive", "pk": "id", "rows": [{"id": i} for i in range(10)]})
    assert r.status_code == 201, r.text
    assert httpx.post(f"{control}/tables/archive/publish", headers=headers, timeout=30).status_code == 200
    taken = json.loads(compose.exec(primary, "broadsheet", "backup", "--json", "--keep", "3").stdout)
    assert taken["path"].startswith("/var/lib/broadsheet-backups/")

    # After the backup: a row, and a table made public.
    r = httpx.post(f"{team}/data/archive/-/insert", headers=headers, json={"row": {"id": 99}}, timeout=30)
    assert r.status_code == 201, r.text
    r = httpx.post(f"{team}/data/-/create", headers=headers, timeout=30,
                   json={"table": "later", "pk": "id", "rows": [{"id": 1}]})
    assert r.status_code == 201, r.text
    assert httpx.post(f"{control}/tables/later/publish", headers=headers, timeout=30).status_code == 200
    wait_until(lambda: json_get(f"{control}/health")["standby"]["behind_txids"] == 0, timeout=60, message="standby current")
    standby_txid = int(compose.exec(standby, "python3", "-c", TXID).stdout)

    # The primary's disk is lost: a new container on a new volume. Its
    # standby holds a newer data.db, so it refuses to start, and keeps
    # refusing (its restart policy starts it again and again).
    compose.docker("rm", "-f", primary, timeout=120)
    compose.docker("volume", "rm", f"{compose.project}_primary-data", timeout=60)
    compose("up", "-d", "--no-deps", "primary", timeout=300)
    empty = wait_until(refusing(compose, f"holds data.db TXID {standby_txid}"), timeout=120, message="the empty primary refusing")
    assert "this node's data.db is empty" in logs_of(compose, empty)
    assert int(compose.exec(standby, "python3", "-c", TXID).stdout) == standby_txid
    assert compose.exec(standby, "python3", "-c", COUNT, "SELECT count(*) FROM archive").stdout.strip() == "11"

    # Restoring anyway, as the message says: the standby's volume emptied
    # first and the standby started again, empty; then the primary starts
    # (a fresh data.db, with the sample tables), then the restore.
    compose("rm", "-s", "-f", "standby", timeout=120)
    compose.docker("volume", "rm", f"{compose.project}_standby-data", timeout=60)
    compose("up", "-d", "--no-deps", "standby", timeout=300)
    (standby,) = compose.containers("standby")
    compose.docker("restart", empty, timeout=120)
    wait_until(lambda: status_code(f"{control}/health") == 200, timeout=180, message="the new primary")
    (primary,) = compose.containers("primary")
    out = compose.exec(primary, "broadsheet", "restore", taken["path"]).stdout
    assert f"taken at data.db TXID {taken['txid']}" in out and "public.db rebuilt" in out, out

    # data.db is the backup's state; so is every read node's public.db, and
    # the new standby follows.
    ids = [row["id"] for row in httpx.get(f"{team}/data/archive.json?_shape=array", headers=headers).json()]
    assert ids == list(range(10))
    assert httpx.get(f"{team}/data/later.json", headers=headers).status_code == 404
    health = json_get(f"{control}/health")
    for url in replica_urls(compose).values():
        wait_until(lambda: [r["id"] for r in json_get(f"{url}/public/archive.json?_shape=array")] == list(range(10)),
                   timeout=120, message=f"{url} serving the restored archive")
        assert status_code(f"{url}/public/later.json") == 403
    wait_until(lambda: int(compose.exec(standby, "python3", "-c", TXID).stdout) >= health["data_db_txid"],
               timeout=120, message="the standby following the new primary")
    assert compose.exec(standby, "python3", "-c", COUNT, "SELECT count(*) FROM archive").stdout.strip() == "10"


def test_promote_after_the_primary_and_its_volume_are_destroyed(compose, token):
    (primary,) = compose.containers("primary")
    (standby,) = compose.containers("standby")
    wait_until(lambda: json_get(f"http://127.0.0.1:{compose.control_port}/health")["standby"]["behind_txids"] == 0,
               timeout=120, message="the standby current")
    headers = {"Authorization": f"Bearer {token}"}
    team = httpx.Client(base_url=f"http://127.0.0.1:{compose.team_port}", headers=headers, timeout=10)
    r = team.post("/data/-/create", json={"table": "ledger", "pk": "id", "rows": [{"id": 0}]})
    assert r.status_code == 201, r.text
    try:
        with LedgerWriter(team) as writer:
            wait_until(lambda: len(writer.acknowledged) >= 40, timeout=120, message="writes flowing")
            compose.docker("rm", "-f", primary, timeout=120)
            compose.docker("volume", "rm", f"{compose.project}_primary-data", timeout=60)
    finally:
        team.close()
    acknowledged = writer.acknowledged
    standby_txid = int(compose.exec(standby, "python3", "-c", TXID).stdout)
    primary_txid = writer.newest_txid

    # Before anyone promotes, the primary's container comes back on an empty
    # volume (its restart policy, or a deploy): it does not start as primary,
    # and the standby keeps every write.
    compose("up", "-d", "--no-deps", "primary", timeout=300)
    wait_until(refusing(compose, f"holds data.db TXID {standby_txid}"), timeout=120, message="the empty primary refusing")
    assert int(compose.exec(standby, "python3", "-c", TXID).stdout) == standby_txid
    status = json.loads(compose.exec(standby, "python3", "-c", STATUS).stdout)
    assert status["acknowledged_txid"] >= max(txid for waited, txid in acknowledged.values() if waited)

    out = compose.exec(standby, "broadsheet", "promote").stdout
    assert "promoted at data.db TXID" in out and "epoch 2" in out, out
    assert f"committed after data.db TXID {standby_txid}, committed at 20" in out
    assert "acknowledged with Broadsheet-Wait: standby (up to TXID" in out and ") is in it" in out, out
    # The promoted node takes the name read nodes use for the primary.
    compose.docker("network", "connect", "--alias", "primary", f"{compose.project}_default", standby)
    standby_ip = ip_on(compose, standby, "default")
    control = f"http://{standby_ip}:8004"
    health = wait_until(lambda: json_get(f"{control}/health"), timeout=180, message="the promoted control plane")
    assert health["epoch"] == 2

    # Every write acknowledged with Broadsheet-Wait: standby is there; the
    # lost ones were never on the standby, and are at most its lag.
    r = httpx.get(f"http://{standby_ip}:8001/data/ledger.json?_shape=array&_size=max", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    ids = {row["id"] for row in r.json()}
    assert not writer.lost(ids, waited=True)
    lost = writer.lost(ids)
    assert all(acknowledged[n][1] > standby_txid for n in lost)
    assert len(lost) <= max(0, primary_txid - standby_txid)
    print(f"acknowledged {len(acknowledged)}, lost {len(lost)} (none waited for); standby lag at loss"
          f" {max(0, primary_txid - standby_txid)} TXIDs")

    # Publishing works; read nodes follow the new primary and converge.
    r = httpx.post(f"{control}/tables/ledger/publish", headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    public_txid = r.json()["public_txid"]
    for url in replica_urls(compose).values():
        wait_until(lambda: status_code(f"{url}/public/ledger.json?_txid={public_txid}") == 200, timeout=120,
                   message=f"{url} serving ledger from the new primary")
        served = {row["id"] for row in json_get(f"{url}/public/ledger.json?_shape=array&_size=max")}
        assert served == ids

    # The old primary's container, still started again and again on its
    # empty volume, now refuses to become a second primary.
    wait_until(refusing(compose, "must not start as a second primary"), timeout=180, message="the old primary refusing")
    assert json_get(f"{control}/health")["epoch"] == 2
    probe = compose.exec(standby, "python3", "-c", PROBE, "primary-private", "20202").stdout
    assert probe.startswith("closed"), probe

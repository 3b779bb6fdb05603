"""A standby of the private cluster on one machine (real LiteFS, real HTTP):
it follows data.db, /health shows how far behind it is, and a team write
sent with ``Broadsheet-Wait: standby`` is answered only once the standby
has it (or with a 504 when it cannot get it). data.db reaches the standby
and no read node. The container test shows the same across networks.
"""

from __future__ import annotations

import os
import signal

import httpx
import pytest
from click.testing import CliRunner

from broadsheet.cli import cli
from broadsheet.litefs import Pos
from conftest import file_bytes, read_only_rows, wait_until

SENTINEL = "STANDBY-ONLY-SENTINEL-8c41"


@pytest.fixture
def standby_cluster(new_cluster, monkeypatch):
    # The processes the cluster starts read it from the environment.
    monkeypatch.setenv("BROADSHEET_STANDBY_WAIT_TIMEOUT", "1")
    cluster = new_cluster(replicas=1, sample=False)
    cluster.add_standby()
    return cluster


def team(cluster, token):
    return httpx.Client(base_url=cluster.primary.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def token_for(cluster):
    from broadsheet.cli import _mint_token

    return _mint_token(cluster.primary.secret, "tester")


def test_a_write_waited_for_is_on_the_standby_when_acknowledged(standby_cluster):
    cluster = standby_cluster
    standby_db = cluster.standby.data_db
    with team(cluster, token_for(cluster)) as t:
        r = t.post("/data/-/create", json={"table": "secrets", "pk": "id", "rows": [{"id": 0, "s": SENTINEL}]})
        assert r.status_code == 201, r.text
        for i in range(1, 21):
            r = t.post("/data/secrets/-/insert", headers={"Broadsheet-Wait": "standby"},
                       json={"row": {"id": i, "s": f"{SENTINEL} {i}"}})
            assert r.status_code == 201, r.text
            txid = int(r.headers["broadsheet-private-txid"])
            assert int(r.headers["broadsheet-standby-txid"]) == txid
            # Acknowledged: the standby's copy has it already.
            assert Pos.read(standby_db).txid >= txid
            assert read_only_rows(standby_db, f"SELECT s FROM secrets WHERE id = {i}") == [(f"{SENTINEL} {i}",)]

    health = httpx.get(f"{cluster.primary.control_url}/health").json()
    standby = health["standby"]
    assert standby["url"] == cluster.standby.url and standby["connected"]
    assert standby["txid"] <= health["data_db_txid"] and standby["lag_ms"] is not None
    result = CliRunner().invoke(cli, ["status", "--dir", str(cluster.root)])
    assert result.exit_code == 0 and "standby" in result.output, result.output

    # A backup taken on the standby (from its read-only copy) is a whole
    # data.db of this cluster, with every row the primary had at its TXID.
    from primary import backup

    taken = backup.take(standby_db, cluster.root / "standby-backups")
    assert backup.inspect(taken.path).cluster_id == cluster.primary.cluster_id
    assert taken.txid >= txid
    assert read_only_rows(taken.path, "SELECT count(*) FROM secrets") == [(21,)]

    # data.db reached the standby and no read node.
    found = [p for p, data in file_bytes(cluster.standby.root / "private") if SENTINEL.encode() in data]
    assert found
    for node in cluster.replicas:
        assert not [p for p, data in file_bytes(node.root) if SENTINEL.encode() in data]


def test_a_standby_that_cannot_keep_up_gets_a_504_and_shows_behind(standby_cluster):
    cluster = standby_cluster
    litefs_pid = cluster.supervisor.pid("standby-litefs")
    with team(cluster, token_for(cluster)) as t:
        r = t.post("/data/-/create", json={"table": "t", "pk": "id", "rows": [{"id": 0}]})
        assert r.status_code == 201, r.text
        os.kill(litefs_pid, signal.SIGSTOP)
        try:
            r = t.post("/data/t/-/insert", headers={"Broadsheet-Wait": "standby"}, json={"row": {"id": 1}})
            assert r.status_code == 504, r.text
            txid = int(r.headers["broadsheet-private-txid"])
            assert r.json()["private_txid"] == txid and "standby" in r.json()["error"]
            health = httpx.get(f"{cluster.primary.control_url}/health", timeout=10).json()
            assert not health["standby"]["connected"] or health["standby"]["behind_txids"] >= 1
        finally:
            os.kill(litefs_pid, signal.SIGCONT)
        # The write itself is committed on the primary, and reaches the standby.
        wait_until(lambda: Pos.read(cluster.standby.data_db).txid >= txid, timeout=30, message="standby caught up")
        wait_until(lambda: httpx.get(f"{cluster.primary.control_url}/health").json()["standby"]["behind_txids"] == 0
                   or Pos.read(cluster.primary.data_db).txid > txid, timeout=30, message="standby current on /health")



def test_waiting_for_a_standby_that_is_not_there_is_refused_before_the_write(cluster, token):
    with team(cluster, token) as t:
        r = t.post("/data/-/create", headers={"Broadsheet-Wait": "standby"},
                   json={"table": "never_made", "pk": "id", "rows": [{"id": 1}]})
        assert r.status_code == 400 and "no standby" in r.json()["error"], r.text
        assert t.get("/data/never_made.json").status_code == 404

"""A standby of the private cluster on one machine (real LiteFS, real HTTP):
it follows data.db, /health shows how far behind it is, and a team write
sent with ``Broadsheet-Wait: standby`` is answered only once the standby
has it (or with a 504 when it cannot get it). data.db reaches the standby
and no read node. The container test shows the same across networks.
"""

from __future__ import annotations

import os
import shutil
import signal

import httpx
import pytest
from click.testing import CliRunner

from broadsheet.cli import cli
from broadsheet.litefs import NewestLtx, Pos
from conftest import file_bytes, primary_services, read_only_rows, rows, wait_until

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
    from broadsheet.tokens import mint

    return mint(cluster.primary.secret, "tester")


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


# -- an empty primary and the standby (issue: a primary restarted on an
# empty volume wiped the standby, and promote promoted the empty copy) -------


def _waited_writes(cluster, ids) -> int:
    """Insert ``ids`` into ``kept``, each acknowledged with Broadsheet-Wait:
    standby; the standby's TXID after the last."""
    with team(cluster, token_for(cluster)) as t:
        if t.get("/data/kept.json").status_code == 404:
            r = t.post("/data/-/create", json={"table": "kept", "pk": "id", "rows": [{"id": 0, "note": "made"}]})
            assert r.status_code == 201, r.text
        for i in ids:
            r = t.post("/data/kept/-/insert", headers={"Broadsheet-Wait": "standby"},
                       json={"row": {"id": i, "note": f"{SENTINEL} waited {i}"}})
            assert r.status_code == 201, r.text
            txid = int(r.headers["broadsheet-standby-txid"])
    return txid


def _kept_ids(url: str, token: str) -> set[int]:
    r = httpx.get(f"{url}/data/kept.json", params={"_shape": "array", "_size": "max"},
                  headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    return {row["id"] for row in r.json()}


@pytest.mark.cluster  # starts LiteFS itself
def test_an_empty_primary_refuses_to_start_and_the_promoted_standby_has_every_acknowledged_write(tmp_path, monkeypatch, usr1):
    """The issue's four steps: `up --standby`, three writes acknowledged
    with Broadsheet-Wait: standby, `down`, the primary's disk gone, `up
    --standby` again. The empty primary does not start; the standby still
    holds the three writes; `promote --dir` says what is lost, truly; the
    next `up` honours the promotion, and every acknowledged write is there."""
    from local.cluster import LocalCluster
    from broadsheet.cluster_file import load_state
    from broadsheet.supervisor import processes_of
    from primary.standby.fencing import NewerCopyElsewhere

    monkeypatch.setenv("BROADSHEET_STANDBY_WAIT_TIMEOUT", "5")
    root = tmp_path / "C"
    first = LocalCluster(root, replicas=1, sample=False, compress=False, standby=True)
    first.start()
    try:
        assert load_state(root)["standby"]["root"] == str(root / "standby")
        txid = _waited_writes(first, [1, 2, 3])
        standby_root = first.standby.root
    finally:
        first.stop()
    # The primary's disk is gone.
    lost = tmp_path / "lost"
    lost.mkdir()
    for name in ("private", "public"):
        shutil.move(str(root / "primary" / name), str(lost / name))

    again = LocalCluster(root, replicas=1, sample=False, compress=False, standby=True)
    with pytest.raises(NewerCopyElsewhere) as refused:
        again.start()
    message = str(refused.value)
    assert "this node's data.db is empty" in message
    assert f"holds data.db TXID {txid} (epoch 1)" in message and f"up to TXID {txid}" in message
    assert f"broadsheet promote --dir {root}" in message
    # It never ran as a primary: no data.db of its own, nothing left running,
    # and the standby's copy is where it was.
    assert not (root / "primary" / "private" / "litefs" / "dbs").exists()
    wait_until(lambda: processes_of(root) == [], timeout=15, message="nothing of the refused start left running")
    assert NewestLtx.read(standby_root / "private" / "litefs", "data.db").pos.txid == txid

    result = CliRunner().invoke(cli, ["promote", "--dir", str(root)])
    assert result.exit_code == 0, result.output
    assert f"promoted at data.db TXID {txid}" in result.output
    assert f"writes the old primary committed after data.db TXID {txid}, committed at 20" in result.output
    assert f"every write acknowledged with Broadsheet-Wait: standby (up to TXID {txid}) is in it" in result.output
    assert "it starts as the primary next time (broadsheet up --dir" in result.output
    assert not usr1  # nothing ran it to tell

    # `up --standby` again: the promoted node is the primary, with every
    # acknowledged write; the old primary's directory runs a new standby.
    third = LocalCluster(root, replicas=1, sample=False, compress=False, standby=True)
    third.start()
    try:
        assert third.primary.root == standby_root and third.standby.root == root / "primary"
        info = load_state(root)
        assert info["primary"]["root"] == str(standby_root) and info["standby"]["root"] == str(root / "primary")
        token = token_for(third)
        assert _kept_ids(third.primary.url, token) == {0, 1, 2, 3}
        health = httpx.get(f"{third.primary.control_url}/health").json()
        assert health["epoch"] == 2
        aside = list((root / "primary").glob("replaced-*"))
        assert len(aside) == 1 and (aside[0] / "publisher-watermark.json").exists()
        # The new standby follows, and acknowledges.
        assert _waited_writes(third, [4]) > txid
        wait_until(lambda: httpx.get(f"{third.primary.control_url}/health").json()["standby"]["behind_txids"] == 0,
                   timeout=30, message="the new standby current")
        # Read nodes follow the promoted primary.
        r = httpx.post(f"{third.primary.control_url}/tables/kept/publish",
                       headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 200, r.text
        node = third.replicas[0]
        wait_until(lambda: {row["id"] for row in rows(node.url, "kept", _size="max")} == {0, 1, 2, 3, 4},
                   timeout=60, message="the read node serving the promoted primary's rows")
    finally:
        third.stop()


def test_a_running_standby_keeps_its_copy_when_the_primary_comes_back_empty(new_cluster, monkeypatch, usr1):
    """The standby is connected; the primary goes away and comes back on an
    empty volume without asking it (as if the standby had not answered):
    LiteFS reconnects by itself, and the guard refuses the new primary's
    data.db, even once it has more TXIDs than the standby. The standby keeps
    every acknowledged write, says so (its /status, the primary's /health,
    504s for writes that wait for it), and promoted, has them all."""
    monkeypatch.setenv("BROADSHEET_STANDBY_WAIT_TIMEOUT", "2")
    cluster = new_cluster(replicas=1, sample=False, standby=True)
    standby = cluster.standby
    txid = _waited_writes(cluster, [1, 2, 3])
    generation = httpx.get(f"{standby.url}/status").json()["generation"]

    sup = cluster.supervisor
    for name in primary_services(cluster.primary):
        sup.stop(name, kill=True)
    shutil.rmtree(cluster.primary.root / "private")
    shutil.rmtree(cluster.primary.root / "public")
    cluster.primary.standby_url = ""  # it does not hear from the standby as it starts
    cluster.primary.start(sup)
    cluster.primary.standby_url = standby.url
    for service in cluster.primary.app_services()[1:]:  # so that it shows the standby
        sup.stop(service.name)
        sup.start(service)

    def refusal():
        return httpx.get(f"{standby.url}/status").json()["refused"]

    seen = wait_until(refusal, timeout=30, message="the standby refusing the empty primary")
    assert "another data.db" in seen["reason"] and seen["primary_generation"] != generation
    # The empty primary writes past the standby's TXID: still another data.db.
    with team(cluster, token_for(cluster)) as t:
        r = t.post("/data/-/create", json={"table": "kept", "pk": "id", "rows": [{"id": 0, "note": "afresh"}]})
        assert r.status_code == 201, r.text
        while Pos.read(cluster.primary.data_db).txid <= txid + 2:
            assert t.post("/data/kept/-/insert", json={"row": {"note": "afresh"}}).status_code == 201
        r = t.post("/data/kept/-/insert", headers={"Broadsheet-Wait": "standby"}, json={"row": {"id": 99}})
        assert r.status_code == 504 and "does not follow this primary" in r.json()["error"], r.text
    wait_until(lambda: refusal()["primary_txid"] > txid, timeout=60, message="a later snapshot refused too")
    status = httpx.get(f"{standby.url}/status").json()
    assert status["txid"] == txid and status["generation"] == generation and not status["following"]
    health = httpx.get(f"{cluster.primary.control_url}/health").json()["standby"]
    assert "another data.db" in health["refused"] and health["acknowledged_txid"] == txid
    assert health["lag_ms"] is None
    out = CliRunner().invoke(cli, ["status", "--dir", str(cluster.root)]).output
    assert "REFUSING this primary's data.db" in out, out
    assert read_only_rows(standby.data_db, "SELECT id FROM kept ORDER BY id") == [(0,), (1,), (2,), (3,)]

    # Promoted (--force: the empty primary still runs), it has them all.
    result = CliRunner().invoke(cli, ["promote", "--dir", str(cluster.root), "--force"])
    assert result.exit_code == 0, result.output
    assert usr1
    new = cluster.promote_standby()
    assert _kept_ids(new.url, token_for(cluster)) == {0, 1, 2, 3}


def test_a_restarted_standby_knows_when_its_newest_write_was_committed(standby_cluster):
    # committed_at comes from LiteFS's newest LTX file, not only from the
    # next transaction: promote can print the loss window right away.
    cluster = standby_cluster
    _waited_writes(cluster, [1])
    before = httpx.get(f"{cluster.standby.url}/status").json()
    assert before["committed_at"] is not None
    cluster.standby.stop(cluster.supervisor)
    cluster.standby.start(cluster.supervisor)
    after = httpx.get(f"{cluster.standby.url}/status").json()
    assert after["txid"] == before["txid"] and after["committed_at"] == before["committed_at"]

"""Losing the primary for good, on one machine (real LiteFS, real HTTP): the
primary's processes are killed and its volume deleted in the middle of a
stream of team writes; ``broadsheet promote --dir`` promotes the local
cluster's standby, which takes the primary's addresses (as it takes the DNS
name in a deployment). Every write acknowledged with ``Broadsheet-Wait:
standby`` is there, the writes lost are only those the standby had not
received, promote says so truly, publishing works, read nodes follow the
new primary and converge, and the old primary, started again, refuses to
become a second primary. (tests/deploy does the same with containers and
networks.)
"""

from __future__ import annotations

import shutil

import httpx
import pytest
from click.testing import CliRunner

from broadsheet.cli import cli
from local.cluster import LocalCluster, free_port
from broadsheet.cluster_file import load_state
from broadsheet.litefs import Pos
from conftest import primary_services, read_only_rows, rows, status, wait_until
from fault_tools import LedgerWriter
from primary.standby.fencing import AnotherPrimary


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("BROADSHEET_STANDBY_WAIT_TIMEOUT", "2")
    c = LocalCluster(tmp_path / "cluster", replicas=2, compress=False, sample=False, standby=True)
    # A public cluster whose LiteFS id is LiteFS's own random one (as before
    # broadsheet derived it): the promoted node must still be followed.
    c.primary.public.data_dir.mkdir(parents=True)
    (c.primary.public.data_dir / "clusterid").write_text("LFSC0123456789ABCDEF")
    try:
        c.start()
        yield c
    finally:
        c.stop()


def test_promote_after_the_primary_is_destroyed_mid_stream(cluster, usr1):
    from broadsheet.tokens import mint

    standby = cluster.standby
    old = cluster.primary
    token = mint(old.secret, "tester")
    client = httpx.Client(base_url=old.url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    r = client.post("/data/-/create", json={"table": "ledger", "pk": "id", "rows": [{"id": 0, "waited": 1}]})
    assert r.status_code == 201, r.text
    r = httpx.post(f"{old.control_url}/tables/ledger/publish", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text

    try:
        with LedgerWriter(client, row=lambda n, waited: {"id": n, "waited": int(waited)}) as writer:
            wait_until(lambda: len(writer.acknowledged) >= 30, timeout=60, message="writes flowing")
            # The primary and its volume, destroyed mid-stream.
            sup = cluster.supervisor
            for name in primary_services(cluster.primary):
                sup.stop(name, kill=True)
    finally:
        client.close()
    acknowledged = writer.acknowledged
    shutil.rmtree(old.root / "private")
    shutil.rmtree(old.root / "public")
    standby_txid = Pos.read(standby.data_db).txid
    primary_txid = writer.newest_txid
    waited = max(txid for w, txid in acknowledged.values() if w)

    # What promoting would lose: the standby's lag, on its status API.
    seen = httpx.get(f"{standby.url}/status").json()
    assert seen["txid"] == standby_txid and seen["acknowledged_txid"] >= waited
    assert seen["committed_at"] is not None

    result = CliRunner().invoke(cli, ["promote", "--dir", str(cluster.root)])
    assert result.exit_code == 0, result.output
    assert f"promoted at data.db TXID {standby_txid} (epoch 2)" in result.output
    # The loss window, truly: what the standby lacks, and what it has.
    assert f"committed after data.db TXID {standby_txid}, committed at 20" in result.output
    assert f"every write acknowledged with Broadsheet-Wait: standby (up to TXID {seen['acknowledged_txid']}) is in it" in result.output
    assert usr1, "promote did not tell the process running the cluster"
    new = cluster.promote_standby()
    assert new.root == standby.root and new.url == old.url and new.private.url == old.private.url

    # data.db continues from the standby's TXID, with every write it had.
    assert Pos.read(new.data_db).txid >= standby_txid
    present = {r[0] for r in read_only_rows(new.data_db, "SELECT id FROM ledger")}
    waited_lost = writer.lost(present, waited=True)
    assert not waited_lost, f"writes acknowledged with Broadsheet-Wait: standby lost: {waited_lost}"
    lost = writer.lost(present)
    # Only writes after the standby's last TXID are lost: at most its lag.
    assert all(acknowledged[n][1] > standby_txid for n in lost)
    assert len(lost) <= max(0, primary_txid - standby_txid)
    print(f"acknowledged {len(acknowledged)} writes, lost {len(lost)} (not waited for); standby lag {max(0, primary_txid - standby_txid)} TXIDs")

    health = wait_until(lambda: httpx.get(f"{new.control_url}/health").json(), timeout=30, message="new control plane")
    assert health["epoch"] == 2 and health["data_db_txid"] >= standby_txid
    assert (new.public.data_dir / "clusterid").read_text() == "LFSC0123456789ABCDEF"
    info = load_state(cluster.root)
    assert info["primary"]["root"] == str(standby.root) and info["standby"] is None

    # Publishing works, and read nodes follow the new primary and converge.
    headers = {"Authorization": f"Bearer {mint(new.secret, 'tester')}"}
    with httpx.Client(base_url=new.url, headers=headers, timeout=30) as t:
        r = t.post("/data/-/create", json={"table": "after", "pk": "id", "rows": [{"id": 1, "note": "after promotion"}]})
        assert r.status_code == 201, r.text
    r = httpx.post(f"{new.control_url}/tables/after/publish", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    expected = sorted(present)
    for node in cluster.replicas:
        wait_until(lambda: status(node.url, "/public/after.json") == 200, timeout=60, message=f"{node.name} follows")
        wait_until(lambda: sorted(r["id"] for r in rows(node.url, "ledger", _size="max")) == expected,
                   timeout=60, message=f"{node.name} converged")

    # The old primary, started again (on a machine of its own: another
    # private LiteFS address), refuses to be a second primary.
    from primary.node import PrimaryNode

    again = PrimaryNode.from_env({
        **old.to_env(), "BROADSHEET_PRIVATE_LITEFS_PORT": str(free_port()), "BROADSHEET_PEERS": new.private.url,
        "BROADSHEET_STANDBY_URL": "",
    })
    with pytest.raises(AnotherPrimary, match="must not start as a second primary"):
        again.start(cluster.supervisor)
    assert Pos.read(new.data_db).txid >= standby_txid

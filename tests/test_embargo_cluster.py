"""An embargo on a real cluster: a table scheduled a few seconds ahead has
no byte on any read node (database, WAL, LTX, process memory) until its
moment, though the publisher and the control plane restart in between; at
the moment every read node serves it, once."""

from __future__ import annotations

import time
from contextlib import closing
from datetime import datetime, timedelta, timezone

from conftest import count, create_table, file_bytes, status, wait_until
from primary import store
from primary.store import schedule
from test_flip_paths import arrived_everywhere
from test_partial import scan

SENTINEL = "EMBARGOED-UNTIL-MOMENT-9d3"


def test_an_embargoed_table_reaches_no_read_node_before_its_moment_and_every_one_after(cluster, control, db):
    create_table(cluster, "budget", [{"id": i, "line": f"{SENTINEL} {i}", "amount": i} for i in range(1, 31)])
    at = schedule.moment_text(datetime.now(timezone.utc) + timedelta(seconds=12))
    moment = datetime.fromisoformat(at)
    entry = control.schedule("budget", at, spec={"where": "amount > 10"})
    assert control.scheduled()[-1]["id"] == entry["id"]

    def before_the_moment(what: str, memory: bool = False) -> None:
        started = time.monotonic()
        for node in cluster.replicas:
            assert status(node.url, "/public/budget.json") == 403
        if memory:  # a few seconds: once
            found = scan(cluster, [SENTINEL.encode()])
        else:  # every file of every read node: database, WAL, LTX
            found = [str(p) for node in cluster.replicas for p, data in file_bytes(node.root) if SENTINEL.encode() in data]
        # Only a scan that ended before the moment says anything.
        assert datetime.now(timezone.utc) < moment, f"too slow: the moment passed during the scan before {what}"
        assert found == [], f"{what} (scan of {time.monotonic() - started:.1f} s)"

    before_the_moment("the restarts", memory=True)
    cluster.supervisor.restart("publisher")
    before_the_moment("the control plane's restart")
    cluster.supervisor.restart("control-plane")
    assert [e["id"] for e in control.scheduled()] == [entry["id"]]  # kept across both restarts
    before_the_moment("the moment")
    print(f"margin before the moment: {(moment - datetime.now(timezone.utc)).total_seconds():.1f} s")

    for node in cluster.replicas:
        wait_until(lambda: status(node.url, "/public/budget.json") == 200, timeout=15, message=f"{node.url} serves it")
        assert count(node.url, "budget") == 20
    served_after = (datetime.now(timezone.utc) - moment).total_seconds()
    assert served_after < 5, served_after
    print(f"served by every read node {served_after:.2f} s after the moment")
    published = [e for e in store.audit_entries(db, table="budget") if e["operation"] == "publish"]
    assert len(published) == 1 and f"scheduled for {at}" in published[0]["actor"]
    # Measured as any flip is (what /watch shows): its public TXID reached every node.
    wait_until(
        lambda: store.audit_entries(db, table="budget", limit=1)[0]["public_txid"], timeout=10, message="its public TXID"
    )
    txid = store.audit_entries(db, table="budget", limit=1)[0]["public_txid"]
    assert arrived_everywhere(cluster, control, txid)["complete"]
    (applied,) = db.execute("SELECT applied_at FROM _public_schedule WHERE id = ?", (entry["id"],)).fetchone()
    assert 0 <= (datetime.fromisoformat(applied) - moment).total_seconds() < 1
    assert control.scheduled() == []
    time.sleep(0.5)  # one more turn of the runner: nothing applied again
    assert len([e for e in store.audit_entries(db, table="budget") if e["operation"] == "publish"]) == 1


def test_a_promotion_keeps_the_schedule_and_the_new_primary_applies_it_once(new_cluster, usr1):
    from click.testing import CliRunner

    from broadsheet.cli import cli
    from broadsheet.client import ControlClient
    from broadsheet.litefs import Pos
    from broadsheet.tokens import mint

    c = new_cluster(replicas=1, sample=False, standby=True)
    old, standby = c.primary, c.standby
    create_table(c, "budget", [{"id": i, "line": f"{SENTINEL} {i}"} for i in range(1, 11)])
    at = schedule.moment_text(datetime.now(timezone.utc) + timedelta(seconds=25))
    ControlClient(old.control_url, mint(old.secret, "tester")).schedule("budget", at)
    wait_until(lambda: Pos.read(standby.data_db).txid >= Pos.read(old.data_db).txid, timeout=15, message="standby has it")
    for name in ("control-plane", "primary-datasette", "publisher", "public-litefs", "private-litefs"):
        c.supervisor.stop(name, kill=True)
    result = CliRunner().invoke(cli, ["promote", "--dir", str(c.root)])
    assert result.exit_code == 0, result.output
    assert usr1
    new = c.promote_standby()
    (node,) = c.replicas
    assert datetime.now(timezone.utc) < datetime.fromisoformat(at), "too slow: promoted after the moment"
    assert status(node.url, "/public/budget.json") == 403
    assert not [p for p, data in file_bytes(node.root) if SENTINEL.encode() in data]
    wait_until(lambda: status(node.url, "/public/budget.json") == 200, timeout=60, message="the new primary published it")
    with closing(store.connect(str(new.data_db), readonly=True)) as conn:
        published = [e for e in store.audit_entries(conn, table="budget") if e["operation"] == "publish"]
        assert len(published) == 1 and schedule.pending(conn) == []

"""Watching a publish reach every read node: the control plane's records,
its server-sent events, the CLI, and a node that falls behind."""

import queue
import threading

from click.testing import CliRunner

from broadsheet.cli import cli
from broadsheet.client import ControlClient
from conftest import create_table, rows, wait_until
from primary import store


def test_publish_yields_a_propagation_record_for_every_node(cluster, control):
    create_table(cluster, "dispatches", [{"id": 1, "text": "first"}])
    result = control.publish("dispatches")
    assert result["changed"] and result["public_txid"] >= 1
    record = control.propagation(result["public_txid"], wait=10)
    assert record["complete"]
    assert sorted(n["name"] for n in record["nodes"]) == [n.name for n in cluster.replicas]
    for arrival in record["nodes"]:
        assert arrival["arrived"] and arrival["ms"] is not None and 0 <= arrival["ms"] < 10_000


def test_event_stream_delivers_propagation(cluster, control, db):
    events: queue.Queue = queue.Queue()

    def follow():
        try:
            for event in control.events():
                events.put(event)
        except Exception as exc:  # the stream closes when the test ends
            events.put(("error", {"error": repr(exc)}))

    threading.Thread(target=follow, daemon=True).start()
    first = events.get(timeout=10)
    assert first[0] == "node"  # the stream opens with every node's position

    with store.immediate(db):
        db.execute("INSERT INTO airports (faa, name) VALUES ('SSE', 'Event Stream Field')")
    wait_until(lambda: rows(cluster.replicas[0].url, "airports", faa="SSE"))
    txid = cluster.public_pos().txid

    def complete_record():
        while True:
            event, data = events.get(timeout=10)
            if event == "propagation" and data["txid"] == txid and data["complete"]:
                return data

    record = complete_record()
    assert {n["name"] for n in record["nodes"] if n["arrived"]} == {n.name for n in cluster.replicas}


def test_cli_watch_prints_arrivals(cluster, token, db):
    url = cluster.primary.control_url
    with store.immediate(db):
        db.execute("INSERT INTO airports (faa, name) VALUES ('CLI', 'Watch Field')")
    wait_until(lambda: rows(cluster.replicas[-1].url, "airports", faa="CLI"))
    txid = cluster.public_pos().txid
    # watch follows live events: change the row again while it runs.
    output = {}

    def run():
        output["result"] = CliRunner().invoke(cli, ["watch", "--url", url, "--token", token, "--until", str(txid + 1)])

    baseline = subscribers(url)
    thread = threading.Thread(target=run)
    thread.start()
    wait_until(lambda: subscribers(url) > baseline, timeout=10, message="watch connected")
    with store.immediate(db):
        db.execute("UPDATE airports SET name = 'Watch Field 2' WHERE faa = 'CLI'")
    thread.join(30)
    result = output["result"]
    assert result.exit_code == 0, result.output
    line = [l for l in result.output.splitlines() if l.startswith(f"txid {txid + 1} ")][-1]
    assert line.startswith(f"txid {txid + 1} (1 row changed in airports): "), line
    for node in cluster.replicas:
        assert f"{node.name} ✓" in line


def subscribers(url) -> int:
    import httpx

    return httpx.get(f"{url}/health", timeout=5).json()["subscribers"]


def test_stopped_node_shows_behind_then_catches_up(new_cluster):
    cluster = new_cluster(replicas=2)
    from broadsheet.tokens import mint

    control = ControlClient(cluster.primary.control_url, mint(cluster.primary.secret, "tester"))
    late = cluster.replicas[1]
    wait_until(lambda: all(n["connected"] for n in control.nodes()), message="nodes connected")

    cluster.stop_replica(late)
    wait_until(lambda: not _node(control, late.name)["connected"], message="node seen as down")
    create_table(cluster, "breaking", [{"id": 1, "text": "news"}])
    result = control.publish("breaking")
    txid = result["public_txid"]
    record = control.propagation(txid, wait=2)
    arrivals = {n["name"]: n["arrived"] for n in record["nodes"]}
    assert arrivals == {cluster.replicas[0].name: True, late.name: False}
    node = _node(control, late.name)
    assert node["behind_txids"] >= 1 and node["lag_ms"] > 0

    cluster.start_replica(late)
    record = control.propagation(txid, wait=30)
    assert record["complete"]
    wait_until(lambda: _node(control, late.name)["behind_txids"] == 0, message="caught up")
    assert rows(late.url, "breaking")[0]["text"] == "news"


def _node(control, name):
    return next(n for n in control.nodes() if n["name"] == name)


def test_a_read_node_streams_its_position_to_a_bounded_number_of_followers(cluster, db):
    """/-/replication/stream (what the control plane follows, so that a read
    node's LiteFS API can stay on loopback): one line now, one per new TXID;
    past the node's limit, a 503 with Retry-After."""
    import json

    import httpx

    from broadsheet.litefs import Pos
    from conftest import create_table, settle

    node = cluster.replicas[0]
    with httpx.Client(timeout=httpx.Timeout(10, read=20)) as client:
        with client.stream("GET", f"{node.url}/-/replication/stream") as response:
            assert response.status_code == 200
            lines = (json.loads(line) for line in response.iter_lines() if line.strip())
            first = next(lines)
            assert first["node"] == node.name and first["txid"] == Pos.read(node.public_db).txid
            create_table(cluster, "streamed", [{"id": 1}])
            store.set_public(db, "streamed", True, actor="test")
            settle(cluster)
            assert next(lines)["txid"] > first["txid"]
        # The control plane holds one of the node's four places.
        held = [client.stream("GET", f"{node.url}/-/replication/stream") for _ in range(3)]
        opened = [h.__enter__() for h in held]
        try:
            assert [r.status_code for r in opened] == [200, 200, 200]
            refused = client.get(f"{node.url}/-/replication/stream")
            assert refused.status_code == 503 and refused.headers["retry-after"]
        finally:
            for h in held:
                h.__exit__(None, None, None)

"""A flip, whichever path makes it (the table action in the team's
Datasette, the control plane, the CLI), is a Datasette event that the
team's own plugins see, once, and a propagation record that says what the
public TXID was and who asked, with each read node's arrival: in the
control plane's JSON, its event stream and `broadsheet watch`."""

from __future__ import annotations

import json
import queue
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from broadsheet.tokens import mint
from broadsheet.client import ControlClient
from local.cluster import LocalCluster
from conftest import create_table, wait_until

PLUGINS = Path(__file__).parent / "plugins"
# The team's own plugins: one records events, one is a permission rule.
TEAM_PLUGINS = ("record_events.py", "payroll_stays_private.py")


@pytest.fixture(scope="module")
def flips(tmp_path_factory):
    """A cluster whose team Datasette loads a recording plugin, and the
    file that plugin records events in."""
    root = tmp_path_factory.mktemp("flips")
    plugins = root / "team-plugins"
    plugins.mkdir()
    for name in TEAM_PLUGINS:
        shutil.copy(PLUGINS / name, plugins)
    cluster = LocalCluster(
        root / "cluster", replicas=2, compress=False,
        primary_env={"BROADSHEET_TEAM_PLUGINS_DIR": str(plugins)},
    )
    cluster.start()
    yield cluster, plugins / "events.jsonl"
    cluster.stop()


def recorded(events_file: Path, table: str) -> list[dict]:
    try:
        lines = events_file.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [e for e in map(json.loads, lines) if e["table"] == table]


def wait_for_event(events_file: Path, table: str, name: str, count: int = 1) -> dict:
    wait_until(
        lambda: len([e for e in recorded(events_file, table) if e["name"] == name]) >= count,
        timeout=15, message=f"{name} event for {table}",
    )
    return [e for e in recorded(events_file, table) if e["name"] == name][count - 1]


def arrived_everywhere(cluster, control: ControlClient, txid: int) -> dict:
    record = control.propagation(txid, wait=10)
    assert record["complete"], record
    assert sorted(n["name"] for n in record["nodes"]) == [n.name for n in cluster.replicas]
    assert all(n["arrived"] and n["ms"] is not None for n in record["nodes"]), record
    return record


def test_a_flip_from_the_table_action(flips):
    cluster, events = flips
    token = mint(cluster.primary.secret, "alice")
    create_table(cluster, "fleet", [{"id": i, "model": f"A3{i}"} for i in range(1, 4)])
    response = httpx.post(
        f"{cluster.primary.url}/-/broadsheet/visibility/data/fleet",
        data={"operation": "publish"}, headers={"Authorization": f"Bearer {token}"}, timeout=30,
    )
    assert response.status_code == 200, response.text
    txid = int(re.search(r'class="broadsheet-txid">(\d+)<', response.text).group(1))

    event = wait_for_event(events, "fleet", "broadsheet-publish")
    assert event["actor"] == {"id": "alice"} and event["database"] == "data" and event["public_txid"] == txid
    control = ControlClient(cluster.primary.control_url, token)
    record = arrived_everywhere(cluster, control, txid)
    assert record["changes"] == ["fleet published by alice (3 rows)"]
    assert record["cycle"]["published"] == ["fleet"] and record["cycle"]["actors"] == {"fleet": "alice"}

    # Her next write through Datasette's API: rows changed, nobody flipped.
    inserted = httpx.post(
        f"{cluster.primary.url}/data/fleet/-/insert",
        json={"rows": [{"id": i, "model": f"B7{i}"} for i in range(10, 52)]},
        headers={"Authorization": f"Bearer {token}", "Broadsheet-Wait": "public"}, timeout=30,
    )
    assert inserted.status_code == 201, inserted.text
    record = arrived_everywhere(cluster, control, int(inserted.headers["broadsheet-public-txid"]))
    assert record["changes"] == ["42 rows changed in fleet"]
    assert [e["name"] for e in recorded(events, "fleet")] == ["broadsheet-publish"]  # one event per flip


def test_a_flip_through_the_control_plane(flips):
    cluster, events = flips
    control = ControlClient(cluster.primary.control_url, mint(cluster.primary.secret, "bob"))
    create_table(cluster, "notes", [{"id": 1, "text": "hello"}])
    stream: queue.Queue = queue.Queue()

    def follow():
        try:
            for event, data in control.events():
                stream.put((event, data))
        except Exception:  # closed when the test ends
            pass

    threading.Thread(target=follow, daemon=True).start()
    assert stream.get(timeout=10)[0] == "node"  # connected

    published = control.publish("notes", True)
    event = wait_for_event(events, "notes", "broadsheet-publish")
    assert event["actor"] == {"id": "bob"} and event["public_txid"] == published["public_txid"]
    assert arrived_everywhere(cluster, control, published["public_txid"])["changes"] == ["notes published by bob (1 row)"]

    unpublished = control.publish("notes", False)
    event = wait_for_event(events, "notes", "broadsheet-unpublish")
    assert event["actor"] == {"id": "bob"} and event["public_txid"] == unpublished["public_txid"]
    assert arrived_everywhere(cluster, control, unpublished["public_txid"])["changes"] == ["notes unpublished by bob"]
    assert [e["name"] for e in recorded(events, "notes")] == ["broadsheet-publish", "broadsheet-unpublish"]

    # The event stream says the same, with each node's arrival. (Arrivals
    # and the publisher's record of the cycle come in either order: each
    # sends the record again.)
    def streamed_complete(txid: int) -> dict:
        while True:
            name, data = stream.get(timeout=10)
            if name == "propagation" and data["txid"] == txid and data["complete"] and data["changes"]:
                return data

    record = streamed_complete(unpublished["public_txid"])
    assert record["changes"] == ["notes unpublished by bob"]
    assert {n["name"] for n in record["nodes"] if n["arrived"]} == {n.name for n in cluster.replicas}


def test_a_flip_from_the_cli(flips):
    cluster, events = flips
    create_table(cluster, "gates", [{"id": i, "gate": f"G{i}"} for i in range(1, 6)])

    def broadsheet(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "broadsheet.cli", *args, "--dir", str(cluster.root)],
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    output = broadsheet("publish", "gates", "--watch")
    txid = int(re.search(r"public TXID (\d+)", output).group(1))
    # The CLI's own token names it "cli" (a member's --token names them).
    assert re.search(rf"^txid {txid} \(gates published by cli \(5 rows\)\): replica-1 ✓ \d+ ms, replica-2 ✓ \d+ ms$",
                     output, re.M), output
    event = wait_for_event(events, "gates", "broadsheet-publish")
    assert event["actor"] == {"id": "cli"} and event["public_txid"] == txid

    output = broadsheet("unpublish", "gates")
    event = wait_for_event(events, "gates", "broadsheet-unpublish")
    assert event["actor"] == {"id": "cli"} and f"public TXID {event['public_txid']}" in output

    # Straight into data.db, no control plane: an event all the same.
    assert "gates is now public" in broadsheet("publish", "gates", "--data-db", str(cluster.primary.data_db))
    event = wait_for_event(events, "gates", "broadsheet-publish", count=2)
    assert event["actor"] == {"id": "cli"} and event["public_txid"] > txid
    names = [e["name"] for e in recorded(events, "gates")]
    assert names == ["broadsheet-publish", "broadsheet-unpublish", "broadsheet-publish"]


def test_the_watch_page_says_what_each_txid_was(flips):
    """/watch in headless Chromium, logged in as the team: a flip appears
    with what it was and its arrival on each read node."""
    from playwright.sync_api import expect, sync_playwright

    from test_browser import ARGS, CHROMIUM, team_page

    cluster, _ = flips
    create_table(cluster, "crews", [{"id": 1, "crew": "A"}, {"id": 2, "crew": "B"}])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = team_page(cluster, browser)
            page.goto(f"{cluster.primary.control_url}/watch")  # the login cookie is good here too
            expect(page.locator(".bw-conn")).to_have_text("live")
            control = ControlClient(cluster.primary.control_url, mint(cluster.primary.secret, "dana"))
            txid = control.publish("crews", True)["public_txid"]
            block = page.locator(f'.bw-publish[data-txid="{txid}"]')
            expect(block).to_contain_text("crews published by dana (2 rows)")
            for node in cluster.replicas:
                expect(block.locator(f'g.bw-arrival[data-node="{node.name}"]')).to_have_attribute("data-arrived", "true")
        finally:
            browser.close()


def test_the_teams_own_permission_rule_holds_on_every_path(flips):
    """A team plugin that says no to one table: the table action and the
    control plane (so the CLI) both refuse, and nothing is flipped."""
    from broadsheet.client import ControlError

    cluster, events = flips
    create_table(cluster, "payroll", [{"id": 1, "salary": 100}])
    token = mint(cluster.primary.secret, "alice")
    page = httpx.post(
        f"{cluster.primary.url}/-/broadsheet/visibility/data/payroll",
        data={"operation": "publish"}, headers={"Authorization": f"Bearer {token}"}, timeout=30,
    )
    assert page.status_code == 403
    with pytest.raises(ControlError) as refused:
        ControlClient(cluster.primary.control_url, token).publish("payroll", True)
    assert refused.value.status == 403
    assert status_of(cluster, "payroll") is False and recorded(events, "payroll") == []


def status_of(cluster, table: str) -> bool:
    from primary import store

    conn = store.connect(str(cluster.primary.data_db), readonly=True)
    try:
        return table in store.public_tables(conn)
    finally:
        conn.close()

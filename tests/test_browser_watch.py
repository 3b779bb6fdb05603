"""The /watch page in a real browser (headless Chromium), in the team
Datasette's look: every read node by region, a write's public TXID arriving
on each node as a waterfall, in the order the nodes' distances imply (read
nodes behind links of 0, 150 and 400 ms one way, local/links.py), and each
node's lag chart. A screenshot is saved into the test's directory."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from playwright.sync_api import expect

from conftest import wait_until
from local.links import LinkSpec
from primary import store
from test_browser import browser, team_page  # noqa: F401 (the fixture)

REGIONS = ("lhr", "iad", "syd")
DELAYS_MS = (0, 150, 400)  # one-way, per read node: its link's


@pytest.mark.timeout(120)
def test_watch_shows_each_write_arriving_on_every_node_by_region(new_cluster, browser, tmp_path):  # noqa: F811
    cluster = new_cluster(replicas=3, links=[LinkSpec(r, d) for r, d in zip(REGIONS, DELAYS_MS)])
    page = team_page(cluster, browser)
    page.set_viewport_size({"width": 1100, "height": 900})
    page.goto(f"{cluster.primary.url}/data")
    # The team's menu leads to it.
    page.locator("details.nav-menu summary").click()
    page.get_by_role("link", name="Watch propagation").click()
    expect(page.locator("h1")).to_have_text("Watch propagation")
    expect(page.locator(".bw-conn")).to_have_text("live")
    for node, region in zip(cluster.replicas, REGIONS):
        card = page.locator(f'.bw-region[data-region="{region}"] .bw-node[data-node="{node.name}"]')
        expect(card).to_have_attribute("data-state", "live", timeout=20_000)

    db = store.connect(str(cluster.primary.data_db))
    try:
        txids = []
        for i in range(3):
            with store.immediate(db):
                db.execute("INSERT INTO airports (faa, name) VALUES (?, ?)", (f"W{i}X", f"Watched Field {i}"))
            before = cluster.public_pos().txid
            txids.append(wait_until(lambda: (t := cluster.public_pos().txid) > before and t, message="a public TXID"))
            time.sleep(0.3)  # three distinct publishes, not one cycle
    finally:
        db.close()

    for txid in txids:
        block = page.locator(f'.bw-publish[data-txid="{txid}"]')
        expect(block).to_have_attribute("data-complete", "true", timeout=15_000)
        rows = block.locator("g.bw-arrival")
        expect(rows).to_have_count(len(cluster.replicas))
        arrivals = {r.get_attribute("data-node"): float(r.get_attribute("data-ms")) for r in rows.all()}
        assert set(arrivals) == {n.name for n in cluster.replicas}
        # Drawn first to last, in the order the delays imply; none sooner
        # than its link's one-way delay.
        order = [r.get_attribute("data-node") for r in rows.all()]
        assert order == [n.name for n in cluster.replicas], arrivals
        for node, delay in zip(cluster.replicas, DELAYS_MS):
            assert arrivals[node.name] >= delay, arrivals
    expect(page.locator(".bw-node svg.bw-lag circle").first).to_be_visible()
    shot = tmp_path / "watch.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")

    # syd cut off: the next write leaves it behind, marked so, its lag
    # growing; healed, it catches up.
    syd = cluster.replicas[2]
    cluster.links.cut("syd")
    try:
        with store.immediate(db := store.connect(str(cluster.primary.data_db))):
            db.execute("INSERT INTO airports (faa, name) VALUES ('WCT', 'Cut-off Field')")
        db.close()
        card = page.locator(f'.bw-node[data-node="{syd.name}"]')
        expect(card).to_have_attribute("data-state", re.compile("behind|cut off"), timeout=10_000)
        expect(card.locator(".bw-detail")).to_contain_text("behind by 1 TXID")
        expect(page.locator(f'.bw-node[data-node="{cluster.replicas[0].name}"]')).to_have_attribute("data-state", "live")
        time.sleep(1.5)  # its lag on the chart
        cut = tmp_path / "watch-cut-off.png"
        page.screenshot(path=str(cut), full_page=True)
        print(f"screenshot: {cut}")
    finally:
        cluster.links.heal("syd")
    expect(card).to_have_attribute("data-state", "live", timeout=20_000)

    # The team Datasette passes the control plane's events on while the page
    # is open, and lets go of them when it closes.
    def subscribers() -> int:
        return httpx.get(f"{cluster.primary.control_url}/health", timeout=5).json()["subscribers"]

    assert subscribers() == 1
    page.goto("about:blank")
    wait_until(lambda: subscribers() == 0, timeout=10, message="the page's event stream let go")

    # The control plane's own /watch shows the same page, without Datasette's look.
    page.goto(f"{cluster.primary.control_url}/watch")
    expect(page.locator(".bw-conn")).to_have_text("live")
    expect(page.locator(f'.bw-publish[data-txid="{txids[-1]}"]')).to_have_attribute("data-complete", "true")

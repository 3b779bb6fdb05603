"""A team member in a real browser (headless Chromium driven by Playwright):
log in, make a private table public through the table actions menu, see it
on a read node, make it private again and see the 403."""

import re

import pytest
from playwright.sync_api import expect, sync_playwright

from conftest import status, wait_until

CHROMIUM = "/usr/bin/chromium"
# As root, in a sandbox with no network but loopback.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def test_make_public_and_private_from_the_table_actions_menu(cluster, browser, tmp_path):
    page = browser.new_page()
    page.set_default_timeout(15_000)
    node = cluster.replicas[0]
    assert status(node.url, "/public/planes") == 403

    page.goto(f"{cluster.primary.url}/-/login")
    page.fill("input[name=username]", "team")
    page.fill("input[name=password]", cluster.primary.team_password)
    page.click("input[type=submit]")

    page.goto(f"{cluster.primary.url}/data/planes")
    page.locator("summary", has_text="Table actions").click()
    page.get_by_role("menuitem", name=re.compile("^Make public")).click()
    expect(page.locator("h1")).to_contain_text("planes is private")
    page.get_by_role("button", name="Make public").click()

    expect(page.locator(".broadsheet-outcome")).to_contain_text("is now public")
    txid = int(page.locator(".broadsheet-txid").inner_text())
    assert txid >= 1
    expect(page.locator(".broadsheet-live")).to_contain_text(f"✓ {node.name}")
    page.screenshot(path=str(tmp_path / "made-public.png"))
    # The audit log on the page names who did it.
    expect(page.locator("table.rows-and-columns")).to_contain_text("team")

    # Publishing is a Datasette event, which the primary logs.
    events = (cluster.supervisor.log_dir / "primary-datasette.log").read_text()
    assert '"event": "broadsheet-publish", "actor": "team"' in events and '"table": "planes"' in events

    visitor = browser.new_page()  # an anonymous visitor: no cookies
    response = visitor.goto(f"{node.url}/public/planes?_txid={txid}")
    assert response.status == 200
    expect(visitor.locator("table.rows-and-columns")).to_contain_text("N10156")

    page.goto(f"{cluster.primary.url}/data/planes")
    page.locator("summary", has_text="Table actions").click()
    page.get_by_role("menuitem", name=re.compile("^Make private")).click()
    page.get_by_role("button", name="Make private").click()
    expect(page.locator(".broadsheet-outcome")).to_contain_text("is now private")
    private_txid = int(page.locator(".broadsheet-txid").inner_text())
    assert private_txid > txid

    response = visitor.goto(f"{node.url}/public/planes?_txid={private_txid}")
    assert response.status == 403
    for other in cluster.replicas:
        wait_until(lambda: status(other.url, "/public/planes") == 403)


def test_anonymous_browser_is_sent_to_login(cluster, browser):
    page = browser.new_page()
    page.goto(f"{cluster.primary.url}/data/planes")
    assert page.url.endswith("/-/login")


def test_watch_page_shows_a_publish_arriving_on_every_node(cluster, browser, control, db):
    """The live propagation page on the primary, signed in with the same
    login cookie as the team's Datasette."""
    from primary import state

    page = browser.new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{cluster.primary.url}/-/login")
    page.fill("input[name=username]", "team")
    page.fill("input[name=password]", cluster.primary.team_password)
    page.click("input[type=submit]")
    page.goto(f"{cluster.primary.control_url}/watch")
    expect(page.locator("#conn")).to_have_text("live")
    for node in cluster.replicas:
        expect(page.locator(f'tr[data-node="{node.name}"]')).to_contain_text("connected")

    with state.immediate(db):
        db.execute("INSERT INTO airports (faa, name) VALUES ('WCH', 'Watched Field')")
    wait_until(lambda: cluster.public_pos().txid > 0)
    txid = control._call("GET", "/bookmarks")["public_txid"]
    row = page.locator(f'tr[data-txid="{txid}"]')
    for node in cluster.replicas:
        expect(row).to_contain_text(f"{node.name} ✓")

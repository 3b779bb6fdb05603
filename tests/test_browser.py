"""A team member in a real browser (headless Chromium driven by Playwright):
log in, make a private table public through the table actions menu (all of
it, or chosen columns and rows after a preview), see it on a read node and
a badge in the team's table list, make it private again and see the 403;
set what read nodes show of a table and see it there."""

import re

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from conftest import create_table, rows, status, wait_until
from primary import store

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


def team_page(cluster, browser):
    """A page logged in as the team."""
    page = browser.new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{cluster.primary.url}/-/login")
    page.fill("input[name=username]", "team")
    page.fill("input[name=password]", cluster.primary.team_password)
    page.click("input[type=submit]")
    return page


def open_table_action(page, cluster, table: str, action: str) -> None:
    page.goto(f"{cluster.primary.url}/data/{table}")
    page.locator("summary", has_text="Table actions").click()
    page.get_by_role("menuitem", name=re.compile(f"^{action}")).click()


def test_make_public_and_private_from_the_table_actions_menu(cluster, browser, tmp_path):
    page = team_page(cluster, browser)
    node = cluster.replicas[0]
    assert status(node.url, "/public/planes") == 403

    open_table_action(page, cluster, "planes", "Make public")
    expect(page.locator("h1")).to_contain_text("planes is private")
    page.get_by_role("button", name="Preview").click()
    expect(page.locator(".broadsheet-preview-rows")).to_have_text(re.compile(r"^(\d+) of \1 rows$"))
    page.get_by_role("button", name="Publish", exact=True).click()

    expect(page.locator(".broadsheet-outcome")).to_contain_text("is now public")
    txid = int(page.locator(".broadsheet-txid").inner_text())
    assert txid >= 1
    expect(page.locator(".broadsheet-live")).to_contain_text(f"✓ {node.name}")
    page.screenshot(path=str(tmp_path / "made-public.png"))
    # The audit log on the page names who did it.
    expect(page.locator("table.broadsheet-history")).to_contain_text("team")

    # Publishing is a Datasette event (fired from the audit log), which the primary logs.
    def logged_event():
        events = (cluster.supervisor.log_dir / "primary-datasette.log").read_text().splitlines()
        return any('"event": "broadsheet-publish", "actor": "team"' in e and '"table": "planes"' in e for e in events)

    wait_until(logged_event, message="the broadsheet-publish event in the primary's log")

    visitor = browser.new_page()  # an anonymous visitor: no cookies
    response = visitor.goto(f"{node.url}/public/planes?_txid={txid}")
    assert response.status == 200
    expect(visitor.locator("table.rows-and-columns")).to_contain_text("N10156")

    open_table_action(page, cluster, "planes", "Make private")
    page.get_by_role("button", name="Make private").click()
    expect(page.locator(".broadsheet-outcome")).to_contain_text("is now private")
    private_txid = int(page.locator(".broadsheet-txid").inner_text())
    assert private_txid > txid

    response = visitor.goto(f"{node.url}/public/planes?_txid={private_txid}")
    assert response.status == 403
    for other in cluster.replicas:
        wait_until(lambda: status(other.url, "/public/planes") == 403)


EMAIL = "BROWSER-EXCLUDED-EMAIL-SENTINEL-8f4"


def test_publish_chosen_columns_and_rows_after_a_preview(cluster, browser, db, tmp_path):
    create_table(
        cluster,
        "helpers",
        [{"id": i, "name": f"helper {i}", "city": "York", "email": f"{EMAIL} {i}", "consent": i % 2} for i in range(1, 41)],
    )
    create_table(cluster, "helpers_private", [{"id": 1, "note": "stays private"}])
    page = team_page(cluster, browser)
    open_table_action(page, cluster, "helpers", "Make public")
    expect(page.locator("h1")).to_contain_text("helpers is private")
    key = page.locator("input[name=columns][value=id]")
    expect(key).to_be_checked()
    expect(key).to_be_disabled()
    page.get_by_role("checkbox", name="email", exact=True).uncheck()
    page.get_by_label("Only rows where").fill("consent = 1")
    page.get_by_role("button", name="Preview").click()

    expect(page.locator(".broadsheet-preview-rows")).to_have_text("20 of 40 rows")
    expect(page.locator(".broadsheet-preview-columns")).to_have_text("id, name, city, consent")
    expect(page.locator(".broadsheet-sample tbody tr")).to_have_count(5)
    expect(page.locator(".broadsheet-sample")).to_contain_text("helper 1")
    expect(page.locator(".broadsheet-sample")).not_to_contain_text(EMAIL)
    page.screenshot(path=str(tmp_path / "preview.png"), full_page=True)
    assert "helpers" not in store.public_tables(db)  # nothing is public before the confirmation

    page.get_by_role("button", name="Publish", exact=True).click()
    expect(page.locator(".broadsheet-outcome")).to_contain_text("is now public")
    txid = int(page.locator(".broadsheet-txid").inner_text())
    expect(page.locator(".broadsheet-current-spec")).to_have_text("all columns but email; rows where consent = 1")

    columns = ["id", "name", "city", "consent"]
    expected = [dict(zip(columns, r)) for r in db.execute(f"SELECT {', '.join(columns)} FROM helpers WHERE consent = 1 ORDER BY id")]
    served = rows(cluster.replicas[0].url, "helpers", _txid=txid, _size="max", _sort="id")
    assert served == expected and len(served) == 20

    # The team's own table list, and the table's page: a "partial" badge.
    page.goto(f"{cluster.primary.url}/data")
    listed = page.locator(".db-table", has=page.get_by_role("link", name="helpers", exact=True))
    expect(listed.locator(".broadsheet-badge")).to_have_text("partial")
    expect(page.locator(".db-table", has=page.get_by_role("link", name="airports", exact=True)).locator(
        ".broadsheet-badge")).to_have_text("public")
    expect(page.locator(".db-table", has=page.get_by_role("link", name="helpers_private", exact=True)).locator(
        ".broadsheet-badge")).to_have_count(0)
    page.screenshot(path=str(tmp_path / "badges.png"), full_page=True)
    page.goto(f"{cluster.primary.url}/data/helpers")
    expect(page.locator(".page-header h1 .broadsheet-badge")).to_have_text("partial")

    # Changing it starts from what is public now.
    open_table_action(page, cluster, "helpers", "Change what is public")
    expect(page.locator("h1")).to_contain_text("helpers is public")
    expect(page.get_by_role("checkbox", name="email", exact=True)).not_to_be_checked()
    expect(page.get_by_role("checkbox", name="city", exact=True)).to_be_checked()
    expect(page.get_by_label("Only rows where")).to_have_value("consent = 1")
    expect(page.locator("table.broadsheet-history")).to_contain_text("all columns but email; rows where consent = 1")
    page.screenshot(path=str(tmp_path / "change.png"), full_page=True)


def test_set_what_read_nodes_show_from_the_make_public_page(cluster, browser, control, db, tmp_path):
    create_table(cluster, "wire_dispatches", [{"id": 1, "headline": "hello"}])
    control.publish("wire_dispatches")
    page = team_page(cluster, browser)
    open_table_action(page, cluster, "wire_dispatches", "Change what is public")
    expect(page.locator("#metadata h2")).to_have_text("What read nodes show")
    page.get_by_label("Description").fill("Every dispatch, as filed")
    page.get_by_label("Source", exact=True).fill("The wire desk")
    page.get_by_label("Source URL").fill("https://example.org/wire")
    page.get_by_role("button", name="Save").click()
    expect(page.locator(".broadsheet-metadata-saved")).to_have_text("Saved: read nodes show it at the next publish cycle.")
    expect(page.get_by_label("Description")).to_have_value("Every dispatch, as filed")
    page.screenshot(path=str(tmp_path / "metadata.png"), full_page=True)
    assert store.metadata(db)["wire_dispatches"] == {
        "description": "Every dispatch, as filed", "source": "The wire desk", "source_url": "https://example.org/wire",
    }

    visitor = browser.new_page()
    for node in cluster.replicas:
        wait_until(lambda node=node: "Every dispatch, as filed" in httpx.get(f"{node.url}/public/wire_dispatches", timeout=5).text)
    visitor.goto(f"{cluster.replicas[0].url}/public/wire_dispatches")
    footer = visitor.get_by_role("contentinfo")
    expect(footer.get_by_role("link", name="The wire desk")).to_have_attribute("href", "https://example.org/wire")

    # The instance's own, one link away.
    page.get_by_role("link", name="its metadata page").click()
    expect(page.locator("h1")).to_have_text("What read nodes show")
    expect(page.get_by_label("Title")).to_be_visible()


def test_anonymous_browser_is_sent_to_login(cluster, browser):
    page = browser.new_page()
    page.goto(f"{cluster.primary.url}/data/planes")
    assert page.url.endswith("/-/login")


def test_watch_page_shows_a_publish_arriving_on_every_node(cluster, browser, control, db):
    """The control plane's own /watch (the team Datasette's page without
    its look: tests/test_browser_watch.py), signed in with the same login
    cookie as the team's Datasette."""
    from primary import store

    page = team_page(cluster, browser)
    page.goto(f"{cluster.primary.control_url}/watch")
    expect(page.locator(".bw-conn")).to_have_text("live")
    for node in cluster.replicas:
        expect(page.locator(f'.bw-node[data-node="{node.name}"]')).to_have_attribute("data-state", "live")

    with store.immediate(db):
        db.execute("INSERT INTO airports (faa, name) VALUES ('WCH', 'Watched Field')")
    wait_until(lambda: cluster.public_pos().txid > 0)
    txid = control.bookmark()["public_txid"]
    block = page.locator(f'.bw-publish[data-txid="{txid}"]')
    for node in cluster.replicas:
        expect(block.locator(f'g.bw-arrival[data-node="{node.name}"]')).to_have_attribute("data-arrived", "true")

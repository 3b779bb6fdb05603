"""Masks and embargoes on the Make public page in a real browser (headless
Chromium): a mask typed for a column is what the preview shows and what a
read node serves; a moment typed beside Publish schedules it, the page
counts down to it, and Cancel removes it."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from playwright.sync_api import expect

from conftest import create_table, rows
from primary import store
from test_browser import browser, open_table_action, team_page  # noqa: F401 (the fixture)

EMAIL = "BROWSER-MASKED-EMAIL-SENTINEL-2e7"


def test_a_mask_typed_on_the_page_is_previewed_and_served_and_an_embargo_counts_down(cluster, browser, db):  # noqa: F811
    create_table(cluster, "contacts", [{"id": i, "name": f"contact {i}", "email": f"{EMAIL} {i}"} for i in range(1, 11)])
    page = team_page(cluster, browser)
    open_table_action(page, cluster, "contacts", "Make public")
    page.locator('input[name="mask:email"]').fill("'withheld'")
    page.get_by_role("button", name="Preview").click()
    expect(page.locator(".broadsheet-sample")).to_contain_text("withheld")
    expect(page.locator(".broadsheet-sample")).not_to_contain_text(EMAIL)

    # An embargo first: typed beside Publish, counted down, cancelled.
    at = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat(timespec="seconds")
    page.locator(".broadsheet-confirm input[name=at]").fill(at)
    page.get_by_role("button", name="Publish", exact=True).click()
    expect(page.locator(".broadsheet-scheduled")).to_contain_text("contacts will be public at")
    expect(page.locator(".broadsheet-countdown")).to_have_text(re.compile(r"^in (59m|1h )"))
    assert "contacts" not in store.public_tables(db)
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator(".broadsheet-cancelled")).to_contain_text("Cancelled")
    assert store.schedule.pending(db) == []

    # Now, with the mask.
    page.locator('input[name="mask:email"]').fill("'withheld'")
    page.get_by_role("button", name="Preview").click()
    page.get_by_role("button", name="Publish", exact=True).click()
    expect(page.locator(".broadsheet-outcome")).to_contain_text("is now public")
    txid = int(page.locator(".broadsheet-txid").inner_text())
    served = rows(cluster.replicas[0].url, "contacts", _txid=txid, _size="max", _sort="id")
    assert {r["email"] for r in served} == {"withheld"} and len(served) == 10

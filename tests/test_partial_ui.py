"""The team's Make public page over HTTP (a team token, as a script or
`curl` would send it): tick columns, type a row filter, preview, publish
exactly what was previewed; a bad filter is a 400 page that changes nothing.
The browser's view of the same page is in test_browser.py."""

from __future__ import annotations

import html
import re

import httpx
import pytest

from broadsheet.litefs import Pos
from conftest import create_table, settle
from primary import store
from primary.datasette.forms import SpecForm
from primary.store import PublishSpec

EMAIL = "UI-EXCLUDED-EMAIL-SENTINEL-3c9"
COLUMNS = ["id", "name", "email", "consent"]


def people(n: int = 40) -> list[dict]:
    return [{"id": i, "name": f"person {i}", "email": f"{EMAIL} {i}", "consent": i % 2} for i in range(1, n + 1)]


@pytest.fixture(scope="module")
def team_page(cluster, token):
    with httpx.Client(
        base_url=f"{cluster.primary.url}/-/broadsheet/visibility/data",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ) as client:
        yield client


def error_message(response: httpx.Response) -> str:
    found = re.search(r'<p class="message-error">(.*?)</p>', response.text, re.S)
    return html.unescape(found.group(1)) if found else ""


def words(response: httpx.Response) -> str:
    """The page's text, roughly as a browser shows it."""
    return " ".join(html.unescape(re.sub(r"<[^>]*>", "", response.text)).split())


def checkbox(response: httpx.Response, column: str) -> str:
    found = re.search(rf'<input type="checkbox" name="columns" value="{column}"(.*?)>', response.text, re.S)
    assert found, column
    return " ".join(found.group(1).split())


@pytest.mark.parametrize(
    "form, spec",
    [
        (SpecForm(tuple(COLUMNS)), PublishSpec()),
        (SpecForm(tuple(COLUMNS), freeze_columns=True), PublishSpec(columns=tuple(COLUMNS))),
        (SpecForm(("id", "name", "consent"), "consent = 1"), PublishSpec(exclude_columns=("email",), where="consent = 1")),
        (SpecForm(("id", "name"), freeze_columns=True), PublishSpec(columns=("id", "name"))),
    ],
    ids=["all ticked", "all ticked, frozen", "one unticked, filtered", "two unticked, frozen"],
)
def test_the_form_means_the_whole_table_a_column_list_or_exclusions(form, spec):
    assert form.spec(COLUMNS) == spec
    # A public table's page is pre-filled with its spec, and means it again.
    assert SpecForm.from_spec(spec, COLUMNS).spec(COLUMNS) == spec


@pytest.mark.parametrize("action", ["preview", "publish"])
@pytest.mark.parametrize(
    "where, message",
    [
        ("random() > 0.5", "random()"),
        ("(SELECT count(*) FROM airports) > 0", "subquery"),
        ("consent = = 1", "syntax error"),
    ],
)
def test_a_bad_filter_is_a_400_page_that_changes_nothing(cluster, db, team_page, action, where, message):
    if "ui_bad_filter" not in store.user_tables(db):
        create_table(cluster, "ui_bad_filter", people(4))
    settle(cluster)
    before = (store.public_tables(db), store.audit_entries(db, limit=3), Pos.read(cluster.primary.public_db).txid)
    response = team_page.post(
        "/ui_bad_filter", data={"operation": "publish", "action": action, "columns": ["id", "name"], "where": where}
    )
    assert response.status_code == 400
    assert message in error_message(response), error_message(response)
    # The page, with the team's input kept to correct it.
    assert "<span class=\"broadsheet-state\">private<" in response.text and html.escape(where, quote=True) in response.text
    assert 'class="broadsheet-preview"' not in response.text and "Publish</button>" not in response.text
    settle(cluster)
    assert (store.public_tables(db), store.audit_entries(db, limit=3), Pos.read(cluster.primary.public_db).txid) == before


def test_preview_then_publish_exactly_that_and_the_page_shows_it(cluster, db, team_page):
    create_table(cluster, "ui_people", people())
    form = {"operation": "publish", "columns": ["name", "consent"], "where": "consent = 1"}

    preview = team_page.post("/ui_people", data={**form, "action": "preview"})
    assert preview.status_code == 200, error_message(preview)
    assert "serve 20 of 40 rows and 3 columns (id, name, consent)" in words(preview) and "person 1<" in preview.text and EMAIL not in preview.text
    assert "ui_people" not in store.public_tables(db)  # a preview changes nothing
    assert 'value="id"' in preview.text  # the disabled INTEGER PRIMARY KEY goes with the confirmation

    published = team_page.post("/ui_people", data={**form, "action": "publish"})
    assert published.status_code == 200, error_message(published)
    assert "ui_people is now public (all columns but email; rows where consent = 1)" in words(published)
    spec = PublishSpec(exclude_columns=("email",), where="consent = 1")
    assert store.public_specs(db)["ui_people"] == spec
    entry = store.audit_entries(db, table="ui_people", limit=1)[0]
    assert (entry["operation"], entry["spec_after"]) == ("publish", spec.to_json())

    # The page of a public table: its spec, and the form pre-filled with it.
    page = team_page.get("/ui_people")
    assert "<span class=\"broadsheet-state\">public<" in page.text and spec.describe() in page.text
    assert "checked" not in checkbox(page, "email") and "checked" in checkbox(page, "name")
    assert "disabled" in checkbox(page, "id")
    assert 'value="consent = 1"' in page.text

    # Widening it: the preview says what the change adds.
    change = team_page.post("/ui_people", data={**form, "columns": COLUMNS, "where": "", "action": "preview"})
    assert change.status_code == 200, error_message(change)
    assert "adds column email; adds 20 rows, removes 0 rows" in words(change)
    assert store.public_specs(db)["ui_people"] == spec


def test_a_script_posting_operation_alone_publishes_the_whole_table(cluster, db, team_page):
    create_table(cluster, "ui_whole", people(3))
    response = team_page.post("/ui_whole", data={"operation": "publish"})
    assert response.status_code == 200, error_message(response)
    assert store.public_specs(db)["ui_whole"] == PublishSpec()
    response = team_page.post("/ui_whole", data={"operation": "unpublish"})
    assert response.status_code == 200 and "ui_whole" not in store.public_tables(db)


def test_a_cross_site_form_cannot_publish_with_a_members_cookie(cluster, db):
    """Datasette's own cross-origin check covers the page: a form on another
    site, posted with a member's login cookie, gets 403."""
    create_table(cluster, "ui_cross_site", people(3))
    with httpx.Client(base_url=cluster.primary.url, timeout=30) as browser:
        login = browser.post("/-/login", data={"username": "team", "password": cluster.primary.team_password})
        assert login.status_code == 302
        before = (store.public_tables(db), store.audit_entries(db, limit=3))
        forged = browser.post(
            "/-/broadsheet/visibility/data/ui_cross_site",
            data={"operation": "publish", "action": "publish", "columns": COLUMNS},
            headers={"Sec-Fetch-Site": "cross-site", "Origin": "https://elsewhere.example"},
        )
        assert forged.status_code == 403
        assert (store.public_tables(db), store.audit_entries(db, limit=3)) == before


def test_a_view_is_previewed_and_published_whole(cluster, db, team_page):
    create_table(cluster, "ui_view_base", people(3))
    with store.immediate(db):
        db.execute("CREATE VIEW ui_high_airports AS SELECT faa, name, alt FROM airports WHERE alt > 5000")
        db.execute("CREATE VIEW ui_private_view AS SELECT name FROM ui_view_base")
    (high,) = db.execute("SELECT count(*) FROM ui_high_airports").fetchone()
    page = team_page.get("/ui_high_airports")
    assert "A view is published whole" in words(page) and 'name="columns"' not in page.text
    preview = team_page.post("/ui_high_airports", data={"operation": "publish", "action": "preview"})
    assert preview.status_code == 200, error_message(preview)
    assert f"serve {high} of {high} rows and 3 columns (faa, name, alt)" in words(preview)
    published = team_page.post("/ui_high_airports", data={"operation": "publish", "action": "publish"})
    assert published.status_code == 200, error_message(published)
    assert store.public_specs(db)["ui_high_airports"] == PublishSpec()
    # A view over a private table: the preview already says so.
    refused = team_page.post("/ui_private_view", data={"operation": "publish", "action": "preview"})
    assert refused.status_code == 400 and "ui_view_base" in error_message(refused)

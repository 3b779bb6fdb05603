"""The team sets what read nodes show (title, description, license, source,
with their URLs) from its own Datasette: the "What read nodes show" form on
a table's Make public page, and the same form for the public instance at
/-/broadsheet/metadata. Over HTTP with a team token, as a script or `curl`
would send it; the browser's view is in test_browser.py."""

from __future__ import annotations

import html
import re

import httpx
import pytest
from datasette.tokens import TokenRestrictions

from conftest import create_table, settle
from primary import store
from test_partial_ui import error_message, words
from test_permissions import restricted_token, viewer

SAVED = "Saved: read nodes show it at the next publish cycle"


def broadsheet_pages(cluster, token: str) -> httpx.Client:
    """The team's Datasette's /-/broadsheet pages, as a script with ``token`` sees them."""
    return httpx.Client(
        base_url=f"{cluster.primary.url}/-/broadsheet", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


@pytest.fixture(scope="module")
def team(cluster, token):
    with broadsheet_pages(cluster, token) as client:
        yield client


@pytest.fixture
def instance_kept(db):
    """The instance's metadata is shared by the session's tests: put it back."""
    before = store.metadata(db).get(store.INSTANCE, {})
    yield
    store.set_metadata(db, store.INSTANCE, {k: before.get(k) for k in store.METADATA_FIELDS})


def field(response: httpx.Response, name: str) -> str:
    """What the metadata form shows in a field."""
    found = re.search(rf'name="{name}"(?: rows="\d+">(.*?)</textarea>| value="(.*?)")', response.text, re.S)
    assert found, name
    return html.unescape(found.group(1) if found.group(1) is not None else found.group(2))


def on_read_nodes(cluster) -> list:
    settle(cluster)
    cluster.wait_for_replicas()
    return cluster.replicas


def test_a_tables_metadata_set_on_its_make_public_page_shows_on_read_nodes(cluster, db, team, control):
    create_table(cluster, "meta_ui_reports", [{"id": 1, "headline": "annual"}])
    control.publish("meta_ui_reports")
    page = team.get("/visibility/data/meta_ui_reports")
    assert page.status_code == 200 and "What read nodes show" in words(page)
    assert 'action="/-/broadsheet/metadata/data/meta_ui_reports#metadata"' in page.text
    assert 'href="/-/broadsheet/metadata"' in page.text  # the instance's page

    values = {
        "title": "Annual reports",
        "description": "Every report <we> filed",
        "license": "CC BY 4.0",
        "license_url": "https://creativecommons.org/licenses/by/4.0/",
        "source": "Finance desk",
        "source_url": "https://example.org/finance",
    }
    saved = team.post("/metadata/data/meta_ui_reports", data=values)
    assert saved.status_code == 200, error_message(saved)
    assert SAVED in words(saved)
    assert store.metadata(db)["meta_ui_reports"] == values
    assert "meta_ui_reports" in store.public_tables(db)  # saving metadata flips nothing
    # The page is pre-filled with what is set.
    page = team.get("/visibility/data/meta_ui_reports")
    assert {name: field(page, name) for name in store.METADATA_FIELDS} == values

    for node in on_read_nodes(cluster):
        shown = httpx.get(f"{node.url}/public/meta_ui_reports", timeout=10).text
        assert "Every report &lt;we&gt; filed" in shown and "Finance desk" in shown and "CC BY 4.0" in shown
        as_json = httpx.get(f"{node.url}/public/meta_ui_reports.json?_extra=metadata", timeout=10).json()
        assert as_json["metadata"]["source_url"] == "https://example.org/finance"

    # An emptied field is cleared, the others kept.
    team.post("/metadata/data/meta_ui_reports", data={**values, "source": "", "source_url": ""})
    assert store.metadata(db)["meta_ui_reports"] == {k: v for k, v in values.items() if not k.startswith("source")}
    for node in on_read_nodes(cluster):
        assert "Finance desk" not in httpx.get(f"{node.url}/public/meta_ui_reports", timeout=10).text


def test_the_instances_metadata_set_on_its_page_shows_on_read_nodes(cluster, db, team, instance_kept):
    page = team.get("/metadata")
    assert page.status_code == 200 and "What read nodes show" in words(page)
    values = {"title": "The Team Gazette", "license": "ODbL", "license_url": "https://opendatacommons.org/licenses/odbl/"}
    saved = team.post("/metadata", data=values)
    assert saved.status_code == 200, error_message(saved)
    assert SAVED in words(saved)
    assert {k: v for k, v in store.metadata(db)[store.INSTANCE].items() if k in values} == values
    assert field(team.get("/metadata"), "title") == "The Team Gazette"

    for node in on_read_nodes(cluster):
        index = httpx.get(f"{node.url}/", timeout=10).text
        assert "The Team Gazette" in index and "ODbL" in index
        assert httpx.get(f"{node.url}/.json", timeout=10).json()["metadata"]["license"] == "ODbL"


@pytest.mark.parametrize("page", ["/metadata/data/meta_ui_bad", "/metadata"], ids=["table", "instance"])
def test_a_bad_url_is_a_400_with_the_message_and_changes_nothing(cluster, db, team, page):
    if "meta_ui_bad" not in store.user_tables(db):
        create_table(cluster, "meta_ui_bad", [{"id": 1}])
    before = store.metadata(db)
    response = team.post(page, data={"title": "CHANGED-TITLE", "license_url": "javascript:alert(1)"})
    assert response.status_code == 400
    assert error_message(response) == "license_url must be an http(s) URL"
    # The team's input is kept, to correct it.
    assert field(response, "title") == "CHANGED-TITLE" and field(response, "license_url") == "javascript:alert(1)"
    assert SAVED not in words(response)
    assert store.metadata(db) == before


def statuses(client: httpx.Client, title: str) -> dict[str, int]:
    return {
        "table's page": client.get("/visibility/data/meta_ui_limited").status_code,
        "table's save": client.post("/metadata/data/meta_ui_limited", data={"title": title}).status_code,
        "instance's page": client.get("/metadata").status_code,
        "instance's save": client.post("/metadata", data={"title": title}).status_code,
    }


@pytest.mark.parametrize(
    "restrictions, table, instance",
    [
        (TokenRestrictions().allow_all("view-instance"), 403, 403),
        # The instance's metadata takes broadsheet-publish on data.db as a whole.
        (viewer().allow_resource("data", "meta_ui_limited", "broadsheet-publish"), 200, 403),
    ],
    ids=["view-instance only", "publish on that table only"],
)
def test_a_restricted_token_gets_403_where_it_may_not_publish(cluster, db, restrictions, table, instance):
    if "meta_ui_limited" not in store.user_tables(db):
        create_table(cluster, "meta_ui_limited", [{"id": 1}])
    before = store.metadata(db)
    with broadsheet_pages(cluster, restricted_token(cluster, restrictions)) as client:
        assert statuses(client, "Limited") == {
            "table's page": table, "table's save": table, "instance's page": instance, "instance's save": instance,
        }
        if table == 200:
            # Its table's page does not offer the instance's page.
            assert 'href="/-/broadsheet/metadata"' not in client.get("/visibility/data/meta_ui_limited").text
            before["meta_ui_limited"] = {"title": "Limited"}
    assert store.metadata(db) == before


def test_a_cross_site_form_cannot_change_metadata_with_a_members_cookie(cluster, db):
    """Datasette's own cross-origin check covers these pages too."""
    with httpx.Client(base_url=cluster.primary.url, timeout=30) as browser:
        login = browser.post("/-/login", data={"username": "team", "password": cluster.primary.team_password})
        assert login.status_code == 302
        before = store.metadata(db)
        for page in ("/-/broadsheet/metadata", "/-/broadsheet/metadata/data/airports"):
            forged = browser.post(
                page,
                data={"title": "FORGED-TITLE"},
                headers={"Sec-Fetch-Site": "cross-site", "Origin": "https://elsewhere.example"},
            )
            assert forged.status_code == 403, page
        assert store.metadata(db) == before

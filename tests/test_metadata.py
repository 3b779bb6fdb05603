"""Metadata the team sets (title, description, license, source, with URLs)
reaches every read node for the instance and for public tables only."""

from __future__ import annotations

import httpx
import pytest

from broadsheet.client import ControlError
from conftest import create_table, settle
from primary import store


def replicated(node_url: str) -> dict:
    body = httpx.get(f"{node_url}/public/-/query.json", params={"sql": "select * from _public_metadata"}, timeout=10)
    return {r["table_name"]: {k: v for k, v in r.items() if v and k != "table_name"} for r in body.json()["rows"]}


def test_metadata_reaches_read_nodes_for_public_tables_only(cluster, control, db):
    create_table(cluster, "reports", [{"id": 1, "title": "annual"}])
    create_table(cluster, "secret_plans", [{"id": 1, "plan": "x"}])
    control.publish("reports")
    control.set_metadata(None, {"title": "Newsroom data", "license": "CC BY 4.0",
                                "license_url": "https://creativecommons.org/licenses/by/4.0/"})
    control.set_metadata("reports", {"description": "Annual reports", "source": "Finance desk"})
    control.set_metadata("secret_plans", {"description": "SECRET-PLANS-DESCRIPTION"})
    settle(cluster)
    cluster.wait_for_replicas()
    for node in cluster.replicas:
        shown = replicated(node.url)
        assert shown[""]["title"] == "Newsroom data" and shown[""]["license"] == "CC BY 4.0"
        assert shown["reports"] == {"description": "Annual reports", "source": "Finance desk"}
        assert "secret_plans" not in shown
        assert b"SECRET-PLANS-DESCRIPTION" not in node.public_db.read_bytes()
    # Changed without a restart; cleared by an empty value.
    control.set_metadata("reports", {"description": "Annual reports, 2026", "source": ""})
    settle(cluster)
    cluster.wait_for_replicas()
    assert replicated(cluster.replicas[0].url)["reports"] == {"description": "Annual reports, 2026"}
    assert control.metadata()["tables"]["secret_plans"] == {"description": "SECRET-PLANS-DESCRIPTION"}


@pytest.mark.parametrize(
    "table, values, message",
    [
        (None, {"licence": "typo"}, "Unknown metadata field"),
        (None, {"license_url": "javascript:alert(1)"}, "http(s) URL"),
        ("no_such_table", {"title": "x"}, "does not exist"),
    ],
)
def test_bad_metadata_is_refused(cluster, control, db, table, values, message):
    before = store.metadata(db)
    with pytest.raises(ControlError) as exc:
        control.set_metadata(table, values)
    assert exc.value.status in (400, 404) and message in exc.value.message
    assert store.metadata(db) == before


def test_read_nodes_show_metadata_where_datasette_does(cluster, control, db):
    create_table(cluster, "gazette", [{"id": 1, "headline": "hello"}])
    control.publish("gazette")
    control.set_metadata(None, {"title": "The Public Gazette", "license": "ODbL",
                                "license_url": "https://opendatacommons.org/licenses/odbl/"})
    control.set_metadata("gazette", {"description": "Every headline we printed", "source": "The newsroom"})
    settle(cluster)
    cluster.wait_for_replicas()
    for node in cluster.replicas:
        index = httpx.get(f"{node.url}/", timeout=10).text
        assert "The Public Gazette" in index and "ODbL" in index
        page = httpx.get(f"{node.url}/public/gazette", timeout=10).text
        assert "Every headline we printed" in page and "The newsroom" in page
        assert httpx.get(f"{node.url}/.json", timeout=10).json()["metadata"]["title"] == "The Public Gazette"
        table = httpx.get(f"{node.url}/public/gazette.json?_extra=metadata", timeout=10).json()
        assert table["metadata"]["description"] == "Every headline we printed"
    # Changed without a restart.
    control.set_metadata("gazette", {"description": "Every headline, revised"})
    settle(cluster)
    cluster.wait_for_replicas()
    for node in cluster.replicas:
        assert "Every headline, revised" in httpx.get(f"{node.url}/public/gazette", timeout=10).text


def test_a_restricted_token_cannot_set_the_instance_metadata(cluster, control, db):
    from broadsheet.client import ControlClient
    from test_permissions import restricted_token, viewer

    before = store.metadata(db)
    for restrictions in (viewer(), viewer().allow_resource("data", "airports", "broadsheet-publish")):
        client = ControlClient(cluster.primary.control_url, restricted_token(cluster, restrictions))
        with pytest.raises(ControlError) as exc:
            client.set_metadata(None, {"title": "Not yours"})
        assert exc.value.status == 403
    assert store.metadata(db) == before

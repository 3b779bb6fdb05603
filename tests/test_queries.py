"""Saved queries on the cluster (real LiteFS, Datasette, HTTP): saved through
the control plane and the CLI, served with parameters by every read node,
refused at save when they read what is not public, withdrawn everywhere
(and audit-logged) when a table they read is unpublished; a private marker
reaches no read node through any of it."""

from __future__ import annotations

import html
import re

import httpx
import pytest
from click.testing import CliRunner
from datasette.tokens import TokenRestrictions

from broadsheet.cli import cli
from broadsheet.client import ControlError
from conftest import create_table, file_bytes, settle
from test_permissions import restricted_token

MARKER = "QUERY-SENTINEL-51c0-PRIVATE"


def on_every_node(cluster, path: str, txid: int, **params) -> list[httpx.Response]:
    return [
        httpx.get(f"{node.url}{path}", params={"_txid": txid, **params}, timeout=10) for node in cluster.replicas
    ]


@pytest.fixture(scope="module")
def flights(cluster, control):
    create_table(
        cluster,
        "q_flights",
        [
            {"id": 1, "carrier": "UA", "dest": "SFO", "delay": 75},
            {"id": 2, "carrier": "AA", "dest": "LAX", "delay": 5},
            {"id": 3, "carrier": "UA", "dest": "ORD", "delay": 120},
            {"id": 4, "carrier": "DL", "dest": "ATL", "delay": 61},
        ],
    )
    create_table(cluster, "q_private", [{"id": 1, "note": MARKER}])
    control.publish("q_flights")
    return "q_flights"


def test_a_saved_query_with_a_parameter_runs_on_every_read_node(cluster, control, flights):
    sql = "SELECT carrier, count(*) AS delayed FROM q_flights WHERE delay > :minutes GROUP BY carrier ORDER BY carrier"
    result = control.save_query("delayed_by_carrier", sql, title="Flights delayed, by airline")
    assert result["changed"] and result["published"] and result["public_txid"]
    txid = result["public_txid"]
    for response in on_every_node(cluster, "/public/delayed_by_carrier.json", txid, minutes=60, _shape="array"):
        assert response.status_code == 200
        assert response.json() == [{"carrier": "DL", "delayed": 1}, {"carrier": "UA", "delayed": 2}]
    for response in on_every_node(cluster, "/public/delayed_by_carrier.csv", txid, minutes=100):
        assert response.text.splitlines() == ["carrier,delayed", "UA,1"]
    for response in on_every_node(cluster, "/public/delayed_by_carrier", txid, minutes=0):
        assert response.status_code == 200 and "Flights delayed, by airline" in response.text
    # Hostile parameters: an answer or a 4xx, never a 500.
    for params in ({"minutes": "abc"}, {"minutes": "9" * 4000}, {}, {"minutes": "1", "_size": "-1"}):
        for response in on_every_node(cluster, "/public/delayed_by_carrier.json", txid, **params):
            assert response.status_code < 500, (params, response.status_code)
    listed = {q["name"]: q for q in control.queries()}
    assert listed["delayed_by_carrier"]["published"] and listed["delayed_by_carrier"]["saved_by"] == "tester"


def test_a_query_reading_a_private_table_is_refused_and_never_reaches_a_read_node(cluster, control, flights):
    for sql in (
        "SELECT note FROM q_private",
        f"SELECT * FROM q_flights WHERE carrier = (SELECT note FROM q_private WHERE note = '{MARKER}')",
        "SELECT count(*) FROM q_private",
    ):
        with pytest.raises(ControlError) as refused:
            control.save_query("sneaky", sql)
        assert refused.value.status == 400 and "q_private" in refused.value.message
    assert "sneaky" not in {q["name"] for q in control.queries()}
    for node in cluster.replicas:
        assert httpx.get(f"{node.url}/public/sneaky.json", timeout=5).status_code == 403
    # A restricted token may not save queries at all.
    viewer = restricted_token(cluster, TokenRestrictions().allow_all("view-instance"))
    response = httpx.post(
        f"{cluster.primary.control_url}/queries",
        json={"name": "x", "sql": "SELECT 1"},
        headers={"Authorization": f"Bearer {viewer}"},
        timeout=10,
    )
    assert response.status_code == 403
    settle(cluster)
    cluster.wait_for_replicas()
    for node in cluster.replicas:
        for path, data in file_bytes(node.root):
            assert MARKER.encode() not in data, f"private marker in {path}"


def test_unpublishing_a_table_withdraws_its_queries_everywhere(cluster, control, flights):
    create_table(cluster, "q_planes", [{"id": 1, "tailnum": "N101"}, {"id": 2, "tailnum": "N202"}])
    control.publish("q_planes")
    saved = control.save_query("plane", "SELECT tailnum FROM q_planes WHERE id = :id")
    for response in on_every_node(cluster, "/public/plane.json", saved["public_txid"], id=2, _shape="array"):
        assert response.json() == [{"tailnum": "N202"}]
    gone = control.publish("q_planes", public=False)
    for response in on_every_node(cluster, "/public/plane.json", gone["public_txid"], id=2):
        assert response.status_code == 403
    (listed,) = [q for q in control.queries() if q["name"] == "plane"]
    assert not listed["published"] and "q_planes" in listed["withdrawn"]
    entry = control.query_log("plane")[0]
    assert entry["operation"] == "withdraw" and entry["actor"].startswith("broadsheet:publisher")
    # Published again, the table does not bring the query back: saving it does.
    again = control.publish("q_planes")
    for response in on_every_node(cluster, "/public/plane.json", again["public_txid"], id=2):
        assert response.status_code == 403
    resaved = control.save_query("plane", "SELECT tailnum FROM q_planes WHERE id = :id")
    assert resaved["changed"] and resaved["published"]
    for response in on_every_node(cluster, "/public/plane.json", resaved["public_txid"], id=1, _shape="array"):
        assert response.json() == [{"tailnum": "N101"}]


def test_the_cli_saves_lists_and_removes(cluster, flights):
    root = ["--dir", str(cluster.root)]
    runner = CliRunner()
    saved = runner.invoke(cli, ["query", "save", *root, "ua_flights", "--sql", "SELECT dest FROM q_flights WHERE carrier = 'UA'",
                                "--title", "United"])
    assert saved.exit_code == 0, saved.output
    assert "ua_flights: published" in saved.output
    listed = runner.invoke(cli, ["query", "list", *root])
    assert "public     ua_flights  United" in listed.output
    bad = runner.invoke(cli, ["query", "save", *root, "bad", "--sql", "DELETE FROM q_flights"])
    assert bad.exit_code != 0 and "may only read" in bad.output
    txid = int(saved.output.split("public TXID ")[1].split(")")[0])
    for response in on_every_node(cluster, "/public/ua_flights.json", txid, _shape="array"):
        assert sorted(r["dest"] for r in response.json()) == ["ORD", "SFO"]
    removed = runner.invoke(cli, ["query", "rm", *root, "ua_flights"])
    assert removed.exit_code == 0 and "ua_flights: removed" in removed.output, removed.output
    txid = int(removed.output.split("public TXID ")[1].split(")")[0])
    for response in on_every_node(cluster, "/public/ua_flights.json", txid):
        assert response.status_code == 403
    missing = runner.invoke(cli, ["query", "rm", *root, "ua_flights"])
    assert missing.exit_code != 0 and "no saved query" in missing.output


def test_publish_this_query_from_the_team_datasette(cluster, token, flights):
    team = httpx.Client(base_url=cluster.primary.url, headers={"Authorization": f"Bearer {token}"}, timeout=20)
    sql = "SELECT dest, delay FROM q_flights WHERE delay > :minutes ORDER BY delay DESC"
    page = team.get("/data/-/query", params={"sql": sql})
    assert page.status_code == 200 and "Publish this query" in page.text
    href = re.search(r'href="(/-/broadsheet/query/data\?[^"]+)"[^>]*>\s*(?:<[^>]+>\s*)*Publish this query', page.text)
    form = team.get(html.unescape(href.group(1)))
    assert form.status_code == 200 and html.escape(sql) in form.text
    published = team.post("/-/broadsheet/query/data", data={"name": "late", "sql": sql, "title": "Late flights"})
    assert published.status_code == 200 and "is public at public TXID" in published.text, published.text
    txid = int(re.search(r"public TXID (\d+)", published.text).group(1))
    for response in on_every_node(cluster, "/public/late.json", txid, minutes=70, _shape="array"):
        assert [r["dest"] for r in response.json()] == ["ORD", "SFO"]
    refused = team.post("/-/broadsheet/query/data", data={"name": "peek", "sql": "SELECT note FROM q_private"})
    assert refused.status_code == 400 and "q_private" in refused.text
    removed = team.post("/-/broadsheet/query/data", data={"name": "late", "operation": "remove"})
    assert removed.status_code == 200 and "is no longer public" in removed.text
    viewer = restricted_token(cluster, TokenRestrictions().allow_all("view-instance").allow_all("view-database")
                              .allow_all("execute-sql"))
    as_viewer = {"Authorization": f"Bearer {viewer}"}
    assert "Publish this query" not in team.get("/data/-/query", params={"sql": sql}, headers=as_viewer).text
    assert team.post("/-/broadsheet/query/data", data={"name": "x", "sql": "SELECT 1"}, headers=as_viewer).status_code == 403


def test_bad_requests_to_the_control_plane_are_clear_4xx(cluster, token, flights):
    plane = httpx.Client(base_url=cluster.primary.control_url, headers={"Authorization": f"Bearer {token}"}, timeout=20)
    cases = [
        ({"sql": "SELECT 1"}, 422),  # no name
        ({"name": "x"}, 422),  # no sql
        ({"name": "x", "sql": "SELECT 1", "owner": "me"}, 422),  # an unknown field
        ({"name": 5, "sql": "SELECT 1"}, 422),
        ({"name": "a/b", "sql": "SELECT 1"}, 400),
        ({"name": "q_flights", "sql": "SELECT 1"}, 400),  # a table's name
        ({"name": "x", "sql": "SELECT 1" + " " * 200_000}, 400),
        ({"name": "x", "sql": "SELECT 1\x00"}, 400),
        ({"name": "x", "sql": "SELECT * FROM q_flights WHERE id = ?"}, 400),
        ({"name": "x", "sql": "UPDATE q_flights SET delay = 0"}, 400),
    ]
    for body, expected in cases:
        response = plane.post("/queries", json=body)
        assert response.status_code == expected, (body, response.status_code, response.text)
        assert "error" in response.text or "detail" in response.text
    assert plane.post("/queries", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    missing = plane.delete("/queries/no-such-query")
    assert missing.status_code == 404 and "no saved query" in missing.json()["error"]
    assert not any(q["name"] == "x" for q in plane.get("/queries").json())
    assert httpx.post(f"{cluster.primary.control_url}/queries", json={"name": "x", "sql": "SELECT 1"}).status_code == 401

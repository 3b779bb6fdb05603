"""The team writes to the primary: Datasette's JSON write API with a token,
an existing Datasette client (dclient), CSV imports, and the control plane."""

import json
import subprocess
import sys

import httpx
from click.testing import CliRunner

from broadsheet.cli import cli
from conftest import rows, wait_until


def api(cluster, token, path, body, **headers):
    return httpx.post(
        f"{cluster.primary.url}/data{path}",
        json=body,
        headers={"Authorization": f"Bearer {token}", **headers},
        timeout=30,
    )


def test_token_write_reaches_every_read_node_once_public(cluster, token, control):
    created = api(cluster, token, "/-/create", {"table": "tips", "pk": "id", "rows": [{"id": 1, "tip": "first"}]})
    assert created.status_code == 201, created.text
    inserted = api(cluster, token, "/tips/-/insert", {"rows": [{"id": 2, "tip": "second"}]})
    assert inserted.status_code == 201
    assert int(inserted.headers["broadsheet-private-txid"]) > 0
    for node in cluster.replicas:
        assert httpx.get(f"{node.url}/public/tips.json", timeout=5).status_code == 403

    control.publish("tips")
    for node in cluster.replicas:
        wait_until(lambda: len(rows(node.url, "tips")) == 2, message=f"tips on {node.name}")

    # Upsert, update and delete, each asking for the public TXID that holds it.
    upserted = api(cluster, token, "/tips/-/upsert", {"rows": [{"id": 2, "tip": "second, revised"}]},
                   **{"Broadsheet-Wait": "public"})
    assert upserted.status_code == 200, upserted.text
    public_txid = int(upserted.headers["broadsheet-public-txid"])
    for node in cluster.replicas:
        # A bookmark read needs no polling: it waits for that TXID itself.
        got = httpx.get(f"{node.url}/public/tips.json?_shape=objects&id=2&_txid={public_txid}", timeout=10).json()
        assert got["rows"][0]["tip"] == "second, revised"
    deleted = api(cluster, token, "/tips/1/-/delete", {}, **{"Broadsheet-Wait": "public"})
    assert deleted.status_code == 200, deleted.text
    txid = int(deleted.headers["broadsheet-public-txid"])
    for node in cluster.replicas:
        got = httpx.get(f"{node.url}/public/tips.json?_shape=objects&_txid={txid}", timeout=10).json()
        assert [r["id"] for r in got["rows"]] == [2]


def test_update_alter_and_drop_through_the_write_api(cluster, token, control):
    api(cluster, token, "/-/create", {"table": "drafts", "pk": "id", "rows": [{"id": 1, "title": "draft"}]})
    control.publish("drafts")
    updated = api(cluster, token, "/drafts/1/-/update", {"update": {"title": "final"}}, **{"Broadsheet-Wait": "public"})
    assert updated.status_code == 200, updated.text
    txid = int(updated.headers["broadsheet-public-txid"])
    for node in cluster.replicas:
        got = httpx.get(f"{node.url}/public/drafts.json?_shape=objects&_txid={txid}", timeout=10).json()
        assert got["rows"] == [{"id": 1, "title": "final"}]

    altered = api(cluster, token, "/drafts/-/alter", {"operations": [{"op": "add_column", "args": {"name": "words", "type": "integer"}}]})
    assert altered.status_code == 200, altered.text
    for node in cluster.replicas:
        wait_until(lambda: "words" in rows(node.url, "drafts")[0], message=f"new column on {node.name}")

    dropped = api(cluster, token, "/drafts/-/drop", {"confirm": True})
    assert dropped.status_code == 200, dropped.text
    for node in cluster.replicas:
        wait_until(lambda: httpx.get(f"{node.url}/public/drafts.json", timeout=5).status_code == 403)
    assert "drafts" not in {t["table"] for t in control.tables()}


def test_dclient_inserts_rows_that_reach_read_nodes(cluster, token, control, tmp_path):
    csv = tmp_path / "birds.csv"
    csv.write_text("id,name,count\n1,robin,3\n2,wren,5\n3,kestrel,1\n")
    result = subprocess.run(
        [sys.executable, "-m", "dclient", "insert", f"{cluster.primary.url}/data", "birds", str(csv),
         "--csv", "--create", "--pk", "id", "--token", token, "--silent"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    control.publish("birds")
    for node in cluster.replicas:
        wait_until(lambda: [r["name"] for r in rows(node.url, "birds")] == ["robin", "wren", "kestrel"])
        assert rows(node.url, "birds", id=2)[0]["count"] == 5


def test_cli_import_csv_and_json(cluster, tmp_path):
    csv = tmp_path / "stations.csv"
    csv.write_text("code,name,elevation\n" + "".join(f"S{i:04},Station {i},{i * 1.5}\n" for i in range(5000)))
    result = CliRunner().invoke(cli, ["import", "stations", str(csv), "--pk", "code", "--data-db", str(cluster.primary.data_db)])
    assert result.exit_code == 0, result.output
    assert "stations: 5000 rows" in result.output
    assert "importing stations" in result.output  # the progress bar

    js = tmp_path / "extra.json"
    js.write_text(json.dumps([{"code": "X1", "name": "Extra", "elevation": 7}]))
    result = CliRunner().invoke(cli, ["import", "stations", str(js), "--data-db", str(cluster.primary.data_db)])
    assert result.exit_code == 0 and "stations: 5001 rows" in result.output

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = CliRunner().invoke(cli, ["import", "stations", str(bad), "--data-db", str(cluster.primary.data_db)])
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_control_plane_lists_tables_and_audit(cluster, control):
    tables = {t["table"]: t["public"] for t in control.tables()}
    assert tables["airports"] is True and tables["planes"] is False
    assert "_public_tables" not in tables
    audit = control.audit(limit=5)
    assert audit and {"timestamp", "actor", "operation", "table_name", "public_txid"} <= set(audit[0])


def test_openapi_document_describes_the_control_plane(cluster):
    doc = httpx.get(f"{cluster.primary.control_url}/openapi.json", timeout=5).json()
    paths = set(doc["paths"])
    assert {"/tables", "/tables/{table}/publish", "/tables/{table}/unpublish", "/audit", "/health",
            "/nodes", "/publishes/{txid}", "/events", "/bookmarks"} <= paths
    publish = doc["paths"]["/tables/{table}/publish"]["post"]
    assert {"200", "401", "403", "404", "422", "504"} <= set(publish["responses"])

"""Publishing and unpublishing tables, and writes reaching every read node."""

import pytest
from click.testing import CliRunner

from broadsheet.cli import cli
from broadsheet.litefs import Pos
from conftest import create_table, file_bytes, read_only_rows, rows, settle, status, wait_until
from primary import store


def publish(cluster, table, public=True):
    result = CliRunner().invoke(
        cli, ["publish" if public else "unpublish", table, "--data-db", str(cluster.primary.data_db)]
    )
    assert result.exit_code == 0, result.output
    return result.output


def test_row_written_to_published_table_reaches_every_node(cluster, db):
    with store.immediate(db):
        db.execute(
            "INSERT INTO airports (faa, name, lat, lon, alt, tz, dst, tzone)"
            " VALUES ('ZZZ', 'Broadsheet Field', 1.5, 2.5, 10, 0, 'N', 'UTC')"
        )
    for node in cluster.replicas:
        wait_until(lambda: rows(node.url, "airports", faa="ZZZ"), message=f"row on {node.name}")
        assert rows(node.url, "airports", faa="ZZZ")[0]["name"] == "Broadsheet Field"


def test_public_db_names_the_txid_each_cycle_became(cluster, db):
    """The publisher records in public.db the LiteFS TXID its transaction
    becomes: a read node compares it with its LiteFS position to know that
    SQLite shows what LiteFS reports (see test_cache)."""
    create_table(cluster, "txid_named", [{"id": 1, "v": "first"}])
    publish(cluster, "txid_named")
    for value in ("first", "second"):
        with store.immediate(db):
            db.execute("UPDATE txid_named SET v = ?", (value,))
        wait_until(lambda: rows(cluster.replicas[0].url, "txid_named") == [{"id": 1, "v": value}], message=value)
        cluster.wait_for_replicas()
        for node in [cluster.primary, *cluster.replicas]:
            assert read_only_rows(node.public_db, "SELECT txid FROM _public_txid") == [(Pos.read(node.public_db).txid,)]


def test_publish_then_unpublish_on_every_node(cluster):
    create_table(cluster, "scoops", [{"id": i, "headline": f"SCOOP-{i}-exclusive"} for i in range(50)])
    for node in cluster.replicas:
        assert status(node.url, "/public/scoops.json") == 403

    assert "now public" in publish(cluster, "scoops")
    for node in cluster.replicas:
        wait_until(lambda: status(node.url, "/public/scoops.json") == 200, message=f"scoops on {node.name}")
        assert len(rows(node.url, "scoops", _size="max")) == 50

    assert "now private" in publish(cluster, "scoops", public=False)
    for node in cluster.replicas:
        wait_until(lambda: status(node.url, "/public/scoops.json") == 403, message=f"403 on {node.name}")
        assert status(node.url, "/public/scoops") == 403
    cluster.wait_for_replicas()
    for node in cluster.replicas:
        # secure_delete: the rows' bytes are gone from the database file
        data = node.public_db.read_bytes()
        assert b"SCOOP-" not in data and b"scoops" not in data


def test_table_with_quotes_and_unicode_in_its_name(cluster):
    name = 'Zeitung "Ausgabe" ünd \'quotes\''
    create_table(cluster, name, [{"id": 1, "text": "grüße"}])
    publish(cluster, name)
    from datasette.utils import tilde_encode

    path = f"/public/{tilde_encode(name)}.json"
    for node in cluster.replicas:
        wait_until(lambda: status(node.url, path) == 200, message=f"{name} on {node.name}")
    publish(cluster, name, public=False)
    for node in cluster.replicas:
        wait_until(lambda: status(node.url, path) == 403, message=f"{name} private on {node.name}")


def test_dropping_a_published_table_makes_its_name_private(cluster, db):
    create_table(cluster, "ephemeral", [{"id": 1, "v": "first"}])
    publish(cluster, "ephemeral")
    for node in cluster.replicas:
        wait_until(lambda: status(node.url, "/public/ephemeral.json") == 200)
    with store.immediate(db):
        db.execute("DROP TABLE ephemeral")
    wait_until(lambda: "ephemeral" not in store.public_tables(db), message="ephemeral unlisted")
    audit = db.execute("SELECT actor, operation FROM _public_audit_log ORDER BY id DESC LIMIT 1").fetchone()
    assert audit == ("broadsheet:publisher (table was dropped)", "unpublish")
    # A new table under the old name starts out private.
    with store.immediate(db):
        db.execute("CREATE TABLE ephemeral (id INTEGER PRIMARY KEY, v TEXT)")
        db.execute("INSERT INTO ephemeral VALUES (1, 'NEW-PRIVATE-ROW')")
    settle(cluster)  # the publisher has published data.db as it is now (the unlisting is a data.db write)
    cluster.wait_for_replicas()
    for node in cluster.replicas:
        assert status(node.url, "/public/ephemeral.json") == 403
        assert b"NEW-PRIVATE-ROW" not in node.public_db.read_bytes()


@pytest.mark.parametrize("same_schema", [True, False], ids=["same schema", "new schema"])
def test_a_table_recreated_under_a_published_name_is_private(cluster, db, same_schema):
    """DROP TABLE + CREATE TABLE + INSERT in one data.db transaction: the new
    table is not the one that was published. It fails closed: private on
    every node, its rows in no byte of any read node, an audit entry."""
    name = f"reborn_{int(same_schema)}"
    marker = f"REBORN-PRIVATE-ROW-{int(same_schema)}"
    create_table(cluster, name, [{"id": 1, "v": "published"}])
    publish(cluster, name)
    for node in cluster.replicas:
        wait_until(lambda: status(node.url, f"/public/{name}.json") == 200)
    columns = "id INTEGER PRIMARY KEY, v TEXT" if same_schema else "id INTEGER PRIMARY KEY, v TEXT, extra TEXT"
    with store.immediate(db):
        db.execute(f"DROP TABLE {name}")
        db.execute(f"CREATE TABLE {name} ({columns})")
        db.execute(f"INSERT INTO {name} (id, v) VALUES (1, ?), (2, ?)", (marker, marker))
    wait_until(lambda: name not in store.public_tables(db), message=f"{name} unlisted")
    newest = store.audit_entries(db, table=name, limit=1)[0]
    assert (newest["operation"], newest["actor"]) == ("unpublish", store.REBUILT_ACTOR)
    settle(cluster)  # the publisher has published data.db as it is now (the unlisting is a data.db write)
    cluster.wait_for_replicas()
    for node in cluster.replicas:
        assert status(node.url, f"/public/{name}.json") == 403
        for path, data in file_bytes(node.root):
            assert marker.encode() not in data, path
    # Publishing it again is a human's decision, and then it is served.
    publish(cluster, name)
    for node in cluster.replicas:
        wait_until(lambda: len(rows(node.url, name)) == 2, message=f"{name} republished on {node.name}")

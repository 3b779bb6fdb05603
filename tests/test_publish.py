"""Publishing and unpublishing tables, and writes reaching every read node."""


from broadsheet.cli import cli
from click.testing import CliRunner
from conftest import create_table, rows, status, wait_until
from primary import state


def publish(cluster, table, public=True):
    result = CliRunner().invoke(
        cli, ["publish" if public else "unpublish", table, "--data-db", str(cluster.primary.data_db)]
    )
    assert result.exit_code == 0, result.output
    return result.output


def test_row_written_to_published_table_reaches_every_node(cluster, db):
    with state.immediate(db):
        db.execute(
            "INSERT INTO airports (faa, name, lat, lon, alt, tz, dst, tzone)"
            " VALUES ('ZZZ', 'Broadsheet Field', 1.5, 2.5, 10, 0, 'N', 'UTC')"
        )
    for node in cluster.replicas:
        wait_until(lambda: rows(node.url, "airports", faa="ZZZ"), message=f"row on {node.name}")
        assert rows(node.url, "airports", faa="ZZZ")[0]["name"] == "Broadsheet Field"


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
    with state.immediate(db):
        db.execute("DROP TABLE ephemeral")
    wait_until(lambda: "ephemeral" not in state.public_tables(db), message="ephemeral unlisted")
    audit = db.execute("SELECT actor, operation FROM _public_audit_log ORDER BY id DESC LIMIT 1").fetchone()
    assert audit == ("broadsheet:publisher (table was dropped)", "unpublish")
    # A new table under the old name starts out private.
    with state.immediate(db):
        db.execute("CREATE TABLE ephemeral (id INTEGER PRIMARY KEY, v TEXT)")
        db.execute("INSERT INTO ephemeral VALUES (1, 'NEW-PRIVATE-ROW')")
    cluster.wait_for_replicas()
    for node in cluster.replicas:
        assert status(node.url, "/public/ephemeral.json") == 403
        assert b"NEW-PRIVATE-ROW" not in node.public_db.read_bytes()

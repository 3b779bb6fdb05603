"""Publishing part of a table: chosen columns and rows. Excluded columns and
filtered-out rows never leave the primary; the public copy is the projection;
a spec that stops fitting fails closed; a foreign key never names a private
table on a read node."""

from __future__ import annotations

import httpx
import pytest
from click.testing import CliRunner

from broadsheet.cli import cli
from broadsheet.client import ControlError
from broadsheet.litefs import Pos
from conftest import create_table, file_bytes, rows, settle, status, wait_until
from primary import store
from test_incremental import ltx_size
from test_privacy import process_memory_contains

EMAIL = "EXCLUDED-EMAIL-SENTINEL-5d1"
NO_CONSENT = "FILTERED-ROW-SENTINEL-7e2"


def people(n: int = 40) -> list[dict]:
    return [
        {
            "id": i,
            "name": f"person {i}" if i % 2 else f"{NO_CONSENT} {i}",
            "city": "Leeds",
            "email": f"{EMAIL} {i}",
            "consent": i % 2,
        }
        for i in range(1, n + 1)
    ]


def projection(db, table: str, columns: list[str], where: str) -> list[dict]:
    cols = ", ".join(columns)
    return [dict(zip(columns, r)) for r in db.execute(f"SELECT {cols} FROM {table} WHERE {where} ORDER BY id")]


def all_rows(node_url: str, table: str) -> list[dict]:
    return rows(node_url, table, _size="max", _sort="id")


def scan(cluster, needles: list[bytes]) -> list[str]:
    """Every file and process of every read node that holds one of ``needles``."""
    found = []
    for node in cluster.replicas:
        for path, data in file_bytes(node.root):
            found += [f"{path}: {n!r}" for n in needles if n in data]
        for service in (node.litefs_service, node.datasette_service):
            found += [f"{service}: {n!r}" for n in process_memory_contains(cluster.supervisor.pid(service), needles)]
    return found


def test_excluded_columns_and_filtered_rows_never_reach_a_read_node(cluster, control, db):
    create_table(cluster, "people", people())
    result = control.publish("people", spec={"exclude_columns": ["email"], "where": "consent = 1"})
    cluster.wait_for_replicas(result["public_txid"])
    expected = projection(db, "people", ["id", "name", "city", "consent"], "consent = 1")
    for node in cluster.replicas:
        assert all_rows(node.url, "people") == expected
    # A row that starts matching appears; one that stops matching goes.
    with store.immediate(db):
        db.execute("UPDATE people SET consent = 1, name = 'now public' WHERE id = 2")
        db.execute("UPDATE people SET consent = 0 WHERE id = 3")
    settle(cluster)
    cluster.wait_for_replicas()
    expected = projection(db, "people", ["id", "name", "city", "consent"], "consent = 1")
    for node in cluster.replicas:
        assert all_rows(node.url, "people") == expected
    # Row 2's old name carried the marker: it was never public then.
    assert scan(cluster, [EMAIL.encode(), f"{NO_CONSENT} 4".encode()]) == []
    tables = {t["table"]: t for t in control.tables()}
    assert tables["people"]["partial"] and tables["people"]["spec"] == {"exclude_columns": ["email"], "where": "consent = 1"}


def test_narrowing_a_spec_erases_what_it_removes(cluster, control, db):
    create_table(cluster, "staff", [{"id": i, "name": f"staff {i}", "phone": f"PHONE-NARROWED-{i}"} for i in range(1, 21)])
    result = control.publish("staff")
    cluster.wait_for_replicas(result["public_txid"])
    assert any(b"PHONE-NARROWED-7" in data for _, data in file_bytes(cluster.replicas[0].public_db.parent))
    result = control.publish("staff", spec={"columns": ["id", "name"]})
    assert result["changed"]
    cluster.wait_for_replicas(result["public_txid"])
    for node in cluster.replicas:
        assert all_rows(node.url, "staff")[0] == {"id": 1, "name": "staff 1"}
        assert b"PHONE-NARROWED" not in node.public_db.read_bytes()
    entry = store.audit_entries(db, table="staff", limit=1)[0]
    assert (entry["spec_before"], entry["spec_after"]) == (None, '{"columns": ["id", "name"]}')
    # An explicit column list does not publish a column added later.
    with store.immediate(db):
        db.execute("ALTER TABLE staff ADD COLUMN salary INTEGER")
        db.execute("UPDATE staff SET salary = 99999 WHERE id = 1")
    settle(cluster)
    cluster.wait_for_replicas()
    assert "salary" not in all_rows(cluster.replicas[0].url, "staff")[0]


def test_a_row_moving_across_the_filter_ships_a_small_ltx(cluster, control, db):
    with store.immediate(db):
        db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, kind TEXT, shown INTEGER, note TEXT)")
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000)"
            " INSERT INTO events SELECT i, 'kind-' || (i % 13), i % 2, hex(randomblob(16)) FROM n"
        )
    published = control.publish("events", spec={"where": "shown = 1"})
    cluster.wait_for_replicas(published["public_txid"])
    full_copy = ltx_size(cluster.replicas[0], published["public_txid"])
    for change in ("UPDATE events SET shown = 1 WHERE id = 1000", "UPDATE events SET shown = 0 WHERE id = 1001"):
        with store.immediate(db):
            db.execute(change)
        settle(cluster)
        txid = Pos.read(cluster.primary.public_db).txid
        cluster.wait_for_replicas(txid)
        for node in cluster.replicas:
            # A row entering a table copied in rowid order splits a full
            # leaf page: a few 16 KiB pages, not the table.
            size = ltx_size(node, txid)
            assert size < 256 * 1024 and size * 20 < full_copy, (size, full_copy)
    node = cluster.replicas[0]
    assert rows(node.url, "events", id=1000)[0]["shown"] == 1
    assert rows(node.url, "events", id=1001) == []
    count = httpx.get(f"{node.url}/public/-/query.json", params={"sql": "select count(*) as n from events"},
                      timeout=10).json()["rows"][0]["n"]
    assert count == db.execute("SELECT count(*) FROM events WHERE shown = 1").fetchone()[0]


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"columns": ["id", "no_such_column"]}, "No such column"),
        ({"columns": []}, "at least one column"),
        ({"exclude_columns": ["id"]}, "INTEGER PRIMARY KEY"),
        ({"where": "id IN (SELECT id FROM planes_secret)"}, "subquery"),
        ({"where": "(SELECT count(*) FROM airports) > 0"}, "subquery"),
        ({"where": "random() > 0"}, "random()"),
        ({"where": "date('now') > '2020-01-01'"}, "date()"),
        ({"where": "no_such_function(id)"}, "no such function"),
        ({"where": "id = 1; DROP TABLE drafts_spec"}, "one SQL expression"),
        ({"where": "id = 1) OR (1"}, "closes a parenthesis"),
        ({"where": "id = 1 -- and more"}, "comment"),
        ({"where": "id = = 1"}, "syntax error"),
        ({"colums": ["id"]}, "Unknown spec field"),
    ],
)
def test_a_bad_spec_is_a_clear_400_and_changes_nothing(cluster, control, db, spec, message):
    if "drafts_spec" not in store.user_tables(db):
        create_table(cluster, "drafts_spec", [{"id": 1, "title": "draft", "secret": "s"}])
    settle(cluster)
    before = (store.public_tables(db), store.audit_entries(db, limit=3), Pos.read(cluster.primary.public_db).txid)
    with pytest.raises(ControlError) as exc:
        control.publish("drafts_spec", spec=spec)
    assert exc.value.status == 400 and message.lower() in exc.value.message.lower(), exc.value.message
    with pytest.raises(ControlError):
        control.preview("drafts_spec", spec)
    assert (store.public_tables(db), store.audit_entries(db, limit=3), Pos.read(cluster.primary.public_db).txid) == before


def test_a_filter_on_an_unpublished_column_is_allowed_and_previewed(cluster, control, db):
    create_table(cluster, "members", [{"id": i, "name": f"member {i}", "consent": i % 3 == 0} for i in range(1, 31)])
    spec = {"columns": ["id", "name"], "where": "consent = 1"}
    preview = control.preview("members", spec)
    assert (preview["rows"], preview["total_rows"], preview["columns"]) == (10, 30, ["id", "name"])
    assert preview["sample"][0] == {"id": 3, "name": "member 3"}
    assert preview["estimated_bytes"] > 0
    assert "members" not in store.public_tables(db)  # a preview changes nothing
    dry = CliRunner().invoke(cli, ["publish", "members", "--columns", "id,name", "--where", "consent = 1",
                                   "--dry-run", "--data-db", str(cluster.primary.data_db)])
    assert dry.exit_code == 0 and "10 of 30 rows" in dry.output, dry.output
    assert "members" not in store.public_tables(db)
    result = control.publish("members", spec=spec)
    cluster.wait_for_replicas(result["public_txid"])
    assert all_rows(cluster.replicas[0].url, "members") == projection(db, "members", ["id", "name"], "consent = 1")
    # For a public table, the preview says what a change adds and removes.
    change = control.preview("members", {"columns": ["id", "name", "consent"]})
    assert change["columns_added"] == ["consent"] and change["rows_added"] == 20 and change["rows_removed"] == 0


def test_a_schema_change_that_breaks_a_spec_makes_the_table_private(cluster, control, db):
    create_table(cluster, "volunteers", [{"id": i, "name": f"v{i}", "region": "north", "notes": "n"} for i in range(1, 6)])
    result = control.publish("volunteers", spec={"columns": ["id", "name", "region"]})
    cluster.wait_for_replicas(result["public_txid"])
    with store.immediate(db):
        db.execute("ALTER TABLE volunteers RENAME COLUMN region TO area")
    wait_until(lambda: "volunteers" not in store.public_tables(db), message="volunteers made private")
    entry = store.audit_entries(db, table="volunteers", limit=1)[0]
    assert entry["operation"] == "unpublish" and "spec no longer fits" in entry["actor"]
    for node in cluster.replicas:
        wait_until(lambda: status(node.url, "/public/volunteers.json") == 403, message=f"403 on {node.name}")


def test_a_foreign_key_never_names_a_private_table_on_a_read_node(cluster, control, db):
    with store.immediate(db):
        db.execute("CREATE TABLE payroll_ledger_private (id INTEGER PRIMARY KEY, amount INTEGER)")
        db.execute(
            "CREATE TABLE shifts (id INTEGER PRIMARY KEY, day TEXT,"
            " ledger_id INTEGER REFERENCES payroll_ledger_private (id))"
        )
        db.execute("INSERT INTO payroll_ledger_private VALUES (1, 100)")
        db.execute("INSERT INTO shifts VALUES (1, 'monday', 1)")
    result = control.publish("shifts")
    cluster.wait_for_replicas(result["public_txid"])
    name = "payroll_ledger_private"
    for node in cluster.replicas:
        for path in ("/public/shifts", "/public/shifts.json", "/public", "/public.json", "/public/shifts/1.json"):
            assert name not in httpx.get(f"{node.url}{path}", timeout=10).text, path
        schema = httpx.get(f"{node.url}/public/-/query.json",
                           params={"sql": "select group_concat(sql) as s from sqlite_master"}, timeout=10).json()
        assert name not in str(schema)
        assert name.encode() not in node.public_db.read_bytes()
        assert rows(node.url, "shifts") == [{"id": 1, "day": "monday", "ledger_id": 1}]


def test_a_view_is_published_only_if_it_reads_nothing_private(cluster, control, db):
    create_table(cluster, "donors", [{"id": i, "name": f"donor {i}", "iban": f"IBAN-VIEW-SENTINEL-{i}"} for i in range(1, 4)])
    with store.immediate(db):
        db.execute("CREATE VIEW donor_names AS SELECT id, name FROM donors")
        db.execute("CREATE VIEW donor_accounts AS SELECT name, iban FROM donors")
    result = control.publish("donors", spec={"exclude_columns": ["iban"]})
    cluster.wait_for_replicas(result["public_txid"])
    with pytest.raises(ControlError) as exc:
        control.publish("donor_accounts")
    assert exc.value.status == 409 and "donors.iban" in exc.value.message
    result = control.publish("donor_names")
    cluster.wait_for_replicas(result["public_txid"])
    node = cluster.replicas[0]
    assert rows(node.url, "donor_names") == [{"id": i, "name": f"donor {i}"} for i in range(1, 4)]
    assert b"iban" not in node.public_db.read_bytes().lower()


def test_a_narrower_spec_set_by_unpublish_then_publish_is_applied(cluster, control, db):
    """Make private, then public with fewer columns, before a cycle runs (one
    transaction here): the new listing re-copies the table."""
    create_table(cluster, "payroll", [{"id": i, "name": f"p{i}", "salary": f"SALARY-RELISTED-{i}"} for i in range(1, 4)])
    result = control.publish("payroll")
    cluster.wait_for_replicas(result["public_txid"])
    with store.immediate(db):
        db.execute("DELETE FROM _public_tables WHERE table_name = 'payroll'")
        db.execute("""INSERT INTO _public_tables (table_name, spec) VALUES ('payroll', '{"exclude_columns": ["salary"]}')""")
    settle(cluster)
    cluster.wait_for_replicas()
    for node in cluster.replicas:
        assert all_rows(node.url, "payroll")[0] == {"id": 1, "name": "p1"}
        assert b"SALARY-RELISTED" not in node.public_db.read_bytes()


def test_a_foreign_key_to_an_excluded_column_names_nothing_private(cluster, control, db):
    with store.immediate(db):
        db.execute("CREATE TABLE owners (id INTEGER PRIMARY KEY, name TEXT, tax_code_private TEXT UNIQUE)")
        db.execute("CREATE TABLE pets (id INTEGER PRIMARY KEY, owner_code TEXT REFERENCES owners (tax_code_private))")
        db.execute("INSERT INTO owners VALUES (1, 'ann', 'T1')")
        db.execute("INSERT INTO pets VALUES (1, 'T1')")
    control.publish("owners", spec={"exclude_columns": ["tax_code_private"]})
    result = control.publish("pets")
    cluster.wait_for_replicas(result["public_txid"])
    for node in cluster.replicas:
        assert b"tax_code_private" not in node.public_db.read_bytes()
        assert rows(node.url, "pets") == [{"id": 1, "owner_code": "T1"}]


def test_a_filter_whose_column_is_renamed_fails_closed(cluster, control, db):
    """A double-quoted column that stops existing is an error, never the
    string SQLite would otherwise make of it."""
    create_table(cluster, "entries", [{"id": i, "hidden": i % 2, "text": f"ENTRY-HIDDEN-{i}"} for i in range(1, 5)])
    result = control.publish("entries", spec={"where": '"hidden" IS NOT 1'})
    cluster.wait_for_replicas(result["public_txid"])
    with store.immediate(db):
        db.execute("ALTER TABLE entries RENAME COLUMN hidden TO is_hidden")
    wait_until(lambda: "entries" not in store.public_tables(db), message="entries made private")
    settle(cluster)
    cluster.wait_for_replicas()
    for node in cluster.replicas:
        assert status(node.url, "/public/entries.json") == 403
        assert b"ENTRY-HIDDEN-1" not in node.public_db.read_bytes()


def test_preview_takes_the_publish_action(cluster, control, db):
    from test_permissions import restricted_token, viewer

    from broadsheet.client import ControlClient

    create_table(cluster, "previewed_private", [{"id": 1, "secret": "PREVIEW-SECRET"}])
    client = ControlClient(cluster.primary.control_url, restricted_token(cluster, viewer()))
    with pytest.raises(ControlError) as exc:
        client.preview("previewed_private")
    assert exc.value.status == 403 and "PREVIEW-SECRET" not in exc.value.message

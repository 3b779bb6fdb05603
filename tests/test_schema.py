"""Schema changes, full-text search and views of published tables reach every
read node."""

import httpx
import pytest
import sqlite_utils

from broadsheet.client import ControlError
from conftest import create_table, rows, settle, status, team_db, wait_until
from primary import store


def columns(node_url: str, table: str) -> list[str]:
    return httpx.get(f"{node_url}/public/{table}.json?_size=1&_extra=columns", timeout=5).json()["columns"]


def alter(cluster, token: str, table: str, op: str, **args) -> None:
    """One operation through Datasette's alter-table API, as a team member's client sends it."""
    response = httpx.post(
        f"{cluster.primary.url}/data/{table}/-/alter",
        json={"operations": [{"op": op, "args": args}]},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text


def test_schema_changes_propagate(cluster, control, db):
    create_table(cluster, "stories", [{"id": i, "title": f"story {i}", "words": i * 100} for i in range(1, 11)])
    published = control.publish("stories")
    cluster.wait_for_replicas(published["public_txid"])

    # New column, then rows that use it.
    with store.immediate(db):
        db.execute("ALTER TABLE stories ADD COLUMN section TEXT")
        db.execute("UPDATE stories SET section = 'news' WHERE id <= 5")
    for node in cluster.replicas:
        wait_until(lambda: "section" in columns(node.url, "stories"), message=f"new column on {node.name}")
        wait_until(lambda: len(rows(node.url, "stories", section="news")) == 5)

    # New index.
    with store.immediate(db):
        db.execute("CREATE INDEX stories_section ON stories (section)")
    cluster_index = lambda node: httpx.get(  # noqa: E731
        f"{node.url}/public/-/query.json",
        params={"sql": "select name from sqlite_master where type = 'index' and name = 'stories_section'"},
        timeout=5,
    ).json()["rows"]
    for node in cluster.replicas:
        wait_until(lambda: cluster_index(node), message=f"index on {node.name}")

    # Column rename.
    with store.immediate(db):
        db.execute("ALTER TABLE stories RENAME COLUMN words TO word_count")
    for node in cluster.replicas:
        wait_until(lambda: "word_count" in columns(node.url, "stories"), message=f"rename on {node.name}")
        assert "words" not in columns(node.url, "stories")
        assert rows(node.url, "stories", id=3)[0]["word_count"] == 300

    # Column drop, through sqlite-utils' transform from a script: it rebuilds
    # the table (create, copy, drop, rename), which the publisher cannot tell
    # from a new table under the old name, so the table fails closed until
    # someone publishes it again.
    with store.immediate(db):
        db.execute("DROP INDEX stories_section")
    team_db(cluster)["stories"].transform(drop={"section"})
    wait_until(lambda: "stories" not in store.public_tables(db), message="rebuilt stories made private")
    assert store.audit_entries(db, table="stories", limit=1)[0]["actor"] == store.REBUILT_ACTOR
    for node in cluster.replicas:
        wait_until(lambda: status(node.url, "/public/stories.json") == 403, message=f"stories private on {node.name}")
    control.publish("stories")
    for node in cluster.replicas:
        wait_until(lambda: status(node.url, "/public/stories.json") == 200, message=f"stories back on {node.name}")
        assert "section" not in columns(node.url, "stories")
        assert len(rows(node.url, "stories")) == 10

    # Later row changes still arrive after the rebuild.
    with store.immediate(db):
        db.execute("UPDATE stories SET title = 'rewritten' WHERE id = 1")
    for node in cluster.replicas:
        wait_until(lambda: rows(node.url, "stories", id=1)[0]["title"] == "rewritten")


def test_full_text_search_works_on_read_nodes(cluster, control):
    db = team_db(cluster)
    db["articles"].insert_all(
        [
            {"id": 1, "title": "LiteFS replicates SQLite", "body": "pages shipped as LTX files"},
            {"id": 2, "title": "Datasette serves JSON", "body": "and HTML for every table"},
        ],
        pk="id",
    )
    db["articles"].enable_fts(["title", "body"], create_triggers=True)
    db.close()
    control.publish("articles")
    for node in cluster.replicas:
        wait_until(lambda: status(node.url, "/public/articles.json") == 200)
        found = rows(node.url, "articles", _search="LTX")
        assert [r["id"] for r in found] == [1]
        # the full-text table itself is not a public table of its own
        assert status(node.url, "/public/articles_fts.json") == 403

    # New rows are searchable on the read nodes too.
    db = team_db(cluster)
    db["articles"].insert({"id": 3, "title": "Bookmarks", "body": "read your own LTX writes"})
    db.close()
    for node in cluster.replicas:
        wait_until(lambda: [r["id"] for r in rows(node.url, "articles", _search="LTX")] == [1, 3])


def test_view_of_published_tables_can_be_published(cluster, control, db):
    create_table(cluster, "teams", [{"id": 1, "name": "Data"}, {"id": 2, "name": "Desk"}])
    create_table(cluster, "salaries", [{"id": 1, "team_id": 1, "amount": 123456, "note": "SALARY-NOTE-8f1c"}])
    with store.immediate(db):
        db.execute("CREATE VIEW team_names AS SELECT name FROM teams")
        db.execute(
            "CREATE VIEW team_pay AS SELECT teams.name, salaries.amount, salaries.note"
            " FROM teams JOIN salaries ON salaries.team_id = teams.id"
        )

    # A view that reads a private table cannot be published…
    with pytest.raises(ControlError) as err:
        control.publish("team_names")
    assert err.value.status == 409 and "teams" in err.value.message

    control.publish("teams")
    published = control.publish("team_names")
    cluster.wait_for_replicas(published["public_txid"])
    for node in cluster.replicas:
        assert [r["name"] for r in rows(node.url, "team_names")] == ["Data", "Desk"]

    with pytest.raises(ControlError) as err:
        control.publish("team_pay")
    assert err.value.status == 409 and "salaries" in err.value.message
    for node in cluster.replicas:
        assert status(node.url, "/public/team_pay.json") == 403
        assert b"SALARY-NOTE-8f1c" not in node.public_db.read_bytes()

    # Unpublishing a table takes down the views that read it.
    unpublished = control.publish("teams", public=False)
    cluster.wait_for_replicas(unpublished["public_txid"])
    for node in cluster.replicas:
        assert status(node.url, "/public/team_names.json") == 403


def test_renamed_table_stays_public_under_its_new_name(cluster, control, token, db):
    create_table(cluster, "columns_v1", [{"id": 1, "text": "by-line"}])
    control.publish("columns_v1")
    # Datasette's own alter API, as a team member would rename it.
    alter(cluster, token, "columns_v1", "rename_table", to="columns_v2")
    for node in cluster.replicas:
        wait_until(lambda: status(node.url, "/public/columns_v2.json") == 200, message=f"new name on {node.name}")
        assert status(node.url, "/public/columns_v1.json") == 403
        assert rows(node.url, "columns_v2") == [{"id": 1, "text": "by-line"}]
    assert "columns_v2" in store.public_tables(db) and "columns_v1" not in store.public_tables(db)
    # Writes under the new name keep arriving.
    with store.immediate(db):
        db.execute("INSERT INTO columns_v2 VALUES (2, 'second')")
    for node in cluster.replicas:
        wait_until(lambda: len(rows(node.url, "columns_v2")) == 2)


def test_a_full_text_table_is_not_published_on_its_own(cluster, control):
    db = team_db(cluster)
    db["memos"].insert({"id": 1, "body": "indexed"}, pk="id")
    db["memos"].enable_fts(["body"], create_triggers=True)
    db.close()
    for name in ("memos_fts", "memos_fts_data"):
        with pytest.raises(ControlError) as err:
            control.publish(name)
        assert err.value.status == 400 and "published with the table they index" in err.value.message
    assert "memos_fts" not in {t["table"] for t in control.tables()}


def test_datasette_alter_table_keeps_a_public_table_public(cluster, control, token, db):
    """Datasette's own alter-table rebuilds the table for a column drop; the
    team member who altered it meant to keep it public: it is published again
    in their name (audit-logged), and later writes keep arriving."""
    create_table(cluster, "columns_alter", [{"id": i, "text": f"row {i}", "scratch": "x"} for i in range(1, 4)])
    control.publish("columns_alter")
    alter(cluster, token, "columns_alter", "drop_column", name="scratch")
    for node in cluster.replicas:
        wait_until(lambda: "scratch" not in columns(node.url, "columns_alter"), timeout=15,
                   message=f"column dropped on {node.name}")
    assert "columns_alter" in store.public_tables(db)
    # Datasette drops a column by rebuilding the table (sqlite-utils'
    # transform): the publisher made it private, the altering actor's name
    # published it again.
    entries = [(e["operation"], e["actor"]) for e in store.audit_entries(db, table="columns_alter", limit=3)]
    assert entries == [
        ("publish", "tester (alter-table)"),
        ("unpublish", store.REBUILT_ACTOR),
        ("publish", "tester"),
    ]
    with store.immediate(db):
        db.execute("INSERT INTO columns_alter (id, text) VALUES (4, 'after the alter')")
    for node in cluster.replicas:
        wait_until(lambda: len(rows(node.url, "columns_alter")) == 4, message=f"later write on {node.name}")


def test_an_alter_table_rebuild_keeps_a_partial_spec(cluster, control, token, db):
    """Dropping an unrelated column through Datasette rebuilds the table; it
    is published again with the spec it had, never whole."""
    create_table(cluster, "crew", [{"id": i, "name": f"c{i}", "wage": f"WAGE-KEPT-PRIVATE-{i}", "notes": "n"}
                                   for i in range(1, 4)])
    control.publish("crew", spec={"exclude_columns": ["wage"]})
    alter(cluster, token, "crew", "drop_column", name="notes")
    wait_until(lambda: store.audit_entries(db, table="crew", limit=1)[0]["actor"] == "tester (alter-table)",
               message="crew published again by the altering actor")
    assert store.public_specs(db)["crew"].exclude_columns == ("wage",)
    settle(cluster)
    cluster.wait_for_replicas()
    for node in cluster.replicas:
        assert rows(node.url, "crew")[0] == {"id": 1, "name": "c1"}
        assert b"WAGE-KEPT-PRIVATE" not in node.public_db.read_bytes()

"""Adopting a team's own SQLite files into data.db (fast layer, plain
files, no LiteFS): what `broadsheet up mydata.db --metadata metadata.yml`
and `broadsheet adopt` do to data.db, through store.adoption and the
control plane's POST /adoptions in-process, and every refusal changing
nothing. The cluster layer (tests/test_adopt_cluster.py) shows the same
through LiteFS to read nodes."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest
import sqlite_utils

from datasette_files import SENTINEL, make_database, make_metadata
from inprocess import plain_primary, plain_primary_files, public_litefs_port  # noqa: F401 (fixtures)
from primary import store
from primary.store import adoption
from primary.store.datasette_metadata import parse_document


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def mydata(tmp_path):
    return make_database(tmp_path / "mydata.db")


@pytest.fixture
def metadata_yml(tmp_path):
    return make_metadata(tmp_path / "metadata.yml")


def adopt_into(plain, *paths, metadata=None, replace=False):
    conn = plain.connect()
    try:
        sources = [adoption.inspect(p) for p in paths]
        return adoption.adopt(conn, sources, metadata, replace=replace, actor="tester")
    finally:
        conn.close()


def test_adopted_tables_views_indexes_triggers_and_fts_arrive_private(plain_primary, mydata, metadata_yml):
    done = adopt_into(plain_primary, mydata, metadata=parse_document(metadata_yml.read_text()))
    assert set(done.tables) >= {"budget", "allocations", "staff", "by_department", "budget_fts"}
    db = sqlite_utils.Database(sqlite3.connect(plain_primary.data_db))
    src = sqlite_utils.Database(mydata)
    for table in ("budget", "allocations", "staff"):
        assert list(db[table].rows) == list(src[table].rows)
        assert db[table].schema == src[table].schema
    assert db["allocations"].pks == ["year", "department"]
    assert db["budget"].detect_fts() == "budget_fts"
    # The full-text index came with its content: a search finds the rows.
    hits = db.execute("SELECT rowid FROM budget_fts WHERE budget_fts MATCH 'paperclips' ORDER BY rowid").fetchall()
    assert [r[0] for r in hits] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert {i.name for i in db["budget"].indexes} == {i.name for i in src["budget"].indexes}
    assert {t.name for t in db.triggers} >= {t.name for t in src.triggers}
    assert db.execute("SELECT * FROM by_department ORDER BY 1").fetchall() == src.execute(
        "SELECT * FROM by_department ORDER BY 1").fetchall()
    # The FTS triggers still work on data.db: a new row is searchable.
    db["budget"].insert({"id": 99, "department": "x", "item": "staplers", "amount": 1})
    assert db.execute("SELECT rowid FROM budget_fts WHERE budget_fts MATCH 'staplers'").fetchall() == [(99,)]
    db.conn.close()
    # Every table private, and the adoption is in its log with who did it.
    conn = plain_primary.connect()
    try:
        assert set(store.public_specs(conn)) == {"airports"}
        (logged,) = adoption.adoptions(conn)
        assert logged["actor"] == "tester" and logged["files"] == [{"name": "mydata.db", "bytes": mydata.stat().st_size}]
        kept = conn.execute("SELECT metadata FROM _public_adoptions").fetchone()[0]
    finally:
        conn.close()
    assert "sort_desc" in kept  # the document is kept whole


def test_metadata_is_kept_and_what_broadsheet_does_not_use_is_named(plain_primary, mydata, metadata_yml):
    done = adopt_into(plain_primary, mydata, metadata=parse_document(metadata_yml.read_text()))
    assert sorted(done.metadata.ignored) == sorted([
        "extra_css_urls", "databases.mydata.tables.budget.sort_desc", "databases.mydata.tables.staff.hidden",
        "databases.elsewhere",
    ])
    conn = plain_primary.connect()
    try:
        found = store.metadata(conn)
    finally:
        conn.close()
    assert found[store.INSTANCE]["title"] == "Council budgets"
    assert found[store.INSTANCE]["source"] == "Finance office"  # the database's, as public.db is one database
    assert found["budget"] == {
        "title": "Budget lines", "description": "Every line of the adopted budget",
        "columns": {"amount": "Pounds, nominal", "department": "The spending department"},
    }


def test_the_same_metadata_in_json_and_in_datasette_yaml_reads_the_same(mydata, metadata_yml):
    import json

    import yaml

    document = yaml.safe_load(metadata_yml.read_text())
    names = {"mydata": ["budget", "staff", "allocations"]}
    as_yaml = store.datasette_metadata.read(parse_document(metadata_yml.read_text()), names)
    as_json = store.datasette_metadata.read(parse_document(json.dumps(document)), names)
    assert (as_yaml.instance, as_yaml.tables, as_yaml.ignored) == (as_json.instance, as_json.tables, as_json.ignored)
    # A datasette.yaml: the same metadata keys beside settings and plugins, which are named as ignored.
    config = {**document, "settings": {"default_page_size": 50}, "plugins": {"datasette-cluster-map": {}}}
    in_config = store.datasette_metadata.read(config, names)
    assert in_config.tables == as_yaml.tables
    assert {"settings", "plugins"} <= set(in_config.ignored)


def test_published_adopted_table_carries_its_metadata_and_only_public_column_descriptions(plain_primary, mydata, metadata_yml):
    adopt_into(plain_primary, mydata, metadata=parse_document(metadata_yml.read_text()))
    published = plain_primary.control.post("/tables/budget/publish", json={"exclude_columns": ["amount"]})
    assert published.status_code == 200, published.text
    plain_primary.publish()
    assert "budget" in plain_primary.public_tables() and "staff" not in plain_primary.public_tables()
    rows = dict((r[0], r[1:]) for r in plain_primary.public_rows("SELECT table_name, title, columns FROM _public_metadata"))
    assert rows["budget"][0] == "Budget lines"
    # The excluded column's description (and so its name) stays on the primary.
    assert "amount" not in rows["budget"][1] and "department" in rows["budget"][1]
    assert "staff" not in rows
    assert SENTINEL.encode() not in plain_primary.public_db.read_bytes()


# -- refusals: nothing written ----------------------------------------------------


@pytest.fixture
def corrupt(tmp_path, mydata):
    damaged = tmp_path / "damaged.db"
    data = bytearray(mydata.read_bytes())
    page = 4096
    data[page * 2: page * 2 + 2000] = b"\xff" * 2000  # a b-tree page overwritten
    damaged.write_bytes(bytes(data))
    return damaged


@pytest.fixture
def not_sqlite(tmp_path):
    path = tmp_path / "budget.csv"
    path.write_text("id,amount\n1,100\n")
    return path


def test_a_damaged_file_a_non_sqlite_file_and_colliding_files_are_refused_naming_them(
    plain_primary, tmp_path, mydata, corrupt, not_sqlite
):
    with pytest.raises(adoption.AdoptError, match="damaged.db is damaged"):
        adoption.inspect(corrupt)
    with pytest.raises(adoption.AdoptError, match="budget.csv is not an SQLite database"):
        adoption.inspect(not_sqlite)
    other = tmp_path / "other.db"
    sqlite_utils.Database(other)["staff"].insert({"id": 1})
    sqlite_utils.Database(other)["fresh"].insert({"id": 1})
    with pytest.raises(adoption.NameCollision, match="'staff' in mydata.db and table 'staff' in other.db") as caught:
        adoption.check_between([adoption.inspect(mydata), adoption.inspect(other)])
    assert caught.value.names == ["staff"]


def test_names_data_db_has_are_refused_unless_replaced_and_nothing_changes(plain_primary, tmp_path):
    before = digest(plain_primary.data_db)
    clash = tmp_path / "clash.db"
    db = sqlite_utils.Database(clash)
    db["planes"].insert({"tailnum": "X1"})
    db["new_one"].insert({"id": 1})
    db.close()
    with pytest.raises(adoption.NameCollision, match="data.db already has 'planes'"):
        adopt_into(plain_primary, clash)
    assert digest(plain_primary.data_db) == before
    assert plain_primary.data("SELECT name FROM sqlite_master WHERE name = 'new_one'") == []
    done = adopt_into(plain_primary, clash, replace=True)
    assert done.replaced == ["planes"]
    assert plain_primary.data("SELECT tailnum FROM planes") == [("X1",)]


def test_a_published_table_replaced_by_an_adoption_is_private_again(plain_primary, tmp_path):
    clash = tmp_path / "clash.db"
    sqlite_utils.Database(clash)["airports"].insert({"faa": "NEW"})
    adopt_into(plain_primary, clash, replace=True)
    conn = plain_primary.connect()
    try:
        assert "airports" not in store.public_specs(conn)
    finally:
        conn.close()
    plain_primary.publish()
    assert "airports" not in plain_primary.public_tables()


# -- the control plane ----------------------------------------------------------


def post_file(plain, path, **params):
    with open(path, "rb") as fp:
        return plain.control.post(
            "/adoptions", params=params, files={"file": (path.name, fp, "application/vnd.sqlite3")},
        )


def test_the_control_plane_adopts_and_publishes_what_it_is_asked_to(plain_primary, mydata, metadata_yml):
    with open(mydata, "rb") as fp:
        answer = plain_primary.control.post(
            "/adoptions", params={"publish": "budget"}, data={"metadata": metadata_yml.read_text()},
            files={"file": ("mydata.db", fp, "application/vnd.sqlite3")},
        )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert "staff" in body["tables"] and body["metadata_tables"] == ["budget", "staff"]
    assert "extra_css_urls" in body["ignored"]
    assert [(f["table"], f["public"]) for f in body["published"]] == [("budget", True)]
    plain_primary.publish()
    assert {"budget", "airports"} <= plain_primary.public_tables() and "staff" not in plain_primary.public_tables()
    entry = plain_primary.audit("budget", limit=1)[0]
    assert (entry["operation"], entry["actor"]) == ("publish", "tester")
    listed = plain_primary.control.get("/adoptions").json()
    assert listed[0]["actor"] == "tester"


@pytest.mark.parametrize("which", ["corrupt", "not_sqlite", "clash"])
def test_the_control_plane_refuses_before_writing(plain_primary, which, request, tmp_path):
    if which == "clash":
        path = tmp_path / "clash.db"
        sqlite_utils.Database(path)["planes"].insert({"tailnum": "X1"})
    else:
        path = request.getfixturevalue(which)
    before = digest(plain_primary.data_db)
    answer = post_file(plain_primary, path)
    assert answer.status_code == (409 if which == "clash" else 400), answer.text
    assert path.name in answer.json()["error"] or "planes" in answer.json()["error"]
    assert digest(plain_primary.data_db) == before


def test_an_upload_larger_than_the_limit_is_a_413_that_says_the_limit(plain_primary, mydata, monkeypatch):
    from primary.settings import settings

    monkeypatch.setenv("BROADSHEET_ADOPT_MAX_BYTES", "1000")
    settings.cache_clear()
    before = digest(plain_primary.data_db)
    answer = post_file(plain_primary, mydata)
    assert answer.status_code == 413
    assert "at most 1,000" in answer.json()["error"] and "BROADSHEET_ADOPT_MAX_BYTES" in answer.json()["error"]
    assert digest(plain_primary.data_db) == before


def test_an_anonymous_upload_is_refused(plain_primary, mydata):
    with open(mydata, "rb") as fp:
        answer = plain_primary.anonymous("POST", "/adoptions", files={"file": ("mydata.db", fp)})
    assert answer.status_code in (401, 403)


# -- the commands' own checks, before anything starts or is sent ------------------------


def test_up_refuses_colliding_files_naming_the_collisions_before_starting(tmp_path, mydata):
    from click.testing import CliRunner

    from broadsheet.cli import cli

    other = tmp_path / "other.db"
    sqlite_utils.Database(other)["budget"].insert({"id": 1})
    result = CliRunner().invoke(cli, ["up", str(mydata), str(other), "--dir", str(tmp_path / "cluster")])
    assert result.exit_code == 1
    assert "'budget' in mydata.db and table 'budget' in other.db" in result.output
    assert not (tmp_path / "cluster" / "primary" / "litefs").exists()
    lonely = CliRunner().invoke(cli, ["up", "--metadata", str(mydata), "--dir", str(tmp_path / "cluster")])
    assert lonely.exit_code == 1 and "--metadata describes the DATABASES" in lonely.output


def test_broadsheet_adopt_uploads_with_a_bar_and_says_what_it_made(plain_primary, mydata, metadata_yml):
    from click.testing import CliRunner

    from broadsheet.cli import cli

    plain_primary.team_site()  # the control plane on real HTTP
    result = CliRunner().invoke(cli, [
        "adopt", str(mydata), "--metadata", str(metadata_yml), "--publish", "budget",
        "--url", plain_primary.node.control_url, "--token", plain_primary.token,
    ])
    assert result.exit_code == 0, result.output
    assert "uploading mydata.db" in result.output
    assert "every one private" in result.output and "staff" in result.output
    assert "metadata keys broadsheet does not use" in result.output and "sort_desc" in result.output
    assert "budget is now public" in result.output
    again = CliRunner().invoke(cli, [
        "adopt", str(mydata), "--url", plain_primary.node.control_url, "--token", plain_primary.token,
    ])
    assert again.exit_code == 1 and "data.db already has" in again.output and "--replace" in again.output
    unknown = CliRunner().invoke(cli, [
        "adopt", str(mydata), "--publish", "nope", "--url", plain_primary.node.control_url, "--token", plain_primary.token,
    ])
    assert unknown.exit_code == 1 and "not in mydata.db: nope" in unknown.output


def test_the_openapi_document_describes_adoptions(plain_primary):
    doc = plain_primary.anonymous("GET", "/openapi.json").json()
    post = doc["paths"]["/adoptions"]["post"]
    assert {"200", "400", "403", "409", "411", "413"} <= set(post["responses"])
    assert "file" in post["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert "get" in doc["paths"]["/adoptions"]


def test_a_file_with_a_write_ahead_log_is_sent_with_what_its_log_holds(plain_primary, tmp_path):
    from click.testing import CliRunner

    from broadsheet.cli import cli

    path = tmp_path / "live.db"
    writer = sqlite3.connect(path)
    try:
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("PRAGMA wal_autocheckpoint=0")
        writer.execute("CREATE TABLE readings (id INTEGER PRIMARY KEY, value TEXT)")
        writer.executemany("INSERT INTO readings (value) VALUES (?)", [(f"v{i}",) for i in range(50)])
        writer.commit()
        assert adoption.has_wal(path)  # the rows are in live.db-wal, not in live.db
        plain_primary.team_site()
        result = CliRunner().invoke(cli, [
            "adopt", str(path), "--url", plain_primary.node.control_url, "--token", plain_primary.token,
        ])
    finally:
        writer.close()
    assert result.exit_code == 0, result.output
    assert "has a write-ahead log" in result.output
    assert plain_primary.data("SELECT count(*) FROM readings") == [(50,)]


def test_the_control_plane_leaves_no_copy_of_an_upload_behind(plain_primary, tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    path = tmp_path / "wal-mode.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    assert post_file(plain_primary, path).status_code == 200
    assert post_file(plain_primary, path).status_code == 409
    assert [p.name for p in scratch.iterdir() if p.name.startswith("adopt-")] == []

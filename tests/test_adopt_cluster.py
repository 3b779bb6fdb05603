"""A team brings its own Datasette database (cluster layer: real LiteFS,
real read nodes): `broadsheet up mydata.db --metadata metadata.yml` starts
with its tables private, publishing one makes read nodes serve it with its
metadata while the rest stay 403 and the private marker is in no byte of a
read node; `broadsheet adopt` on the running primary refuses a damaged
file, a non-SQLite file and colliding names without a data.db commit, and
adopts a 200 MB file with a progress bar (timed against a plain copy)."""

from __future__ import annotations

import shutil
import sqlite3
import time

import httpx
import pytest
from click.testing import CliRunner

from broadsheet.cli import cli
from broadsheet.client import ControlClient
from broadsheet.litefs import Pos
from broadsheet.tokens import mint
from conftest import file_bytes, settle, status
from datasette_files import SENTINEL, make_database, make_metadata

pytestmark = pytest.mark.cluster


@pytest.fixture
def adopted(new_cluster, tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    mydata = make_database(files / "mydata.db")
    metadata = make_metadata(files / "metadata.yml")
    cluster = new_cluster(
        replicas=2, sample=False,
        primary_env={"BROADSHEET_ADOPT": str(mydata), "BROADSHEET_ADOPT_METADATA": str(metadata)},
    )
    token = mint(cluster.primary.secret, "tester")
    return cluster, ControlClient(cluster.primary.control_url, token), token


def adopt_cli(cluster, token, *args):
    return CliRunner().invoke(cli, ["adopt", *map(str, args), "--url", cluster.primary.control_url, "--token", token])


def test_up_with_a_datasette_database_then_publish_one_table(adopted):
    cluster, control, _ = adopted
    tables = {t["table"]: t["public"] for t in control.tables()}
    assert {"budget", "allocations", "staff"} <= set(tables)
    assert not any(tables.values())  # every table private
    conn = sqlite3.connect(f"file:{cluster.primary.data_db}?mode=ro", uri=True)
    try:
        made = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        # A new data.db's pages (store/migrations.py): a large adoption's commit costs a quarter of the FUSE writes.
        assert conn.execute("PRAGMA page_size").fetchone() == (16384,)
    finally:
        conn.close()
    assert {"by_department", "budget_fts", "staff_touched", "idx_budget_department"} <= made
    control.publish("budget")
    settle(cluster)
    cluster.wait_for_replicas()
    for node in cluster.replicas:
        assert httpx.get(f"{node.url}/public/budget.json?_shape=array&_size=max", timeout=10).json()[0]["item"] == "line item 1"
        page = httpx.get(f"{node.url}/public/budget", timeout=10).text
        assert "Budget lines" in page and "Every line of the adopted budget" in page
        assert "The spending department" in page  # a column's description
        index = httpx.get(f"{node.url}/", timeout=10).text
        assert "Council budgets" in index and "CC BY 4.0" in index
        searched = httpx.get(f"{node.url}/public/budget.json?_search=paperclips&_shape=array", timeout=10).json()
        assert [r["id"] for r in searched] == [5, 10, 15, 20, 25, 30, 35, 40]
        for private in ("staff", "allocations", "by_department"):
            assert status(node.url, f"/public/{private}.json") == 403
        for path, data in file_bytes(node.root):
            assert SENTINEL.encode() not in data, f"{SENTINEL} found in {path}"


def test_adopt_refuses_without_a_commit_then_adopts_a_large_file_with_progress(adopted, tmp_path):
    cluster, control, token = adopted
    data_db = cluster.primary.data_db
    damaged = tmp_path / "damaged.db"
    good = make_database(tmp_path / "good.db")
    raw = bytearray(good.read_bytes())
    raw[8192:10192] = b"\xff" * 2000
    damaged.write_bytes(bytes(raw))
    not_sqlite = tmp_path / "notes.csv"
    not_sqlite.write_text("id,note\n1,hello\n")
    clash = tmp_path / "clash.db"
    with sqlite3.connect(clash) as conn:
        conn.execute("CREATE TABLE staff (id INTEGER PRIMARY KEY)")
        conn.execute("CREATE TABLE brand_new (id INTEGER PRIMARY KEY)")

    before = Pos.read(data_db)
    for path, said in ((damaged, "damaged.db is damaged"), (not_sqlite, "notes.csv is not an SQLite database"),
                       (clash, "data.db already has 'staff'")):
        result = adopt_cli(cluster, token, path)
        assert result.exit_code == 1 and said in result.output, result.output
    # The primary refuses too (the CLI's own checks skipped): a 409 naming the names.
    with pytest.raises(Exception, match="staff"):
        control.adopt(clash)
    assert Pos.read(data_db) == before  # not one data.db commit
    assert "brand_new" not in {t["table"] for t in control.tables()}

    # A 200 MB file: a progress bar, then the tables private in data.db.
    big = tmp_path / "big.db"
    with sqlite3.connect(big) as conn:
        conn.execute("PRAGMA page_size=4096")
        conn.execute("CREATE TABLE readings (id INTEGER PRIMARY KEY, station TEXT, payload BLOB)")
        conn.execute("CREATE INDEX readings_station ON readings (station)")
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000)"
            " INSERT INTO readings SELECT i, 'station ' || (i % 97), randomblob(1000) FROM n"
        )
    size = big.stat().st_size
    assert size > 200 * 1000 * 1000
    started = time.monotonic()
    shutil.copyfile(big, tmp_path / "plain-copy.db")
    copy_seconds = time.monotonic() - started
    chunks = []
    started = time.monotonic()
    answer = control.adopt(big, progress=chunks.append)
    adopt_seconds = time.monotonic() - started
    assert len(chunks) > 20 and sum(chunks) >= size  # the bar moves as the file goes
    assert answer["rows"] == 200000 and answer["tables"] == ["readings"]
    print(f"\nadopt {size / 1e6:.0f} MB: {adopt_seconds:.1f}s end to end, data.db transaction {answer['seconds']:.1f}s;"
          f" plain file copy {copy_seconds:.2f}s")
    # The CLI shows the same bar (its label, on a terminal a moving bar).
    result = adopt_cli(cluster, token, big)
    assert result.exit_code == 1 and "data.db already has 'readings'" in result.output
    conn = sqlite3.connect(f"file:{data_db}?mode=ro", uri=True)
    try:
        assert conn.execute("SELECT count(*) FROM readings").fetchone() == (200000,)
    finally:
        conn.close()
    assert not next(t for t in control.tables() if t["table"] == "readings")["public"]
    assert Pos.read(data_db).txid > before.txid

    # Replacing what `up` adopted, publishing one table in the same request:
    # read nodes serve it, and the replaced private tables' marker reaches none.
    answer = control.adopt(good, replace=True, publish=["budget"])
    assert "staff" in answer["replaced"] and answer["published"][0]["public"]
    cluster.wait_for_replicas(answer["published"][0]["public_txid"])
    for node in cluster.replicas:
        assert len(httpx.get(f"{node.url}/public/budget.json?_shape=array&_size=max", timeout=10).json()) == 40
        assert status(node.url, "/public/staff.json") == 403
        for path, data in file_bytes(node.root):
            assert SENTINEL.encode() not in data, f"{SENTINEL} found in {path}"

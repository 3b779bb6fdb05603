"""Backups and restore checks on plain files: no LiteFS, no processes.

What a user relies on: a backup is a whole, consistent SQLite file named for
its TXID, never half a file under its final name; old ones are pruned; and
restore refuses anything that is not a whole broadsheet data.db of this
cluster, changing nothing.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from broadsheet.cli import cli
from broadsheet.litefs import Pos
from conftest import read_only_rows
from primary import backup, state

CLUSTER = "c0ffee0000000001"


def make_data_db(path: Path, cluster_id: str = CLUSTER, txid: int = 7) -> Path:
    conn = state.connect(str(path))
    state.ensure_schema(conn)
    backup.ensure_cluster(conn, cluster_id)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO notes (body) VALUES ('first'), ('second')")
    state.set_public(conn, "notes", True, actor="test")
    conn.close()
    # What LiteFS shows beside a database on its mount.
    Path(f"{path}-pos").write_text(str(Pos(txid, 0xABC)))
    return path


def test_a_backup_is_a_whole_consistent_copy_named_for_its_txid(tmp_path):
    data_db = make_data_db(tmp_path / "data.db")
    taken = backup.take(data_db, tmp_path / "backups")
    assert taken.txid == 7 and taken.cluster_id == CLUSTER
    assert taken.path.parent == tmp_path / "backups" and taken.path.name.endswith("-txid7.db")
    # One file: nothing beside it, nothing temporary left.
    assert sorted(p.name for p in (tmp_path / "backups").iterdir()) == [taken.path.name]
    assert read_only_rows(taken.path, "PRAGMA integrity_check") == [("ok",)]
    for sql in ("SELECT * FROM notes ORDER BY id", "SELECT * FROM _public_tables", "SELECT * FROM _public_audit_log"):
        assert read_only_rows(taken.path, sql) == read_only_rows(data_db, sql)
    assert read_only_rows(taken.path, "SELECT txid, cluster_id FROM _public_backup") == [(7, CLUSTER)]
    assert backup.inspect(taken.path) == taken


def test_a_backup_that_fails_leaves_no_file(tmp_path, monkeypatch):
    data_db = make_data_db(tmp_path / "data.db")
    dest = tmp_path / "backups"

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(backup, "_fsync", fail)
    with pytest.raises(OSError):
        backup.take(data_db, dest)
    assert list(dest.iterdir()) == []


def test_a_backup_waits_for_a_write_in_flight_and_names_its_txid(tmp_path):
    """LiteFS records a commit's TXID before the writer lets go of its lock;
    the snapshot starts under that lock, so it holds exactly the writes up
    to the TXID it is named for."""
    import threading

    data_db = make_data_db(tmp_path / "data.db", txid=7)
    writer = state.connect(str(data_db))
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO notes (body) VALUES ('in flight')")
    result = {}
    backing_up = threading.Thread(target=lambda: result.update(taken=backup.take(data_db, tmp_path / "b")))
    backing_up.start()
    backing_up.join(0.5)
    assert backing_up.is_alive()  # waiting for the writer
    Path(f"{data_db}-pos").write_text(str(Pos(8, 0xDEF)))  # as LiteFS does, before the lock goes
    writer.execute("COMMIT")
    writer.close()
    backing_up.join(30)
    taken = result["taken"]
    assert taken.txid == 8
    assert read_only_rows(taken.path, "SELECT body FROM notes ORDER BY id") == [("first",), ("second",), ("in flight",)]


def test_old_backups_are_pruned(tmp_path):
    data_db = make_data_db(tmp_path / "data.db")
    taken = [backup.take(data_db, tmp_path / "b", keep=3) for _ in range(5)]
    assert backup.backups(tmp_path / "b") == [t.path for t in taken[-3:]]


def test_restore_refuses_what_is_not_a_broadsheet_data_db_of_this_cluster(tmp_path):
    data_db = make_data_db(tmp_path / "data.db")
    before = data_db.read_bytes()
    good = backup.take(data_db, tmp_path / "b").path
    bad = {}
    bad["truncated"] = tmp_path / "truncated.db"
    bad["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2 + 100])
    bad["not SQLite"] = tmp_path / "notes.csv"
    bad["not SQLite"].write_text("id,body\n1,hello\n" * 100)
    bad["not a broadsheet data.db"] = tmp_path / "other.db"
    sqlite3.connect(bad["not a broadsheet data.db"]).execute("CREATE TABLE t (x)").connection.commit()
    other = make_data_db(tmp_path / "other-cluster.db", cluster_id="0123456789abcdef")
    bad["another cluster"] = backup.take(other, tmp_path / "other-backups").path
    expected = {
        "truncated": "truncated",
        "not SQLite": "not an SQLite database",
        "not a broadsheet data.db": "not a broadsheet data.db",
        "another cluster": "refusing to restore another cluster's data",
    }
    for what, path in bad.items():
        with pytest.raises(backup.BackupError, match=expected[what]):
            # No LiteFS at this address: a refusal must come before it is asked.
            backup.restore(path, data_db, "http://127.0.0.1:9", workdir=tmp_path)
        result = CliRunner().invoke(cli, ["restore", str(path)], env={
            "BROADSHEET_ROOT": str(tmp_path / "node"), "DATASETTE_SECRET": "x",
        })
        assert result.exit_code == 1 and "Error:" in result.output, result.output
    assert data_db.read_bytes() == before
    assert not list(tmp_path.glob("broadsheet-restore-*"))


def test_a_primary_refuses_a_data_db_of_another_cluster(tmp_path):
    data_db = make_data_db(tmp_path / "data.db")
    conn = state.connect(str(data_db))
    try:
        assert backup.ensure_cluster(conn, CLUSTER) == CLUSTER
        with pytest.raises(backup.BackupError, match="belongs to cluster c0ffee0000000001"):
            backup.ensure_cluster(conn, "0123456789abcdef")
    finally:
        conn.close()


def test_the_cluster_id_comes_from_the_deployment(tmp_path):
    from primary.node import PrimaryNode

    env = {"DATASETTE_SECRET": "s3cret", "BROADSHEET_ROOT": str(tmp_path)}
    one, again = PrimaryNode.from_env(env), PrimaryNode.from_env(env)
    assert one.cluster_id == again.cluster_id != PrimaryNode.from_env({**env, "DATASETTE_SECRET": "other"}).cluster_id
    assert "s3cret" not in one.cluster_id
    assert PrimaryNode.from_env({**env, "BROADSHEET_CLUSTER_ID": "team-a"}).cluster_id == "team-a"
    assert PrimaryNode.from_env(one.to_env()) == one


def test_backup_command_writes_into_the_directory_it_is_given(tmp_path):
    data_db = make_data_db(tmp_path / "data.db")
    for _ in range(3):
        result = CliRunner().invoke(cli, ["backup", "--data-db", str(data_db), "--to", str(tmp_path / "b"), "--keep", "2"])
        assert result.exit_code == 0, result.output
        assert "data.db TXID 7" in result.output
    assert len(backup.backups(tmp_path / "b")) == 2
    result = CliRunner().invoke(cli, ["backup", "--data-db", str(tmp_path / "nope.db"), "--to", str(tmp_path / "b")])
    assert result.exit_code == 1 and "does not exist" in result.output
    assert os.listdir(tmp_path / "b") and len(backup.backups(tmp_path / "b")) == 2


def test_scheduled_backups_keep_the_newest(tmp_path):
    """What BROADSHEET_BACKUP_INTERVAL runs under the supervisor."""
    import subprocess
    import sys

    from conftest import wait_until

    data_db = make_data_db(tmp_path / "data.db")
    proc = subprocess.Popen([
        sys.executable, "-m", "broadsheet.cli", "run-backups", "--data-db", str(data_db),
        "--to", str(tmp_path / "b"), "--keep", "2", "--interval", "0.2",
    ])
    try:
        wait_until(lambda: len(list((tmp_path / "b").glob("data-*.db"))) == 2, timeout=30, message="two backups")
        first = backup.backups(tmp_path / "b")
        wait_until(lambda: backup.backups(tmp_path / "b")[0] not in first, timeout=30, message="the oldest pruned")
        assert len(backup.backups(tmp_path / "b")) == 2
    finally:
        proc.terminate()
        assert proc.wait(10) == 0

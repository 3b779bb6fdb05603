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
from primary import backup, store

CLUSTER = "c0ffee0000000001"


def make_data_db(path: Path, cluster_id: str = CLUSTER, txid: int = 7) -> Path:
    conn = store.connect(str(path))
    store.ensure_schema(conn)
    backup.ensure_cluster(conn, cluster_id)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO notes (body) VALUES ('first'), ('second')")
    store.set_public(conn, "notes", True, actor="test")
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
    with pytest.raises(backup.BackupError, match="disk full"):
        backup.take(data_db, dest)
    assert list(dest.iterdir()) == []


def test_a_backup_waits_for_a_write_in_flight_and_names_its_txid(tmp_path):
    """LiteFS records a commit's TXID before the writer lets go of its lock;
    the snapshot starts under that lock, so it holds exactly the writes up
    to the TXID it is named for."""
    import threading

    data_db = make_data_db(tmp_path / "data.db", txid=7)
    writer = store.connect(str(data_db))
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
    conn = store.connect(str(data_db))
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


def test_a_backup_is_readable_by_its_owner_alone(tmp_path):
    # A backup is the team's private data: no other account on the machine
    # (nor a container running as another user) reads it, whatever the umask.
    data_db = make_data_db(tmp_path / "data.db")
    old = os.umask(0o022)
    try:
        taken = backup.take(data_db, tmp_path / "backups")
    finally:
        os.umask(old)
    assert taken.path.stat().st_mode & 0o077 == 0, oct(taken.path.stat().st_mode)
    assert (tmp_path / "backups").stat().st_mode & 0o077 == 0


def test_a_backup_into_a_place_that_cannot_hold_one_is_a_clear_error(tmp_path):
    data_db = make_data_db(tmp_path / "data.db")
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("x")
    for dest in (not_a_dir, not_a_dir / "backups"):
        with pytest.raises(backup.BackupError, match="cannot write backups"):
            backup.take(data_db, dest)
        result = CliRunner().invoke(cli, ["backup", "--data-db", str(data_db), "--to", str(dest)])
        # A usage error (2) or a refusal (1), with a message, never a traceback.
        assert result.exit_code in (1, 2) and "Error:" in result.output, result.output
        assert isinstance(result.exception, SystemExit), result.exception
    assert not_a_dir.read_text() == "x"


def test_pruning_never_deletes_the_backup_just_taken(tmp_path):
    # A clock set back (or a backup copied in from a machine whose clock ran
    # ahead) must not make the newest backup the first one pruned.
    data_db = make_data_db(tmp_path / "data.db")
    dest = tmp_path / "b"
    ahead = backup.take(data_db, dest)
    later_name = ahead.path.with_name(ahead.path.name.replace(ahead.path.name[5:9], "2999"))
    ahead.path.rename(later_name)
    taken = backup.take(data_db, dest, keep=1)
    assert taken.path.exists()
    assert backup.inspect(taken.path).txid == 7


def import_into(monkeypatch, path: Path) -> None:
    """Stand-in for the private LiteFS's /import (a unit test of restore):
    what restore would import is written to ``path``."""

    class Answer:
        status_code, text = 200, ""

    def post(url, params, content, timeout):
        path.write_bytes(content.read())
        return Answer()

    monkeypatch.setattr(backup.httpx, "post", post)


def test_restore_keeps_the_epoch_and_public_cluster_id_of_the_running_primary(tmp_path, monkeypatch):
    # A backup taken before a promotion (epoch 1) restored on the promoted
    # node (epoch 2) must not make it look no newer than the old primary; nor
    # may it bring back a public cluster id read nodes no longer accept.
    data_db = make_data_db(tmp_path / "data.db")
    conn = store.connect(str(data_db))
    backup.record_public_litefs_id(conn, "LFSCOLD")
    conn.close()
    old = backup.take(data_db, tmp_path / "b").path
    conn = store.connect(str(data_db))
    backup.set_epoch(conn, 2)
    backup.record_public_litefs_id(conn, "LFSCNOW")
    # The running primary's generation too (a primary made afresh, then
    # restored): its standby follows the import as one history with it.
    with store.immediate(conn):
        conn.execute("UPDATE _public_cluster SET generation = 'running-one'")
    conn.close()
    staged = tmp_path / "imported.db"
    import_into(monkeypatch, staged)
    backup.restore(old, data_db, "http://127.0.0.1:9", workdir=tmp_path)
    assert read_only_rows(staged, "SELECT epoch, public_litefs_id, generation FROM _public_cluster") == [
        (2, "LFSCNOW", "running-one")
    ]


def test_every_data_db_has_a_generation_of_its_own(tmp_path):
    # Made with the data.db and kept; another data.db (a primary started
    # afresh) gets another one, and one made by an older broadsheet gets
    # its own at the next start.
    first, second = make_data_db(tmp_path / "a.db"), make_data_db(tmp_path / "b.db")
    a, b = backup.identity_of_file(first), backup.identity_of_file(second)
    assert a.generation and b.generation and a.generation != b.generation
    conn = store.connect(str(first))
    backup.ensure_cluster(conn, a.cluster_id)
    with store.immediate(conn):
        conn.execute("UPDATE _public_cluster SET generation = NULL")
    backup.ensure_cluster(conn, a.cluster_id)
    conn.close()
    assert backup.identity_of_file(first).generation not in (None, a.generation)
    assert backup.identity_of_file(tmp_path / "none.db") == backup.Identity()


def test_restore_brings_a_backup_of_an_older_schema_up_to_this_one(tmp_path, monkeypatch):
    # A backup taken by an older broadsheet lacks internal tables added since
    # (here the change log and the cycle record): restore still works, and
    # the data.db it imports has everything the running primary reads.
    data_db = make_data_db(tmp_path / "data.db")
    old = backup.take(data_db, tmp_path / "b").path
    conn = sqlite3.connect(old)
    conn.executescript("DROP TABLE _public_changes; DROP TABLE _public_cycles;")
    conn.close()
    staged = tmp_path / "imported.db"
    import_into(monkeypatch, staged)
    done = backup.restore(old, data_db, "http://127.0.0.1:9", workdir=tmp_path)
    assert done.tables == ["notes"]
    tables = {r[0] for r in read_only_rows(staged, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"_public_changes", "_public_cycles", "notes"} <= tables
    assert read_only_rows(staged, "SELECT tbl, rid FROM _public_changes") == [("notes", None)]


def test_backing_up_what_is_not_a_database_is_a_clear_error(tmp_path):
    not_db = tmp_path / "data.db"
    not_db.write_text("id,body\n1,hello\n" * 100)
    dest = tmp_path / "b"
    with pytest.raises(backup.BackupError, match="data.db"):
        backup.take(not_db, dest)
    assert backup.backups(dest) == [] and not list(dest.glob(".data-*"))
    result = CliRunner().invoke(cli, ["backup", "--data-db", str(not_db), "--to", str(dest)])
    assert result.exit_code == 1 and "Error:" in result.output, result.output


def test_a_backup_pruned_while_it_is_restored_is_a_clear_error(tmp_path, monkeypatch):
    # The scheduled backups prune the oldest file while `restore` is reading
    # it: a message, nothing changed, no scratch copy left.
    data_db = make_data_db(tmp_path / "data.db")
    before = data_db.read_bytes()
    old = backup.take(data_db, tmp_path / "b").path
    checked = backup.inspect

    def inspect_then_prune(path):
        found = checked(path)
        if Path(path) == old:
            old.unlink()
        return found

    monkeypatch.setattr(backup, "inspect", inspect_then_prune)
    with pytest.raises(backup.BackupError, match="could not be read"):
        backup.restore(old, data_db, "http://127.0.0.1:9", workdir=tmp_path)
    assert data_db.read_bytes() == before
    assert not list(tmp_path.glob("broadsheet-restore-*"))

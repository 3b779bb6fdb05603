"""Backups of a running primary, and bringing a wiped primary back from one
(real LiteFS, real read nodes).

Backups taken while the team writes hold exactly what data.db held at their
TXID; after the primary's disks are wiped and the newest backup restored,
data.db is that state again, the publisher rebuilds public.db from it, and
every read node converges to its projection (a table published after the
backup is private again, rows written after it are gone).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time

from click.testing import CliRunner

from broadsheet.cli import cli
from broadsheet.litefs import Pos
from conftest import create_table, primary_services, read_only_rows, rows, settle, status, team_db, wait_until
from primary import backup, store

AFTER = "WRITTEN-AFTER-THE-BACKUP-5e1d"


def test_backups_under_writes_hold_their_txid_state(new_cluster):
    cluster = new_cluster(replicas=1, sample=False)
    create_table(cluster, "ledger", [{"id": 0, "n": 0}])
    commits = []  # (TXID before, TXID after, rows after) for each write
    stop = threading.Event()

    def write():
        db = team_db(cluster)
        n = 1
        while not stop.is_set():
            try:
                before = Pos.read(cluster.primary.data_db).txid
                with db.conn:
                    db.execute("INSERT INTO ledger (id, n) VALUES (?, ?)", [n, n])
                    (count,) = db.execute("SELECT count(*) FROM ledger").fetchone()
                commits.append((before, Pos.read(cluster.primary.data_db).txid, count))
            except Exception:  # LiteFS restarted under us: carry on once it is back
                time.sleep(0.2)
                db.close()
                db = team_db(cluster)
            n += 1
        db.close()

    writer = threading.Thread(target=write)
    writer.start()
    taken = []
    try:
        wait_until(lambda: len(commits) > 5, message="writes flowing")
        for _ in range(4):
            # Its own process, as on a primary (see the README's Known limits).
            done = subprocess.run(
                [sys.executable, "-m", "broadsheet.cli", "backup", "--data-db", str(cluster.primary.data_db),
                 "--to", str(cluster.primary.backups), "--keep", "3", "--json"],
                capture_output=True, text=True, timeout=60,
            )
            assert done.returncode == 0, done.stderr
            taken.append(backup.inspect(json.loads(done.stdout)["path"]))
            wait_until(lambda: len(commits) > 5 + 5 * len(taken), message="more writes")
    finally:
        stop.set()
        writer.join(30)
    assert [t.path for t in taken[-3:]] == backup.backups(cluster.primary.backups)
    for t in taken[-3:]:
        assert read_only_rows(t.path, "PRAGMA integrity_check") == [("ok",)]
        count = read_only_rows(t.path, "SELECT count(*) FROM ledger")[0][0]
        # Writes whose commit was surely at or before the backup's TXID are
        # in it; writes that started after it are not.
        surely_in = max([c for b, a, c in commits if a <= t.txid], default=1)
        surely_not = min([c - 1 for b, a, c in commits if b >= t.txid], default=count)
        assert surely_in <= count <= surely_not, (t.txid, count, surely_in, surely_not)


def wipe_primary(cluster) -> None:
    """The primary's disks lost: every process of it stopped, both LiteFS
    data directories and the publisher's files gone, then started afresh
    (an empty data.db, an empty public.db)."""
    sup = cluster.supervisor
    for name in primary_services(cluster.primary):
        sup.stop(name)
    root = cluster.primary.root
    for path in (root / "private", root / "public"):
        shutil.rmtree(path)
    for path in root.glob("publisher-*"):
        path.unlink()
    cluster.primary.start(sup)


def test_backup_wipe_restore_and_read_nodes_converge(new_cluster):
    cluster = new_cluster(replicas=2, sample=False)
    node_urls = [n.url for n in cluster.replicas]
    create_table(cluster, "ledger", [{"id": i, "note": f"row {i}"} for i in range(20)])
    create_table(cluster, "drafts", [{"id": 1, "note": "not public at the backup"}])
    conn = store.connect(str(cluster.primary.data_db))
    store.set_public(conn, "ledger", True, actor="test")
    conn.close()
    settle(cluster)

    result = CliRunner().invoke(cli, ["backup", "--dir", str(cluster.root), "--keep", "2"])
    assert result.exit_code == 0, result.output
    (kept,) = backup.backups(cluster.primary.backups)
    assert str(kept) in result.output

    # After the backup: more rows, a private table made public.
    db = team_db(cluster)
    with db.conn:
        db["ledger"].insert({"id": 100, "note": AFTER})
    db.close()
    conn = store.connect(str(cluster.primary.data_db))
    store.set_public(conn, "drafts", True, actor="test")
    conn.close()
    settle(cluster)
    cluster.wait_for_replicas()
    assert any(r["note"] == AFTER for r in rows(node_urls[0], "ledger", _size="max"))
    assert status(node_urls[0], "/public/drafts.json") == 200

    wipe_primary(cluster)
    assert read_only_rows(cluster.primary.data_db, "SELECT count(*) FROM sqlite_master WHERE name = 'ledger'") == [(0,)]

    result = CliRunner().invoke(cli, ["restore", "--dir", str(cluster.root), str(kept)])
    assert result.exit_code == 0, result.output
    assert "public.db rebuilt" in result.output

    # data.db holds the backup's state again.
    for sql in ("SELECT * FROM ledger ORDER BY id", "SELECT * FROM drafts", "SELECT table_name, spec FROM _public_tables"):
        assert read_only_rows(cluster.primary.data_db, sql) == read_only_rows(kept, sql), sql
    assert read_only_rows(cluster.primary.data_db, "SELECT count(*) FROM sqlite_master WHERE name = '_public_backup'") == [(0,)]

    # And every read node serves its projection: the restored ledger, no
    # row written after the backup, drafts private again.
    expected = [{"id": i, "note": f"row {i}"} for i in range(20)]
    for url in node_urls:
        wait_until(lambda: rows(url, "ledger", _size="max") == expected, timeout=30,
                   message=f"{url} serving the restored ledger")
        assert status(url, "/public/drafts.json") == 403
    public = Pos.read(cluster.primary.public_db).txid
    cluster.wait_for_replicas(public, timeout=30)
    for node in cluster.replicas:
        assert read_only_rows(node.public_db, "SELECT * FROM ledger ORDER BY id") == read_only_rows(kept, "SELECT * FROM ledger ORDER BY id")

    # Publishing works on the restored primary.
    conn = store.connect(str(cluster.primary.data_db))
    store.set_public(conn, "drafts", True, actor="test")
    conn.close()
    for url in node_urls:
        wait_until(lambda: status(url, "/public/drafts.json") == 200, timeout=30, message="drafts published again")

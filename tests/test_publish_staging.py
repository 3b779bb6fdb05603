"""A large first copy staged over several bounded transactions
(primary/publisher/staging.py), on plain files (fast, no LiteFS): each
transaction changes about a batch's bytes, the table is never listed until
it is whole and then listed by one small transaction, team writes made
meanwhile are in it, only the spec's projection is staged, an unpublish
during staging erases every staged byte, and a restart mid-staging starts
it again without ever listing half."""

from __future__ import annotations

import os

import apsw

from primary import store
from primary.publisher import CycleLog, Publisher, Watermark
from primary.store import PublishSpec

BATCH = 512 * 1024
SENTINEL = "sentinel-7f3a9c"


def _data_db(path, rows: int = 6000) -> apsw.Connection:
    """``big``: about 500 bytes a row (6000 rows: ~3 MB, half a dozen batches),
    an indexed column, a column never published."""
    conn = store.connect(str(path))
    store.ensure_schema(conn)
    conn.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, code TEXT, body TEXT, secret TEXT)")
    conn.execute(
        "WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM i WHERE x < ?)"
        " INSERT INTO big SELECT x, 'c' || x, ? || hex(randomblob(240)), 'hidden-' || x FROM i",
        (rows, SENTINEL),
    )
    conn.execute("CREATE INDEX big_code ON big (code)")
    return conn


def _read(path, sql: str, args=()) -> list:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _listed(public) -> list[str]:
    return [r[0] for r in _read(public, "SELECT table_name FROM _public_tables")]


def _truncate_wal(public) -> None:
    conn = apsw.Connection(str(public))
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()


def _wal_bytes(public) -> int:
    try:
        return os.path.getsize(f"{public}-wal")
    except FileNotFoundError:
        return 0


def _cycle(publisher, public) -> int:
    """One cycle; returns what its transaction wrote (public.db's WAL, from empty)."""
    _truncate_wal(public)
    publisher.run_cycle()
    return _wal_bytes(public)


def test_a_large_first_copy_is_staged_in_bounded_transactions_and_listed_at_once(tmp_path):
    data, public, mark = tmp_path / "data.db", tmp_path / "public.db", tmp_path / "watermark.json"
    conn = _data_db(data)
    publisher = Publisher(data, public, mark, batch_bytes=BATCH)
    publisher.run_cycle()  # public.db made, nothing public
    spec = PublishSpec(columns=("id", "code", "body"), masks=(("body", "lower(body)"),))
    store.set_public(conn, "big", True, actor="alice", spec=spec)
    sizes, seen = [], []
    wrote_during = False
    while True:
        sizes.append(_cycle(publisher, public))
        listed = "big" in _listed(public)
        staged = _read(public, "SELECT count(*) FROM sqlite_master WHERE name = 'big'")[0][0]
        seen.append((listed, publisher.staging_due))
        if listed:
            break
        assert staged  # under its own name, not listed: never served
        if not wrote_during and _read(public, "SELECT copied FROM _public_staging")[0][0] > 1000:
            # The team changes rows already staged, and rows not yet.
            with store.immediate(conn):
                conn.execute("UPDATE big SET body = 'changed' WHERE id IN (5, 5900)")
                conn.execute("DELETE FROM big WHERE id IN (6, 5901)")
                conn.execute("INSERT INTO big (id, code, body, secret) VALUES (9000, 'new', 'late', 'x')")
            wrote_during = True
        assert len(sizes) < 100, "staging never ended"
    assert wrote_during
    # Several transactions, none much over a batch (pages and WAL frame
    # headers: a little over), and the one that lists it is small.
    page = publisher.conn.execute("PRAGMA main.page_size").fetchone()[0]
    assert len(sizes) >= 6, sizes
    assert max(sizes) <= 1.5 * BATCH + 8 * (page + 24), sizes
    assert sizes[-1] < BATCH / 4, sizes
    # Listed whole: the spec's projection at the listing cycle's snapshot.
    projected = "SELECT id, code, lower(body) FROM big ORDER BY id"
    assert _read(public, "SELECT id, code, body FROM big ORDER BY id") == _read(data, projected)
    assert ("changed",) in _read(public, "SELECT body FROM big WHERE id = 5900")
    assert not _read(public, "SELECT 1 FROM big WHERE id IN (6, 5901)")
    assert [c[1] for c in _read(public, "PRAGMA table_info(big)")] == ["id", "code", "body"]
    assert _read(public, "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'big'") == [("big_code",)]
    assert not _read(public, "SELECT * FROM _public_staging")
    raw = public.read_bytes()
    assert b"hidden-" not in raw and b"secret" not in raw
    # The cycle log says how far each staging cycle got, and the last one
    # published it; row-level changes go on as for any table.
    cycles = CycleLog.read_file(tmp_path / "publisher-cycles.jsonl", 200)[::-1]
    progress = [c.staging["big"]["copied"] for c in cycles if "big" in c.staging]
    assert progress == sorted(progress) and len(progress) >= 5
    assert cycles[-1].published == ("big",) and cycles[-1].actors == {"big": "alice"}
    assert cycles[-1].rows_by_table["big"] == 5999
    assert Watermark.read(mark) is not None
    with store.immediate(conn):
        conn.execute("UPDATE big SET body = 'after' WHERE id = 7")
    assert _cycle(publisher, public) < BATCH / 4
    assert ("after",) in _read(public, "SELECT body FROM big WHERE id = 7")
    publisher.close()
    conn.close()


def test_a_small_first_copy_is_one_transaction_as_before(tmp_path):
    data, public = tmp_path / "data.db", tmp_path / "public.db"
    conn = _data_db(data, rows=20)
    store.set_public(conn, "big", True, actor="test")
    publisher = Publisher(data, public, batch_bytes=BATCH)
    cycle = publisher.run_cycle()
    assert cycle.published == ("big",) and not cycle.staging and not publisher.staging_due
    assert _listed(public) == ["big"]
    publisher.close()
    conn.close()


def test_unpublishing_during_staging_erases_every_staged_byte(tmp_path):
    data, public = tmp_path / "data.db", tmp_path / "public.db"
    conn = _data_db(data)
    publisher = Publisher(data, public, tmp_path / "watermark.json", batch_bytes=BATCH)
    store.set_public(conn, "big", True, actor="test")
    for _ in range(4):
        publisher.run_cycle()
    assert publisher.staging_due and "big" not in _listed(public)
    assert SENTINEL.encode() in public.read_bytes() + (open(f"{public}-wal", "rb").read() if _wal_bytes(public) else b"")
    store.set_public(conn, "big", False, actor="test")
    sizes = []
    for _ in range(50):
        sizes.append(_cycle(publisher, public))
        if not publisher.staging_due:
            break
    assert not publisher.staging_due
    assert len(sizes) > 1 and max(sizes) <= 3 * BATCH, sizes  # erased in bounded batches too
    publisher.run_cycle()  # idle: the deferred WAL checkpoint
    _truncate_wal(public)
    assert _read(public, "SELECT name FROM sqlite_master WHERE name LIKE 'big%'") == []
    assert not _read(public, "SELECT * FROM _public_staging")
    assert SENTINEL.encode() not in public.read_bytes()
    assert b"big_code" not in public.read_bytes()
    assert _wal_bytes(public) == 0
    publisher.close()
    conn.close()


def test_a_restart_mid_staging_stages_again_and_never_lists_half(tmp_path):
    data, public, mark = tmp_path / "data.db", tmp_path / "public.db", tmp_path / "watermark.json"
    conn = _data_db(data)
    publisher = Publisher(data, public, mark, batch_bytes=BATCH)
    store.set_public(conn, "big", True, actor="test")
    for _ in range(3):
        publisher.run_cycle()
    # A crash: the process goes, what it committed stays.
    publisher.conn.close()
    publisher.writer.close()
    with store.immediate(conn):
        conn.execute("UPDATE big SET body = 'while down' WHERE id = 2")
    publisher = Publisher(data, public, mark, batch_bytes=BATCH)
    states = []
    for _ in range(100):
        publisher.run_cycle()
        if "big" in _listed(public):
            break
        states.append(tuple(r[0] for r in _read(public, "SELECT state FROM _public_staging")))
    # What it found staged was erased first (it cannot know the spec those
    # rows were staged under), then staged again from the start.
    assert ("erasing",) in states or states[0] == ()
    assert ("copying",) in states
    whole = "SELECT id, code, body FROM big ORDER BY id"
    assert _read(public, whole) == _read(data, whole)
    assert ("while down",) in _read(public, "SELECT body FROM big WHERE id = 2")
    publisher.close()
    conn.close()

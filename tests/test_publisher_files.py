"""The publisher on plain files (no LiteFS): its change-log bookkeeping, fast."""

from __future__ import annotations

import apsw

from primary import store
from primary.publisher import CycleLog, Publisher, Watermark


def test_trimming_the_change_log_never_lets_change_ids_repeat(tmp_path):
    """Trimming keeps the newest processed entry, so the next change's id
    (max + 1) is above everything processed and no change is skipped."""
    data, public = str(tmp_path / "data.db"), str(tmp_path / "public.db")
    conn = store.connect(data)
    store.ensure_schema(conn)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    conn.execute("INSERT INTO notes VALUES (1, 'one')")
    store.set_public(conn, "notes", True, actor="test")
    publisher = Publisher(data, public, tmp_path / "watermark.json")
    publisher.TRIM_EVERY = 1
    publisher.run_cycle()

    def public_rows():
        check = apsw.Connection(public, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            return check.execute("SELECT id, text FROM notes ORDER BY id").fetchall()
        finally:
            check.close()

    for i in range(2, 6):
        with store.immediate(conn):
            conn.execute("INSERT INTO notes VALUES (?, ?)", (i, f"note {i}"))
        publisher.run_cycle()  # trims after every cycle (TRIM_EVERY = 1)
        assert public_rows()[-1] == (i, f"note {i}")
        kept = conn.execute("SELECT count(*) FROM _public_changes").fetchone()[0]
        assert kept == 1  # the newest processed entry only
    # Cycle records go to a file beside the watermark, not to data.db.
    assert CycleLog.read_file(tmp_path / "publisher-cycles.jsonl", 100)
    assert conn.execute("SELECT count(*) FROM _public_cycles").fetchone()[0] == 0
    publisher.close()
    conn.close()


def test_a_table_sqlite_cannot_copy_is_left_out_and_never_wedges_publishing(tmp_path):
    """A table whose schema needs something only the team's own program has
    (here a collation) cannot be copied: it is left out and made private,
    audit-logged, and every other table is still published."""
    data, public = str(tmp_path / "data.db"), str(tmp_path / "public.db")
    conn = store.connect(data)
    conn.create_collation("team_order", lambda a, b: (a > b) - (a < b))
    store.ensure_schema(conn)
    conn.execute("CREATE TABLE good (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO good VALUES (1, 'fine')")
    conn.execute("CREATE TABLE odd (id INTEGER PRIMARY KEY, v TEXT COLLATE team_order); INSERT INTO odd VALUES (1, 'x')")
    conn.execute("CREATE INDEX odd_v ON odd (v)")
    for table in ("good", "odd"):
        store.set_public(conn, table, True, actor="test")
    publisher = Publisher(data, public, tmp_path / "watermark.json")
    publisher.run_cycle()
    check = apsw.Connection(public, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        names = {n for (n,) in check.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        listed = {n for (n,) in check.execute("SELECT table_name FROM _public_tables")}
    finally:
        check.close()
    assert "good" in names and "odd" not in names and listed == {"good"}
    assert "odd" not in store.public_tables(conn)
    assert "could not be copied" in store.audit_entries(conn, table="odd", limit=1)[0]["actor"]
    publisher.close()
    conn.close()


def test_a_restarted_publisher_applies_only_what_changed_while_it_was_down(tmp_path):
    """The change-log position is kept in the watermark: a restart copies
    nothing again, and a change made meanwhile is applied by itself."""
    data, public, mark = str(tmp_path / "data.db"), str(tmp_path / "public.db"), tmp_path / "watermark.json"
    conn = store.connect(data)
    store.ensure_schema(conn)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    conn.executemany("INSERT INTO notes VALUES (?, ?)", [(i, f"note {i}") for i in range(1, 101)])
    store.set_public(conn, "notes", True, actor="test")
    publisher = Publisher(data, public, mark)
    publisher.maintain_triggers()
    assert publisher.run_cycle().tables_copied == ("notes",)
    conn.execute("UPDATE notes SET text = 'edited' WHERE id = 7")
    assert publisher.run_cycle().rows_changed == 1
    publisher.close()

    conn.execute("UPDATE notes SET text = 'while down' WHERE id = 9")
    publisher = Publisher(data, public, mark)
    publisher.maintain_triggers()
    cycle = publisher.run_cycle()
    assert (cycle.tables_copied, cycle.recopied, cycle.rows_changed) == ((), (), 1)
    assert publisher.run_cycle() is None
    publisher.close()
    rows = dict(apsw.Connection(public).execute("SELECT id, text FROM notes WHERE id IN (7, 9)"))
    assert rows == {7: "edited", 9: "while down"}


def test_a_change_log_that_went_back_is_applied_again_from_the_start(tmp_path):
    """If data.db's change log is behind the kept position (a data.db put
    back by hand), nothing is skipped: the first cycle applies it all."""
    data, public, mark = str(tmp_path / "data.db"), str(tmp_path / "public.db"), tmp_path / "watermark.json"
    conn = store.connect(data)
    store.ensure_schema(conn)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    conn.execute("INSERT INTO notes VALUES (1, 'one')")
    store.set_public(conn, "notes", True, actor="test")
    publisher = Publisher(data, public, mark)
    publisher.maintain_triggers()
    publisher.run_cycle()
    publisher.close()
    kept = Watermark.read(mark)
    Watermark(kept.private_txid, kept.public_txid, kept.processed + 1000).write(mark)
    publisher = Publisher(data, public, mark)
    assert publisher._processed == 0
    publisher.close()

"""How the publisher copies a table into public.db (on plain files, fast): a
table published whole is copied as SQLite copies a table into an identical
one, and keeps data.db's rowids, which row-level applies depend on, whether
or not SQLite could take that path."""

from __future__ import annotations

import dataclasses

import apsw

from primary import store
from primary.publisher import Publisher
from primary.publisher.copy import copy_table
from primary.store import PublishSpec
from primary.store.projection import project


def _data_db(path) -> apsw.Connection:
    """A table without an INTEGER PRIMARY KEY whose rowids have gaps (rows
    deleted at the start, in the middle and at the end), with an index."""
    conn = store.connect(str(path))
    store.ensure_schema(conn)
    conn.execute("CREATE TABLE notes (code TEXT, body TEXT, n INTEGER)")
    conn.execute(
        "WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM i WHERE x < 500)"
        " INSERT INTO notes SELECT 'c' || x, 'note ' || x, x FROM i"
    )
    conn.execute("DELETE FROM notes WHERE _rowid_ <= 3 OR _rowid_ % 7 = 0 OR _rowid_ > 490")
    conn.execute("CREATE INDEX notes_code ON notes (code)")
    return conn


def _rows(path, sql: str) -> list:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_a_table_published_whole_keeps_its_rowids_and_index_and_takes_row_updates(tmp_path):
    data, public = tmp_path / "data.db", tmp_path / "public.db"
    conn = _data_db(data)
    store.set_public(conn, "notes", True, actor="test")
    publisher = Publisher(data, public)
    try:
        publisher.run_cycle()
        everything = "SELECT _rowid_, code, body, n FROM notes ORDER BY _rowid_"
        assert _rows(public, everything) == _rows(data, everything)
        assert _rows(public, "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'notes'") == [
            ("notes_code",)
        ]
        # A row-level apply finds each row by data.db's rowid.
        with store.immediate(conn):
            conn.execute("UPDATE notes SET body = 'changed' WHERE n = 100")
            conn.execute("DELETE FROM notes WHERE n = 200")
        publisher.run_cycle()
        assert _rows(public, everything) == _rows(data, everything)
        assert ("changed",) in _rows(public, "SELECT body FROM notes WHERE n = 100")
    finally:
        publisher.close()
        conn.close()


def test_rowids_are_kept_when_sqlite_cannot_copy_the_table_as_it_is(tmp_path):
    """An index data.db lacks stops SQLite's transfer: it copies row by row
    and numbers the rows 1..N, which the copy notices and repairs."""
    conn = _data_db(tmp_path / "data.db")
    # The publisher's connection: public.db as main, data.db as src.
    pub = store.connect(str(tmp_path / "public.db"))
    pub.execute("ATTACH ? AS src", (str(tmp_path / "data.db"),))
    projection = project(pub, "notes", PublishSpec(), {"notes": {"code", "body", "n"}})
    only_here = ("notes_n", "CREATE INDEX notes_n ON notes (n)")
    projection = dataclasses.replace(projection, indexes=(*projection.indexes, only_here))
    with store.immediate(pub):
        assert copy_table(pub, projection) == 490 - 3 - 70
    everything = "SELECT _rowid_, code, body, n FROM {}.notes ORDER BY _rowid_"
    assert pub.execute(everything.format("main")).fetchall() == pub.execute(everything.format("src")).fetchall()
    pub.close()
    conn.close()

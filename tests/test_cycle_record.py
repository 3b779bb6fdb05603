"""What each public TXID was: the publisher's record of a cycle says what it
published, unpublished, re-copied and changed, and who asked, from the cycle
itself; the propagation record puts it in words. Fast: the publisher on plain
files (the cluster's view of the same is in test_flip_paths.py)."""

from __future__ import annotations

from primary import state
from primary.propagation import describe_cycle
from primary.publisher import Publisher, cycle_log_path
from primary.spec import PublishSpec


def test_each_cycle_records_what_it_did_and_who_asked(tmp_path):
    data, public, watermark = str(tmp_path / "data.db"), str(tmp_path / "public.db"), tmp_path / "watermark.json"
    conn = state.connect(data)
    state.ensure_schema(conn)
    conn.execute("CREATE TABLE planes (id INTEGER PRIMARY KEY, model TEXT)")
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    with state.immediate(conn):
        for i in range(1, 51):
            conn.execute("INSERT INTO planes VALUES (?, ?)", (i, f"model {i}"))
        conn.execute("INSERT INTO notes VALUES (1, 'hello')")
    publisher = Publisher(data, public, watermark)

    state.set_public(conn, "planes", True, actor="alice")
    state.set_public(conn, "notes", True, actor="bob")
    first = publisher.run_cycle()
    assert set(first.published) == {"planes", "notes"}
    assert first.actors == {"planes": "alice", "notes": "bob"}
    assert first.rows_by_table == {"planes": 50, "notes": 1}
    assert set(describe_cycle(_recorded(watermark, first))) == {
        "planes published by alice (50 rows)", "notes published by bob (1 row)",
    }

    # A team write: rows changed, nobody flipped anything.
    with state.immediate(conn):
        conn.execute("UPDATE planes SET model = 'changed' WHERE id <= 42")
    rows = publisher.run_cycle()
    assert rows.published == rows.unpublished == rows.recopied == () and rows.actors == {}
    assert describe_cycle(_recorded(watermark, rows)) == ["42 rows changed in planes"]

    # A new spec re-copies; an unpublish erases; each names its actor.
    state.set_public(conn, "planes", True, actor="carol", spec=PublishSpec(where="id <= 10"))
    state.set_public(conn, "notes", False, actor="bob")
    flips = publisher.run_cycle()
    assert flips.recopied == ("planes",) and flips.unpublished == ("notes",)
    assert describe_cycle(_recorded(watermark, flips)) == [
        "planes re-copied (what is public changed by carol): 10 rows", "notes unpublished by bob",
    ]

    # A restarted publisher does not tell old flips again.
    publisher.close()
    publisher = Publisher(data, public, watermark)
    with state.immediate(conn):
        conn.execute("UPDATE planes SET model = 'again' WHERE id = 1")
    again = publisher.run_cycle()
    said = describe_cycle(_recorded(watermark, again))
    assert again.actors == {} and said and not any(" by " in line for line in said), said
    publisher.close()
    conn.close()


def _recorded(watermark, cycle) -> dict:
    """The cycle log's record of ``cycle`` (on plain files every public TXID
    is 0: the newest record, which must be this cycle's)."""
    [record] = state.CycleLog.read_file(cycle_log_path(watermark), 1)
    assert record["started_at"] == cycle.started_at
    return record

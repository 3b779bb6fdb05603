"""What each public TXID was: the publisher's record of a cycle says what it
published, unpublished, re-copied and changed, and who asked, from the cycle
itself; the propagation record puts it in words; the team's Datasette turns
each audit log entry into one event. Fast: on plain files (the cluster's view
of the same is in test_flip_paths.py)."""

from __future__ import annotations

from primary import store
from primary.control.tracker import describe_cycle
from primary.publisher import Cycle, CycleLog, Publisher, Watermark, cycle_log_path
from primary.store import PublishSpec


def test_each_cycle_records_what_it_did_and_who_asked(tmp_path):
    data, public, watermark, conn = _files(
        tmp_path, "CREATE TABLE planes (id INTEGER PRIMARY KEY, model TEXT)",
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)",
    )
    with store.immediate(conn):
        for i in range(1, 51):
            conn.execute("INSERT INTO planes VALUES (?, ?)", (i, f"model {i}"))
        conn.execute("INSERT INTO notes VALUES (1, 'hello')")
    publisher = Publisher(data, public, watermark)

    store.set_public(conn, "planes", True, actor="alice")
    store.set_public(conn, "notes", True, actor="bob")
    first = publisher.run_cycle()
    assert set(first.published) == {"planes", "notes"}
    assert first.actors == {"planes": "alice", "notes": "bob"}
    assert first.rows_by_table == {"planes": 50, "notes": 1}
    assert set(describe_cycle(_recorded(watermark, first))) == {
        "planes published by alice (50 rows)", "notes published by bob (1 row)",
    }

    # A team write: rows changed, nobody flipped anything.
    with store.immediate(conn):
        conn.execute("UPDATE planes SET model = 'changed' WHERE id <= 42")
    rows = publisher.run_cycle()
    assert rows.published == rows.unpublished == rows.recopied == () and rows.actors == {}
    assert describe_cycle(_recorded(watermark, rows)) == ["42 rows changed in planes"]

    # A new spec re-copies; an unpublish erases; each names its actor.
    store.set_public(conn, "planes", True, actor="carol", spec=PublishSpec(where="id <= 10"))
    store.set_public(conn, "notes", False, actor="bob")
    flips = publisher.run_cycle()
    assert flips.recopied == ("planes",) and flips.unpublished == ("notes",)
    assert describe_cycle(_recorded(watermark, flips)) == [
        "planes re-copied (what is public changed by carol): 10 rows", "notes unpublished by bob",
    ]

    # A saved query (primary/queries.py) is part of what a cycle did.
    from primary.store import queries

    check = queries.connect_public(public)
    queries.save(conn, check, queries.SavedQuery("first_ten", "SELECT id, model FROM planes ORDER BY id"), "dana")
    check.close()
    saved = publisher.run_cycle()
    assert describe_cycle(_recorded(watermark, saved)) == ["saved query first_ten published by dana"]

    # A restarted publisher does not tell old flips again.
    publisher.close()
    publisher = Publisher(data, public, watermark)
    with store.immediate(conn):
        conn.execute("UPDATE planes SET model = 'again' WHERE id = 1")
    again = publisher.run_cycle()
    said = describe_cycle(_recorded(watermark, again))
    assert again.actors == {} and said and not any(" by " in line for line in said), said
    publisher.close()
    conn.close()


def test_each_cycle_records_what_it_did_to_saved_queries_and_who_asked(tmp_path):
    """Saved, removed, withdrawn by the publisher (and why): each cycle's
    record says so from the saved-query log in its own data.db snapshot,
    and the propagation record carries it, as data and in words."""
    from primary.store import queries
    from primary.control.models import PropagationRecord
    from primary.control.tracker import Propagation

    data, public, watermark, conn = _files(
        tmp_path, "CREATE TABLE flights (id INTEGER PRIMARY KEY, delay INTEGER)",
        "CREATE TABLE airports (faa TEXT PRIMARY KEY, tz INTEGER)",
    )
    with store.immediate(conn):
        conn.execute("INSERT INTO flights VALUES (1, 75), (2, 5)")
        conn.execute("INSERT INTO airports VALUES ('JFK', -5), ('LAX', -8)")
    publisher = Publisher(data, public, watermark)
    store.set_public(conn, "flights", True, actor="alice")
    store.set_public(conn, "airports", True, actor="alice")
    publisher.run_cycle()

    def save(name, sql, actor):
        check = queries.connect_public(public)
        try:
            queries.save(conn, check, queries.SavedQuery(name, sql), actor)
        finally:
            check.close()

    save("delayed_flights", "SELECT id FROM flights WHERE delay > 60", "alice")
    save("by_tz", "SELECT faa FROM airports WHERE tz = :tz", "carol")
    saved = publisher.run_cycle()
    assert saved.queries_changed == ("by_tz", "delayed_flights")
    assert saved.query_changes == {
        "by_tz": {"action": "published", "actor": "carol", "reason": None},
        "delayed_flights": {"action": "published", "actor": "alice", "reason": None},
    }
    assert describe_cycle(_recorded(watermark, saved)) == [
        "saved query by_tz published by carol", "saved query delayed_flights published by alice",
    ]

    queries.remove(conn, "by_tz", "bob")
    removed = publisher.run_cycle()
    assert removed.query_changes == {"by_tz": {"action": "removed", "actor": "bob", "reason": None}}
    assert describe_cycle(_recorded(watermark, removed)) == ["saved query by_tz removed by bob"]

    save("by_tz", "SELECT faa FROM airports WHERE tz = :tz", "carol")
    save("delayed_flights", "SELECT id, delay FROM flights WHERE delay > 60", "dana")
    assert describe_cycle(_recorded(watermark, publisher.run_cycle())) == [
        "saved query by_tz published by carol", "saved query delayed_flights changed by dana",
    ]

    # Unpublishing the table a query reads withdraws it in the same cycle:
    # the publisher did it, and the record says why.
    store.set_public(conn, "airports", False, actor="bob")
    withdrawn = publisher.run_cycle()
    assert withdrawn.query_changes == {
        "by_tz": {"action": "withdrawn", "actor": None, "reason": "its table airports is no longer public"},
    }
    record = _recorded(watermark, withdrawn)
    said = ["airports unpublished by bob", "saved query by_tz withdrawn (its table airports is no longer public)"]
    assert describe_cycle(record) == said
    # As /publishes, the SSE stream, /watch and `broadsheet watch` show it.
    shown = PropagationRecord(**Propagation(txid=1, committed_at=0.0, cycle=record).as_dict([])).model_dump()
    assert shown["changes"] == said
    assert shown["cycle"]["query_changes"]["by_tz"]["action"] == "withdrawn"

    # A restarted publisher does not tell old saves again: a query changed
    # straight in data.db (no log entry) was changed by nobody it knows.
    publisher.close()
    publisher = Publisher(data, public, watermark)
    with store.immediate(conn):
        conn.execute("UPDATE _public_queries SET title = 'Late' WHERE name = 'delayed_flights'")
    again = publisher.run_cycle()
    assert again.query_changes == {"delayed_flights": {"action": "changed", "actor": None, "reason": None}}
    assert "saved query delayed_flights changed" in describe_cycle(_recorded(watermark, again))
    publisher.close()
    conn.close()


def _files(tmp_path, *schema: str):
    """data.db (with ``schema``), and where public.db and the watermark go."""
    data, public, watermark = str(tmp_path / "data.db"), str(tmp_path / "public.db"), tmp_path / "watermark.json"
    conn = store.connect(data)
    store.ensure_schema(conn)
    for sql in schema:
        conn.execute(sql)
    return data, public, watermark, conn


def _recorded(watermark, cycle) -> Cycle:
    """The cycle log's record of ``cycle`` (on plain files every public TXID
    is 0: the newest record, which must be this cycle's)."""
    [record] = CycleLog.read_file(cycle_log_path(watermark), 1)
    assert record.started_at == cycle.started_at
    return record


def test_the_team_datasette_fires_an_event_per_audit_entry_once(tmp_path, monkeypatch):
    """The audit log follower, on plain files: from the end of the log at
    its first start, one event per flip (whoever made it) with the TXIDs of
    the cycle that held it, and after a restart nothing twice."""
    import asyncio

    from primary.publisher.events import AuditFollower, PublishTableEvent, UnpublishTableEvent

    data, watermark = str(tmp_path / "data.db"), tmp_path / "watermark.json"
    monkeypatch.setenv("BROADSHEET_WATERMARK", str(watermark))
    from primary.settings import settings

    settings.cache_clear()
    conn = store.connect(data)
    store.ensure_schema(conn)
    conn.execute("CREATE TABLE planes (id INTEGER PRIMARY KEY); CREATE TABLE notes (id INTEGER PRIMARY KEY)")
    store.set_public(conn, "planes", True, actor="before-it-started")
    Watermark(5, 3).write(watermark)
    log = CycleLog(cycle_log_path(watermark))

    from datasette.app import Datasette

    def recorder():
        """The team's Datasette on this data.db, its events kept in a list."""
        datasette = Datasette([data])
        datasette.events = []

        async def track_event(event):
            datasette.events.append(event)

        datasette.track_event = track_event
        return datasette

    def run(follower, cursor, flips):
        async def steps():
            cursor_ = await follower._step(cursor)
            for table, public, actor in flips:
                flip = store.set_public(conn, table, public, actor=actor)
                log.append(Cycle.from_json({"private_txid": 6, "public_txid": 4, "audit_id": flip.audit_id}))
                cursor_ = await follower._step(cursor_)
            return cursor_

        return asyncio.run(steps())

    team = recorder()
    follower = AuditFollower(team, data, tmp_path / "cursor", "data", cycle_log=cycle_log_path(watermark))
    cursor = run(follower, None, [("notes", True, "alice"), ("notes", False, "broadsheet:publisher (table was dropped)")])
    assert [(type(e), e.table, e.actor, e.public_txid) for e in team.events] == [
        (PublishTableEvent, "notes", {"id": "alice"}, 4),
        (UnpublishTableEvent, "notes", {"id": "broadsheet:publisher (table was dropped)"}, 4),
    ]
    # Restarted: it carries on from its cursor file.
    again = recorder()
    restarted = AuditFollower(again, data, tmp_path / "cursor", "data", cycle_log=cycle_log_path(watermark))
    run(restarted, restarted._read_cursor(), [("planes", False, "bob")])
    assert [(e.name, e.table, e.actor) for e in again.events] == [("broadsheet-unpublish", "planes", {"id": "bob"})]
    assert cursor < restarted._read_cursor()
    settings.cache_clear()
    conn.close()


def test_the_cycle_record_is_one_type_from_the_log_file_to_the_control_plane(tmp_path):
    """The cycle log holds Cycles (to_json, from_json), and what the control
    plane shows of one is its summary: the same fields, by the same names."""
    import dataclasses

    from primary.control.models import CycleSummary

    cycle = Cycle(
        private_txid=7, public_txid=3, started_at="2026-01-01T00:00:00.000+00:00", duration_ms=12.34567,
        tables_copied=("planes",), published=("planes",), rows_by_table={"planes": 5}, actors={"planes": "alice"},
        queries_changed=("by_tz",), query_changes={"by_tz": {"action": "published", "actor": "carol", "reason": None}},
        audit_id=4, queries_log_id=2,
    )
    log = CycleLog(tmp_path / "cycles.jsonl")
    log.append(cycle)
    [back] = log.read(1)
    assert back == dataclasses.replace(cycle, duration_ms=12.346)  # the log keeps microseconds
    assert set(CycleSummary.model_fields) == set(Cycle.SUMMARY)
    shown = CycleSummary(**back.summary())
    assert shown.published == ["planes"] and shown.query_changes["by_tz"].actor == "carol"
    # A line from an older publisher, without the fields added since.
    assert Cycle.from_json({"private_txid": 1, "public_txid": 1, "started_at": "x", "duration_ms": 1}).query_changes == {}

"""Saved queries on plain files (no LiteFS): saving checks them against the
public copy, the publisher publishes them in the cycle's one transaction and
withdraws, audit-logged, one that stops compiling."""

from __future__ import annotations

import apsw
import pytest
import sqlite_utils

from primary import store
from primary.publisher import Publisher, Withdrawals, withdrawals_path
from primary.store import PublishSpec, queries

MARKER = "PRIVATE-MARKER-7f3a"


def build_primary(tmp_path):
    """data.db with a public table (airports) and a private one (planes,
    holding MARKER), and a publisher that has run its first cycle."""
    data, public = str(tmp_path / "data.db"), str(tmp_path / "public.db")
    conn = store.connect(data)
    store.ensure_schema(conn)
    conn.execute(
        "CREATE TABLE airports (id INTEGER PRIMARY KEY, faa TEXT, name TEXT, tz INTEGER, secret TEXT);"
        "INSERT INTO airports VALUES (1, 'JFK', 'John F Kennedy', -5, 'x'), (2, 'LAX', 'Los Angeles', -8, 'y'),"
        " (3, 'EWR', 'Newark', -5, 'z');"
        f"CREATE TABLE planes (id INTEGER PRIMARY KEY, tailnum TEXT); INSERT INTO planes VALUES (1, '{MARKER}');"
    )
    store.set_public(conn, "airports", True, actor="alice")
    publisher = Publisher(data, public, tmp_path / "watermark.json")
    publisher.run_cycle()
    return conn, publisher, public


@pytest.fixture
def files(tmp_path):
    conn, publisher, public = build_primary(tmp_path)
    yield conn, publisher, public
    publisher.close()
    conn.close()


def save(conn, public, name, sql, **kw):
    check = queries.connect_public(public)
    try:
        return queries.save(conn, check, queries.SavedQuery(name, sql, **kw), "alice")
    finally:
        check.close()


def public_queries(public) -> dict:
    conn = apsw.Connection(public, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return {name: sql for name, sql in conn.execute("SELECT name, sql FROM _public_queries")}
    finally:
        conn.close()


def written_straight_into_data_db(conn, publisher, public, direct: dict) -> dict:
    """Rows put into ``_public_queries`` without saving's checks: the next
    cycle publishes none of them and withdraws them all; why, by name."""
    with store.immediate(conn):
        for name, sql in direct.items():
            conn.execute("INSERT INTO _public_queries (name, sql) VALUES (?, ?)", (name, sql))
    publisher.run_cycle()
    assert public_queries(public) == {}
    withdrawn = {q["name"]: q["withdrawn"] for q in queries.saved(conn)}
    assert set(withdrawn) == set(direct) and all(withdrawn.values()), withdrawn
    return withdrawn


def public_bytes(publisher, public) -> bytes:
    """Every byte of public.db and its WAL, after a checkpoint."""
    publisher.conn.execute("PRAGMA main.wal_checkpoint(TRUNCATE)")
    content = b""
    for suffix in ("", "-wal"):
        try:
            with open(public + suffix, "rb") as fp:
                content += fp.read()
        except FileNotFoundError:
            continue
    return content


def run(conn, sql, **params):
    return conn.execute(sql, params).fetchall()


def test_a_saved_query_with_a_parameter_is_published_in_the_next_cycle(files):
    conn, publisher, public = files
    sql = "SELECT faa, name FROM airports WHERE tz = :tz ORDER BY faa"
    assert save(conn, public, "by_tz", sql, title="Airports by time zone")[0]
    cycle = publisher.run_cycle()
    assert cycle is not None and cycle.queries_changed == ("by_tz",)
    assert public_queries(public) == {"by_tz": sql}
    served = apsw.Connection(public, flags=apsw.SQLITE_OPEN_READONLY)
    assert run(served, sql, tz=-5) == [("EWR", "Newark"), ("JFK", "John F Kennedy")]
    served.close()
    # Saving the same again changes nothing; the log says who saved it.
    assert save(conn, public, "by_tz", sql, title="Airports by time zone") == (False, None)
    assert publisher.run_cycle() is None
    (entry,) = queries.log_entries(conn)
    assert entry["operation"] == "save" and entry["actor"] == "alice" and entry["sql_after"] == sql


@pytest.mark.parametrize(
    "sql, problem",
    [
        ("SELECT * FROM planes", "no such table: planes"),
        ("SELECT tailnum FROM planes WHERE tailnum = :t", "no such table: planes"),
        ("SELECT * FROM src.planes", "no such table: src.planes"),
        ("SELECT * FROM sqlite_master", "'sqlite_master', which is not public"),
        ("SELECT count(*) FROM sqlite_master", "'sqlite_master', which is not public"),
        ("SELECT count(*) FROM _public_queries", "'_public_queries', which is not public"),
        ("SELECT * FROM _public_tables", "'_public_tables', which is not public"),
        ("SELECT * FROM pragma_table_info('airports')", "not public"),
        ("DELETE FROM airports", "may only read"),
        ("SELECT 1; SELECT 2", "one SQL statement"),
        ("SELECT * FROM airports WHERE id = ?", "named parameters"),
        ("ATTACH 'x.db' AS x", "may only read"),
        ("EXPLAIN SELECT 1", "EXPLAIN"),
        ("SELEC 1", "syntax error"),
        ("SELECT load_extension('x')", "load_extension(), which read nodes do not run"),
        ("SELECT fts3_tokenizer('simple')", "fts3_tokenizer(), which read nodes do not run"),
        ("SELECT * FROM dbstat", "'dbstat', which is not public"),
        ("PRAGMA secure_delete=OFF", "may only read public tables: pragma secure_delete"),
        ("CREATE TABLE t (x)", "may only read public tables: insert sqlite_master"),
        # Datasette's magic parameters: a visitor's headers, cookies or
        # identity in a response read nodes let every cache share.
        ("SELECT :_header_user_agent AS ua", "':_header_user_agent' is one of Datasette's magic parameters"),
        ("SELECT name FROM airports WHERE faa = :_cookie_faa", "magic parameters"),
        ("SELECT :_actor_id AS who", "magic parameters"),
        ("SELECT :_random_chars_999999999999 AS r", "magic parameters"),
    ],
)
def test_a_query_that_reads_what_is_not_public_or_writes_is_refused(files, sql, problem):
    conn, publisher, public = files
    with pytest.raises(queries.QueryError) as refused:
        save(conn, public, "bad", sql)
    assert refused.value.status == 400 and problem in refused.value.message
    assert queries.saved(conn) == [] and queries.log_entries(conn) == []
    assert publisher.run_cycle() is None


def test_bad_names_and_fields_are_refused(files):
    conn, _, public = files
    for name in ("", "-x", "a/b", "a b", "x" * 101, "_public_x", "sqlite_x", "airports", "planes"):
        with pytest.raises(queries.QueryError):
            save(conn, public, name, "SELECT 1")
    with pytest.raises(queries.QueryError):
        save(conn, public, "ok", "SELECT 1", title="t" * 20_000)
    with pytest.raises(queries.QueryError):
        save(conn, public, "ok", "  ")
    with pytest.raises(queries.QueryError) as missing:
        queries.remove(conn, "nope", "alice")
    assert missing.value.status == 404


def test_a_column_that_is_not_published_cannot_be_read(files):
    conn, publisher, public = files
    store.set_public(conn, "airports", True, actor="alice", spec=PublishSpec(exclude_columns=("secret",)))
    publisher.run_cycle()
    with pytest.raises(queries.QueryError) as refused:
        save(conn, public, "leak", "SELECT secret FROM airports")
    assert "no such column: secret" in refused.value.message
    save(conn, public, "fine", "SELECT name FROM airports")


def test_unpublishing_a_table_withdraws_its_queries_in_the_same_cycle(files):
    conn, publisher, public = files
    save(conn, public, "west", "SELECT name FROM airports WHERE tz < -6")
    save(conn, public, "constant", "SELECT 42 AS answer")
    publisher.run_cycle()
    assert set(public_queries(public)) == {"west", "constant"}
    store.set_public(conn, "airports", False, actor="bob")
    cycle = publisher.run_cycle()
    # The table and the query that read it leave public.db in one cycle.
    assert cycle.tables_dropped == ("airports",) and cycle.queries_changed == ("west",)
    assert set(public_queries(public)) == {"constant"}
    (row,) = [q for q in queries.saved(conn) if q["name"] == "west"]
    assert "'airports', which is not public" in row["withdrawn"]
    entry = queries.log_entries(conn, "west", limit=1)[0]
    assert entry["operation"] == "withdraw" and entry["actor"] == queries.WITHDRAW_ACTOR
    assert "airports" in entry["reason"]
    # Named where the control plane's /health reads it.
    withdrawn = lambda: Withdrawals.read_file(withdrawals_path(publisher.watermark_file))  # noqa: E731
    assert [(w.name, w.kind, w.reason) for w in withdrawn()] == [("west", "query", entry["reason"])]
    # Publishing the table again does not bring it back (fail closed) ...
    store.set_public(conn, "airports", True, actor="alice")
    publisher.run_cycle()
    assert set(public_queries(public)) == {"constant"}
    # ... saving it again does.
    save(conn, public, "west", "SELECT name FROM airports WHERE tz < -6")
    assert publisher.run_cycle().queries_changed == ("west",)
    assert set(public_queries(public)) == {"constant", "west"}
    assert withdrawn() == []


def test_a_renamed_column_withdraws_a_query_that_named_it(files):
    conn, publisher, public = files
    save(conn, public, "names", "SELECT faa, name FROM airports")
    publisher.run_cycle()
    with store.immediate(conn):
        conn.execute("ALTER TABLE airports RENAME COLUMN faa TO code")
    publisher.run_cycle()
    assert public_queries(public) == {}
    assert "no such column: faa" in queries.saved(conn)[0]["withdrawn"]


def test_removing_a_query_erases_it_from_public_db(files):
    conn, publisher, public = files
    save(conn, public, "gone", "SELECT 'REMOVED-QUERY-TEXT' AS x FROM airports")
    publisher.run_cycle()
    queries.remove(conn, "gone", "bob")
    assert publisher.run_cycle().queries_changed == ("gone",)
    assert public_queries(public) == {}
    assert [e["operation"] for e in queries.log_entries(conn, "gone")] == ["remove", "save"]
    assert b"REMOVED-QUERY-TEXT" not in public_bytes(publisher, public)


def test_no_byte_of_a_refused_query_reaches_public_db(files):
    """The sentinel: a query naming private data is refused at save and
    nothing of it (the marker, the table's name) reaches public.db."""
    conn, publisher, public = files
    for sql in (f"SELECT * FROM planes WHERE tailnum = '{MARKER}'", f"SELECT '{MARKER}' FROM planes"):
        with pytest.raises(queries.QueryError):
            save(conn, public, "sneaky", sql)
    # Even written straight into data.db (bypassing the check), the
    # publisher's own check in the cycle keeps it out, though data.db is
    # attached to the connection it judges on.
    direct = {
        "direct": f"SELECT tailnum FROM planes -- {MARKER}",
        "counted": "SELECT count(*) FROM planes",
        "qualified": "SELECT count(*) FROM src.airports",
        "joined": "SELECT a.name FROM airports a JOIN src.planes p ON p.id = a.id",
    }
    written_straight_into_data_db(conn, publisher, public, direct)
    content = public_bytes(publisher, public)
    assert MARKER.encode() not in content and b"planes" not in content


def test_judging_a_query_never_acts_on_the_publishers_connection(files):
    """Some statements act as SQLite prepares them (a pragma's setting):
    the publisher's check refuses them before they can, so a query written
    straight into data.db cannot turn off secure_delete (or anything else)
    on the connection that writes public.db."""
    conn, publisher, public = files
    with store.immediate(conn):
        for name, pragma in (("sd", "secure_delete=OFF"), ("qo", "query_only=1"), ("ws", "writable_schema=1")):
            conn.execute("INSERT INTO _public_queries (name, sql) VALUES (?, ?)", (name, f"PRAGMA {pragma}"))
    publisher.run_cycle()
    assert public_queries(public) == {}
    assert all(q["withdrawn"] for q in queries.saved(conn))
    expected = {"secure_delete": 1, "query_only": 0, "writable_schema": 0}
    assert {p: publisher.conn.execute(f"PRAGMA main.{p}").fetchone()[0] for p in expected} == expected


@pytest.mark.parametrize("fts_version", ["FTS4", "FTS5"])
def test_a_query_may_search_a_public_tables_full_text_index(files, fts_version):
    conn, publisher, public = files
    team = sqlite_utils.Database(publisher.data_db)
    team["airports"].enable_fts(["name"], fts_version=fts_version, create_triggers=True)
    team.close()
    publisher.run_cycle()
    sql = "SELECT a.faa FROM airports a JOIN airports_fts f ON f.rowid = a.id WHERE airports_fts MATCH :q"
    save(conn, public, "search", sql)
    publisher.run_cycle()
    assert public_queries(public) == {"search": sql}
    served = apsw.Connection(public, flags=apsw.SQLITE_OPEN_READONLY)
    assert run(served, sql, q="newark") == [("EWR",)]
    served.close()


def test_a_table_published_under_a_saved_querys_name_withdraws_the_query(files):
    """Datasette would serve the table at that URL: the query is withdrawn
    rather than listed and unreachable."""
    conn, publisher, public = files
    save(conn, public, "routes", "SELECT faa FROM airports")
    publisher.run_cycle()
    with store.immediate(conn):
        conn.execute("CREATE TABLE routes (id INTEGER PRIMARY KEY, path TEXT)")
    store.set_public(conn, "routes", True, actor="alice")
    assert publisher.run_cycle().queries_changed == ("routes",)
    assert public_queries(public) == {}
    assert "a public table or view is named 'routes'" in queries.saved(conn)[0]["withdrawn"]


def test_a_query_written_straight_into_data_db_is_held_to_the_rules_of_saving(files):
    """The publisher judges a query's name and texts as saving does, not
    only its SQL: a row written into data.db under a private table's name
    (or an internal one, or no name a URL can hold) never puts that name
    into public.db."""
    conn, publisher, public = files
    direct = {"planes": "SELECT 1 AS x", "_public_tables": "SELECT 2 AS x", "a/b": "SELECT 3 AS x", "": "SELECT 4 AS x"}
    withdrawn = written_straight_into_data_db(conn, publisher, public, direct)
    assert "a table or view of data.db is named 'planes'" in withdrawn["planes"]
    assert b"planes" not in public_bytes(publisher, public)

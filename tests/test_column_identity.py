"""A spec follows the column, not its name (on plain files, fast): every
schema change that makes a name of the spec denote another column makes
the table private, audit-logged with why, and nothing of the column swapped
in reaches public.db; changes that leave each name on its column keep the
table public, serving exactly the projection."""

from __future__ import annotations

import sqlite3

import apsw
import pytest

from primary import store
from primary.publisher import Publisher, Withdrawals, withdrawals_path
from primary.store import PublishSpec, column_ids, preview

SENTINEL = "SWAPPED-IN-SENTINEL-3c9e"

COLUMNS = PublishSpec(columns=("id", "name"))
EXCLUDE = PublishSpec(exclude_columns=("secret",))
FILTER = PublishSpec(columns=("id", "name"), where="city = 'Leeds'")
WHOLE = PublishSpec()


@pytest.fixture
def primary(tmp_path):
    """data.db with ``people`` (a sentinel in ``secret``) and a publisher."""
    data, public = str(tmp_path / "data.db"), str(tmp_path / "public.db")
    conn = store.connect(data)
    store.ensure_schema(conn)
    conn.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, secret TEXT, city TEXT)")
    conn.executemany(
        "INSERT INTO people VALUES (?, ?, ?, ?)",
        [(i, f"person {i}", f"{SENTINEL} {i}", "Leeds" if i % 2 else "York") for i in range(1, 9)],
    )
    publisher = Publisher(data, public, tmp_path / "watermark.json")
    yield conn, publisher, data, public
    publisher.close()
    conn.close()


def settle(publisher) -> None:
    """Cycles until the publisher has nothing left to do."""
    for _ in range(10):
        if publisher.run_cycle() is None:
            return
    raise AssertionError("the publisher kept finding work")


def expected(data: str, spec: PublishSpec) -> tuple[list[str], list[tuple]]:
    """What public.db must hold for ``people``, computed here from data.db
    with Python's sqlite3 (not the publisher's code)."""
    db = sqlite3.connect(f"file:{data}?mode=ro", uri=True)
    try:
        names = [row[1] for row in db.execute("PRAGMA table_info(people)")]
        if spec.columns is not None:
            names = [n for n in names if n in spec.columns]
        names = [n for n in names if n not in spec.exclude_columns]
        cols = ", ".join(f'"{n}"' for n in names)
        return names, db.execute(f"SELECT {cols} FROM people WHERE {spec.where or 1} ORDER BY id").fetchall()
    finally:
        db.close()


def public_copy(public: str) -> tuple[list[str], list[tuple]] | None:
    db = sqlite3.connect(f"file:{public}?mode=ro", uri=True)
    try:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'people'").fetchone():
            return None
        names = [row[1] for row in db.execute("PRAGMA table_info(people)")]
        return names, db.execute("SELECT * FROM people ORDER BY id").fetchall()
    finally:
        db.close()


SWAP = ["ALTER TABLE people RENAME COLUMN name TO old_name", "ALTER TABLE people RENAME COLUMN secret TO name"]


@pytest.mark.parametrize(
    "spec, change, reason",
    [
        (COLUMNS, SWAP, "'name' now names another column (the one published as 'secret')"),
        (COLUMNS, ["ALTER TABLE people RENAME COLUMN name TO old_name", "ALTER TABLE people ADD COLUMN name TEXT",
                   "UPDATE people SET name = secret"], "'name' now names another column (one added since)"),
        (COLUMNS, ["ALTER TABLE people DROP COLUMN name", "ALTER TABLE people ADD COLUMN name TEXT",
                   "UPDATE people SET name = secret"], "'name' is not where ALTER TABLE would have left it"),
        (COLUMNS, ["ALTER TABLE people DROP COLUMN name", "ALTER TABLE people RENAME COLUMN secret TO name"],
         "both called 'name' now"),
        (PublishSpec(columns=("id", "city")), ["ALTER TABLE people DROP COLUMN city",
                                               "ALTER TABLE people ADD COLUMN city BLOB", "UPDATE people SET city = secret"],
         "'city' is not defined as it was when published"),
        (EXCLUDE, ["ALTER TABLE people RENAME COLUMN secret TO kept", "ALTER TABLE people RENAME COLUMN name TO secret"],
         "'secret' now names another column (the one published as 'name')"),
        (EXCLUDE, ["ALTER TABLE people RENAME COLUMN secret TO old_secret", "ALTER TABLE people ADD COLUMN secret TEXT"],
         "'secret' now names another column (one added since)"),
        (FILTER, ["ALTER TABLE people RENAME COLUMN city TO town", "ALTER TABLE people RENAME COLUMN secret TO city",
                  "UPDATE people SET city = 'Leeds'"], "'city' now names another column (the one published as 'secret')"),
        (COLUMNS, ["ALTER TABLE people RENAME COLUMN name TO full_name"], "'name' was renamed to 'full_name'"),
    ],
    ids=["swap", "rename-then-add", "drop-then-add", "drop-then-rename", "drop-then-add-last", "exclude-swap",
         "exclude-rename-then-add", "filter-swap", "listed-renamed"],
)
def test_a_name_that_denotes_another_column_makes_the_table_private(primary, spec, change, reason):
    conn, publisher, data, public = primary
    store.set_public(conn, "people", True, actor="alice", spec=spec)
    settle(publisher)
    assert public_copy(public) == expected(data, spec)
    with store.immediate(conn):  # one transaction, as a script would
        for sql in change:
            conn.execute(sql)
    settle(publisher)
    assert "people" not in store.public_tables(conn)
    entry = store.audit_entries(conn, table="people", limit=1)[0]
    assert entry["operation"] == "unpublish" and reason in entry["reason"], entry
    assert entry["actor"].startswith("broadsheet:publisher (spec no longer fits: ")
    assert public_copy(public) is None
    for path in (public, f"{public}-wal"):
        try:
            assert SENTINEL.encode() not in open(path, "rb").read()
        except FileNotFoundError:
            pass
    # Named where the control plane's /health reads it.
    withdrawn = Withdrawals.read_file(withdrawals_path(publisher.watermark_file))
    assert [(w.name, w.kind) for w in withdrawn] == [("people", "table")] and reason in withdrawn[0].reason
    # Published again, it follows the columns as they are now.
    store.set_public(conn, "people", True, actor="alice", spec=PublishSpec(columns=("id",)))
    settle(publisher)
    assert public_copy(public) == expected(data, PublishSpec(columns=("id",)))
    assert Withdrawals.read_file(withdrawals_path(publisher.watermark_file)) == []


@pytest.mark.parametrize(
    "spec, change",
    [
        (COLUMNS, ["ALTER TABLE people ADD COLUMN extra TEXT", "UPDATE people SET extra = 'x'"]),
        (COLUMNS, ["ALTER TABLE people RENAME COLUMN secret TO secret_2"]),
        (COLUMNS, ["ALTER TABLE people RENAME COLUMN city TO town", "ALTER TABLE people DROP COLUMN secret"]),
        (EXCLUDE, ["ALTER TABLE people RENAME COLUMN name TO full_name", "ALTER TABLE people ADD COLUMN extra TEXT"]),
        (FILTER, ["ALTER TABLE people RENAME COLUMN secret TO hidden", "UPDATE people SET city = 'Leeds' WHERE id = 2"]),
        (WHOLE, SWAP),
        (WHOLE, ["ALTER TABLE people DROP COLUMN city", "ALTER TABLE people ADD COLUMN town TEXT"]),
        (COLUMNS, ["ALTER TABLE people DROP COLUMN secret", "ALTER TABLE people ADD COLUMN secret TEXT"]),
    ],
    ids=["add", "rename-unlisted", "rename-and-drop-unlisted", "exclude-rename-published", "filter-rename-other",
         "whole-swap", "whole-drop-and-add", "unlisted-drop-then-add"],
)
def test_a_change_that_keeps_each_name_on_its_column_keeps_the_table_public(primary, spec, change):
    conn, publisher, data, public = primary
    store.set_public(conn, "people", True, actor="alice", spec=spec)
    settle(publisher)
    with store.immediate(conn):
        for sql in change:
            conn.execute(sql)
    settle(publisher)
    assert store.public_specs(conn)["people"] == spec
    assert public_copy(public) == expected(data, spec)
    # Later writes keep arriving.
    conn.execute("UPDATE people SET id = 100 WHERE id = 1")
    settle(publisher)
    assert public_copy(public) == expected(data, spec)


def test_the_cycle_checks_the_columns_inside_its_own_snapshot(primary):
    """A swap that lands after the publisher's own look at the schema
    (maintain_triggers) and before the cycle's snapshot is caught by the
    cycle itself: nothing of the swapped-in column is copied."""
    conn, publisher, data, public = primary
    store.set_public(conn, "people", True, actor="alice", spec=COLUMNS)
    settle(publisher)
    publisher.maintain_triggers()
    looked = publisher.maintain_triggers
    publisher.maintain_triggers = lambda: None  # it has looked already
    try:
        with store.immediate(conn):
            for sql in SWAP:
                conn.execute(sql)
        conn.execute("INSERT INTO people (id, old_name, name, city) VALUES (50, 'new', ?, 'Leeds')", (f"{SENTINEL} 50",))
        cycle = publisher.run_cycle()
        assert "people" in cycle.unpublished and public_copy(public) is None
    finally:
        publisher.maintain_triggers = looked
    settle(publisher)
    assert "people" not in store.public_tables(conn)
    assert SENTINEL.encode() not in open(public, "rb").read()


def test_a_table_listed_by_a_direct_write_is_followed_from_the_first_cycle(primary):
    conn, publisher, data, public = primary
    with store.immediate(conn):
        conn.execute("""INSERT INTO _public_tables (table_name, spec) VALUES ('people', '{"columns": ["id", "name"]}')""")
    settle(publisher)
    assert public_copy(public) == expected(data, COLUMNS)
    assert column_ids.read(conn, "main", "people").called_now == ("id", "name", "secret", "city")
    with store.immediate(conn):
        for sql in SWAP:
            conn.execute(sql)
    settle(publisher)
    assert "people" not in store.public_tables(conn) and public_copy(public) is None


def test_a_data_db_from_before_is_migrated_in_place(tmp_path):
    """A data.db whose _public_tables has no column record: migrating records
    the public tables' columns as they are, and swaps are caught from then."""
    data, public = str(tmp_path / "data.db"), str(tmp_path / "public.db")
    old = sqlite3.connect(data)
    old.executescript(
        "CREATE TABLE _public_tables (table_name TEXT PRIMARY KEY, spec TEXT);"
        "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, secret TEXT);"
        f"INSERT INTO people VALUES (1, 'ann', '{SENTINEL}');"
        """INSERT INTO _public_tables VALUES ('people', '{"columns": ["id", "name"]}');"""
    )
    old.close()
    publisher = Publisher(data, public, tmp_path / "watermark.json")
    conn = store.connect(data)
    assert column_ids.read(conn, "main", "people").called_now == ("id", "name", "secret")
    settle(publisher)
    with store.immediate(conn):
        for sql in SWAP:
            conn.execute(sql)
    settle(publisher)
    assert "people" not in store.public_tables(conn) and public_copy(public) is None
    publisher.close()
    conn.close()


def test_a_view_that_stops_compiling_is_withdrawn_and_never_stops_a_cycle(primary):
    """A view over a table that is dropped: the cycle publishes everything
    else, the view leaves public.db and is made private, audit-logged and
    named for /health."""
    conn, publisher, data, public = primary
    conn.execute("CREATE TABLE towns (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO towns VALUES (1, 'Leeds')")
    conn.execute("CREATE VIEW town_names AS SELECT name FROM towns")
    for table in ("people", "towns", "town_names"):
        store.set_public(conn, table, True, actor="alice")
    settle(publisher)
    conn.execute("DROP TABLE towns")
    conn.execute("UPDATE people SET name = 'changed' WHERE id = 1")
    cycle = publisher.run_cycle()
    assert cycle.rows_by_table == {"people": 1}
    assert public_copy(public)[1][0][1] == "changed"
    settle(publisher)
    assert "town_names" not in store.public_tables(conn)
    check = apsw.Connection(public, flags=apsw.SQLITE_OPEN_READONLY)
    assert not check.execute("SELECT 1 FROM sqlite_master WHERE name = 'town_names'").fetchall()
    check.close()
    entry = store.audit_entries(conn, table="town_names", limit=1)[0]
    assert entry["operation"] == "unpublish" and entry["reason"] == "view no longer compiles: no such table: towns"
    withdrawn = Withdrawals.read_file(withdrawals_path(publisher.watermark_file))
    assert [(w.name, w.kind, w.reason) for w in withdrawn] == [
        ("town_names", "view", "view no longer compiles: no such table: towns")
    ]
    # Publishing it again is refused while it does not compile, clearly.
    with pytest.raises(store.PublishError, match="does not compile: no such table: towns"):
        store.set_public(conn, "town_names", True, actor="alice")


def test_a_view_whose_column_is_dropped_is_withdrawn(primary):
    """Python's sqlite3 (the team's scripts, sqlite-utils) lets a column a
    view reads be dropped, the view's double-quoted name then read as a
    string; for broadsheet the view no longer compiles."""
    conn, publisher, data, public = primary
    script = sqlite3.connect(data, isolation_level=None)
    script.execute('CREATE VIEW cities AS SELECT "id", "city" FROM people')
    store.set_public(conn, "people", True, actor="alice")
    store.set_public(conn, "cities", True, actor="alice")
    settle(publisher)
    script.execute("ALTER TABLE people DROP COLUMN city")
    script.close()
    settle(publisher)
    assert "cities" not in store.public_tables(conn) and "people" in store.public_tables(conn)
    assert store.audit_entries(conn, table="cities", limit=1)[0]["reason"].startswith(
        'view no longer compiles: no such column: "city"'
    )


@pytest.mark.parametrize(
    "current, proposed, added, removed",
    [
        (None, "score > 50", 0, 2),  # 10 and NULL leave
        ("score > 50", None, 2, 0),  # 10 and NULL come back
        ("score > 50", "score < 50", 1, 1),  # NULL in neither
        ("score IS NULL", "score > 50", 1, 1),
    ],
)
def test_preview_counts_are_exact_with_null_filters(tmp_path, current, proposed, added, removed):
    conn = store.connect(str(tmp_path / "data.db"))
    store.ensure_schema(conn)
    conn.execute("CREATE TABLE scores (id INTEGER PRIMARY KEY, score INTEGER); INSERT INTO scores VALUES (1, 10), (2, 90), (3, NULL)")
    store.set_public(conn, "scores", True, actor="alice", spec=PublishSpec(where=current))
    result = preview.preview(conn, "scores", PublishSpec(where=proposed))
    assert (result.rows_added, result.rows_removed) == (added, removed)
    want = conn.execute(f"SELECT count(*) FROM scores WHERE {proposed or 1}").fetchone()[0]
    assert result.rows == want
    conn.close()


@pytest.mark.parametrize(
    "names, renamed, dropped, after, problem",
    [
        ({"id", "name"}, {"name": "old_name", "secret": "name"}, set(), ["id", "old_name", "name"],
         "'name' now names another column (the one published as 'secret')"),
        ({"secret"}, {"secret": "kept", "name": "secret"}, set(), ["id", "secret", "kept"],
         "'secret' now names another column (the one published as 'name')"),
        ({"id", "name"}, {}, {"name"}, ["id", "secret", "name"], "'name' now names another column (one added since)"),
        ({"id", "name"}, {"name": "full"}, set(), ["id", "full", "secret"], "'name' was renamed to 'full'"),
        ({"id", "name"}, {"secret": "hidden"}, {"notes"}, ["id", "name", "hidden"], None),
        (set(), {"name": "old_name", "secret": "name"}, set(), ["id", "old_name", "name"], None),
    ],
)
def test_an_alteration_whose_operations_are_known_is_followed(names, renamed, dropped, after, problem):
    """Datasette's alter API (the team plugin's write_wrapper): renames and
    drops by the request's own operations."""
    assert column_ids.moved_by(names, renamed, dropped, after) == problem

"""Masked columns (on plain files, fast): the publisher computes each mask on
the primary, so public.db holds the masked value under the column's name and
never the unmasked one; a masked column takes no index, foreign key or
full-text index with it; a mask that stops fitting makes the table private."""

from __future__ import annotations

import html
import random
import re
from contextlib import closing

import apsw
import pytest

from inprocess import plain_primary, plain_primary_files, public_litefs_port  # noqa: F401, F811 (fixtures)
from primary import store
from primary.publisher import Publisher
from primary.store import PublishSpec
from primary.store.errors import PublishError
from primary.store.preview import preview

MASKS = {"email": "NULL", "postcode": "substr(postcode, 1, 4)", "lat": "round(lat, 2)"}
FILTER = "region <> 'hidden' AND email NOT LIKE '%7@%'"  # reads a masked column: its unmasked value
SPEC = PublishSpec.from_dict({"masks": MASKS, "where": FILTER})
SENTINEL = "zq9sentinel"


def _people(path) -> apsw.Connection:
    conn = store.connect(str(path))
    store.ensure_schema(conn)
    conn.execute(
        "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, email TEXT NOT NULL, postcode TEXT,"
        " lat REAL, region TEXT)"
    )
    conn.execute("CREATE INDEX people_email ON people (email)")
    conn.execute("CREATE INDEX people_name ON people (name)")
    return conn


def _row(rng: random.Random, i: int) -> tuple:
    return (
        i,
        f"person {rng.randrange(1000)}",
        f"{SENTINEL}{rng.randrange(10**6)}@example.com",
        f"{SENTINEL[:2]}{rng.randrange(10)} {SENTINEL}{rng.randrange(1000)}",
        rng.uniform(-90, 90) + 0.123456789,
        rng.choice(["north", "south", "hidden"]),
    )


def _expected(conn) -> list:
    """What read nodes must serve, as data.db itself computes it."""
    return conn.execute(
        f"SELECT id, name, {', '.join(f'{e} AS {c}' for c, e in MASKS.items())}, region FROM people"
        f" WHERE {FILTER} ORDER BY id"
    ).fetchall()


def _read(path, sql: str) -> list:
    # apsw, as the publisher: one SQLite library in this process.
    with closing(apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)) as conn:
        return conn.execute(sql).fetchall()


def _served(public) -> list:
    return _read(public, "SELECT id, name, email, postcode, lat, region FROM people ORDER BY id")


def _bytes(public) -> bytes:
    return b"".join(p.read_bytes() for p in public.parent.glob(public.name + "*"))


def test_seeded_random_writes_leave_public_db_equal_to_the_masked_filtered_select(tmp_path):
    data, public = tmp_path / "data.db", tmp_path / "public.db"
    conn = _people(data)
    rng = random.Random(22)
    conn.executemany("INSERT INTO people VALUES (?, ?, ?, ?, ?, ?)", [_row(rng, i) for i in range(1, 201)])
    store.set_public(conn, "people", True, actor="test", spec=SPEC)
    publisher = Publisher(data, public)
    try:
        publisher.maintain_triggers()
        publisher.run_cycle()
        assert _served(public) == _expected(conn)
        next_id = 201
        for _ in range(30):
            changed = set()
            with store.immediate(conn):
                for _ in range(rng.randrange(1, 6)):
                    op = rng.random()
                    ids = [r for (r,) in conn.execute("SELECT id FROM people")]
                    if op < 0.4:
                        conn.execute("INSERT INTO people VALUES (?, ?, ?, ?, ?, ?)", _row(rng, next_id))
                        changed.add(next_id)
                        next_id += 1
                    elif op < 0.85:
                        i, fresh = rng.choice(ids), _row(rng, 0)
                        conn.execute(
                            "UPDATE people SET email = ?, postcode = ?, lat = ?, region = ? WHERE id = ?",
                            (*fresh[2:], i),
                        )
                        changed.add(i)
                    else:
                        i = rng.choice(ids)
                        conn.execute("DELETE FROM people WHERE id = ?", (i,))
                        changed.add(i)
            cycle = publisher.run_cycle()
            # Incremental: only the changed rows were computed again.
            assert cycle.tables_copied == () and cycle.rows_changed == len(changed)
            assert _served(public) == _expected(conn)
        publisher.close()
        # Every byte of public.db (file and WAL): no unmasked value.
        assert SENTINEL.encode() not in _bytes(public)
        schema = " ".join(s for (s,) in _read(public, "SELECT sql FROM sqlite_master WHERE tbl_name = 'people'"))
        assert "people_email" not in schema and "people_name" in schema  # a masked column's index stays home
        assert '"email",' in schema and "NOT NULL" not in schema  # no type, no constraint: the mask's value as it is
        assert "substr" not in schema  # the mask itself stays home
    finally:
        publisher.close()
        conn.close()


def _published_once(tmp_path, script: str, specs: dict[str, dict]):
    """public.db after one cycle over a data.db made by ``script``, with
    each of ``specs``' tables published so."""
    data, public = tmp_path / "data.db", tmp_path / "public.db"
    with closing(store.connect(str(data))) as conn:
        store.ensure_schema(conn)
        conn.execute(script)
        for table, spec in specs.items():
            store.set_public(conn, table, True, actor="test", spec=PublishSpec.from_dict(spec))
    publisher = Publisher(data, public)
    try:
        publisher.run_cycle()
    finally:
        publisher.close()
    return public


def test_a_masked_column_takes_no_foreign_key_or_full_text_index_with_it(tmp_path):
    public = _published_once(
        tmp_path,
        f"""
        CREATE TABLE towns (code TEXT PRIMARY KEY, name TEXT);
        INSERT INTO towns VALUES ('AB1', 'Aberdeen');
        CREATE TABLE notes (id INTEGER PRIMARY KEY, town TEXT REFERENCES towns (code), body TEXT, title TEXT);
        INSERT INTO notes VALUES (1, 'AB1', 'a {SENTINEL} body', 'A title');
        CREATE VIRTUAL TABLE notes_fts USING fts5 (body, content = 'notes', content_rowid = 'id');
        INSERT INTO notes_fts (notes_fts) VALUES ('rebuild');
        CREATE VIRTUAL TABLE notes_title_fts USING fts5 (title, content = 'notes', content_rowid = 'id');
        INSERT INTO notes_title_fts (notes_title_fts) VALUES ('rebuild');
        """,
        {"towns": {}, "notes": {"masks": {"town": "'?'", "body": "length(body)"}}},
    )
    assert _read(public, "SELECT id, town, body, title FROM notes") == [(1, "?", 18, "A title")]
    assert _read(public, "PRAGMA foreign_key_list(notes)") == []
    tables = {n for (n,) in _read(public, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "notes_fts" not in tables and "notes_title_fts" in tables
    assert SENTINEL.encode() not in _bytes(public)


def test_a_foreign_key_to_a_masked_column_is_not_published(tmp_path):
    public = _published_once(
        tmp_path,
        """
        CREATE TABLE towns (id INTEGER PRIMARY KEY, slug TEXT UNIQUE);
        CREATE TABLE visits (id INTEGER PRIMARY KEY, town TEXT REFERENCES towns (slug));
        INSERT INTO towns VALUES (1, 'leeds'); INSERT INTO visits VALUES (1, 'leeds');
        """,
        {"visits": {}, "towns": {"masks": {"slug": "upper(slug)"}}},
    )
    assert _read(public, "SELECT slug FROM towns") == [("LEEDS",)]
    assert _read(public, "PRAGMA foreign_key_list(visits)") == []
    assert _read(public, "SELECT count(*) FROM sqlite_master WHERE tbl_name = 'towns' AND type = 'index'") == [(0,)]


@pytest.mark.parametrize(
    "masks, message",
    [
        ({"email": "random()"}, "random() (not a deterministic built-in)"),
        ({"email": "(SELECT name FROM people LIMIT 1)"}, "a subquery"),
        ({"email": "(SELECT 1 FROM sqlite_master)"}, "may not use"),
        ({"email": "max(email)"}, "misuse of aggregate"),
        ({"email": "date('now')"}, "date() (not a deterministic built-in)"),
        ({"email": "NULL; DROP TABLE people"}, "one SQL expression"),
        ({"email": "nosuch"}, "no such column: nosuch"),
        ({"nosuch": "NULL"}, "No such column(s): 'nosuch'"),
        ({"id": "id + 1"}, "cannot be masked"),
        ({"email": ""}, "non-empty SQL expression"),
    ],
)
def test_a_bad_mask_is_refused_and_says_why(tmp_path, masks, message):
    conn = _people(tmp_path / "data.db")
    with pytest.raises((PublishError, store.SpecError)) as caught:
        store.set_public(conn, "people", True, actor="test", spec=PublishSpec.from_dict({"masks": masks}))
    assert message in str(caught.value)
    assert store.public_tables(conn) == []


def test_a_masked_column_must_be_published(tmp_path):
    conn = _people(tmp_path / "data.db")
    spec = PublishSpec.from_dict({"exclude_columns": ["email"], "masks": {"email": "NULL"}})
    with pytest.raises(PublishError, match="Masked column"):
        store.set_public(conn, "people", True, actor="test", spec=spec)


def test_a_primary_key_column_cannot_be_masked(tmp_path):
    conn = store.connect(str(tmp_path / "data.db"))
    store.ensure_schema(conn)
    conn.execute("CREATE TABLE pairs (a TEXT, b TEXT, v TEXT, PRIMARY KEY (a, b))")
    with pytest.raises(PublishError, match="'a' is part of the table's primary key"):
        store.set_public(conn, "pairs", True, actor="test", spec=PublishSpec.from_dict({"masks": {"a": "'x'"}}))
    store.set_public(conn, "pairs", True, actor="test", spec=PublishSpec.from_dict({"masks": {"v": "upper(v)"}}))
    conn.close()


def test_the_preview_shows_the_masked_values(tmp_path):
    conn = _people(tmp_path / "data.db")
    conn.execute("INSERT INTO people VALUES (1, 'Ann', 'ann@example.com', 'EH1 2AB', 55.953251, 'north')")
    shown = preview(conn, "people", SPEC)
    assert shown.sample == [
        {"id": 1, "name": "Ann", "email": None, "postcode": "EH1 ", "lat": 55.95, "region": "north"}
    ]
    assert shown.spec["masks"] == MASKS


@pytest.mark.parametrize("change", ["drop", "rename", "rename_read"])
def test_a_mask_that_stops_fitting_makes_the_table_private(tmp_path, change):
    data, public = tmp_path / "data.db", tmp_path / "public.db"
    conn = _people(data)
    conn.execute("INSERT INTO people VALUES (1, 'Ann', 'ann@example.com', 'EH1 2AB', 55.95, 'north')")
    spec = PublishSpec.from_dict({"masks": {"email": "NULL", "name": "substr(postcode, 1, 2)"}})
    store.set_public(conn, "people", True, actor="test", spec=spec)
    publisher = Publisher(data, public)
    try:
        publisher.maintain_triggers()
        publisher.run_cycle()
        assert _read(public, "SELECT email, name FROM people") == [(None, "EH")]
        statement = {
            "drop": "ALTER TABLE people DROP COLUMN email",
            "rename": "ALTER TABLE people RENAME COLUMN email TO contact",
            "rename_read": "ALTER TABLE people RENAME COLUMN postcode TO zip",
        }[change]
        conn.execute("DROP INDEX people_email")
        conn.execute(statement)
        publisher.maintain_triggers()
        publisher.run_cycle()
        assert "people" not in store.public_tables(conn)
        assert _read(public, "SELECT name FROM sqlite_master WHERE name = 'people'") == []
        entry = store.audit_entries(conn, table="people", limit=1)[0]
        assert entry["operation"] == "unpublish" and "no longer fits" in entry["actor"]
    finally:
        publisher.close()
        conn.close()


# -- through the control plane and the Make public page (in-process) --------------

PEOPLE = [
    {"id": i, "name": f"person {i}", "email": f"{SENTINEL}{i}@example.com", "lat": 55.9 + i / 1000, "region": r}
    for i, r in zip(range(1, 7), ["north", "hidden"] * 3)
]
VISIBILITY = "/-/broadsheet/visibility/data"


def _create_people(plain) -> None:
    # Through apsw, as the primary's processes write (one SQLite library per process).
    conn = plain.connect()
    try:
        with store.immediate(conn):
            conn.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, email TEXT, lat REAL, region TEXT)")
            conn.executemany(
                "INSERT INTO people VALUES (:id, :name, :email, :lat, :region)", PEOPLE
            )
    finally:
        conn.close()


def test_the_control_plane_publishes_masks_and_refuses_a_bad_one(plain_primary):  # noqa: F811 (the fixture)
    _create_people(plain_primary)
    spec = {"masks": {"email": "NULL", "lat": "round(lat, 1)"}, "where": "region = 'north'"}
    previewed = plain_primary.control.post("/tables/people/preview", json=spec)
    assert previewed.status_code == 200, previewed.text
    assert [(r["email"], r["lat"]) for r in previewed.json()["sample"]] == [(None, 55.9)] * 3
    bad = plain_primary.control.post("/tables/people/publish", json={"masks": {"email": "random()"}})
    assert bad.status_code == 400 and "random()" in bad.json()["error"], bad.text
    done = plain_primary.control.post("/tables/people/publish", json=spec)
    assert done.status_code == 200, done.text
    listed = {t["table"]: t for t in plain_primary.control.get("/tables").json()}
    assert listed["people"]["spec"] == spec and listed["people"]["partial"]
    plain_primary.publish()
    assert plain_primary.public_rows("SELECT id, email, lat FROM people") == [(1, None, 55.9), (3, None, 55.9), (5, None, 55.9)]
    assert SENTINEL.encode() not in _bytes(plain_primary.public_db)


def test_the_make_public_page_takes_masks_previews_them_and_publishes_them(plain_primary):  # noqa: F811 (the fixture)

    _create_people(plain_primary)
    site = plain_primary.team_site()
    page = site.get(f"{VISIBILITY}/people", token=plain_primary.token)
    assert 'name="mask:email"' in page.text and 'name="mask:id"' not in page.text
    chosen = {"operation": "publish", "columns": ["id", "name", "email", "lat", "region"], "mask:email": "'hidden'"}
    preview_page = site.post(f"{VISIBILITY}/people", data={**chosen, "action": "preview"}, token=plain_primary.token)
    assert preview_page.status_code == 200
    assert SENTINEL not in preview_page.text.split('class="broadsheet-spec-form"')[0]  # the sample is masked
    confirm = re.search(r'<form[^>]*class="broadsheet-confirm">(.*?)</form>', preview_page.text, re.S).group(1)
    posted: dict[str, list[str]] = {}
    for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', confirm):
        posted.setdefault(html.unescape(name), []).append(html.unescape(value))
    assert posted["mask:email"] == ["'hidden'"]
    done = site.post(f"{VISIBILITY}/people", data={**posted, "action": "publish"}, token=plain_primary.token)
    assert done.status_code == 200
    assert store.public_specs(plain_primary.connect())["people"].masked == {"email": "'hidden'"}
    plain_primary.publish()
    assert {e for (e,) in plain_primary.public_rows("SELECT email FROM people")} == {"hidden"}


def test_the_cli_takes_repeated_masks_and_says_what_is_wrong_with_a_bad_one(tmp_path):
    from click.testing import CliRunner

    from broadsheet.cli import cli

    data = tmp_path / "data.db"
    _people(data).close()
    run = CliRunner().invoke
    bad = run(cli, ["publish", "people", "--data-db", str(data), "--mask", "email"])
    assert bad.exit_code == 2 and "'email' is not COLUMN=EXPRESSION" in bad.output
    refused = run(cli, ["publish", "people", "--data-db", str(data), "--mask", "email=random()"])
    assert refused.exit_code == 1 and "random() (not a deterministic built-in)" in refused.output
    done = run(
        cli,
        ["publish", "people", "--data-db", str(data), "--mask", "email=NULL", "--mask", "postcode=substr(postcode, 1, 4)"],
    )
    assert done.exit_code == 0, done.output
    with closing(store.connect(str(data))) as conn:
        assert store.public_specs(conn)["people"].masked == {"email": "NULL", "postcode": "substr(postcode, 1, 4)"}

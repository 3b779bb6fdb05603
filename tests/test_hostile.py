"""A read node under hostile anonymous visitors: their SQL cannot reach
memory, files or other databases; parked bookmark waits and slow SQL cannot
starve other visitors; their mistakes are 4xx, never 500; and a read node
refuses to start unless it denies by default and serves public.db alone.

Two layers: the read node's Datasette in-process (``datasette.client``) on a
plain public.db built here, and the shared cluster (real LiteFS, real
Datasette, real HTTP) for the crash and the load test.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import sqlite_utils
from datasette.app import Datasette
from datasette.plugins import pm
from datasette.utils import StartupError

import replica.plugin
from broadsheet.litefs import Pos
from conftest import rows, team_db, wait_until
from replica.guards import guards
from replica.position import PositionWatcher, TooManyWaits
from replica.sandbox import (
    NAMING_PRAGMAS,
    READABLE_PRAGMAS,
    SAFE_FUNCTIONS,
    SAFE_TABLE_FUNCTIONS,
    SETTABLE_PRAGMAS,
    confine,
)
from replica.settings import Settings, settings

# Runs until Datasette's time limit cuts it.
ENDLESS = "(with recursive c(x) as (select 1 union all select x + 1 from c) select count(*) from c)"
TIME_LIMIT_MS = 300


def in_loop(test):
    """Run an async test in an event loop of its own."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return run


async def eventually(condition, timeout: float = 10.0, message: str = "condition"):
    """``conftest.wait_until`` for code on the event loop: poll without
    blocking it."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(0.005)


def build_public_db(path):
    """A public.db as the publisher leaves it: published tables with an FTS4
    and an FTS5 index (their modules run SQL of their own on the sandboxed
    connections), a published view, a table that is not published, and
    ``_public_tables``."""
    db = sqlite_utils.Database(path)
    db["docs"].insert_all(
        [{"id": i, "title": f"doc {i}", "body": f"hello world {i}" if i % 2 else f"goodbye {i}"} for i in range(40)],
        pk="id",
    )
    db["docs"].enable_fts(["title", "body"], fts_version="FTS4")
    db["places"].insert_all(
        [{"id": i, "name": f"place {i}", "country": ["uk", "fr", "de"][i % 3]} for i in range(30)], pk="id"
    )
    db["places"].enable_fts(["name"], fts_version="FTS5")
    db.create_view("countries", "select country, count(*) as places from places group by country")
    db["hidden"].insert({"id": 1, "secret": "never served"}, pk="id")
    db["_public_tables"].insert_all([{"table_name": t} for t in ("docs", "places", "countries")], pk="table_name")
    db.close()
    return path


def set_pos(db_path, txid: int) -> None:
    """Move the position the way LiteFS does: its ``-pos`` file beside the database."""
    with open(f"{db_path}-pos", "w") as fp:
        fp.write(str(Pos(txid, 0xC0FFEE + txid)))


@pytest.fixture
def public_db(tmp_path):
    return build_public_db(tmp_path / "public.db")


@pytest.fixture
def read_node(public_db, monkeypatch):
    """A factory of read-node Datasettes, in-process: the read-node plugin,
    --default-deny and the settings replica/node.py starts Datasette with,
    configured by environment variables like the real one."""
    registered = not pm.is_registered(replica.plugin)
    if registered:
        pm.register(replica.plugin, name="replica.plugin")

    def make(files=None, default_deny=True, immutables=(), **env):
        monkeypatch.setenv("BROADSHEET_PUBLIC_DB", str(public_db))
        for name, value in env.items():
            monkeypatch.setenv(name, str(value))
        settings.cache_clear()
        return Datasette(
            [str(public_db)] if files is None else files,
            settings={"default_allow_sql": True, "sql_time_limit_ms": TIME_LIMIT_MS},
            default_deny=default_deny,
            immutables=list(immutables),
        )

    yield make
    if registered:
        pm.unregister(replica.plugin)
    settings.cache_clear()


async def get(ds, path, **params) -> httpx.Response:
    return await ds.client.get(path, params=params)


# -- 1. the SQL sandbox --------------------------------------------------------


def _call(name: str, narg: int, kind: str) -> str:
    args = ", ".join(["NULL"] * max(narg, 1 if narg < 0 else 0))
    return f'"{name}"({args})' + (" OVER ()" if kind == "w" else "")


@in_loop
async def test_every_function_outside_the_allowlist_is_refused(read_node):
    ds = read_node()
    # The functions the node's own connections have, as SQLite reports them.
    listed = await get(ds, "/public/-/query.json", sql="select name, narg, type from pragma_function_list()", _shape="array")
    assert listed.status_code == 200
    functions = {(f["name"], f["narg"], f["type"]) for f in listed.json()}
    refused = sorted(f for f in functions if f[0].lower() not in SAFE_FUNCTIONS)
    assert {"fts3_tokenizer", "load_extension"} <= {name for name, _, _ in refused}
    for name, narg, kind in refused:
        call = _call(name, narg, kind)
        for path, params in [
            ("/public/-/query.json", {"sql": f"select {call}"}),
            ("/public/docs.json", {"_where": f"{call} is null"}),
        ]:
            response = await get(ds, path, **params)
            assert response.status_code == 400, (call, path, response.text)
            assert "not authorized" in response.json()["error"], (call, response.text)
    # What is allowed still works, through both doors.
    ok = await get(ds, "/public/-/query.json", sql="select upper(title), json_array(id), count(*) over () from docs limit 1")
    assert ok.status_code == 200
    assert (await get(ds, "/public/docs.json", _where="length(title) > 4")).status_code == 200


@in_loop
async def test_fts3_tokenizer_can_neither_read_nor_plant_a_pointer(read_node):
    ds = read_node()
    for sql in [
        "select fts3_tokenizer('simple')",  # the address of SQLite's tokenizer
        "select fts3_tokenizer('simple', fts3_tokenizer('porter'))",  # plant one (a valid one, here)
    ]:
        response = await get(ds, "/public/-/query.json", sql=sql)
        assert response.status_code == 400 and "fts3_tokenizer" in response.json()["error"]
        assert "rows" not in response.json() or response.json()["rows"] == []
    # Full-text search still uses its tokenizer.
    found = await get(ds, "/public/docs.json", _search="hello", _shape="array", _size=3)
    assert found.status_code == 200
    assert [r["id"] for r in found.json()] == [1, 3, 5]


@in_loop
async def test_pragmas_and_table_functions_outside_the_allowlist_are_refused(read_node):
    ds = read_node()
    plain = sqlite3.connect(":memory:")
    pragmas = [name for (name,) in plain.execute("select name from pragma_pragma_list")]
    modules = [name for (name,) in plain.execute("select name from pragma_module_list")]
    plain.close()
    allowed = NAMING_PRAGMAS | READABLE_PRAGMAS | SETTABLE_PRAGMAS
    refused = [p for p in pragmas if p not in allowed]
    assert "compile_options" in refused and "mmap_size" in refused
    # ?_where= reaches SQLite without Datasette's own pattern check, so this
    # is the sandbox alone.
    for pragma in refused:
        response = await get(ds, "/public/docs.json", _where=f"exists (select 1 from pragma_{pragma})")
        assert response.status_code == 400, (pragma, response.text)
    # A pragma that may be read may not be set.
    for sql in ["select * from pragma_page_size(1024)", "select * from pragma_max_page_count(1)"]:
        response = await get(ds, "/public/docs.json", _where=f"exists ({sql})")
        assert response.status_code == 400, (sql, response.text)
    # dbstat (the file's pages) and sqlite_stmt (other visitors' SQL) among them.
    assert {"dbstat", "sqlite_stmt"} <= set(modules)
    for module in set(modules) - SAFE_TABLE_FUNCTIONS:
        response = await get(ds, "/public/-/query.json", sql=f"select 1 from {module}")
        assert response.status_code == 400, (module, response.text)
    described = await get(
        ds, "/public/-/query.json", sql="select name from pragma_table_info('docs') join json_each('[1]')", _shape="array"
    )
    assert [r["name"] for r in described.json()] == ["id", "title", "body"]


def test_sandbox_refuses_attach_and_writes(public_db):
    """The authorizer on its own, on a writable connection: no other
    database, no write, whatever Datasette's checks in front of it let through."""
    from replica.sandbox import confine

    conn = sqlite3.connect(public_db)
    confine(conn)
    for sql in [
        f"ATTACH DATABASE '{public_db}' AS other",
        "INSERT INTO places (id, name) VALUES (99, 'nope')",
        "UPDATE places SET name = 'nope'",
        "DELETE FROM places",
        "CREATE TABLE evil (id)",
        "DROP TABLE hidden",
        "PRAGMA writable_schema = 1",
        "PRAGMA query_only = 0",
        "VACUUM INTO '/tmp/copy.db'",
    ]:
        with pytest.raises(sqlite3.DatabaseError):
            conn.execute(sql)
    assert conn.execute("select count(*) from places").fetchone()[0] == 30
    conn.close()


@in_loop
async def test_ordinary_pages_still_work_in_the_sandbox(read_node):
    ds = read_node()
    for path, params in [
        ("/", {}),
        ("/public", {}),
        ("/public/docs", {}),
        ("/public/docs", {"_search": "hello"}),
        ("/public/places", {"_search": "place"}),
        ("/public/countries", {}),
        ("/public/places", {"_facet": "country"}),
        ("/public/places", {"_where": "id > 3", "_sort_desc": "name"}),
        ("/public/docs/3", {}),
        ("/public/docs.csv", {}),
        ("/public/-/query", {"sql": "select * from places"}),
        ("/-/versions.json", {}),
        ("/-/replication.json", {}),
    ]:
        response = await get(ds, path, **params)
        assert response.status_code == 200, (path, params, response.text[:500])
    facets = (await get(ds, "/public/places.json", _facet="country", _extra="suggested_facets")).json()
    assert {r["value"]: r["count"] for r in facets["facet_results"]["results"]["country"]["results"]} == {
        "uk": 10, "fr": 10, "de": 10,
    }
    suggested = (await get(ds, "/public/places.json", _extra="suggested_facets")).json()["suggested_facets"]
    assert "country" in [s["name"] for s in suggested]
    found = (await get(ds, "/public/places.json", _search="place 7", _searchmode="raw", _shape="array")).json()
    assert [r["id"] for r in found] == [7]
    countries = (await get(ds, "/public/countries.json", _shape="array", _sort="country")).json()
    assert countries == [{"country": c, "places": 10} for c in ("de", "fr", "uk")]
    row = (await get(ds, "/public/docs/3.json", _shape="array")).json()
    assert row == [{"id": 3, "title": "doc 3", "body": "hello world 3"}]
    page = (await get(ds, "/public/places.json", _where="country = 'fr'", _size=2, _shape="objects")).json()
    assert [r["country"] for r in page["rows"]] == ["fr", "fr"] and page["next"]
    assert (await get(ds, "/public/hidden.json")).status_code == 403


# -- 4. a visitor's mistakes are 4xx --------------------------------------------


@in_loop
async def test_bad_facet_and_slow_where_are_400s_not_500s(read_node):
    ds = read_node()
    for path in ["/public/places.json", "/public/places"]:
        bad = await get(ds, path, _facet="no_such_column")
        assert bad.status_code == 400, bad.text[:500]
        assert "no such column: no_such_column" in bad.text
        slow = await get(ds, path, _where=f"{ENDLESS} > 0")
        assert slow.status_code == 400, slow.text[:500]
        assert "took too long" in slow.text and "sql_time_limit_ms" in slow.text
        for response in (bad, slow):
            assert "Traceback" not in response.text and "File \"" not in response.text
    slow = await get(ds, "/public/places.json", _where=f"{ENDLESS} > 0")
    assert slow.json()["status"] == 400 and slow.json()["ok"] is False


# -- 2. bookmark waits ------------------------------------------------------------


@in_loop
async def test_position_watcher_wakes_every_waiter_and_keeps_time(public_db):
    set_pos(public_db, 3)
    watcher = PositionWatcher(public_db, max_waits=2)
    assert await watcher.fresh() == Pos(3, 0xC0FFEE + 3) and not watcher.polling
    since = await watcher.fresh()
    waiting = [asyncio.create_task(watcher.wait_for(txid, 30)) for txid in (4, 4)]
    # Followers of every change (a stream, a cache) are not visitors' waits:
    # they take none of the bookmark places.
    waiting += [asyncio.create_task(watcher.changed(since, 30)) for _ in range(3)]
    await eventually(lambda: (watcher.waiting, watcher.following) == (2, 3), message="every waiter parked")
    assert watcher.polling
    with pytest.raises(TooManyWaits):
        await watcher.wait_for(5, 30)
    set_pos(public_db, 4)
    assert [pos.txid for pos in await asyncio.wait_for(asyncio.gather(*waiting), 1)] == [4] * 5
    await eventually(lambda: not watcher.polling, message="the watcher to stop polling once nobody waits")
    # A wait that times out returns the position it has, on time.
    started = time.monotonic()
    assert (await watcher.wait_for(99, 0.2)).txid == 4
    assert 0.2 <= time.monotonic() - started < 0.4
    # Already there: no wait at all.
    assert (await watcher.wait_for(4, 0)).txid == 4


@in_loop
async def test_position_watcher_keeps_watching_while_the_position_cannot_be_read(public_db, tmp_path):
    set_pos(public_db, 3)
    watcher = PositionWatcher(public_db, max_waits=2)
    waiting = asyncio.create_task(watcher.wait_for(4, 30))
    await eventually(lambda: watcher.polling, message="the watcher polling")
    pos_file = tmp_path / "public.db-pos"
    pos_file.unlink()
    pos_file.mkdir()  # what a dead FUSE mount does to a read: an OSError
    await asyncio.sleep(watcher.interval * 4)
    assert not waiting.done() and watcher.polling
    pos_file.rmdir()
    set_pos(public_db, 4)
    assert (await asyncio.wait_for(waiting, 1)).txid == 4


@in_loop
async def test_parked_bookmark_waits_are_capped_with_a_503(read_node, public_db):
    set_pos(public_db, 1)
    ds = read_node(BROADSHEET_MAX_BOOKMARK_WAITS=5, BROADSHEET_BOOKMARK_TIMEOUT=30)
    parked = [asyncio.create_task(get(ds, "/public/docs.json", _txid=2, _size=1)) for _ in range(5)]
    await eventually(lambda: guards(ds).position.waiting == 5, message="five parked waits")
    refused = await get(ds, "/public/docs.json", _txid=2)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["wanted"] == 2 and refused.json()["txid"] == 1 and "Retry" in refused.json()["error"]
    # Other visitors are served meanwhile, and the count is visible.
    assert (await get(ds, "/public/docs.json", _size=1)).status_code == 200
    assert (await get(ds, "/-/replication.json")).json()["bookmark_waits"] == 5
    set_pos(public_db, 2)
    served = await asyncio.wait_for(asyncio.gather(*parked), 2)
    assert [r.status_code for r in served] == [200] * 5
    assert {r.headers["broadsheet-txid"] for r in served} == {"2"}
    assert guards(ds).position.waiting == 0


@in_loop
async def test_many_parked_waits_end_at_their_timeout(read_node, public_db):
    set_pos(public_db, 1)
    ds = read_node(BROADSHEET_MAX_BOOKMARK_WAITS=100, BROADSHEET_BOOKMARK_TIMEOUT=0.5)

    async def timed():
        started = time.monotonic()
        response = await get(ds, "/public/docs.json", _txid=10**9, _size=1)
        return response, time.monotonic() - started

    results = await asyncio.gather(*(timed() for _ in range(80)))
    assert {r.status_code for r, _ in results} == {504}
    took = sorted(t for _, t in results)
    # None ends early; none is held far past it (a stall would be seconds on end).
    assert took[0] >= 0.5 and took[-1] < 0.5 + 3.0, took


# -- 3. custom SQL concurrency ------------------------------------------------------


@in_loop
async def test_custom_sql_beyond_its_slots_is_429_and_table_pages_get_through(read_node):
    ds = read_node(BROADSHEET_MAX_SQL_CONCURRENCY=1)
    slow = asyncio.create_task(get(ds, "/public/-/query.json", sql=f"select {ENDLESS}"))
    await eventually(lambda: guards(ds).custom_sql.taken == 1, message="the slow query running")
    for path, params in [
        ("/public/-/query.json", {"sql": "select 1"}),
        ("/public/-/query", {"sql": "select 1"}),
        ("/public/places.json", {"_where": "id = 1"}),
        ("/public/places/-/count", {"_where": "id = 1"}),
    ]:
        busy = await get(ds, path, **params)
        assert busy.status_code == 429, (path, busy.text[:300])
        assert busy.headers["retry-after"] == "1"
        assert "Retry" in busy.json()["error"]
    # Table and row pages, facets and search are not custom SQL.
    for path, params in [
        ("/public/places.json", {"_facet": "country"}),
        ("/public/places/2.json", {}),
        ("/public/docs.json", {"_search": "hello"}),
    ]:
        assert (await get(ds, path, **params)).status_code == 200
    # /public.json?sql= only redirects to the query page: that is where it counts.
    assert (await get(ds, "/public.json", sql="select 1")).status_code == 302
    assert (await slow).status_code == 400  # cut at the time limit
    assert guards(ds).custom_sql.taken == 0
    assert (await get(ds, "/public/-/query.json", sql="select 1")).status_code == 200


# -- 5. start-up -------------------------------------------------------------------


@pytest.mark.parametrize(
    "how, message",
    [
        ("without --default-deny", "--default-deny"),
        ("with a second database", "exactly one database"),
        ("on another file", "this node's public.db is"),
        ("on public.db opened immutable", "mutable"),
    ],
)
def test_read_node_refuses_to_start_unless_it_denies_by_default_and_serves_public_db_alone(
    read_node, public_db, tmp_path, how, message
):
    other = str(build_public_db(tmp_path / "other.db"))
    ds = {
        "without --default-deny": lambda: read_node(default_deny=False),
        "with a second database": lambda: read_node(files=[str(public_db), other]),
        "on another file": lambda: read_node(files=[other]),
        "on public.db opened immutable": lambda: read_node(files=[], immutables=[str(public_db)]),
    }[how]()
    with pytest.raises(StartupError, match=message):
        asyncio.run(ds.invoke_startup())


def test_read_node_starts_when_it_denies_by_default_and_serves_public_db(read_node):
    asyncio.run(read_node().invoke_startup())


def test_datasette_without_default_deny_exits_with_a_message(public_db, tmp_path):
    """Through the read node's real entry point, as a deploy that dropped
    the flag would start it."""
    env = {"PATH": "/usr/bin:/bin", "BROADSHEET_PUBLIC_DB": str(public_db), "HOME": str(tmp_path)}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "replica.serve", "serve", str(public_db), "--port", "0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("a read node without --default-deny started serving")
    assert result.returncode != 0
    assert "--default-deny" in result.stderr


# -- the cluster: real LiteFS, real Datasette, real HTTP -----------------------------


def test_fts3_tokenizer_burst_cannot_crash_a_read_node(cluster, control):
    """The attack as an outside probe ran it: plant a tokenizer from a
    made-up pointer on every SQL thread's connection, then search a
    published FTS4 table (before the sandbox, a segfault)."""
    db = team_db(cluster)
    db["probe_docs"].insert_all(
        [{"id": 1, "title": "LiteFS ships pages"}, {"id": 2, "title": "Datasette serves them"}], pk="id"
    )
    db["probe_docs"].enable_fts(["title"], fts_version="FTS4", create_triggers=True)
    db.close()
    control.publish("probe_docs")
    node = cluster.replicas[0]
    wait_until(lambda: httpx.get(f"{node.url}/public/probe_docs.json", timeout=5).status_code == 200)
    pid = cluster.supervisor.pid(node.datasette_service)
    query = f"{node.url}/public/-/query.json"

    leak = httpx.get(query, params={"sql": "select hex(fts3_tokenizer('simple'))"}, timeout=5)
    assert leak.status_code == 400 and "fts3_tokenizer" in leak.json()["error"] and not leak.json().get("rows")

    def plant(_):
        sql = "select fts3_tokenizer('simple', X'4141414141414141')"
        return httpx.get(query, params={"sql": sql}, timeout=10).status_code

    with ThreadPoolExecutor(12) as pool:
        planted = list(pool.map(plant, range(48)))
    # Refused by the sandbox, or (beyond the SQL slots) not even run.
    assert 400 in planted and set(planted) <= {400, 429}
    for _ in range(6):  # every SQL thread
        assert [r["id"] for r in rows(node.url, "probe_docs", _search="pages")] == [1]
    assert cluster.supervisor.running(node.datasette_service)
    assert cluster.supervisor.pid(node.datasette_service) == pid, "the read node's Datasette was restarted"


def test_parked_waits_and_slow_sql_leave_table_pages_fast(cluster):
    """Issue 10's load, bounded: parked bookmark waits beyond the cap and
    slow visitor SQL beyond its slots, while someone reads table pages. The
    pages must stay close to their unloaded speed, measured here first."""
    node = cluster.replicas[1]
    conf = Settings.from_env()
    page = f"{node.url}/public/airports.json"
    far = cluster.public_pos().txid + 10**6
    waits = conf.max_bookmark_waits + 16

    async def scenario():
        limits = httpx.Limits(max_connections=waits + 64, max_keepalive_connections=waits + 64)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:

            async def timed(request):
                started = time.monotonic()
                response = await request
                return response, time.monotonic() - started

            async def read_pages(n: int) -> list[float]:
                took = []
                for i in range(n):
                    response, seconds = await timed(client.get(page, params={"_size": 20, "_next": str(i)}))
                    assert response.status_code == 200
                    took.append(seconds)
                return took

            async def load_stat(name: str) -> int:
                return (await client.get(f"{node.url}/-/replication.json")).json()[name]

            baseline = await read_pages(40)

            parked = [
                asyncio.create_task(timed(client.get(page, params={"_txid": far, "_size": 1})))
                for _ in range(waits)
            ]
            deadline = time.monotonic() + 10
            while await load_stat("bookmark_waits") < conf.max_bookmark_waits:
                assert time.monotonic() < deadline, "the bookmark waits never parked"
                await asyncio.sleep(0.02)

            stop = asyncio.Event()
            sql_statuses: list[tuple[int, str | None]] = []

            async def hostile_sql():
                while not stop.is_set():
                    response = await client.get(f"{node.url}/public/-/query.json", params={"sql": f"select {ENDLESS}"})
                    sql_statuses.append((response.status_code, response.headers.get("retry-after")))
                    if response.status_code == 429:
                        await asyncio.sleep(0.2)  # hostile, but not a tight loop on two cores

            hostile = [asyncio.create_task(hostile_sql()) for _ in range(24)]
            while await load_stat("custom_sql") < conf.max_sql_concurrency:
                assert time.monotonic() < deadline, "the slow SQL never ran"
                await asyncio.sleep(0.02)
            loaded = await read_pages(40)
            stop.set()
            await asyncio.gather(*hostile)
            return baseline, loaded, await asyncio.gather(*parked), sql_statuses

    baseline, loaded, parked, sql_statuses = asyncio.run(scenario())
    base_p50, load_p50 = statistics.median(baseline), statistics.median(loaded)
    print(
        f"\ntable page p50 {base_p50 * 1000:.1f} ms unloaded, {load_p50 * 1000:.1f} ms under load"
        f" (max {max(loaded) * 1000:.1f} ms); {len(parked)} bookmark waits, {len(sql_statuses)} SQL requests"
    )
    assert load_p50 < 10 * base_p50 + 0.2  # before the guards: timeouts after 30 s

    statuses = [r.status_code for r, _ in parked]
    assert statuses.count(504) == conf.max_bookmark_waits and statuses.count(503) == waits - conf.max_bookmark_waits
    assert all(r.headers["retry-after"] == "1" for r, _ in parked)
    # The parked waits ended on time: none overran its own limit.
    waited = [seconds for r, seconds in parked if r.status_code == 504]
    assert min(waited) >= conf.bookmark_timeout and max(waited) < conf.bookmark_timeout + 3.0, max(waited)

    refused = [retry for code, retry in sql_statuses if code == 429]
    assert refused and set(refused) == {"1"}
    assert {code for code, _ in sql_statuses} <= {400, 429}  # cut at the time limit, or refused

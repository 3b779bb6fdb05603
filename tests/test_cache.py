"""A read node answers a repeated read from memory, and never past its TXID:
the same bytes again while the position stays, the new data (or the 403)
as soon as it moves, and nothing kept that is a visitor's own (cookies,
credentials, their SQL) or the node's state (``/-/replication.json``).

Two layers: the read node's Datasette in-process on a plain public.db (its
position moved by hand, as LiteFS moves it), and the shared cluster.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import sqlite3

import httpx
import pytest
from datasette import hookimpl
from datasette.plugins import pm

from broadsheet.config import ConfigError
from broadsheet.litefs import Pos
from conftest import create_table, settle
from primary import store
from replica.cache import ResponseCache, Stored
from replica.settings import Settings

# The in-process read node and its public.db, as the hostile-visitor tests build them.
from replica.guards import guards
from test_hostile import eventually, get, in_loop, public_db, read_node, set_pos  # noqa: F401

# Positions of these tests' own: the node's listing of public tables is
# remembered per position, across Datasette instances in one process.
BASE = 7000


async def cache_stats(ds) -> dict:
    return (await get(ds, "/-/replication.json")).json()["cache"]


# -- in-process ---------------------------------------------------------------------


@in_loop
async def test_a_repeated_read_is_served_from_memory_until_the_position_moves(read_node, public_db):
    set_pos(public_db, BASE + 1)
    ds = read_node()
    first = await get(ds, "/public/docs.json", _size=3, _shape="objects")
    assert first.status_code == 200
    stats = await cache_stats(ds)
    assert (stats["hits"], stats["misses"], stats["entries"]) == (0, 1, 1)
    assert len(first.content) < stats["bytes"] <= stats["max_bytes"] == 64 * 1024 * 1024
    again = await get(ds, "/public/docs.json", _size=3, _shape="objects")
    assert again.content == first.content and again.headers == first.headers
    assert (await cache_stats(ds))["hits"] == 1
    # Proof that SQLite was not asked: the file changes under the node, its
    # position does not (LiteFS never does this), and the page stays.
    conn = sqlite3.connect(public_db)
    with conn:
        conn.execute("UPDATE docs SET title = 'changed' WHERE id = 0")
    conn.close()
    assert (await get(ds, "/public/docs.json", _size=3, _shape="objects")).content == first.content
    # The position moves: no older entry is served, the new data is.
    set_pos(public_db, BASE + 2)
    moved = await get(ds, "/public/docs.json", _size=3, _shape="objects")
    assert moved.json()["rows"][0]["title"] == "changed"
    assert moved.headers["broadsheet-txid"] == str(BASE + 2) and moved.headers["etag"] != first.headers["etag"]
    stats = await cache_stats(ds)
    assert (stats["hits"], stats["misses"], stats["entries"]) == (2, 2, 1)
    # HTML pages too.
    page = await get(ds, "/public/docs")
    assert (await get(ds, "/public/docs")).content == page.content
    assert (await cache_stats(ds))["hits"] == 3


@in_loop
async def test_a_table_no_longer_public_is_403_though_its_page_was_cached(read_node, public_db):
    set_pos(public_db, BASE + 11)
    ds = read_node()
    assert (await get(ds, "/public/places.json")).status_code == 200
    assert (await get(ds, "/public/places.json")).status_code == 200
    assert (await cache_stats(ds))["hits"] == 1
    conn = sqlite3.connect(public_db)
    with conn:
        conn.execute("DELETE FROM _public_tables WHERE table_name = 'places'")
    conn.close()
    set_pos(public_db, BASE + 12)
    for _ in range(2):
        assert (await get(ds, "/public/places.json")).status_code == 403
    assert (await cache_stats(ds))["hits"] == 1


@in_loop
async def test_a_position_sqlite_does_not_show_yet_is_never_kept(read_node, public_db):
    """LiteFS sets a database's position a moment before SQLite readers can
    see the transaction. A request in that moment reads the old data: it is
    served (LiteFS will show the new data in a moment), but never kept under
    the new position, so the unpublish arriving under it is a 403 at once."""
    conn = sqlite3.connect(public_db)
    with conn:
        conn.execute("CREATE TABLE _public_txid (id INTEGER PRIMARY KEY CHECK (id = 1), txid INTEGER NOT NULL)")
        conn.execute("INSERT INTO _public_txid VALUES (1, ?)", (BASE + 41,))
    set_pos(public_db, BASE + 41)
    ds = read_node()
    assert (await get(ds, "/public/places.json")).status_code == 200
    set_pos(public_db, BASE + 42)  # LiteFS's position moved; what SQLite shows has not
    node = guards(ds)
    started = asyncio.get_running_loop().time()
    assert (await get(ds, "/public/places.json")).status_code == 200
    assert asyncio.get_running_loop().time() - started >= 0.2  # it waited for SQLite, boundedly
    assert (await cache_stats(ds))["entries"] == 1  # only the one made at BASE + 41
    # Asked again at that position: not waited for twice, and still not kept.
    started = asyncio.get_running_loop().time()
    assert (await get(ds, "/public/places.json")).status_code == 200
    assert asyncio.get_running_loop().time() - started < 0.2
    assert node.unconfirmed_at == Pos(BASE + 42, 0xC0FFEE + BASE + 42)
    # Now SQLite shows the transaction: places unpublished.
    with conn:
        conn.execute("DELETE FROM _public_tables WHERE table_name = 'places'")
        conn.execute("UPDATE _public_txid SET txid = ?", (BASE + 43,))
    conn.close()
    set_pos(public_db, BASE + 43)
    for _ in range(2):
        assert (await get(ds, "/public/places.json")).status_code == 403
    assert (await get(ds, "/public/docs.json")).status_code == 200
    assert (await get(ds, "/public/docs.json")).status_code == 200
    assert (await cache_stats(ds))["hits"] == 1 and node.visible_at.txid == BASE + 43


@in_loop
async def test_what_is_never_kept(read_node, public_db):
    set_pos(public_db, BASE + 21)
    ds = read_node(BROADSHEET_CACHE_MAX_ENTRY=900)

    async def twice(path, headers=None, **params):
        for _ in range(2):
            response = await ds.client.get(path, params=params, headers=headers or {})
        return response

    # A visitor's own: a cookie, credentials, their SQL (which may call random()).
    assert (await twice("/public/docs.json", {"Cookie": "ds_actor=forged"}, _size=1)).status_code == 200
    assert (await twice("/public/docs.json", {"Authorization": "Bearer dstok_nope"}, _size=1)).status_code in (
        200, 401, 403,
    )
    assert (await twice("/public/docs.json", _where="id < 3")).status_code == 200
    assert (await twice("/public/-/query.json", sql="select random()")).status_code == 200
    # The node's own store.
    await twice("/-/replication.json")
    await twice("/-/versions.json")
    # Anything but a 200: a table that is not public, a visitor's mistake.
    assert (await twice("/public/hidden.json")).status_code == 403
    assert (await twice("/public/places.json", _facet="no_such_column")).status_code == 400
    # Bigger than BROADSHEET_CACHE_MAX_ENTRY (here 900 bytes): a streamed CSV, a big page.
    big = await twice("/public/docs.csv", _stream="1", _size="max")
    assert big.status_code == 200 and len(big.content) > 900
    assert len((await twice("/public/docs.json", _size="max")).content) > 900
    # HEAD is Datasette's.
    await ds.client.head("/public/docs.json")
    # Looked up (the 403s, the 400s and the big ones: misses), never kept.
    stats = await cache_stats(ds)
    assert (stats["hits"], stats["misses"], stats["entries"], stats["bytes"]) == (0, 8, 0, 0)
    # While a small one is kept.
    await twice("/public/countries.csv")
    assert (await cache_stats(ds))["hits"] == 1


@in_loop
async def test_host_and_accept_are_part_of_the_key(read_node, public_db):
    set_pos(public_db, BASE + 31)
    ds = read_node()
    pages = {}
    for host in ("a.example", "b.example"):
        for _ in range(2):
            response = await ds.client.get("/public/docs.json?_size=2", headers={"Host": host})
            pages[host] = response.json()["next_url"]
    # Datasette builds its links from Host: each host gets its own.
    assert pages["a.example"].startswith("http://a.example/") and pages["b.example"].startswith("http://b.example/")
    stats = await cache_stats(ds)
    assert (stats["hits"], stats["entries"]) == (2, 2)
    await ds.client.get("/public/docs.json?_size=2", headers={"Host": "a.example", "Accept": "application/json"})
    assert (await cache_stats(ds))["entries"] == 3


@in_loop
async def test_bookmarks_and_etags_work_as_before(read_node, public_db):
    set_pos(public_db, BASE + 41)
    ds = read_node(BROADSHEET_BOOKMARK_TIMEOUT=0.3)
    first = await get(ds, "/public/docs.json", _size=2)
    # A bookmark the node has is served from memory at the node's position;
    # one it does not have waits and times out, whatever is kept.
    held = await ds.client.get("/public/docs.json?_size=2", headers={"Broadsheet-Min-Txid": str(BASE + 41)})
    assert held.content == first.content and (await cache_stats(ds))["hits"] == 1
    late = await ds.client.get("/public/docs.json?_size=2", headers={"Broadsheet-Min-Txid": str(BASE + 42)})
    assert late.status_code == 504
    # An ETag of this position is a 304, from the kept entry (which proves
    # the page passed the node's rules at this position) ...
    not_modified = await ds.client.get("/public/docs.json?_size=2", headers={"If-None-Match": first.headers["etag"]})
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["etag"] == first.headers["etag"]
    assert (await cache_stats(ds))["hits"] == 2
    # ... or, for a page not kept, after those rules: never a 304 for a
    # table that is not public, whatever ETag is sent.
    other = await ds.client.get("/public/places.json?_size=1", headers={"If-None-Match": first.headers["etag"]})
    assert other.status_code == 304 and other.headers["etag"] == first.headers["etag"]
    hidden = await ds.client.get("/public/hidden.json", headers={"If-None-Match": first.headers["etag"]})
    assert hidden.status_code == 403
    # Writes are still refused.
    assert (await ds.client.post("/public/docs/-/insert", json={"row": {"id": 99}})).status_code == 405


@in_loop
async def test_a_kept_page_never_outlives_its_txid(read_node, public_db):
    """Whatever is kept, a request is answered at the position it is served
    at: a bookmark for a newer TXID waits for it and gets the new page, an
    ETag of an older position gets the new page, not a 304."""
    set_pos(public_db, BASE + 61)
    ds = read_node(BROADSHEET_BOOKMARK_TIMEOUT=10)
    old = await get(ds, "/public/docs.json", _size=1, _shape="objects")
    assert (await get(ds, "/public/docs.json", _size=1, _shape="objects")).content == old.content
    assert (await cache_stats(ds))["hits"] == 1
    conn = sqlite3.connect(public_db)
    with conn:
        conn.execute("UPDATE docs SET title = 'moved on' WHERE id = 0")
    conn.close()
    # Parked on a bookmark while the old page is kept; LiteFS moves the position.
    waiting = asyncio.create_task(
        ds.client.get("/public/docs.json?_size=1&_shape=objects", headers={"Broadsheet-Min-Txid": str(BASE + 62)})
    )
    await eventually(lambda: guards(ds).position.waiting == 1, message="the bookmark to wait")
    set_pos(public_db, BASE + 62)
    new = await asyncio.wait_for(waiting, 5)
    assert new.status_code == 200 and new.json()["rows"][0]["title"] == "moved on"
    assert new.headers["broadsheet-txid"] == str(BASE + 62)
    # The old ETag names a position the node has left: the new page, whole.
    again = await ds.client.get("/public/docs.json?_size=1&_shape=objects", headers={"If-None-Match": old.headers["etag"]})
    assert again.status_code == 200 and again.json()["rows"][0]["title"] == "moved on"
    assert again.headers["etag"] == new.headers["etag"] != old.headers["etag"]
    stats = await cache_stats(ds)
    assert (stats["hits"], stats["entries"]) == (2, 1)


@in_loop
async def test_the_same_request_arriving_while_it_is_made_waits_for_it(read_node, public_db):
    """Right after the TXID moves, everyone asks for the same page at once:
    one request asks SQLite, the others get its response, byte for byte.
    What cannot be kept (too big, a 403) each request makes for itself."""
    set_pos(public_db, BASE + 81)
    ds = read_node(BROADSHEET_CACHE_MAX_ENTRY=2000)
    together = await asyncio.gather(*(get(ds, "/public/docs.json", _size=5) for _ in range(8)))
    assert {r.status_code for r in together} == {200}
    assert len({r.content for r in together}) == 1
    stats = await cache_stats(ds)
    assert (stats["misses"], stats["hits"], stats["entries"]) == (1, 7, 1)
    big = await asyncio.gather(*(get(ds, "/public/docs.json", _size="max") for _ in range(4)))
    assert {r.status_code for r in big} == {200} and len(big[0].content) > 2000
    hidden = await asyncio.gather(*(get(ds, "/public/hidden.json") for _ in range(4)))
    assert {r.status_code for r in hidden} == {403}
    stats = await cache_stats(ds)
    assert (stats["misses"], stats["hits"], stats["entries"]) == (9, 7, 1)


@in_loop
async def test_the_position_file_is_read_afresh_on_every_request(read_node, public_db):
    """The node keeps LiteFS's ``-pos`` file open (one read per request, no
    open through FUSE): every move of the position shows on the next request."""
    ds = read_node()
    for txid in range(BASE + 71, BASE + 76):
        set_pos(public_db, txid)
        assert (await get(ds, "/public/docs.json", _size=1)).headers["broadsheet-txid"] == str(txid)
    watcher = guards(ds).position
    assert await watcher.fresh() == Pos.read(public_db)


@in_loop
async def test_a_cache_of_0_bytes_keeps_nothing(read_node, public_db):
    set_pos(public_db, BASE + 51)
    ds = read_node(BROADSHEET_CACHE_BYTES=0)
    for _ in range(3):
        assert (await get(ds, "/public/docs.json", _size=1)).status_code == 200
    stats = await cache_stats(ds)
    assert (stats["hits"], stats["misses"], stats["entries"]) == (0, 0, 0)


def test_least_recently_used_goes_first_and_old_positions_are_dropped():
    entry = Stored(200, ((b"content-type", b"text/plain"),), b"x" * 1000)
    size = entry.size + 1  # with its key, one letter
    cache = ResponseCache(max_bytes=3 * size, max_entry=10**6)
    here, later = Pos(5, 1), Pos(6, 2)
    for key in ("a", "b", "c"):
        assert cache.get(here, (key,)) is None
        cache.put(here, (key,), entry)
    assert cache.get(here, ("a",)) is entry  # now the most recent
    cache.put(here, ("d",), entry)
    assert cache.get(here, ("b",)) is None and cache.get(here, ("a",)) is entry
    assert cache.stats().entries == 3 and cache.stats().bytes == 3 * size
    # A response made before the cache moved on is not kept under any position.
    assert cache.get(later, ("a",)) is None
    cache.put(here, ("late",), entry)
    assert cache.stats().entries == 0 and cache.get(later, ("late",)) is None
    assert cache.get(here, ("late",)) is None


@pytest.mark.parametrize("name", ["BROADSHEET_CACHE_BYTES", "BROADSHEET_CACHE_MAX_ENTRY"])
def test_cache_settings_are_bytes(name):
    assert Settings.from_env({name: "0"}) is not None
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: "-1"})
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: "64MiB"})


# -- the cluster --------------------------------------------------------------------


def _stats(node) -> dict:
    return httpx.get(f"{node.url}/-/replication.json", timeout=5).json()["cache"]


def _hit(node, path: str, **kwargs) -> tuple[httpx.Response, httpx.Response]:
    """Two GETs of ``path`` at one position, the second a cache hit. (The
    position may move between them: then try again.)"""
    for _ in range(20):
        first = httpx.get(f"{node.url}{path}", timeout=5, **kwargs)
        hits = _stats(node)["hits"]
        second = httpx.get(f"{node.url}{path}", timeout=5, **kwargs)
        if first.headers["broadsheet-txid"] == second.headers["broadsheet-txid"]:
            assert _stats(node)["hits"] == hits + 1
            return first, second
    raise AssertionError("the position never stayed still for two requests")


@pytest.fixture(scope="module")
def stories(cluster, control):
    create_table(cluster, "cache_stories", [{"id": i, "headline": f"story {i}"} for i in range(20)])
    control.publish("cache_stories")
    cluster.wait_for_replicas()
    return "cache_stories"


def test_repeated_read_on_a_read_node_is_a_hit_with_the_same_bytes(cluster, stories):
    for node in cluster.replicas:
        first, second = _hit(node, f"/public/{stories}.json?_size=5")
        assert second.status_code == 200 and second.content == first.content
        assert second.headers["etag"] == first.headers["etag"]
        stats = _stats(node)
        assert stats["entries"] >= 1 and stats["bytes"] > len(first.content)


def test_a_write_shows_on_the_next_read_never_the_cached_one(cluster, db, stories):
    node = cluster.replicas[0]
    path = f"/public/{stories}.json?id=3&_shape=objects"
    before, _ = _hit(node, path)
    assert before.json()["rows"][0]["headline"] == "story 3"
    with store.immediate(db):
        db.execute(f"UPDATE {stories} SET headline = 'story 3, updated' WHERE id = 3")
    settle(cluster)
    cluster.wait_for_replicas()
    after = httpx.get(f"{node.url}{path}", timeout=5)
    assert after.json()["rows"][0]["headline"] == "story 3, updated"
    assert int(after.headers["broadsheet-txid"]) > int(before.headers["broadsheet-txid"])


def test_an_unpublished_table_is_403_though_its_page_was_cached(cluster, control):
    create_table(cluster, "cache_leaving", [{"id": 1, "headline": "soon private"}])
    control.publish("cache_leaving")
    cluster.wait_for_replicas()
    for node in cluster.replicas:
        _hit(node, "/public/cache_leaving.json")
    control.publish("cache_leaving", public=False)
    cluster.wait_for_replicas()
    for node in cluster.replicas:
        for path in ("/public/cache_leaving.json", "/public/cache_leaving"):
            assert httpx.get(f"{node.url}{path}", timeout=5).status_code == 403


def test_credentials_and_the_status_page_are_never_cached_and_304_still_works(cluster, stories):
    node = cluster.replicas[1]
    path = f"{node.url}/public/{stories}.json?_size=2"
    _hit(node, f"/public/{stories}.json?_size=2")
    before = _stats(node)
    for headers in ({"Cookie": "ds_actor=forged"}, {"Authorization": "Bearer dstok_forged"}):
        for _ in range(2):
            httpx.get(path, headers=headers, timeout=5)
    for _ in range(2):
        httpx.get(f"{node.url}/-/replication.json", timeout=5)
    after = _stats(node)
    assert (after["hits"], after["misses"]) == (before["hits"], before["misses"])
    etag = httpx.get(path, timeout=5).headers["etag"]
    not_modified = httpx.get(path, headers={"If-None-Match": etag}, timeout=5)
    assert not_modified.status_code == 304 and not_modified.content == b"" and not_modified.headers["etag"] == etag


async def _stalled_reader(ds, path: str, query: bytes):
    """A visitor that asks for ``path`` and never reads: its server's send
    blocks (as uvicorn's does while the socket's buffer is full, which an
    earlier response on the same connection may have filled), from the
    response's start. Returns the task and an event set once it is sent to."""
    app = ds.app()
    reached = asyncio.Event()
    never = asyncio.Event()

    async def receive():
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        reached.set()
        await never.wait()

    scope = {
        "type": "http", "http_version": "1.1", "method": "GET", "scheme": "http", "root_path": "",
        "path": path, "raw_path": path.encode(), "query_string": query,
        "headers": [(b"host", b"localhost"), (b"accept", b"*/*"), (b"accept-encoding", b"identity")], "client": ("127.0.0.1", 1), "server": ("localhost", 80),
    }
    return asyncio.create_task(app(scope, receive, send)), reached


@in_loop
async def test_a_visitor_who_never_reads_does_not_hold_up_the_same_request(read_node, public_db):
    """The same request arriving while a response is made waits for it, but
    not for its sending: a visitor that stops reading (a slow or hostile
    client) holds up no one else, whether the response is kept or not."""
    set_pos(public_db, BASE + 91)
    ds = read_node(BROADSHEET_CACHE_MAX_ENTRY=2000)
    for query in (b"_size=2", b"_size=max"):
        stalled, reached = await _stalled_reader(ds, "/public/docs.json", query)
        await asyncio.wait_for(reached.wait(), 10)
        others = await asyncio.wait_for(
            asyncio.gather(
                *(ds.client.get(f"/public/docs.json?{query.decode()}", headers={"Accept-Encoding": "identity"})
                  for _ in range(3))
            ),
            10,
        )
        assert {r.status_code for r in others} == {200}
        assert len({r.content for r in others}) == 1
        assert (await cache_stats(ds))["entries"] == 1  # the small one, kept whoever reads it
        stalled.cancel()


@in_loop
async def test_a_view_that_is_not_a_function_of_the_data_is_never_kept(read_node, public_db):
    """A published view may call random() or read the clock: its page
    changes while the position stays, so it is made afresh for every
    request (a view that reads only the data is kept like a table)."""
    conn = sqlite3.connect(public_db)
    with conn:
        conn.execute("CREATE VIEW lucky AS SELECT abs(random()) AS draw")
        conn.execute("CREATE VIEW lucky_again AS SELECT draw FROM lucky")
        conn.execute("CREATE VIEW today AS SELECT DateTime ('now', 'subsec') AS now")
        conn.executemany("INSERT INTO _public_tables (table_name) VALUES (?)", [("lucky",), ("lucky_again",), ("today",)])
    conn.close()
    set_pos(public_db, BASE + 101)
    ds = read_node()
    for view in ("lucky", "lucky_again"):
        draws = {(await get(ds, f"/public/{view}.json", _shape="array")).json()[0]["draw"] for _ in range(4)}
        assert len(draws) == 4
    pages = [await get(ds, "/public/today.json", _shape="array") for _ in range(2)]
    assert {p.status_code for p in pages} == {200}
    stats = await cache_stats(ds)
    assert (stats["hits"], stats["entries"]) == (0, 0)
    await get(ds, "/public/countries.json")
    await get(ds, "/public/countries.json")
    assert (await cache_stats(ds))["hits"] == 1


def test_sqlite_says_which_views_call_what_changes(tmp_path):
    """The functions a view calls are SQLite's to say (the authorizer, as
    it compiles the view and every view it reads): a column named like one
    (``date``) is no call, so its view is kept like a table."""
    from replica.volatile import volatile_views

    path = tmp_path / "public.db"
    conn = sqlite3.connect(path)
    with conn:
        conn.executescript(
            """
            CREATE TABLE events (id INTEGER PRIMARY KEY, date TEXT, "time" TEXT);
            CREATE VIEW plain AS SELECT id, date, "time" FROM events;
            CREATE VIEW dated AS SELECT id, date(date) AS day FROM events;
            CREATE VIEW counted AS SELECT count(*) AS n, max(date) AS last FROM events;
            CREATE VIEW ticking AS SELECT id, CURRENT_TIMESTAMP AS at FROM events;
            CREATE VIEW ticking_too AS SELECT * FROM ticking;
            CREATE VIEW "a ""quoted"" draw" AS SELECT randomblob(4) AS r;
            """
        )
    conn.close()
    views = ["plain", "dated", "counted", "ticking", "ticking_too", 'a "quoted" draw']
    assert volatile_views(path, views) == {"dated", "ticking", "ticking_too", 'a "quoted" draw'}


def test_a_position_file_kept_open_on_litefs_shows_every_move(cluster, db, stories):
    """Through LiteFS's FUSE mount, the ``-pos`` file held open (as each
    read node holds it, read with pread and not opened again) shows each
    new position as soon as a fresh open does: no page cache in between."""
    from replica.position import PositionWatcher

    node = cluster.replicas[0]
    for watched in (node.public_db, cluster.primary.public_db):
        watcher = PositionWatcher(watched, max_waits=1)
        assert asyncio.run(watcher.fresh()) == Pos.read(watched)
        for i in range(3):
            before = Pos.read(watched)
            with store.immediate(db):
                db.execute(f"UPDATE {stories} SET headline = 'kept open {i}' WHERE id = 5")
            settle(cluster)
            cluster.wait_for_replicas(before.txid + 1)
            fresh = Pos.read(watched)
            assert fresh.txid > before.txid
            assert asyncio.run(watcher.fresh()) == fresh
        watcher._close()


@in_loop
async def test_a_page_cut_short_by_a_time_limit_is_never_kept(read_node, public_db):
    """Datasette answers 200 when a facet, a count or an autocomplete runs out
    of time (``facets_timed_out``, an autocomplete with no rows): a page that depends on
    how busy the node was is made again next time, not kept for the TXID."""
    conn = sqlite3.connect(public_db)
    with conn:
        conn.execute(
            "CREATE VIEW slow AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 100000000)"
            " SELECT x, x % 3 AS k FROM c"
        )
        conn.execute("INSERT INTO _public_tables (table_name) VALUES ('slow')")
    conn.close()
    set_pos(public_db, BASE + 111)
    ds = read_node()
    for _ in range(2):
        page = await get(ds, "/public/slow.json", _size=1, _facet="k", _extra="facets_timed_out")
        assert page.status_code == 200
        assert page.json()["facets_timed_out"] == ["k"]
    stats = await cache_stats(ds)
    assert (stats["hits"], stats["entries"]) == (0, 0)
    # A page of the same view that ran to the end is kept.
    for _ in range(2):
        assert (await get(ds, "/public/slow.json", _size=1, _nocount=1)).status_code == 200
    assert (await cache_stats(ds))["hits"] == 1


def test_a_position_file_whose_open_handle_died_is_opened_again_at_once(tmp_path):
    """LiteFS restarting under a read node leaves its kept ``-pos`` handle
    dead (the old FUSE connection): the next read opens the file again and
    answers, rather than failing that request."""
    from replica.position import PositionWatcher

    db = tmp_path / "public.db"
    set_pos(db, 5)
    watcher = PositionWatcher(db, max_waits=1)
    assert asyncio.run(watcher.fresh()).txid == 5
    os.close(watcher._fd)  # the handle dies under the watcher
    set_pos(db, 6)
    assert asyncio.run(watcher.fresh()).txid == 6
    watcher._close()


class _Gzip:
    """A team's read-node plugin that compresses responses for visitors who
    accept it (as datasette-gzip does), inside the read node's wrapper."""

    @staticmethod
    @hookimpl
    def asgi_wrapper(datasette):
        def wrap(app):
            async def gzipping(scope, receive, send):
                accepts = dict(scope.get("headers", [])).get(b"accept-encoding", b"")
                if scope["type"] != "http" or b"gzip" not in accepts:
                    return await app(scope, receive, send)
                start = {}

                async def compress(message):
                    if message["type"] == "http.response.start":
                        start.update(message)
                        return
                    body = gzip.compress(message.get("body", b""))
                    headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
                    headers += [(b"content-encoding", b"gzip"), (b"vary", b"Accept-Encoding")]
                    if b"x-vary" in dict(scope["headers"]):
                        headers[-1] = (b"vary", b"X-Vary")
                    await send({**start, "headers": headers})
                    await send({**message, "body": body})

                return await app(scope, receive, compress)

            return gzipping

        return wrap


@in_loop
async def test_a_response_is_kept_only_for_the_headers_it_varies_on(read_node, public_db):
    """A plugin may make a response depend on another header (``Vary``):
    a visitor who does not accept gzip never gets the gzipped one, and a
    response that varies on a header the key does not hold is not kept."""
    pm.register(_Gzip, name="test-gzip")
    try:
        set_pos(public_db, BASE + 121)
        ds = read_node()
        zipped = await ds.client.get("/public/docs.json?_size=1", headers={"Accept-Encoding": "gzip"})
        assert zipped.headers["content-encoding"] == "gzip"
        plain = await ds.client.get("/public/docs.json?_size=1", headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in plain.headers and plain.json()["rows"]
        again = await ds.client.get("/public/docs.json?_size=1", headers={"Accept-Encoding": "gzip"})
        assert again.headers["content-encoding"] == "gzip" and again.json() == zipped.json()
        assert (await cache_stats(ds))["hits"] == 1
        # A response that varies on a header the key does not hold is not kept.
        for _ in range(2):
            other = await ds.client.get("/public/docs.json?_size=2", headers={"Accept-Encoding": "gzip", "X-Vary": "1"})
        assert "X-Vary" in other.headers["vary"]
        assert (await cache_stats(ds))["hits"] == 1
    finally:
        pm.unregister(name="test-gzip")

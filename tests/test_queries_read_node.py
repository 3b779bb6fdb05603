"""Saved queries on a read node, in-process: the publisher (on plain files)
makes public.db, the read node's Datasette serves its saved queries at
/public/NAME, .json and .csv, with parameters, like any visitor's SQL
(sandbox, time limit, slots, never cached), and nothing else: an unknown or
withdrawn query is 403, a write 405, a visitor's mistake a 4xx."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from datasette.app import Datasette
from datasette.plugins import pm

import replica.plugin
import replica.queries
from broadsheet.litefs import Pos
from primary import store
from primary.store import queries
from replica.guards import guards
from replica.settings import settings
from test_hostile import in_loop
from test_queries_publisher import MARKER, build_primary
from test_queries_publisher import save as save_query

TIME_LIMIT_MS = 300
ENDLESS = "with recursive c(x) as (select 1 union all select x + 1 from c) select count(*) from c"


@pytest.fixture
def primary(tmp_path):
    """data.db with a public and a private table, a publisher, and a way
    to save a query and run the next cycle."""
    conn, publisher, public = build_primary(tmp_path)

    def save(name, sql, **kw):
        save_query(conn, public, name, sql, **kw)
        publisher.run_cycle()

    yield conn, publisher, public, save
    publisher.close()
    conn.close()


@pytest.fixture
def read_node(primary, monkeypatch):
    _, _, public, _ = primary
    added = [m for m in (replica.plugin, replica.queries) if not pm.is_registered(m)]
    for module in added:
        pm.register(module, name=module.__name__)
    monkeypatch.setenv("BROADSHEET_PUBLIC_DB", public)
    monkeypatch.setenv("BROADSHEET_MAX_SQL_CONCURRENCY", "2")
    settings.cache_clear()
    yield Datasette(
        [public], settings={"default_allow_sql": True, "sql_time_limit_ms": TIME_LIMIT_MS}, default_deny=True
    )
    for module in added:
        pm.unregister(module)
    settings.cache_clear()


@in_loop
async def test_a_saved_query_runs_with_its_parameter_as_html_json_and_csv(primary, read_node):
    *_, save = primary
    save("by_tz", "SELECT faa, name FROM airports WHERE tz = :tz ORDER BY faa", title="Airports by time zone")
    ds = read_node
    response = await ds.client.get("/public/by_tz.json", params={"tz": "-5", "_shape": "array"})
    assert response.status_code == 200
    assert response.json() == [{"faa": "EWR", "name": "Newark"}, {"faa": "JFK", "name": "John F Kennedy"}]
    csv = await ds.client.get("/public/by_tz.csv", params={"tz": "-8"})
    assert csv.status_code == 200 and csv.text.splitlines() == ["faa,name", "LAX,Los Angeles"]
    page = await ds.client.get("/public/by_tz", params={"tz": "-5"})
    assert page.status_code == 200 and "Airports by time zone" in page.text and "Newark" in page.text
    # Listed for anyone: on the database page and in Datasette's query list.
    listed = (await ds.client.get("/public/-/queries.json")).json()
    assert [q["name"] for q in listed["queries"]] == ["by_tz"]
    assert "by_tz" in (await ds.client.get("/public")).text


@in_loop
async def test_visitors_mistakes_are_4xx_and_unknown_queries_403(primary, read_node):
    *_, save = primary
    save("by_tz", "SELECT faa FROM airports WHERE tz = :tz")
    save("endless", ENDLESS)
    ds = read_node
    for params in ({}, {"tz": "abc"}, {"tz": "x" * 50_000}, {"tz": "\x00"}, {"tz": "-5", "_size": "nope"},
                   {"tz": "-5", "_timelimit": "99999999"}, {"other": "1"}):
        response = await ds.client.get("/public/by_tz.json", params=params)
        assert response.status_code < 500, (params, response.status_code)
    assert (await ds.client.get("/public/by_tz.json", params={"tz": "abc"})).json()["rows"] == []
    # Cut at the time limit: a 400, as for any visitor's SQL.
    assert (await ds.client.get("/public/endless.json")).status_code == 400
    for path in ("/public/nope", "/public/nope.json", "/public/planes", "/public/by_tz/-/definition"):
        assert (await ds.client.get(path)).status_code == 403, path
    assert (await ds.client.post("/public/by_tz", data={"tz": "-5"})).status_code == 405


@in_loop
async def test_a_withdrawn_or_removed_query_is_403_at_once(primary, read_node):
    conn, publisher, _, save = primary
    save("by_tz", "SELECT faa FROM airports WHERE tz = :tz")
    save("answer", "SELECT 42 AS answer")
    ds = read_node
    assert (await ds.client.get("/public/by_tz.json", params={"tz": "-5"})).status_code == 200
    store.set_public(conn, "airports", False, actor="bob")
    publisher.run_cycle()
    assert (await ds.client.get("/public/by_tz.json", params={"tz": "-5"})).status_code == 403
    assert (await ds.client.get("/public/answer.json")).status_code == 200
    queries.remove(conn, "answer", "bob")
    publisher.run_cycle()
    assert (await ds.client.get("/public/answer.json")).status_code == 403
    listed = (await ds.client.get("/public/-/queries.json")).json()
    assert listed["queries"] == []


@in_loop
async def test_saved_queries_hold_a_custom_sql_slot_and_are_never_cached(primary, read_node):
    _, _, public, save = primary
    save("answer", "SELECT 42 AS answer")
    # A position, as LiteFS keeps one: the TXID the publisher's last
    # transaction became (it records it in public.db). The cache works.
    (txid,) = sqlite3.connect(public).execute("SELECT txid FROM _public_txid").fetchone()
    with open(f"{public}-pos", "w") as fp:
        fp.write(str(Pos(txid, 0xC0FFEE)))
    ds = read_node
    node = guards(ds)
    for _ in range(2):
        assert (await ds.client.get("/public/answer.json")).status_code == 200
    assert node.responses.stats().hits == 0
    for _ in range(2):
        assert (await ds.client.get("/public/airports.json")).status_code == 200
    assert node.responses.stats().hits == 1  # while table pages are kept
    node.custom_sql.taken = node.custom_sql.limit  # every slot busy
    try:
        busy = await ds.client.get("/public/answer.json")
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert (await ds.client.get("/public/airports.json")).status_code == 200
    finally:
        node.custom_sql.taken = 0


@in_loop
async def test_datasettes_stored_query_pages_give_visitors_nothing_more(primary, read_node):
    """Datasette's own pages around stored queries: editing, storing,
    analysing and deleting are refused; listing and definitions show only
    what is public anyway."""
    *_, save = primary
    save("by_tz", "SELECT faa FROM airports WHERE tz = :tz")
    ds = read_node
    for path in (
        "/public/by_tz/-/edit", "/public/by_tz/-/update", "/public/by_tz/-/delete", "/public/-/queries/store",
        "/public/-/queries/analyze?sql=select+1", "/public/planes/-/definition", "/-/queries.json?q=planes",
        "/public/-/query/parameters?sql=select+:a",
    ):
        response = await ds.client.get(path)
        assert response.status_code < 500, (path, response.status_code)
        assert MARKER not in response.text, path
    for path in ("/public/by_tz/-/edit", "/public/by_tz/-/delete", "/public/-/queries/store", "/public/planes/-/definition"):
        assert (await ds.client.get(path)).status_code in (403, 404, 405), path
    everywhere = (await ds.client.get("/-/queries.json")).json()
    assert [q["name"] for q in everywhere["queries"]] == ["by_tz"]


@in_loop
async def test_requests_arriving_together_at_a_new_position_all_see_the_query(primary, read_node):
    _, _, public, save = primary
    ds = read_node
    for txid, name in ((3, "first"), (4, "second")):
        save(name, f"SELECT '{name}' AS which")
        with open(f"{public}-pos", "w") as fp:
            fp.write(str(Pos(txid, 0xC0FFEE + txid)))
        responses = await asyncio.gather(*(ds.client.get(f"/public/{name}.json?_shape=array&n={i}") for i in range(20)))
        # Served, or refused a slot (two at once): never 403, as if not yet public.
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 429} and 200 in statuses, statuses
        assert all(r.json() == [{"which": name}] for r in responses if r.status_code == 200)


@in_loop
async def test_an_unknown_format_or_a_bad_time_limit_is_a_4xx(primary, read_node):
    """Datasette asserts on a format it has no renderer for and calls int()
    on ?_timelimit=: both were 500s, on saved queries as on tables."""
    *_, save = primary
    save("by_tz", "SELECT faa FROM airports WHERE tz = :tz")
    ds = read_node
    for path in ("/public/by_tz", "/public/airports", "/public/-/query"):
        for ext in ("txt", "geojson", "JSON", "Csv"):
            response = await ds.client.get(f"{path}.{ext}", params={"tz": "-5", "sql": "select 1"})
            assert response.status_code == 404, (path, ext, response.status_code)
        for limit in ("abc", "1e3", "9" * 5000):
            response = await ds.client.get(f"{path}.json", params={"tz": "-5", "sql": "select 1", "_timelimit": limit})
            assert response.status_code == 400, (path, limit, response.status_code)
            assert "_timelimit" in response.json()["error"]
        # What Datasette reads as it means it still works.
        for params in ({}, {"_timelimit": "200"}, {"_timelimit": ""}):
            response = await ds.client.get(f"{path}.json", params={"tz": "-5", "sql": "select 1", **params})
            assert response.status_code == 200, (path, params, response.status_code)
        assert (await ds.client.get(f"{path}.csv", params={"tz": "-5", "sql": "select 1"})).status_code == 200
    # Routes under /-/ are Datasette's and plugins' own, whatever they end in.
    assert (await ds.client.get("/-/versions.json")).status_code == 200


@in_loop
async def test_a_request_with_very_many_parameters_is_refused_before_datasette_reads_them(primary, read_node):
    """Datasette parses the whole query string again for every parameter it
    looks up: a few thousand parameters held a read node's event loop for
    minutes. Beyond a bound they are a 400, on every page."""
    *_, save = primary
    save("by_tz", "SELECT faa FROM airports WHERE tz = :tz")
    ds = read_node
    many = "&".join(f"p{i}=1" for i in range(2000))
    for path in ("/public/by_tz.json", "/public/airports.json", "/public/-/query.json?sql=select+1&"):
        response = await ds.client.get(f"{path}{'' if path.endswith('&') else '?'}{many}")
        assert response.status_code == 400, (path, response.status_code)
        assert "parameters" in response.json()["error"]
    # A page with its filters, columns and facets is far from the bound.
    columns = "&".join(["_col=faa", "_col=name"] * 20)
    assert (await ds.client.get(f"/public/airports.json?tz=-5&{columns}")).status_code == 200
    assert (await ds.client.get("/public/by_tz.json", params={"tz": "-5"})).status_code == 200

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

import httpx
import pytest
import sqlite_utils
from datasette.app import Datasette
from datasette.plugins import pm

import replica.plugin
from replica.settings import settings

# Runs until Datasette's time limit cuts it.
ENDLESS = "(with recursive c(x) as (select 1 union all select x + 1 from c) select count(*) from c)"
TIME_LIMIT_MS = 300


def in_loop(test):
    """Run an async test in an event loop of its own."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return run


def build_public_db(path):
    """A public.db as the publisher leaves it: two published tables (one with
    an FTS4 index), one that is not published, and ``_public_tables``."""
    db = sqlite_utils.Database(path)
    db["docs"].insert_all(
        [{"id": i, "title": f"doc {i}", "body": f"hello world {i}" if i % 2 else f"goodbye {i}"} for i in range(40)],
        pk="id",
    )
    db["docs"].enable_fts(["title", "body"], fts_version="FTS4")
    db["places"].insert_all(
        [{"id": i, "name": f"place {i}", "country": ["uk", "fr", "de"][i % 3]} for i in range(30)], pk="id"
    )
    db["hidden"].insert({"id": 1, "secret": "never served"}, pk="id")
    db["_public_tables"].insert_all([{"table_name": "docs"}, {"table_name": "places"}], pk="table_name")
    db.close()
    return path


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

"""The team's Datasette plugins on read nodes (BROADSHEET_READ_NODE_PLUGINS):
a real plugin from the registry, datasette-cluster-map, draws the sample's
airports on a map on every read node, while the node still serves public
tables alone, read-only (private tables stay 403); a plugin that would widen
access stops the node at startup."""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import sys
from pathlib import Path

import httpx
import pytest
import sqlite_utils
from datasette.app import Datasette
from datasette.plugins import pm
from datasette.utils import StartupError

import replica.plugin
from broadsheet import plugins
from local.cluster import SAMPLE_PLUGINS, LocalCluster
from broadsheet.config import ConfigError
from conftest import status
from replica.node import ReadNode
from replica.settings import settings

sys.path.insert(0, str(Path(__file__).parent / "plugins"))


# -- in-process: what a plugin may not do ---------------------------------------


@pytest.fixture
def public_db(tmp_path, monkeypatch):
    path = tmp_path / "public.db"
    db = sqlite_utils.Database(path)
    db["airports"].insert({"faa": "JFK", "lat": 40.6, "lon": -73.8}, pk="faa")
    db["hidden"].insert({"id": 1, "secret": "never served"}, pk="id")
    db["_public_tables"].insert({"table_name": "airports"}, pk="table_name")
    db.close()
    monkeypatch.setenv("BROADSHEET_PUBLIC_DB", str(path))
    settings.cache_clear()
    yield path
    settings.cache_clear()


def start(public_db, *modules, after: tuple[str, ...] = ()) -> Datasette:
    """A read node's Datasette in-process, with the read-node plugin and
    ``modules`` (registered first, as Datasette loads the team's plugins
    before broadsheet registers its own; ``after``: registered after it)."""
    loaded = [importlib.import_module(name) for name in modules]
    for module in loaded:
        pm.register(module, name=module.__name__)
    ours = not pm.is_registered(replica.plugin)
    if ours:
        pm.register(replica.plugin, name="replica.plugin")
    for name in after:
        loaded.append(importlib.import_module(name))
        pm.register(loaded[-1], name=name)
    try:
        datasette = Datasette([str(public_db)], default_deny=True)
        asyncio.run(datasette.invoke_startup())
        return datasette
    finally:
        for module in loaded:
            pm.unregister(module)
        if ours:
            pm.unregister(replica.plugin)


def test_a_plugin_that_grants_access_stops_the_read_node(public_db):
    start(public_db)  # without it, it starts
    with pytest.raises(StartupError, match="a plugin allows view-table .* to anonymous"):
        start(public_db, "grant_everything")


def test_a_plugin_that_serves_another_database_stops_the_read_node(public_db):
    # Datasette runs the team's plugins' startup hooks after broadsheet's
    # own; the check that public.db is served alone must see what they did.
    with pytest.raises(StartupError, match="serve exactly one database, public.db"):
        start(public_db, "adds_a_database")


def test_a_plugin_that_wraps_requests_outside_the_rules_stops_the_read_node(public_db):
    # Loaded as the launcher loads it (before broadsheet's own), it wraps
    # inside the read node's rules; only registered later would it be outside.
    start(public_db, "wrap_outside")
    with pytest.raises(StartupError, match="plugin 'wrap_outside' wraps requests outside the read node's rules"):
        start(public_db, after=("wrap_outside",))


def test_bad_plugin_settings_stop_the_node_naming_the_variable(tmp_path):
    base = {"BROADSHEET_ROOT": str(tmp_path), "BROADSHEET_NODE_NAME": "n"}
    for env, message in [
        ({plugins.PLUGINS_VAR: "datasette-no-such-plugin-xyz"}, "not installed here: datasette-no-such-plugin-xyz"),
        ({plugins.PLUGINS_VAR: "httpx"}, "httpx is installed but is not a Datasette plugin"),
        ({plugins.PLUGINS_VAR: "--index-url=x"}, "is not a package name"),
        ({plugins.CONFIG_VAR: "[1, 2"}, "must be JSON or YAML"),
        ({plugins.CONFIG_VAR: '["datasette-cluster-map"]'}, "must map each plugin's name to its settings"),
    ]:
        with pytest.raises(ConfigError) as raised:
            ReadNode.from_env({**base, **env})
        assert message in str(raised.value) and next(iter(env)) in str(raised.value)
    node = ReadNode.from_env({**base, **SAMPLE_PLUGINS})
    assert plugins.load_list(plugins.requirements(node.plugins)) == "datasette-cluster-map,datasette-leaflet"


# -- on a real cluster -------------------------------------------------------------


@pytest.fixture(scope="module")
def mapped(tmp_path_factory):
    """A cluster whose read nodes run datasette-cluster-map, configured
    for the sample's airports (lat, lon), as `broadsheet up` starts it."""
    cluster = LocalCluster(tmp_path_factory.mktemp("mapped"), replicas=2, compress=False, replica_env=SAMPLE_PLUGINS)
    cluster.start()
    yield cluster
    cluster.stop()


def test_every_read_node_maps_airports_and_serves_nothing_more(mapped):
    for node in mapped.replicas:
        loaded = {p["name"] for p in httpx.get(f"{node.url}/-/plugins.json", timeout=5).json()}
        assert {"datasette-cluster-map", "datasette-leaflet", "replica.plugin"} <= loaded
        page = httpx.get(f"{node.url}/public/airports", timeout=10)
        assert page.status_code == 200
        assert 'window.DATASETTE_CLUSTER_MAP_LATITUDE_COLUMN = "lat"' in page.text
        script = re.search(r'src="(/-/static-plugins/datasette-cluster-map/[^"]+)"', page.text).group(1)
        assert httpx.get(f"{node.url}{script}", timeout=5).status_code == 200
        # What the plugin asks for its markers (a Datasette 0.64 `_extra`,
        # which 1.0 refuses on its own: replica/compat.py).
        markers = httpx.get(
            f"{node.url}/public/airports.json?_size=max&_labels=on&_extra=count&_extra=next_url&_shape=objects",
            timeout=10,
        )
        assert markers.status_code == 200, markers.text
        assert markers.json()["count"] == 1458 and markers.json()["next_url"]
        # Still only public tables, read-only.
        for path in ("/public/planes", "/public/planes.json", "/public/planes?_size=1&_shape=objects"):
            assert status(node.url, path) == 403, path
        assert "planes" not in httpx.get(f"{node.url}/public.json", timeout=5).text
        write = httpx.post(f"{node.url}/public/airports/-/insert", json={"row": {"faa": "XXX"}}, timeout=5)
        assert write.status_code == 405
        listed = json.loads(node.datasette_config.read_text())
        assert listed == {"plugins": {"datasette-cluster-map": {"latitude_column": "lat", "longitude_column": "lon"}}}


def test_the_map_renders_in_a_browser_on_a_read_node(mapped, tmp_path, record_property):
    """Headless Chromium on a read node's airports page: the plugin's map
    and its markers render (the map tiles come from the internet, which a
    test machine may not reach: they are refused here, so the markers are
    drawn over an empty map). The screenshot is the test's attachment."""
    from playwright.sync_api import expect, sync_playwright

    from test_browser import ARGS, CHROMIUM

    node = mapped.replicas[-1]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.set_default_timeout(15_000)
            page.route(re.compile(r"^https?://(?!127\.0\.0\.1)"), lambda route: route.abort())
            page.goto(f"{node.url}/public/airports", wait_until="domcontentloaded")
            expect(page.locator(".leaflet-container")).to_be_visible()
            markers = page.locator(".marker-cluster, .leaflet-marker-icon")
            expect(markers.first).to_be_visible()
            # The markers came from the table's JSON, as the plugin loads it.
            expect(page.get_by_text(re.compile(r"Showing 1,000 of 1,458"))).to_be_visible()
            shot = tmp_path / "read-node-airports-map.png"
            page.screenshot(path=str(shot), full_page=False)
            clusters = markers.count()
        finally:
            browser.close()
    assert clusters > 0 and shot.stat().st_size > 0
    record_property("screenshot", str(shot))
    print(f"\nscreenshot of {node.name}'s airports map ({clusters} markers): {shot}")


def test_plugins_for_datasette_0_64_get_the_extras_1_0_always_sends():
    from replica.compat import without_built_in_extras as strip

    asked = b"_size=max&_labels=on&_extra=count&_extra=next_url&_shape=objects"
    assert strip(asked) == b"_size=max&_labels=on&_extra=count&_shape=objects"
    assert strip(b"_extra=count,next_url") == strip(b"_extra=count%2Cnext_url") == b"_extra=count"
    assert strip(b"_extra=next") == b""
    # Everything else as the visitor sent it, byte for byte.
    assert strip(b"q=%C3%A9&_extra=next_url&x=\xe9+y") == b"q=%C3%A9&x=\xe9+y"
    assert strip(b"_extra=count&q=a+b") == b"_extra=count&q=a+b"


def test_the_local_cluster_maps_the_sample_unless_the_team_chose_plugins():
    from local.cluster import read_node_plugins

    said = []
    assert read_node_plugins(True, environ={}, say=said.append) == SAMPLE_PLUGINS  # installed: test extras
    assert read_node_plugins(False, environ={}, say=said.append) == {}
    chosen = {plugins.PLUGINS_VAR: "", plugins.CONFIG_VAR: ""}
    assert read_node_plugins(True, environ=chosen, say=said.append) == chosen  # none, by choice
    assert said == []  # nothing to install


def test_a_database_added_after_startup_is_not_served(public_db, tmp_path):
    # A plugin could add a database in a route, after the startup check:
    # the rule grants the one database that check saw, and nothing else.
    from datasette.database import Database

    extra = tmp_path / "extra.db"
    sqlite_utils.Database(extra)["notes"].insert({"body": "never served"})
    ours = not pm.is_registered(replica.plugin)
    if ours:
        pm.register(replica.plugin, name="replica.plugin")
    try:
        datasette = Datasette([str(public_db)], default_deny=True)

        async def visit():
            await datasette.invoke_startup()
            datasette.add_database(Database(datasette, path=str(extra)), name="extra")
            return [
                (await datasette.client.get(path)).status_code
                for path in ("/extra.json?sql=select+body+from+notes", "/extra/notes.json", "/extra", "/public/airports.json")
            ]

        assert asyncio.run(visit()) == [403, 403, 403, 200]
    finally:
        if ours:
            pm.unregister(replica.plugin)

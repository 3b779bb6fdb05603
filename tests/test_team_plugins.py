"""Packaged team plugins (BROADSHEET_TEAM_PLUGINS): datasette-upload-csvs,
installed from the package index (the test extras pin it), loaded by the
team's Datasette and by no read node; a CSV uploaded in headless Chromium
lands in data.db as a private table. A plugin that brings a second SQLite
library is refused (fast, below)."""

from __future__ import annotations

import httpx
import pytest

from broadsheet import plugins
from broadsheet.client import ControlClient
from broadsheet.config import ConfigError
from broadsheet.tokens import mint
from conftest import file_bytes, status, wait_until

CSV = "code,name,notes\nA1,Alpha,first\nB2,Beta,PRIVATE-CSV-MARKER-91c2\n"


def test_a_team_plugin_that_brings_a_second_sqlite_library_is_refused(tmp_path, monkeypatch):
    dist = tmp_path / "datasette_faster_writes-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: datasette-faster-writes\nVersion: 1.0\nRequires-Dist: apsw\n"
    )
    (dist / "entry_points.txt").write_text("[datasette]\nfaster = datasette_faster_writes\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"refused: datasette-faster-writes \(it requires apsw\)"):
        plugins.check_team(("datasette-faster-writes",))
    with pytest.raises(ConfigError, match="TEAM_PLUGINS=\"datasette-not-installed\" scripts/image"):
        plugins.check_team(("datasette-not-installed",))
    plugins.check_team(("datasette-upload-csvs",))  # Python's sqlite3 through sqlite-utils: fine


@pytest.mark.cluster
def test_a_csv_uploaded_in_the_browser_lands_in_data_db_private(new_cluster, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from test_browser import ARGS, CHROMIUM, team_page

    cluster = new_cluster(replicas=1, sample=False, primary_env={plugins.TEAM_PLUGINS_VAR: "datasette-upload-csvs"})
    node = cluster.replicas[0]
    control = ControlClient(cluster.primary.control_url, mint(cluster.primary.secret, "tester"))
    csv = tmp_path / "stations.csv"
    csv.write_text(CSV)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = team_page(cluster, browser)
            installed = page.goto(f"{cluster.primary.url}/-/plugins.json")
            assert "datasette-upload-csvs" in {plugin["name"] for plugin in installed.json()}
            page.goto(f"{cluster.primary.url}/-/upload-csvs")
            page.set_input_files("input[type=file]", str(csv))
            page.fill("#id_table_name", "stations")
            page.click("input[type=submit]")
            page.wait_for_url(f"{cluster.primary.url}/data/stations", timeout=30_000)
            expect(page.locator("table.rows-and-columns")).to_contain_text("Alpha")
        finally:
            browser.close()
    listed = {t["table"]: t["public"] for t in control.tables()}
    assert listed["stations"] is False
    wait_until(lambda: status(node.url, "/-/plugins.json") == 200, message="the read node")
    assert "datasette-upload-csvs" not in {p["name"] for p in httpx.get(f"{node.url}/-/plugins.json").json()}
    assert status(node.url, "/public/stations.json") == 403
    cluster.wait_for_replicas()
    for path, data in file_bytes(node.root):
        assert b"PRIVATE-CSV-MARKER-91c2" not in data, f"the uploaded CSV's marker found in {path}"

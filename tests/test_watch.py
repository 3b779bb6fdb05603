"""What the /watch page is fed, in-process: the tracker's node states (live,
behind, joining, cut off) and lag samples, the control plane's
``/watch/state``, and the team Datasette's page and its state proxy; hostile
parameters get a 4xx. The page in a browser, on a real cluster, is
tests/test_browser_watch.py's."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from inprocess import mint_token, plain_primary, plain_primary_files, public_litefs_port  # noqa: F401 (fixtures)
from primary.control.tracker import CUT_OFF, JOINING, LIVE, TrackedNode, Tracker
from primary.settings import ReadNodeAddress

# -- the tracker -------------------------------------------------------------------


def _tracker(*names: str) -> Tracker:
    """A tracker that follows nothing (its tasks are not started): the test
    tells it what its streams would."""
    t = Tracker("http://127.0.0.1:9", ())
    for name in names:
        t.addresses[name] = ReadNodeAddress(name, f"http://127.0.0.1:9/{name}")
        t.nodes[name] = TrackedNode(name, t.addresses[name].url)
    return t


def test_a_node_is_joining_until_it_answers_then_live_behind_and_cut_off():
    async def run():
        t = _tracker("syd", "lhr")
        assert {n["name"]: n["state"] for n in t.node_list()} == {"syd": JOINING, "lhr": JOINING}
        await t._committed(1, time.time() - 0.5)
        await t._advanced("lhr", 1)
        await t._advanced("syd", 0)
        await t._committed(2, time.time() - 0.2)
        states = {n["name"]: (n["state"], n["behind_txids"]) for n in t.node_list()}
        assert states == {"lhr": ("behind", 1), "syd": ("behind", 2)}
        await t._advanced("lhr", 2)
        await t._advanced("syd", 1, connected=False)
        nodes = {n["name"]: n for n in t.node_list()}
        assert nodes["lhr"]["state"] == LIVE and nodes["lhr"]["lag_ms"] == 0
        assert nodes["syd"]["state"] == CUT_OFF and nodes["syd"]["behind_txids"] == 1
        assert nodes["syd"]["lag_ms"] >= 150  # TXID 2's age
        # The primary unreachable from a node that still answers: cut off too.
        await t._advanced("lhr", 2, connected=True, primary_reachable=False)
        assert {n["name"]: n["state"] for n in t.node_list()}["lhr"] == CUT_OFF
        return t

    asyncio.run(run())


def test_lag_is_sampled_per_node_and_served_with_the_watch_state():
    async def run():
        t = _tracker("a", "b")
        await t._committed(1, time.time() - 2)
        await t._advanced("a", 1)
        await t._advanced("b", 0)
        first = t.sample_lag(now=time.time() - 1)
        second = t.sample_lag()
        return t, first, second

    t, first, second = asyncio.run(run())
    assert [n["name"] for n in second["nodes"]] == ["a", "b"]
    by_name = {n["name"]: n for n in second["nodes"]}
    assert by_name["a"] == {"name": "a", "lag_ms": 0.0, "behind_txids": 0, "state": LIVE}
    assert by_name["b"]["behind_txids"] == 1 and by_name["b"]["lag_ms"] >= 2000
    state = t.watch_state(limit=5, seconds=60)
    assert set(state) == {"primary_txid", "public_db_bytes", "lag_interval_s", "nodes", "publishes", "lag"}
    assert state["primary_txid"] == 1 and state["public_db_bytes"] is None
    assert [len(state["lag"][n]) for n in ("a", "b")] == [2, 2]
    assert state["lag"]["b"][0]["lag_ms"] < state["lag"]["b"][1]["lag_ms"]
    assert [p["txid"] for p in state["publishes"]] == [1]
    assert {a["name"]: a["arrived"] for a in state["publishes"][0]["nodes"]} == {"a": True, "b": False}
    # Older samples than asked for are left out.
    assert len(t.lag_history(0.5)["a"]) == 1


# -- the control plane's /watch/state and /watch -------------------------------------


def test_watch_state_has_what_the_page_needs(plain_primary):
    answer = plain_primary.control.get("/watch/state", params={"limit": 5, "seconds": 60})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"primary_txid", "public_db_bytes", "lag_interval_s", "nodes", "publishes", "lag"}
    assert body["nodes"] == [] and body["lag"] == {}
    pages, page_size = plain_primary.public_rows("SELECT * FROM pragma_page_count(), pragma_page_size()")[0]
    assert body["public_db_bytes"] == pages * page_size > 0
    page = plain_primary.control.get("/watch")
    assert page.status_code == 200 and 'id="broadsheet-watch"' in page.text and 'data-state="watch/state"' in page.text


@pytest.mark.parametrize(
    "params", [{"limit": 0}, {"limit": 201}, {"limit": "x"}, {"seconds": -1}, {"seconds": 601}, {"seconds": "1e9"}]
)
def test_watch_state_refuses_what_it_cannot_serve(plain_primary, params):
    answer = plain_primary.control.get("/watch/state", params=params)
    assert answer.status_code == 422, answer.text


def test_watch_state_and_page_are_for_the_team_only(plain_primary):
    assert plain_primary.anonymous("GET", "/watch/state").status_code == 401
    assert plain_primary.anonymous("GET", "/watch").status_code == 401


# -- the team Datasette's page -----------------------------------------------------------


def test_the_team_datasette_serves_the_page_and_its_state(plain_primary):
    site = plain_primary.team_site()
    token = mint_token()
    home = site.get("/", token=token)
    assert 'href="/-/broadsheet/watch"' in home.text  # in the team's menu
    page = site.get("/-/broadsheet/watch", token=token)
    assert page.status_code == 200
    assert "Watch propagation" in page.text and "Powered by" in page.text  # Datasette's base template
    assert 'data-state="/-/broadsheet/watch/state.json"' in page.text
    assert 'data-events="/-/broadsheet/watch/events"' in page.text
    # Nothing fetched from elsewhere: a primary may have no way out.
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="(https?:)?//', page.text)
    state = site.get("/-/broadsheet/watch/state.json?limit=3&seconds=10", token=token)
    assert state.status_code == 200, state.text
    assert set(state.json()) == {"primary_txid", "public_db_bytes", "lag_interval_s", "nodes", "publishes", "lag"}


@pytest.mark.parametrize("query", ["limit=0", "limit=x", "seconds=99999", "seconds=-3", "limit=1e3"])
def test_the_team_datasette_refuses_hostile_state_parameters(plain_primary, query):
    site = plain_primary.team_site()
    answer = site.get(f"/-/broadsheet/watch/state.json?{query}", token=mint_token())
    assert answer.status_code == 400 and answer.json()["ok"] is False


def test_anonymous_visitors_get_no_watch_page(plain_primary):
    site = plain_primary.team_site()
    assert site.get("/-/broadsheet/watch").status_code in (302, 401, 403)
    for path in ("/-/broadsheet/watch/state.json", "/-/broadsheet/watch/events"):
        answer = site.get(path, headers={"Accept": "application/json"})
        assert answer.status_code in (401, 403), (path, answer.status_code)
    assert 'href="/-/broadsheet/watch"' not in site.get("/-/login").text

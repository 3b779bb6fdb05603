"""The team's Datasette in-process (``datasette.client``), with the primary's
plugin, on a real data.db: logging in by name, the buttons a team member
clicks to make a table public or private (and what each shows), who may
click them, the badges, the metadata and saved-query forms, and the guard
on request bodies. Every change the plugin makes goes through the control
plane (served in a thread, as tests/inprocess.py says), and is checked in
data.db, then in public.db after a publisher cycle. What TXIDs and read
nodes show is the cluster layer's (test_partial_ui.py, test_logins.py, …)."""

from __future__ import annotations

import html
import json
import re

import httpx
import pytest
from datasette import hookimpl
from datasette.plugins import pm
from datasette.tokens import TokenRestrictions

from inprocess import (  # noqa: F401 (fixtures)
    TEAM_PASSWORD, mint_token, plain_primary, plain_primary_files, public_litefs_port, setting,
)
from primary import store
from primary.datasette import team
from primary.store import PublishSpec

VISIBILITY = "/-/broadsheet/visibility/data"


@pytest.fixture
def site(plain_primary):
    return plain_primary.team_site()


def message(response: httpx.Response, kind: str = "error") -> str:
    found = re.search(rf'<p class="message-{kind}">(.*?)</p>', response.text, re.S)
    return html.unescape(found.group(1)).strip() if found else ""


def words(response: httpx.Response) -> str:
    """The page's text, roughly as a browser shows it."""
    return " ".join(html.unescape(re.sub(r"<[^>]*>", "", response.text)).split())


def actions(response: httpx.Response) -> list[str]:
    """The broadsheet entries of a page's actions menu."""
    return [label for label in re.findall(r'<a href="/-/broadsheet/[^"]*" role="menuitem"[^>]*>\s*([^<]*?)\s*<', response.text)]


def badges(response: httpx.Response) -> dict:
    found = re.search(r"const badges = (.*?);\n", response.text)
    return json.loads(found.group(1)) if found else {}


def cookie_of(response: httpx.Response) -> str:
    found = re.search(r"ds_actor=([^;]+)", response.headers.get("set-cookie", ""))
    assert found, response.headers
    return found.group(1)


def public_state(plain) -> tuple:
    conn = plain.connect()
    try:
        specs = {t: s.to_dict() for t, s in store.public_specs(conn).items()}
        audit = conn.execute("SELECT count(*) FROM _public_audit_log").fetchone()[0]
        meta = store.metadata(conn)
    finally:
        conn.close()
    return specs, audit, meta


# -- anonymous visitors ------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/data", "/data/airports", "/data/planes"])
def test_an_anonymous_browser_is_sent_to_the_login_page(site, path):
    page = site.get(path)
    assert (page.status_code, page.headers["location"]) == (302, "/-/login")


@pytest.mark.parametrize("path", [f"{VISIBILITY}/planes", "/-/broadsheet/metadata", "/-/broadsheet/metadata/data/planes", "/-/broadsheet/query/data"])
def test_an_anonymous_browser_on_a_team_page_under_dash_is_sent_to_the_login_page(site, path):
    page = site.get(path, headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert (page.status_code, page.headers["location"]) == (302, "/-/login")


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/data.json"),
        ("GET", "/data/airports.json"),
        ("GET", f"{VISIBILITY}/planes"),  # a /-/ page asked for without Accept: text/html
        ("POST", "/data/airports/-/insert"),
        ("POST", f"{VISIBILITY}/planes"),
        ("POST", "/-/broadsheet/metadata"),
    ],
)
def test_an_anonymous_script_gets_a_401_it_can_act_on(site, plain_primary, method, path):
    before = public_state(plain_primary)
    response = site.request(method, path, json={"rows": [{"faa": "ZZZ"}]} if method == "POST" else None)
    assert response.status_code == 401, response.text
    assert response.json()["ok"] is False
    assert "Authentication required" in response.json()["error"]
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert public_state(plain_primary) == before
    assert plain_primary.data("SELECT count(*) FROM airports WHERE faa = 'ZZZ'") == [(0,)]


# -- logging in ----------------------------------------------------------------------


def test_the_login_page_asks_for_a_name_and_a_password(site):
    page = site.get("/-/login")
    assert page.status_code == 200
    assert 'name="username"' in page.text and 'name="password"' in page.text
    assert "Log in to the team's Datasette" in words(page)


def test_the_bootstrap_login_and_a_named_member_log_in_as_themselves(site, plain_primary):
    team.team().add_user("alice", "alice-password-1")
    for name, password in (("team", TEAM_PASSWORD), ("alice", "alice-password-1")):
        done = site.login(name, password)
        assert (done.status_code, done.headers["location"]) == (302, "/"), done.text
        cookie = cookie_of(done)
        page = site.get("/data/airports.json", params={"_size": 1}, cookie=cookie)
        assert page.status_code == 200
        assert site.get("/-/actor.json", cookie=cookie).json()["actor"]["id"] == name


def test_a_wrong_password_or_an_unknown_user_is_refused_and_guessing_is_throttled(site):
    unknown = site.login("mallory", "whatever-123")
    assert unknown.status_code == 401 and message(unknown) == "Wrong user name or password"
    for _ in range(5):
        wrong = site.login("team", "not-the-password")
        assert wrong.status_code == 401 and message(wrong) == "Wrong user name or password"
    refused = site.login("team", TEAM_PASSWORD)  # the sixth try, right or not
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) > 0
    assert "Too many failed logins" in message(refused)
    assert "set-cookie" not in refused.headers


@pytest.mark.parametrize("next_, target", [("/data/planes", "/data/planes"), ("//evil.example/", "/"), ("/\\evil.example", "/")])
def test_login_goes_back_to_a_page_of_this_site_only(site, next_, target):
    done = site.post("/-/login", data={"username": "team", "password": TEAM_PASSWORD, "next": next_})
    assert (done.status_code, done.headers["location"]) == (302, target)


def test_logout_ends_the_session_for_a_copy_of_the_cookie_too(site):
    cookie = cookie_of(site.login("team", TEAM_PASSWORD))
    assert site.get("/data/airports.json", params={"_size": 1}, cookie=cookie).status_code == 200
    assert site.post("/-/logout", cookie=cookie).status_code == 302
    replay = site.get("/data/airports.json", params={"_size": 1}, cookie=cookie)
    assert replay.status_code == 401
    assert site.control.get("/tables", headers={"Authorization": "", "Cookie": f"ds_actor={cookie}"}).status_code == 401


# -- the buttons: table actions and the Make public page ---------------------------------


def test_a_private_tables_menu_offers_make_public_and_a_public_ones_change_and_make_private(site, plain_primary):
    token = plain_primary.token
    assert actions(site.get("/data/planes", token=token)) == ["Make public"]
    assert actions(site.get("/data/airports", token=token)) == ["Change what is public", "Make private"]
    assert actions(site.get("/data/_public_tables", token=token)) == []
    assert "Published queries" in actions(site.get("/data", token=token))


def test_the_make_public_page_shows_the_state_and_the_form(site, plain_primary):
    private = site.get(f"{VISIBILITY}/planes", token=plain_primary.token)
    assert private.status_code == 200
    assert "planes is private" in words(private)
    columns = re.findall(r'<input type="checkbox" name="columns" value="([^"]+)"', private.text)
    assert columns == [c for (c,) in plain_primary.data("SELECT name FROM pragma_table_info('planes')")]
    assert 'value="preview"' in private.text and 'id="make-private"' not in private.text

    public = site.get(f"{VISIBILITY}/airports", token=plain_primary.token)
    assert "airports is public" in words(public) and "Public now: the whole table" in words(public)
    assert 'id="make-private"' in public.text

    missing = site.get(f"{VISIBILITY}/no_such_table", token=plain_primary.token)
    assert missing.status_code == 200 and message(missing) == "Table 'no_such_table' does not exist"


def test_make_public_publishes_the_whole_table_in_the_members_name(site, plain_primary):
    team.team().add_user("alice", "alice-password-1")
    cookie = cookie_of(site.login("alice", "alice-password-1"))
    done = site.post(f"{VISIBILITY}/planes", data={"operation": "publish"}, cookie=cookie)
    assert done.status_code == 200, message(done)
    assert "planes is now public" in words(done)
    assert plain_primary.data("SELECT table_name, spec FROM _public_tables WHERE table_name = 'planes'") == [("planes", None)]
    entry = plain_primary.audit("planes", limit=1)[0]
    assert (entry["operation"], entry["actor"]) == ("publish", "alice")
    plain_primary.publish()
    assert "planes" in plain_primary.public_tables()
    assert actions(site.get("/data/planes", cookie=cookie)) == ["Change what is public", "Make private"]


def test_preview_then_publish_exactly_what_was_previewed(site, plain_primary):
    token = plain_primary.token
    chosen = {"operation": "publish", "columns": ["tailnum", "year"], "where": "year > 2010"}
    before = public_state(plain_primary)
    preview = site.post(f"{VISIBILITY}/planes", data={**chosen, "action": "preview"}, token=token)
    assert preview.status_code == 200, message(preview)
    (matching,) = plain_primary.data("SELECT count(*) FROM planes WHERE year > 2010")[0]
    (total,) = plain_primary.data("SELECT count(*) FROM planes")[0]
    assert f"Read nodes will serve {matching} of {total} rows and 2 columns (tailnum, year)" in words(preview)
    assert public_state(plain_primary) == before  # a preview changes nothing

    # The preview's Publish button sends its hidden fields back.
    confirm = re.search(r'<form[^>]*class="broadsheet-confirm">(.*?)</form>', preview.text, re.S).group(1)
    fields = re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', confirm)
    posted: dict[str, list[str]] = {}
    for name, value in fields:
        posted.setdefault(name, []).append(html.unescape(value))
    assert posted["columns"] == ["tailnum", "year"] and posted["where"] == ["year > 2010"]
    done = site.post(f"{VISIBILITY}/planes", data={**posted, "action": "publish"}, token=token)
    assert done.status_code == 200, message(done)
    spec = store.public_specs(plain_primary.connect())["planes"]
    assert (spec.where, set(spec.exclude_columns)) == ("year > 2010", set(
        c for (c,) in plain_primary.data("SELECT name FROM pragma_table_info('planes')") if c not in ("tailnum", "year")
    ))
    plain_primary.publish()
    assert plain_primary.public_columns("planes") == ["tailnum", "year"]
    assert plain_primary.public_rows("SELECT count(*) FROM planes") == [(matching,)]


@pytest.mark.parametrize(
    "where, says",
    [("random() > 0.5", "random()"), ("(SELECT count(*) FROM airports) > 0", "subquer"), ("year = = 1", "syntax error")],
)
@pytest.mark.parametrize("action", ["preview", "publish"])
def test_a_bad_filter_is_a_400_page_that_changes_nothing(site, plain_primary, action, where, says):
    before = public_state(plain_primary)
    done = site.post(
        f"{VISIBILITY}/planes",
        data={"operation": "publish", "action": action, "columns": ["tailnum", "year"], "where": where},
        token=plain_primary.token,
    )
    assert done.status_code == 400
    assert says in message(done)
    assert public_state(plain_primary) == before


def test_nothing_ticked_or_an_unknown_operation_is_a_400(site, plain_primary):
    before = public_state(plain_primary)
    # tailnum is not the table's INTEGER PRIMARY KEY, so nothing is ticked at all.
    nothing = site.post(f"{VISIBILITY}/planes", data={"operation": "publish", "action": "preview"}, token=plain_primary.token)
    assert nothing.status_code == 400 and message(nothing)
    unknown = site.post(f"{VISIBILITY}/planes", data={"operation": "frobnicate"}, token=plain_primary.token)
    assert unknown.status_code == 400 and message(unknown) == "Choose publish or unpublish, and preview or publish"
    assert public_state(plain_primary) == before


def test_make_private_takes_the_table_off_public_db(site, plain_primary):
    done = site.post(f"{VISIBILITY}/airports", data={"operation": "unpublish"}, token=plain_primary.token)
    assert done.status_code == 200, message(done)
    assert "airports is now private" in words(done)
    assert "airports" not in store.public_tables(plain_primary.connect())
    assert plain_primary.audit("airports", limit=1)[0]["operation"] == "unpublish"
    plain_primary.publish()
    assert plain_primary.public_tables() == set()


# -- who may click them ----------------------------------------------------------------


def viewer() -> TokenRestrictions:
    return TokenRestrictions().allow_all("view-instance").allow_all("view-database").allow_all("view-table")


def test_a_token_restricted_to_viewing_sees_no_button_and_is_refused(site, plain_primary):
    token = mint_token("viewer", restrictions=viewer())
    before = public_state(plain_primary)
    assert site.get("/data/planes", token=token).status_code == 200
    assert actions(site.get("/data/planes", token=token)) == []
    for path, data in (
        (f"{VISIBILITY}/planes", {"operation": "publish"}),
        (f"{VISIBILITY}/airports", {"operation": "unpublish"}),
        ("/-/broadsheet/metadata", {"title": "Not mine"}),
        ("/-/broadsheet/query/data", {"name": "q", "sql": "select 1"}),
    ):
        refused = site.post(path, data=data, token=token)
        assert refused.status_code == 403, (path, refused.text[:300])
    assert site.get(f"{VISIBILITY}/planes", token=token).status_code == 403
    assert public_state(plain_primary) == before


def test_a_token_allowed_one_table_sees_the_button_on_that_table_alone(site, plain_primary):
    token = mint_token("one-table", restrictions=viewer().allow_resource("data", "planes", "broadsheet-publish"))
    assert actions(site.get("/data/planes", token=token)) == ["Make public"]
    assert actions(site.get("/data/airports", token=token)) == []
    assert site.get(f"{VISIBILITY}/planes", token=token).status_code == 200
    assert site.get(f"{VISIBILITY}/airports", token=token).status_code == 403


def test_the_team_may_write_but_not_to_broadsheets_own_tables(site, plain_primary):
    token = plain_primary.token
    inserted = site.post("/data/airports/-/insert", json={"rows": [{"faa": "ZZZ", "name": "Test field"}]}, token=token)
    assert inserted.status_code == 201, inserted.text
    assert inserted.headers["broadsheet-private-txid"] == "0"  # no LiteFS: no position
    assert plain_primary.data("SELECT name FROM airports WHERE faa = 'ZZZ'") == [("Test field",)]
    before = public_state(plain_primary)
    for path, body in (
        ("/data/_public_tables/-/insert", {"rows": [{"table_name": "planes"}]}),
        ("/data/_public_audit_log/-/insert", {"rows": [{"id": 99}]}),
        ("/data/_public_tables/-/drop", {"confirm": True}),
    ):
        refused = site.post(path, json=body, token=token)
        assert refused.status_code == 403, refused.text
        assert "Permission denied" in refused.text
    assert public_state(plain_primary) == before


def test_waiting_for_a_standby_that_is_not_there_is_refused_before_the_write(site, plain_primary):
    refused = site.post(
        "/data/airports/-/insert", json={"rows": [{"faa": "ZZW"}]}, token=plain_primary.token,
        headers={"Broadsheet-Wait": "standby"},
    )
    assert refused.status_code == 400
    assert "has no standby" in refused.json()["error"]
    assert plain_primary.data("SELECT count(*) FROM airports WHERE faa = 'ZZW'") == [(0,)]


# -- events ------------------------------------------------------------------------------


class Recorder:
    """A team plugin that keeps every Datasette event it is told of."""

    def __init__(self):
        self.events = []

    @hookimpl
    def track_event(self, datasette, event):
        self.events.append(event)

    def flips(self) -> list[tuple]:
        return [(e.name, e.table, (e.actor or {}).get("id")) for e in self.events if e.name.startswith("broadsheet-")]


@pytest.fixture
def recorder():
    plugin = Recorder()
    pm.register(plugin, name="test-recorder")
    yield plugin
    pm.unregister(plugin)


def test_every_flip_is_a_datasette_event_whichever_path_made_it(site, plain_primary, recorder):
    assert site.get("/data", token=plain_primary.token).status_code == 200  # started: it follows the audit log
    # A flip made on data.db directly (the CLI's --data-db), then one through the control plane.
    conn = plain_primary.connect()
    store.set_public(conn, "planes", True, actor="cli-user")
    conn.close()
    assert site.control.post("/tables/airports/unpublish", params={"wait": "false"}).status_code == 200
    site.wait_until(lambda: len(recorder.flips()) == 2, message="two flip events")
    assert recorder.flips() == [
        ("broadsheet-publish", "planes", "cli-user"), ("broadsheet-unpublish", "airports", "tester"),
    ]


# -- badges ------------------------------------------------------------------------------


def test_public_and_partial_tables_carry_a_badge(site, plain_primary):
    conn = plain_primary.connect()
    store.set_public(conn, "planes", True, actor="test", spec=PublishSpec(columns=("tailnum", "year")))
    conn.close()
    database = badges(site.get("/data", token=plain_primary.token))
    assert {name: b["label"] for name, b in database.items()} == {"airports": "public", "planes": "partial"}
    assert database["airports"]["href"] == f"{VISIBILITY}/airports"
    assert database["planes"]["title"].startswith("Public: ")
    table_page = site.get("/data/airports", token=plain_primary.token)
    assert set(badges(table_page)) == {"airports"}
    assert 'const onTablePage = "airports";' in table_page.text


def test_a_private_table_has_no_badge(site, plain_primary):
    page = site.get("/data/planes", token=plain_primary.token)
    assert page.status_code == 200 and badges(page) == {}


# -- metadata and saved queries -----------------------------------------------------------


def test_the_instance_and_table_metadata_forms_save_through_the_control_plane(site, plain_primary):
    token = plain_primary.token
    saved = site.post("/-/broadsheet/metadata", data={"title": "NYC flights", "license": "CC0"}, token=token)
    assert saved.status_code == 200, saved.text[:300]
    table = site.post("/-/broadsheet/metadata/data/airports", data={"title": "Airports", "source": "FAA"}, token=token)
    assert table.status_code == 200
    conn = plain_primary.connect()
    try:
        assert store.metadata(conn) == {
            store.INSTANCE: {"title": "NYC flights", "license": "CC0"},
            "airports": {"title": "Airports", "source": "FAA"},
        }
    finally:
        conn.close()
    assert 'value="NYC flights"' in site.get("/-/broadsheet/metadata", token=token).text


def test_an_unknown_metadata_field_is_a_400_that_keeps_the_input(site, plain_primary):
    before = public_state(plain_primary)
    refused = site.post("/-/broadsheet/metadata", data={"title": "Kept", "colour": "red"}, token=plain_primary.token)
    assert refused.status_code == 400
    assert "Unknown metadata field(s): colour" in refused.text
    assert public_state(plain_primary) == before


def test_publishing_and_removing_a_saved_query_from_its_page(site, plain_primary):
    token = plain_primary.token
    page = site.get("/-/broadsheet/query/data", params={"sql": "select faa from airports where tz = :tz"}, token=token)
    assert page.status_code == 200 and "select faa from airports where tz = :tz" in html.unescape(page.text)
    saved = site.post(
        "/-/broadsheet/query/data", data={"name": "by_tz", "sql": "select faa from airports where tz = :tz"}, token=token
    )
    assert saved.status_code == 200, saved.text[:300]
    assert plain_primary.data("SELECT name, saved_by FROM _public_queries") == [("by_tz", "tester")]
    plain_primary.publish()
    assert plain_primary.public_rows("SELECT name FROM _public_queries") == [("by_tz",)]

    leaking = site.post("/-/broadsheet/query/data", data={"name": "leak", "sql": "select * from planes"}, token=token)
    assert leaking.status_code == 400 and "no such table: planes" in leaking.text

    removed = site.post("/-/broadsheet/query/data", data={"name": "by_tz", "operation": "remove"}, token=token)
    assert removed.status_code == 200
    assert plain_primary.data("SELECT count(*) FROM _public_queries") == [(0,)]


# -- the body guard ----------------------------------------------------------------------------


def test_a_body_over_the_limit_is_a_413_with_or_without_a_length(site, plain_primary, monkeypatch):
    rows = json.dumps({"rows": [{"faa": f"X{i:04}", "name": "padding " * 4} for i in range(40)]}).encode()
    assert len(rows) > 1000

    async def chunked():
        for start in range(0, len(rows), 256):
            yield rows[start:start + 256]

    with setting(monkeypatch, "BROADSHEET_MAX_BODY", "1000"):
        for content in (rows, chunked()):
            refused = site.post(
                "/data/airports/-/insert", content=content, token=plain_primary.token,
                headers={"Content-Type": "application/json"},
            )
            assert refused.status_code == 413, refused.text
            assert refused.json()["error"] == "Request body over 1000 bytes: send rows in batches"
        # The login form too: anonymous, and still bounded.
        login = site.post("/-/login", content=b"username=team&password=" + b"x" * 2000,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert login.status_code == 413
    assert plain_primary.data("SELECT count(*) FROM airports WHERE name LIKE 'padding%'") == [(0,)]
    small = site.post("/data/airports/-/insert", content=rows, token=plain_primary.token,
                      headers={"Content-Type": "application/json"})
    assert small.status_code == 201, small.text  # under the default limit


def test_json_nested_too_deep_is_a_400_before_datasette_parses_it(site, plain_primary):
    deep = b'{"rows": [' + b"[" * 5000 + b"]" * 5000 + b"]}"
    refused = site.post("/data/airports/-/insert", content=deep, token=plain_primary.token,
                        headers={"Content-Type": "application/json"})
    assert refused.status_code == 400
    assert "nested deeper than 64 levels" in refused.json()["error"]

"""The control plane in-process (FastAPI's test client) on a real data.db:
what a team member's script sees when it lists, publishes, unpublishes,
previews, sets metadata and saves queries, and what it is told when it asks
for something it cannot have. Each flip is checked where it lands: data.db's
publish state and audit log, then public.db after a publisher cycle.

No LiteFS here (every TXID is 0; see tests/inprocess.py): what TXIDs mean
and propagation to read nodes are the cluster layer's."""

from __future__ import annotations

import json

import pytest
from datasette.tokens import TokenRestrictions

from inprocess import SECRET, mint_token, plain_primary, plain_primary_files, public_litefs_port  # noqa: F401 (fixtures)
from primary import store
from primary.control import auth
from primary.datasette import team


def public_state(plain) -> tuple:
    """data.db's publish state and audit log, and public.db's tables."""
    conn = plain.connect()
    try:
        specs = {t: s.to_dict() for t, s in store.public_specs(conn).items()}
        (audit_rows,) = conn.execute("SELECT count(*) FROM _public_audit_log").fetchone()
    finally:
        conn.close()
    return specs, audit_rows, plain.public_tables()


# -- listing ------------------------------------------------------------------


def test_tables_lists_every_team_table_and_whether_it_is_public(plain_primary):
    listed = plain_primary.control.get("/tables")
    assert listed.status_code == 200
    assert listed.json() == [
        {"table": "airports", "public": True, "spec": {}, "partial": False},
        {"table": "planes", "public": False, "spec": None, "partial": False},
    ]


# -- publish and unpublish --------------------------------------------------------


def test_publishing_a_table_lists_it_audits_it_and_the_next_cycle_copies_it(plain_primary):
    published = plain_primary.control.post("/tables/planes/publish")
    assert published.status_code == 200, published.text
    body = published.json()
    assert (body["ok"], body["table"], body["public"], body["changed"]) == (True, "planes", True, True)
    assert {"private_txid", "public_txid", "propagation"} <= set(body)
    # Whole: no spec stored.
    assert plain_primary.data("SELECT table_name, spec FROM _public_tables WHERE table_name = 'planes'") == [
        ("planes", None)
    ]
    entry = plain_primary.audit("planes", limit=1)[0]
    assert (entry["operation"], entry["actor"], entry["table_name"]) == ("publish", "tester", "planes")

    assert "planes" not in plain_primary.public_tables()  # not until the publisher's cycle
    cycle = plain_primary.publish()
    assert cycle.published == ("planes",) and cycle.actors == {"planes": "tester"}
    assert plain_primary.public_tables() == {"airports", "planes"}
    assert plain_primary.public_rows("SELECT count(*) FROM planes") == plain_primary.data("SELECT count(*) FROM planes")


def test_publishing_twice_changes_nothing_the_second_time(plain_primary):
    before = public_state(plain_primary)
    again = plain_primary.control.post("/tables/airports/publish")
    assert again.status_code == 200
    assert (again.json()["public"], again.json()["changed"]) == (True, False)
    assert public_state(plain_primary) == before


def test_unpublishing_erases_the_table_from_public_db_in_the_next_cycle(plain_primary):
    done = plain_primary.control.post("/tables/airports/unpublish")
    assert done.status_code == 200, done.text
    assert (done.json()["public"], done.json()["changed"]) == (False, True)
    assert plain_primary.data("SELECT count(*) FROM _public_tables") == [(0,)]
    entry = plain_primary.audit("airports", limit=1)[0]
    assert (entry["operation"], entry["actor"], entry["spec_before"], entry["spec_after"]) == (
        "unpublish", "tester", None, None,
    )
    plain_primary.publish()
    assert plain_primary.public_tables() == set()
    tables = {t for (t,) in plain_primary.public_rows("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "airports" not in tables
    listed = {t["table"]: t["public"] for t in plain_primary.control.get("/tables").json()}
    assert listed == {"airports": False, "planes": False}


def test_a_partial_spec_publishes_only_those_columns_and_rows(plain_primary):
    spec = {"columns": ["tailnum", "year", "manufacturer"], "where": "year > 2010"}
    done = plain_primary.control.post("/tables/planes/publish", json=spec)
    assert done.status_code == 200, done.text
    listed = {t["table"]: t for t in plain_primary.control.get("/tables").json()}
    assert listed["planes"] == {"table": "planes", "public": True, "spec": spec, "partial": True}
    assert json.loads(plain_primary.audit("planes", limit=1)[0]["spec_after"]) == spec
    plain_primary.publish()
    assert plain_primary.public_columns("planes") == ["tailnum", "year", "manufacturer"]
    assert plain_primary.public_rows("SELECT count(*) FROM planes") == plain_primary.data(
        "SELECT count(*) FROM planes WHERE year > 2010"
    )
    assert plain_primary.public_rows("SELECT min(year) FROM planes")[0][0] > 2010


def test_another_spec_for_a_public_table_changes_it_and_says_what_it_was(plain_primary):
    done = plain_primary.control.post("/tables/airports/publish", json={"exclude_columns": ["tz", "dst"]})
    assert done.status_code == 200 and done.json()["changed"] is True
    entry = plain_primary.audit("airports", limit=1)[0]
    assert (entry["spec_before"], json.loads(entry["spec_after"])) == (None, {"exclude_columns": ["tz", "dst"]})
    cycle = plain_primary.publish()
    assert cycle.recopied == ("airports",)
    assert "tz" not in plain_primary.public_columns("airports") and "name" in plain_primary.public_columns("airports")


def test_preview_says_what_a_spec_would_expose_and_changes_nothing(plain_primary):
    before = public_state(plain_primary)
    shown = plain_primary.control.post("/tables/planes/preview", json={"columns": ["tailnum", "year"], "where": "year > 2010"})
    assert shown.status_code == 200, shown.text
    body = shown.json()
    (matching,) = plain_primary.data("SELECT count(*) FROM planes WHERE year > 2010")[0]
    (total,) = plain_primary.data("SELECT count(*) FROM planes")[0]
    assert (body["columns"], body["rows"], body["total_rows"], body["public_now"]) == (
        ["tailnum", "year"], matching, total, False,
    )
    assert body["sample"] and all(set(row) == {"tailnum", "year"} and row["year"] > 2010 for row in body["sample"])
    assert public_state(plain_primary) == before


def test_a_preview_of_a_public_table_says_what_the_change_adds_and_removes(plain_primary):
    shown = plain_primary.control.post("/tables/airports/preview", json={"exclude_columns": ["tz"], "where": "alt > 5000"})
    assert shown.status_code == 200, shown.text
    body = shown.json()
    (high,) = plain_primary.data("SELECT count(*) FROM airports WHERE alt > 5000")[0]
    (total,) = plain_primary.data("SELECT count(*) FROM airports")[0]
    assert (body["public_now"], body["columns_added"], body["columns_removed"]) == (True, [], ["tz"])
    assert (body["rows"], body["rows_added"], body["rows_removed"]) == (high, 0, total - high)


def test_without_waiting_a_flip_says_no_public_txid(plain_primary):
    done = plain_primary.control.post("/tables/planes/publish", params={"wait": "false"})
    assert done.status_code == 200
    assert (done.json()["changed"], done.json()["public_txid"], done.json()["propagation"]) == (True, None, None)
    assert "planes" in store.public_tables(plain_primary.connect())


# -- bad input: the status and message a client acts on, and no change ------------


@pytest.mark.parametrize(
    "method, path, status, message",
    [
        # The same requests, statuses and messages as test_bad_input.py's on a cluster.
        ("POST", "/tables/no_such_table/publish", 404, "does not exist"),
        ("POST", "/tables/_public_tables/publish", 403, "internal table"),
        ("POST", "/tables/sqlite_master/publish", 403, "internal table"),
        ("POST", "/tables/bad%22quoted%27%20n%C3%A4me/publish", 404, "does not exist"),
        ("POST", "/tables/airports/publish?timeout=banana", 422, "timeout"),
        ("POST", "/tables/airports/publish?timeout=-1", 422, "timeout"),
        ("GET", "/audit?limit=0", 422, "limit"),
        ("GET", "/publishes/999999", 404, "no record"),
        # And more of the same kind.
        ("POST", "/tables/no_such_table/unpublish", 404, "does not exist"),
        ("POST", "/tables/_public_audit_log/unpublish", 403, "internal table"),
        ("POST", "/tables/no_such_table/preview", 404, "does not exist"),
        ("PUT", "/tables/no_such_table/metadata", 404, "does not exist"),
        ("DELETE", "/queries/no_such_query", 404, "no saved query"),
    ],
)
def test_control_plane_bad_input(plain_primary, method, path, status, message):
    before = public_state(plain_primary)
    kwargs = {"json": {"title": "x"}} if method == "PUT" else {}
    response = plain_primary.control.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert message.lower() in json.dumps(response.json(), ensure_ascii=False).lower()
    assert public_state(plain_primary) == before


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"columns": ["tailnum", "no_such_column"]}, "No such column(s): 'no_such_column'"),
        ({"exclude_columns": ["no_such_column"]}, "no_such_column"),
        ({"columns": ["year"], "exclude_columns": ["seats"]}, "Give columns or exclude_columns, not both"),
        ({"where": "random() > 0.5"}, "random()"),
        ({"where": "(SELECT count(*) FROM airports) > 0"}, "subquer"),
        ({"where": "year > "}, "syntax error"),
        ({"colums": ["year"]}, "Unknown spec field(s): colums"),
    ],
)
@pytest.mark.parametrize("verb", ["publish", "preview"])
def test_a_spec_that_does_not_fit_is_a_400_that_says_why(plain_primary, verb, spec, message):
    before = public_state(plain_primary)
    response = plain_primary.control.post(f"/tables/planes/{verb}", json=spec)
    assert response.status_code == 400, response.text
    assert response.json()["ok"] is False
    assert message.lower() in response.json()["error"].lower()
    assert public_state(plain_primary) == before


def test_a_spec_of_the_wrong_shape_is_a_422(plain_primary):
    response = plain_primary.control.post("/tables/planes/publish", json={"columns": "year"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "columns"]


def test_a_view_is_published_whole(plain_primary):
    conn = plain_primary.connect()
    conn.execute("CREATE VIEW big_airports AS SELECT faa, name FROM airports WHERE alt > 5000")
    conn.close()
    partial = plain_primary.control.post("/tables/big_airports/publish", json={"columns": ["faa"]})
    assert partial.status_code == 400 and "published whole" in partial.json()["error"]
    whole = plain_primary.control.post("/tables/big_airports/publish")
    assert whole.status_code == 200 and whole.json()["changed"] is True


def test_a_view_over_a_private_table_is_refused_with_409(plain_primary):
    conn = plain_primary.connect()
    conn.execute("CREATE VIEW plane_makers AS SELECT DISTINCT manufacturer FROM planes")
    conn.close()
    refused = plain_primary.control.post("/tables/plane_makers/publish")
    assert refused.status_code == 409, refused.text
    assert "planes" in refused.json()["error"]
    assert "plane_makers" not in store.public_tables(plain_primary.connect())


# -- who may ask --------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization, message",
    [
        (None, "token is required"),
        ("Bearer dstok_forged.signature", "Invalid token"),
        ("Basic dGVhbTp0ZWFt", "must be 'Bearer <token>'"),
        (f"Bearer {mint_token('someone', secret='another-secret')}", "Invalid token"),
    ],
    ids=["no token", "forged token", "not a bearer token", "another secret's token"],
)
@pytest.mark.parametrize("method, path", [("GET", "/tables"), ("POST", "/tables/planes/publish"), ("GET", "/audit")])
def test_without_a_valid_team_token_every_route_is_a_401(plain_primary, method, path, authorization, message):
    before = public_state(plain_primary)
    response = plain_primary.control.request(method, path, headers={"Authorization": authorization or ""})
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["ok"] is False and message in response.json()["error"]
    assert public_state(plain_primary) == before


def test_health_needs_no_token(plain_primary):
    health = plain_primary.anonymous("GET", "/health")
    assert health.status_code == 200
    body = health.json()
    assert (body["ok"], body["nodes"], body["nodes_connected"], body["epoch"], body["withdrawn"]) == (True, 0, 0, 1, [])
    assert body["published_up_to"] == {"private_txid": 0, "public_txid": 0}
    assert body["standby"] is None


def viewer() -> TokenRestrictions:
    return TokenRestrictions().allow_all("view-instance").allow_all("view-database").allow_all("view-table")


def test_a_token_restricted_to_viewing_may_read_but_not_publish(plain_primary):
    token = mint_token("viewer", restrictions=viewer())
    headers = {"Authorization": f"Bearer {token}"}
    before = public_state(plain_primary)
    assert plain_primary.control.get("/tables", headers=headers).status_code == 200
    for path in ("/tables/planes/publish", "/tables/airports/unpublish", "/tables/planes/preview"):
        refused = plain_primary.control.post(path, headers=headers)
        assert refused.status_code == 403, refused.text
        assert "broadsheet-publish" in refused.json()["error"]
    assert plain_primary.control.put("/metadata", json={"title": "x"}, headers=headers).status_code == 403
    saved = plain_primary.control.post("/queries", json={"name": "q", "sql": "select 1"}, headers=headers)
    assert saved.status_code == 403 and "saved queries" in saved.json()["error"]
    assert public_state(plain_primary) == before


def test_a_token_allowed_to_publish_one_table_may_flip_it_and_no_other(plain_primary):
    token = mint_token("one-table", restrictions=viewer().allow_resource("data", "planes", "broadsheet-publish"))
    headers = {"Authorization": f"Bearer {token}"}
    assert plain_primary.control.post("/tables/planes/publish", headers=headers).status_code == 200
    assert plain_primary.control.post("/tables/airports/unpublish", headers=headers).status_code == 403
    # The instance's metadata takes the action on the whole database.
    assert plain_primary.control.put("/metadata", json={"title": "x"}, headers=headers).status_code == 403
    assert [e["actor"] for e in plain_primary.audit("planes", limit=1)] == ["one-table"]


def login_cookie(name: str, password: str) -> str:
    """The ``ds_actor`` cookie the team's Datasette sets at login."""
    session = team.team().login(name, password, "127.0.0.1")
    return auth.datasette(SECRET).sign({"a": {"id": name, "sid": session}}, "actor")


def test_a_login_cookie_works_while_its_session_lives(plain_primary):
    team.team().add_user("alice", "alice-password-1")
    cookie = login_cookie("alice", "alice-password-1")
    headers = {"Authorization": "", "Cookie": f"ds_actor={cookie}"}
    done = plain_primary.control.post("/tables/planes/publish", headers=headers)
    assert done.status_code == 200, done.text
    assert plain_primary.audit("planes", limit=1)[0]["actor"] == "alice"
    team.team().remove_user("alice")  # ends every session of hers
    ended = plain_primary.control.get("/tables", headers=headers)
    assert ended.status_code == 401 and "session has ended" in ended.json()["error"]


def test_another_site_cannot_flip_with_a_members_login_cookie(plain_primary):
    team.team().add_user("alice", "alice-password-1")
    cookie = login_cookie("alice", "alice-password-1")
    before = public_state(plain_primary)
    refused = plain_primary.control.post(
        "/tables/airports/unpublish",
        headers={"Authorization": "", "Cookie": f"ds_actor={cookie}", "Sec-Fetch-Site": "cross-site"},
    )
    assert refused.status_code == 403, refused.text
    assert "Cross-site request refused" in refused.json()["error"]
    assert public_state(plain_primary) == before


# -- metadata -------------------------------------------------------------------------


def test_table_metadata_is_merged_listed_and_cleared(plain_primary):
    c = plain_primary.control
    assert c.put("/tables/airports/metadata", json={"title": "Airports", "license": "CC0"}).json() == {
        "title": "Airports", "license": "CC0",
    }
    assert c.put("/tables/airports/metadata", json={"source": "FAA"}).json() == {
        "title": "Airports", "license": "CC0", "source": "FAA",
    }
    assert c.put("/tables/airports/metadata", json={"license": None}).json() == {"title": "Airports", "source": "FAA"}
    assert c.get("/metadata").json() == {"instance": {}, "tables": {"airports": {"title": "Airports", "source": "FAA"}}}
    cycle = plain_primary.publish()
    assert cycle.metadata_changed


def test_instance_metadata_and_an_unknown_field(plain_primary):
    c = plain_primary.control
    assert c.put("/metadata", json={"title": "Flights", "description": "NYC 2013"}).status_code == 200
    assert c.get("/metadata").json()["instance"] == {"title": "Flights", "description": "NYC 2013"}
    unknown = c.put("/metadata", json={"colour": "red"})
    assert unknown.status_code == 400
    assert "Unknown metadata field(s): colour" in unknown.json()["error"]
    assert c.get("/metadata").json()["instance"] == {"title": "Flights", "description": "NYC 2013"}


# -- saved queries ------------------------------------------------------------------------


def test_a_saved_query_is_published_at_the_next_cycle_and_removed(plain_primary):
    c = plain_primary.control
    sql = "select faa, name from airports where tz = :tz"
    saved = c.post("/queries", json={"name": "by_tz", "sql": sql, "title": "Airports by time zone"})
    assert saved.status_code == 200, saved.text
    assert (saved.json()["name"], saved.json()["changed"]) == ("by_tz", True)
    [listed] = c.get("/queries").json()
    assert (listed["name"], listed["sql"], listed["saved_by"], listed["published"]) == ("by_tz", sql, "tester", False)
    cycle = plain_primary.publish()
    assert cycle.query_changes == {"by_tz": {"action": "published", "actor": "tester", "reason": None}}
    assert c.get("/queries").json()[0]["published"] is True

    removed = c.delete("/queries/by_tz")
    assert removed.status_code == 200, removed.text
    plain_primary.publish()
    assert c.get("/queries").json() == []
    log = c.get("/queries/log").json()
    assert [(e["operation"], e["name"], e["actor"]) for e in log] == [("remove", "by_tz", "tester"), ("save", "by_tz", "tester")]


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"name": "leak", "sql": "select * from planes"}, 400, "no such table: planes"),
        ({"name": "bad name!", "sql": "select 1"}, 400, "name is 1-100 letters"),
        ({"name": "two", "sql": "select 1; select 2"}, 400, "one SQL statement"),
        ({"name": "q", "sql": "select 1", "owner": "me"}, 422, "owner"),
    ],
)
def test_a_query_that_cannot_be_published_is_refused(plain_primary, body, status, message):
    response = plain_primary.control.post("/queries", json=body)
    assert response.status_code == status, response.text
    assert message.lower() in json.dumps(response.json()).lower()
    assert plain_primary.control.get("/queries").json() == []


# -- audit, bookmarks, the publisher's wait ------------------------------------------------


def test_the_audit_log_newest_first(plain_primary):
    plain_primary.control.post("/tables/planes/publish")
    plain_primary.control.post("/tables/planes/unpublish")
    entries = plain_primary.control.get("/audit", params={"limit": 2}).json()
    assert [(e["operation"], e["table_name"], e["actor"]) for e in entries] == [
        ("unpublish", "planes", "tester"), ("publish", "planes", "tester"),
    ]
    assert {"timestamp", "private_txid", "public_txid", "spec_before", "spec_after", "reason"} <= set(entries[0])


def test_a_bookmark_is_the_watermark(plain_primary):
    assert plain_primary.control.get("/bookmarks").json() == {"private_txid": 0, "public_txid": 0}


def test_a_publisher_that_does_not_get_there_is_a_504_and_the_flip_stays_made(plain_primary):
    # LiteFS's position file says data.db is at TXID 7; the publisher has not run since.
    (plain_primary.data_db.parent / "data.db-pos").write_text(f"{7:016x}/{0:016x}")
    late = plain_primary.control.post("/tables/planes/publish", params={"timeout": 0.1})
    assert late.status_code == 504, late.text
    assert "has not reached data.db TXID 7 within 0.1s" in late.json()["error"]
    assert "planes" in store.public_tables(plain_primary.connect())
    waited = plain_primary.control.get("/bookmarks", params={"timeout": 0.1})
    assert waited.status_code == 504 and "TXID 7" in waited.json()["error"]


# -- propagation, without read nodes ---------------------------------------------------------


def test_without_read_nodes_every_record_is_complete_at_once(plain_primary):
    """The tracker learns public.db's position from the public LiteFS's
    event stream (here a stub: TXID 0) and what that cycle did from the
    publisher's cycle log; with no read node, nobody is waited for."""
    c = plain_primary.control
    assert c.get("/nodes").json() == []
    record = c.get("/publishes/0", params={"wait": 5}).json()
    assert (record["txid"], record["complete"], record["nodes"]) == (0, True, [])
    assert record["changes"] == ["airports published by broadsheet:sample (1,458 rows)"]
    assert record["cycle"]["published"] == ["airports"]
    assert c.get("/publishes").json() == [record]
    missing = c.get("/publishes/1", params={"wait": 0.1})
    assert missing.status_code == 404 and missing.json()["error"] == "no record of public TXID 1"
    assert c.get("/watch").status_code == 200


def test_the_openapi_document_describes_every_route(plain_primary):
    doc = plain_primary.anonymous("GET", "/openapi.json").json()
    assert {
        "/tables", "/tables/{table}/publish", "/tables/{table}/unpublish", "/tables/{table}/preview",
        "/tables/{table}/metadata", "/metadata", "/queries", "/queries/{name}", "/queries/log", "/audit",
        "/bookmarks", "/health", "/nodes", "/publishes", "/publishes/{txid}", "/events",
    } <= set(doc["paths"])
    publish = doc["paths"]["/tables/{table}/publish"]["post"]
    assert {"200", "400", "401", "403", "404", "409", "422", "504"} <= set(publish["responses"])

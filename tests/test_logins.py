"""Team members log in by name: sessions that /-/logout ends everywhere, a
brake on guessing, and control-plane state changes that another site cannot
make with a member's login cookie."""

from __future__ import annotations


import httpx
import pytest
from click.testing import CliRunner

from broadsheet.cli import cli
from conftest import create_table
from primary import store


def add_user(cluster, name: str, password: str) -> None:
    result = CliRunner().invoke(
        cli, ["user", "add", name, "--password-stdin", "--team-db", str(cluster.primary.root / "team.db")],
        input=password + "\n",
    )
    assert result.exit_code == 0, result.output


def login(cluster, name: str, password: str) -> httpx.Client:
    """A browser-like client, logged in (or not: check the last response)."""
    client = httpx.Client(base_url=cluster.primary.url, timeout=30)
    assert client.get("/-/login").status_code == 200
    client.last = client.post("/-/login", data={"username": name, "password": password})
    return client


def logged_in(client: httpx.Client) -> bool:
    return client.get("/data/airports.json?_size=1").status_code == 200


@pytest.fixture(scope="module")
def members(cluster):
    add_user(cluster, "alice", "alice-password-1")
    add_user(cluster, "bob", "bob-password-22")
    return {"alice": "alice-password-1", "bob": "bob-password-22"}


def test_each_member_logs_in_as_themselves_and_the_audit_log_tells_them_apart(cluster, db, members):
    create_table(cluster, "minutes", [{"id": 1, "text": "agenda"}])
    for name, verb in (("alice", "publish"), ("bob", "unpublish")):
        client = login(cluster, name, members[name])
        assert client.last.status_code == 302, client.last.text
        done = client.post("/-/broadsheet/visibility/data/minutes", data={"operation": verb})
        assert done.status_code == 200, done.text
    entries = store.audit_entries(db, table="minutes", limit=2)
    assert [(e["operation"], e["actor"]) for e in entries] == [("unpublish", "bob"), ("publish", "alice")]


def test_wrong_passwords_are_throttled(cluster, members):
    for _ in range(5):
        assert login(cluster, "bob", "not-his-password").last.status_code == 401
    refused = login(cluster, "bob", members["bob"]).last
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) > 0
    assert "Too many failed logins" in refused.text
    # Someone else is not locked out by bob's attacker.
    assert login(cluster, "alice", members["alice"]).last.status_code == 302


def test_an_unknown_user_or_a_bad_name_is_a_clear_refusal(cluster):
    assert "Wrong user name or password" in login(cluster, "mallory", "whatever-123").last.text
    result = CliRunner().invoke(
        cli, ["user", "add", "bad name!", "--password-stdin", "--team-db", str(cluster.primary.root / "team.db")],
        input="long-enough-1\n",
    )
    assert result.exit_code != 0 and "user name" in result.output.lower()


def test_logout_ends_the_session_for_a_copy_of_the_cookie_too(cluster, members):
    client = login(cluster, "alice", members["alice"])
    cookie = client.cookies["ds_actor"]
    control = httpx.Client(base_url=cluster.primary.control_url, cookies={"ds_actor": cookie}, timeout=30)
    assert logged_in(client) and control.get("/tables").status_code == 200

    assert client.post("/-/logout").status_code == 302

    replay = httpx.Client(base_url=cluster.primary.url, cookies={"ds_actor": cookie}, timeout=30)
    assert not logged_in(replay)
    assert control.get("/tables").status_code == 401
    assert "session has ended" in control.get("/tables").json()["error"]


def test_removing_a_member_ends_their_sessions(cluster):
    add_user(cluster, "carol", "carol-password-3")
    client = login(cluster, "carol", "carol-password-3")
    assert logged_in(client)
    result = CliRunner().invoke(cli, ["user", "remove", "carol", "--team-db", str(cluster.primary.root / "team.db")])
    assert result.exit_code == 0, result.output
    assert not logged_in(client)


@pytest.mark.parametrize(
    "headers, content",
    [
        ({"Origin": "http://evil.example"}, None),
        ({"Origin": "http://evil.example", "Content-Type": "application/x-www-form-urlencoded"}, b"a=1"),
        ({"Origin": "http://evil.example", "Content-Type": "text/plain"}, b"{}"),
        ({"Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"}, b"{}"),
    ],
    ids=["plain", "form", "text", "json"],
)
def test_another_site_cannot_publish_with_a_members_cookie(cluster, db, members, headers, content):
    create_table(cluster, "csrf_target", [{"id": 1}]) if "csrf_target" not in store.user_tables(db) else None
    cookie = login(cluster, "alice", members["alice"]).cookies["ds_actor"]
    control = httpx.Client(base_url=cluster.primary.control_url, cookies={"ds_actor": cookie}, timeout=30)
    before = (store.public_tables(db), store.audit_entries(db, limit=3))
    response = control.post("/tables/csrf_target/publish", headers=headers, content=content)
    assert response.status_code == 403, response.text
    assert (store.public_tables(db), store.audit_entries(db, limit=3)) == before
    # From the control plane's own origin, the same cookie may.
    own = control.post("/tables/csrf_target/unpublish", headers={"Origin": cluster.primary.control_url})
    assert own.status_code == 200, own.text


@pytest.mark.parametrize(
    "cookie_headers",
    [
        lambda dead: [("Cookie", f"x=1; ds_actor ={dead}")],
        lambda dead: [("Cookie", "x=1"), ("Cookie", f"ds_actor={dead}")],
        lambda dead: [("Cookie", f"a=ds_actor=; ds_actor ={dead}")],
    ],
    ids=["space before =", "two headers", "decoy"],
)
def test_an_ended_session_cannot_come_back_in_another_cookie_spelling(cluster, members, cookie_headers):
    client = login(cluster, "alice", members["alice"])
    dead = client.cookies["ds_actor"]
    assert client.post("/-/logout").status_code == 302
    headers = cookie_headers(dead)
    page = httpx.get(f"{cluster.primary.url}/data/airports.json?_size=1", headers=headers, timeout=30)
    assert page.status_code in (401, 403), page.text
    write = httpx.post(f"{cluster.primary.url}/data/airports/-/insert", headers=headers,
                       json={"row": {"faa": "ZZZ"}}, timeout=30)
    assert write.status_code in (401, 403), write.text

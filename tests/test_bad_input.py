"""Publishing something that cannot be published: a clear error, no change."""

import pytest
from click.testing import CliRunner

from broadsheet.cli import cli
from conftest import settle
from primary import store


def snapshot(cluster, db):
    settle(cluster)  # nothing of an earlier test still on its way
    return (
        store.public_tables(db),
        db.execute("SELECT count(*) FROM _public_audit_log").fetchone()[0],
        cluster.public_pos().txid,
    )


@pytest.mark.parametrize(
    "table, message",
    [
        ("no_such_table", "does not exist"),
        ("_public_tables", "internal table"),
        ("_public_audit_log", "internal table"),
        ("sqlite_master", "internal table"),
        ("sqlite_sequence", "internal table"),
        ('bad "quoted\' ñame 🙂', "does not exist"),
        ("", "non-empty"),
    ],
)
@pytest.mark.parametrize("command", ["publish", "unpublish"])
def test_bad_table_names_get_a_clear_error(cluster, db, table, message, command):
    before = snapshot(cluster, db)
    result = CliRunner().invoke(cli, [command, table, "--data-db", str(cluster.primary.data_db)])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert snapshot(cluster, db) == before


def test_publishing_twice_changes_nothing_the_second_time(cluster, db):
    runner = CliRunner()
    result = runner.invoke(cli, ["publish", "airports", "--data-db", str(cluster.primary.data_db)])
    assert result.exit_code == 0 and "already public" in result.output
    before = snapshot(cluster, db)
    result = runner.invoke(cli, ["publish", "airports", "--data-db", str(cluster.primary.data_db)])
    assert snapshot(cluster, db) == before


# -- over HTTP: Datasette's write API and the control plane ---------------------

import httpx  # noqa: E402


def _post(url, body=None, token=None, content=None, **headers):
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if content is not None:
        headers.setdefault("Content-Type", "application/json")
        return httpx.post(url, content=content, headers=headers, timeout=30)
    return httpx.post(url, json=body, headers=headers, timeout=30)


def _airports(db):
    return db.execute("SELECT count(*), total(alt) FROM airports").fetchone()


@pytest.mark.parametrize(
    "path, body, content, use_token, status, message",
    [
        ("/airports/-/insert", None, b'{"rows": [{"faa": "BAD"', True, 400, "Invalid JSON"),
        ("/airports/-/insert", {"rows": "not a list"}, None, True, 400, "must be a list"),
        ("/airports/-/insert", {"rows": [{"faa": "BAD", "no_such_column": 1}]}, None, True, 400, "no_such_column"),
        ("/no_such_table/-/insert", {"rows": [{"a": 1}]}, None, True, 404, "not found"),
        ("/_public_tables/-/insert", {"rows": [{"table_name": "planes"}]}, None, True, 403, "Permission denied"),
        ("/_public_audit_log/-/insert", {"rows": [{"id": 99}]}, None, True, 403, "Permission denied"),
        ("/_public_tables/-/drop", {"confirm": True}, None, True, 403, "Permission denied"),
        ('/bad~22quoted~27~20n~C3~A4me/-/insert', {"rows": [{"a": 1}]}, None, True, 404, "not found"),
        ("/airports/-/insert", {"rows": [{"faa": "BAD"}]}, None, False, 401, "Authentication required"),
        ("/airports/-/insert", {"rows": [{"faa": "BAD"}]}, None, "dstok_forged.signature", 401, "Invalid token"),
        ("/airports/-/insert", None, b'{"rows": [' + b'{"faa": "X"},' * 1_000_000 + b'{}]}', True, 413, "over"),
        ("/airports/-/insert", None, b'{"rows": [' + b"[" * 50_000 + b"]" * 50_000 + b"]}", True, 400, "nested deeper"),
        ("/airports/-/insert", None, b'{"rows": [{"no_such_column": "' + b"[" * 5000 + b'"}]}', True, 400, "no_such_column"),
    ],
)
def test_write_api_bad_input(cluster, db, token, path, body, content, use_token, status, message):
    before = (_airports(db), snapshot(cluster, db))
    tok = token if use_token is True else (use_token or None)
    response = _post(f"{cluster.primary.url}/data{path}", body, tok, content)
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["ok"] is False
    assert message.lower() in json_text(payload).lower()
    assert (_airports(db), snapshot(cluster, db)) == before


def json_text(payload) -> str:
    import json

    return json.dumps(payload, ensure_ascii=False)


@pytest.mark.parametrize(
    "method, path, use_token, status, message",
    [
        ("POST", "/tables/no_such_table/publish", True, 404, "does not exist"),
        ("POST", "/tables/_public_tables/publish", True, 403, "internal table"),
        ("POST", "/tables/sqlite_master/publish", True, 403, "internal table"),
        ("POST", "/tables/bad%22quoted%27%20n%C3%A4me/publish", True, 404, "does not exist"),
        ("POST", "/tables/airports/publish?timeout=banana", True, 422, "timeout"),
        ("POST", "/tables/airports/publish?timeout=-1", True, 422, "timeout"),
        ("POST", "/tables/planes/publish", False, 401, "token is required"),
        ("POST", "/tables/planes/publish", "dstok_forged.signature", 401, "Invalid token"),
        ("GET", "/audit?limit=0", True, 422, "limit"),
        ("GET", "/publishes/999999", True, 404, "no record"),
    ],
)
def test_control_plane_bad_input(cluster, db, token, method, path, use_token, status, message):
    before = snapshot(cluster, db)
    headers = {}
    tok = token if use_token is True else (use_token or None)
    if tok:
        headers["Authorization"] = f"Bearer {tok}"
    response = httpx.request(method, f"{cluster.primary.control_url}{path}", headers=headers, timeout=30)
    assert response.status_code == status, response.text
    assert message.lower() in json_text(response.json()).lower()
    assert snapshot(cluster, db) == before

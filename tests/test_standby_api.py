"""The standby's status API in-process, on a plain file with a LiteFS-style
``-pos`` beside it: its position, and waits that end on time."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from broadsheet.litefs import Pos
from primary.settings import settings


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch):
    """The primary's settings are read once per process: read them again
    from this test's environment, and forget them after it (before
    monkeypatch puts the environment back)."""
    settings.cache_clear()
    yield
    settings.cache_clear()


def ltx_file(data_dir: Path, pos: Pos, committed_at: float, db: str = "data.db") -> Path:
    """An LTX file as LiteFS leaves one in its data directory (header and
    trailer; this API reads nothing else of it)."""
    import struct

    path = data_dir / "dbs" / db / "ltx" / f"{pos.txid:016x}-{pos.txid:016x}.ltx"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = b"LTX1" + struct.pack(">IIIQQqQ", 0, 4096, 1, pos.txid, pos.txid, int(committed_at * 1000), 1 << 63)
    path.write_bytes(header.ljust(100, b"\0") + b"\0" * 8 + struct.pack(">QQ", pos.checksum, 0))
    return path


@pytest.fixture
def standby_env(tmp_path, monkeypatch):
    from local.cluster import free_port

    data_db = tmp_path / "mnt" / "data.db"
    data_db.parent.mkdir()
    data_db.write_bytes(b"")
    Path(f"{data_db}-pos").write_text(str(Pos(41, 0xABC)))
    monkeypatch.setenv("BROADSHEET_STANDBY_ROOT", str(tmp_path))
    monkeypatch.setenv("BROADSHEET_STANDBY_DATA_DB", str(data_db))
    monkeypatch.setenv("BROADSHEET_STANDBY_LITEFS_DATA_DIR", str(tmp_path / "litefs"))
    monkeypatch.setenv("BROADSHEET_STANDBY_GUARD_ADDR", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("BROADSHEET_PRIVATE_PRIMARY_URL", "http://127.0.0.1:9")
    return tmp_path


def test_status_and_bounded_waits(standby_env):
    from primary.standby import api as standby_api

    with TestClient(standby_api.app) as client:
        status = client.get("/status").json()
        assert status["txid"] == 41 and status["role"] == "standby" and status["committed_at"] is None
        assert status["acknowledged_txid"] == 0 and status["refused"] is None
        assert client.get("/wait", params={"txid": 41}).json() == {"ok": True, "txid": 41, "checksum": f"{0xABC:016x}"}
        late = client.get("/wait", params={"txid": 42, "timeout": 0.2})
        assert late.status_code == 504 and late.json()["txid"] == 41
        assert "not 42" in late.json()["error"]
        for bad in ({"txid": -1}, {"txid": "x"}, {"txid": 1, "timeout": 0}, {"txid": 1, "timeout": 600}):
            assert client.get("/wait", params=bad).status_code == 422
        assert client.get("/status").json()["acknowledged_txid"] == 41


def test_what_a_standby_acknowledged_and_its_newest_commit_outlive_a_restart(standby_env):
    # Its newest transaction's commit time comes from LiteFS's newest LTX
    # file, so a standby that just restarted knows its lag (promote prints
    # it); what it acknowledged is kept beside LiteFS's files, not in them.
    import json

    from primary.standby import api as standby_api

    ltx_file(standby_env / "litefs", Pos(40, 0x1), 1_700_000_000.0)
    ltx_file(standby_env / "litefs", Pos(41, 0xABC), 1_700_000_123.5)
    with TestClient(standby_api.app) as client:
        assert client.get("/wait", params={"txid": 41}).status_code == 200
    mark = json.loads((standby_env / "standby-acknowledged.json").read_text())
    assert mark["txid"] == 41
    with TestClient(standby_api.app) as client:  # the standby restarted
        status = client.get("/status").json()
        assert status["committed_at"] == 1_700_000_123.5
        assert status["acknowledged_txid"] == 41
        # A newest LTX file that is not the copy's position says nothing of it.
        Path(f"{standby_env / 'mnt' / 'data.db'}-pos").write_text(str(Pos(39, 0x2)))
        assert client.get("/status").json()["committed_at"] is None


def test_a_refusing_standby_answers_a_wait_at_once(standby_env):
    import time

    from broadsheet.litefs import Pos as P
    from primary.standby import api as standby_api
    from primary.backup import Identity
    from primary.standby.guard import Refusal

    with TestClient(standby_api.app) as client:
        standby_api._standby.guard.refusal = Refusal("the primary's data.db is another data.db", 4, Identity(), time.time())
        started = time.monotonic()
        r = client.get("/wait", params={"txid": 3, "timeout": 5})
        assert r.status_code == 409 and "another data.db" in r.json()["error"]
        assert time.monotonic() - started < 1
        assert client.get("/status").json()["refused"]["primary_txid"] == 4
        assert P.read(standby_api._standby.data_db).txid == 41


def test_bad_standby_settings_are_refused_at_start(tmp_path):
    # Caught when the node starts, with the variable named, rather than as a
    # 500 (or a 504 that blames the standby) on every waited write, or a
    # backup loop that never prunes.
    import pytest

    from broadsheet.config import ConfigError
    from primary.node import PrimaryNode
    from primary.standby.node import StandbyNode

    base = {"BROADSHEET_ROOT": str(tmp_path), "DATASETTE_SECRET": "s"}
    for name, value in [
        ("BROADSHEET_STANDBY_WAIT_TIMEOUT", "soon"),
        ("BROADSHEET_STANDBY_WAIT_TIMEOUT", "0"),
        ("BROADSHEET_STANDBY_WAIT_TIMEOUT", "600"),  # the standby answers waits of 60 s at most
        ("BROADSHEET_STANDBY_URL", "standby-private:8006"),
        # A peer fencing cannot ask would let a second primary start.
        ("BROADSHEET_PEERS", "http://standby-private:20202,standby-2:20202"),
    ]:
        with pytest.raises(ConfigError, match=name):
            PrimaryNode.from_env({**base, name: value})
    assert PrimaryNode.from_env({**base, "BROADSHEET_STANDBY_WAIT_TIMEOUT": "2.5"})
    for name, value in [
        ("BROADSHEET_BACKUP_KEEP", "0"), ("BROADSHEET_BACKUP_INTERVAL", "-5"), ("BROADSHEET_PEERS", "primary-private:20202"),
        ("BROADSHEET_PRIVATE_PRIMARY_URL", "primary-private:20202"),
    ]:
        with pytest.raises(ConfigError, match=name):
            StandbyNode.from_env({**base, name: value})


def test_promote_refuses_a_standby_without_data_db(tmp_path):
    # A standby whose LiteFS is not mounted (stopped) or never received
    # data.db: promoting it would record epoch 1 (no newer than the old
    # primary's) and TXID 0, and start an empty primary that fences the
    # team's real one out.
    from click.testing import CliRunner

    from broadsheet.cli import cli

    env = {
        "BROADSHEET_ROOT": str(tmp_path), "DATASETTE_SECRET": "s",
        "BROADSHEET_PRIVATE_PRIMARY_URL": "http://127.0.0.1:9", "BROADSHEET_PEERS": "",
    }
    result = CliRunner().invoke(cli, ["promote"], env=env)
    assert result.exit_code == 1 and "no data.db" in result.output, result.output
    assert not (tmp_path / "promoted.json").exists()


def test_health_shows_a_standby_url_that_is_not_a_standby_as_not_connected():
    # BROADSHEET_STANDBY_URL pointing at the wrong service (a JSON 404 here):
    # /health says so instead of failing with a 500 (and the container's
    # health check with it).
    import asyncio
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from primary.control.routes import health

    class NotAStandby(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"detail": "Not Found"}).encode()
            self.send_response(404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotAStandby)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        info = asyncio.run(health.standby_info(url, 5))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert info.connected is False and "404" in info.error


@pytest.fixture
def serving(standby_env):
    """The standby's status API on a real port, in a thread: its URL."""
    import threading

    import httpx
    import uvicorn

    from local.cluster import free_port
    from conftest import wait_until
    from primary.standby import api as standby_api

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(standby_api.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/status", timeout=1).status_code == 200, timeout=20)
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_standby_holding_another_primarys_data_db_does_not_confirm_a_write(standby_env, serving, tmp_path, monkeypatch):
    # A primary started afresh (its volume lost, then restored) counts TXIDs
    # from 1 again while the standby, until LiteFS resyncs it, still holds the
    # old data.db far ahead: its TXID alone would "confirm" writes it does not
    # have. A standby ahead of the primary, or at the same TXID with another
    # checksum, has not got the write.
    import asyncio

    from primary.standby import acknowledged

    primary_db, standby_db = tmp_path / "data.db", tmp_path / "mnt" / "data.db"
    primary_db.write_bytes(b"")
    Path(f"{primary_db}-pos").write_text(str(Pos(3, 0x111)))
    monkeypatch.setenv("BROADSHEET_DATA_DB", str(primary_db))
    monkeypatch.setenv("BROADSHEET_STANDBY_URL", serving)
    monkeypatch.setenv("BROADSHEET_STANDBY_WAIT_TIMEOUT", "0.3")
    for standby_pos, confirmed in [(Pos(5000, 0x999), False), (Pos(3, 0x222), False), (Pos(3, 0x111), True), (Pos(2, 0x111), False)]:
        Path(f"{standby_db}-pos").write_text(str(standby_pos))
        missing = asyncio.run(acknowledged.wait_for(3))
        assert (missing is None) == confirmed, (standby_pos, missing)


def test_a_primary_does_not_start_below_what_its_standby_holds(standby_env, serving):
    # Asked before the primary's LiteFS starts, from its own newest LTX file.
    import time

    import httpx

    from local.cluster import free_port
    from broadsheet.litefs import NewestLtx
    from primary.standby.fencing import NewerCopyElsewhere, check_no_newer_copy

    def at(pos):
        return NewestLtx(pos, 0.0)

    def check(own, urls=(serving,), **kw):
        check_no_newer_copy(list(urls), own, cluster_id="c1", **kw)

    for own, words in [(None, "is empty"), (at(Pos(40, 0xABC)), "at TXID 40"), (at(Pos(41, 0x1)), "another data.db at the same TXID")]:
        with pytest.raises(NewerCopyElsewhere, match=words) as refused:
            check(own)
        assert "holds data.db TXID 41 (epoch 1)" in str(refused.value) and "Promote the standby" in str(refused.value)
    check(at(Pos(41, 0xABC)))  # the same data.db: an ordinary restart
    check(at(Pos(60, 0x2)))  # ahead of it: the standby is behind
    # What it acknowledged counts, even above what it holds now.
    assert httpx.get(f"{serving}/wait", params={"txid": 41}).status_code == 200
    Path(f"{standby_env / 'mnt' / 'data.db'}-pos").write_text(str(Pos(10, 0x3)))
    with pytest.raises(NewerCopyElsewhere, match="acknowledged writes .* up to TXID 41"):
        check(at(Pos(30, 0x4)))
    # A standby that does not answer: a primary with data of its own starts;
    # an empty one waits for it, then refuses.
    nobody = f"http://127.0.0.1:{free_port()}"
    check(at(Pos(5, 0x5)), urls=[nobody])
    started = time.monotonic()
    with pytest.raises(NewerCopyElsewhere, match="has not answered"):
        check(None, urls=[nobody], wait=1.0)
    assert time.monotonic() - started >= 1.0

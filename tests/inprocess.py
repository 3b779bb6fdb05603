"""The fast layer's primary: a real data.db on plain files, no LiteFS.

``plain_primary`` builds data.db exactly as the primary does on its first
start (``PrimaryNode.init_data_db`` with the sample data: ``airports``
public, ``planes`` private), runs a real publisher cycle on plain files into
public.db, and sets the environment the supervisor gives the primary's
processes (``PrimaryNode.env``), so that the control plane and the team's
Datasette read the same settings as in a cluster. It offers:

- ``control``: FastAPI's ``TestClient`` on the control plane's app, with a
  team token (``anonymous``: the same app, no token);
- ``team_site()``: the team's Datasette in-process (``datasette.client``)
  with the primary's plugin, ``--default-deny`` and its templates, as
  ``primary/node.py`` starts it, and the control plane served on
  ``BROADSHEET_CONTROL_URL`` in a thread, since the plugin makes every
  change to data.db through it over HTTP;
- ``publish()``: one publisher cycle, then ``public_rows`` / ``public_tables``
  read public.db as a read node would.

Without LiteFS no ``-pos`` file exists, so every TXID is 0: a flip returns at
once (the watermark already covers TXID 0) with ``public_txid`` 0, and public.db
changes only when the test runs ``publish()``. The public LiteFS's event
stream, which the control plane's tracker follows, is a stub that reports
TXID 0 (``public_litefs_events``); there are no read nodes. What TXIDs mean,
and propagation to read nodes, is the cluster layer's (tests marked
``cluster``).

Everything here runs in one process, where apsw's SQLite (the control plane,
the publisher) and Python's (Datasette) share POSIX locks on data.db without
knowing it: fine for one request at a time, which is how these tests run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import shutil
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import uvicorn
from datasette.app import Datasette
from datasette.plugins import pm
from datasette_auth_passwords.utils import hash_password
from fastapi.testclient import TestClient

import primary.datasette
from primary import store
from primary.control import auth, permissions
from primary.control.app import app as control_app
from primary.control.routes import health
from primary.datasette import team
from primary.node import TEMPLATES, PrimaryNode
from primary.publisher import Publisher
from primary.settings import settings

SECRET = "in-process-test-secret-0123456789abcdef"
TEAM_PASSWORD = "team-password-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.cache
def team_password_hash() -> str:
    """The bootstrap login ``team``'s hash (BROADSHEET_TEAM_PASSWORD_HASH),
    a PBKDF2 hash of datasette-auth-passwords' format with few iterations:
    the login checks it exactly as it checks a real one, in a millisecond
    rather than half a second."""
    return hash_password(TEAM_PASSWORD, iterations=1000)


def mint_token(actor: str = "tester", secret: str = SECRET, **kwargs) -> str:
    """A team token, signed as ``broadsheet create-token`` signs one
    (``restrictions=`` for a restricted one)."""
    return asyncio.run(auth.datasette(secret).create_token(actor, **kwargs))


@dataclass
class PlainPrimary:
    node: PrimaryNode
    publisher: Publisher
    token: str
    _exits: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _control: TestClient | None = None
    _site: "TeamSite | None" = None

    @property
    def control(self) -> TestClient:
        """The control plane's app through FastAPI's test client, with the
        team token; its lifespan (the propagation tracker) runs from the
        first use to the end of the test."""
        if self._control is None:
            if self._site is not None:
                raise RuntimeError("one control plane per test: use team_site().control beside the team site")
            client = TestClient(control_app, headers={"Authorization": f"Bearer {self.token}"})
            self._control = self._exits.enter_context(client)
        return self._control

    def anonymous(self, method: str, path: str, **kwargs) -> httpx.Response:
        """A request to the control plane without the team token."""
        return self.control.request(method, path, headers={"Authorization": ""}, **kwargs)

    @property
    def data_db(self) -> Path:
        return self.node.data_db

    @property
    def public_db(self) -> Path:
        return self.node.public_db

    def connect(self):
        """A connection to data.db, as the CLI and the publisher open it (apsw)."""
        return store.connect(str(self.data_db))

    def data(self, sql: str, params=()) -> list[tuple]:
        conn = self.connect()
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def create_table(self, name: str, rows: list[dict], pk: str = "id") -> None:
        """Create a table in data.db the way a team member's script would."""
        import sqlite_utils

        db = sqlite_utils.Database(self.data_db)
        db[name].insert_all(rows, pk=pk)
        db.close()

    def publish(self):
        """One publisher cycle (what the publisher process does on each
        data.db commit); its Cycle, or None when nothing changed."""
        return self.publisher.run_cycle()

    def public_rows(self, sql: str) -> list[tuple]:
        conn = sqlite3.connect(f"file:{self.public_db}?mode=ro", uri=True)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    def public_tables(self) -> set[str]:
        """The tables public.db holds and lists as public (what a read node serves)."""
        return {t for (t,) in self.public_rows("SELECT table_name FROM _public_tables")}

    def public_columns(self, table: str) -> list[str]:
        return [r[1] for r in self.public_rows(f"PRAGMA table_info([{table}])")]

    def audit(self, table: str | None = None, limit: int = 10) -> list[dict]:
        conn = self.connect()
        try:
            return store.audit_entries(conn, table=table, limit=limit)
        finally:
            conn.close()

    def team_site(self) -> "TeamSite":
        """The team's Datasette, with the control plane it talks to running
        (served on BROADSHEET_CONTROL_URL, in a thread)."""
        if self._site is None:
            if self._control is not None:
                raise RuntimeError("one control plane per test: use team_site().control beside the team site")
            self._site = TeamSite.start(self)
            self._exits.callback(self._site.close)
        return self._site


class TeamSite:
    """The team's Datasette in-process, driven like a browser or a script:
    ``get``/``post`` return httpx responses; ``token=`` or ``cookie=`` (a
    login's ``ds_actor``) say who is asking."""

    def __init__(self, plain: PlainPrimary, datasette: Datasette, served: "Served"):
        self.datasette = datasette
        self.loop = asyncio.new_event_loop()
        self._served = served
        # The control plane the plugin talks to, over real HTTP.
        self.control = httpx.Client(
            base_url=plain.node.control_url, headers={"Authorization": f"Bearer {plain.token}"}, timeout=30
        )

    @classmethod
    def start(cls, plain: PlainPrimary) -> "TeamSite":
        served = Served(control_app, plain.node.control_port, "the control plane")
        datasette = Datasette(
            [str(plain.data_db)], default_deny=True, template_dir=str(TEMPLATES), secret=SECRET
        )
        return cls(plain, datasette, served)

    def request(self, method: str, path: str, token: str | None = None, cookie: str | None = None, **kwargs):
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if cookie:
            headers["Cookie"] = f"ds_actor={cookie}"
        call = self.datasette.client.request(method, path, headers=headers, **kwargs)
        return self.loop.run_until_complete(call)

    def get(self, path: str, **kwargs) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def wait_until(self, condition, timeout: float = 10.0, message: str = "condition"):
        """Run the team Datasette's own tasks (its audit-log follower) until
        ``condition()`` is truthy; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not (value := condition()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {message}")
            self.loop.run_until_complete(asyncio.sleep(0.02))
        return value

    def login(self, name: str, password: str) -> httpx.Response:
        """POST the login form; the ``ds_actor`` cookie is in the response."""
        return self.post("/-/login", data={"username": name, "password": password})

    def close(self) -> None:
        self.control.close()
        pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        for task in pending:
            task.cancel()

        async def cancelled():
            await asyncio.gather(*pending, return_exceptions=True)

        self.loop.run_until_complete(cancelled())
        self.loop.close()
        self._served.stop()


class Served:
    """An ASGI app served by uvicorn on 127.0.0.1:``port``, in a thread."""

    def __init__(self, app, port: int, what: str):
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name=what, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


async def public_litefs_events(scope, receive, send):
    """The public LiteFS node's ``/events`` stream as the control plane's
    tracker reads it: public.db's position (TXID 0, without LiteFS), then
    silence. With it, the tracker has a record of TXID 0 (complete: there
    are no read nodes), as it would of a cluster's position, and the team's
    pages do not wait for read nodes to report a TXID nobody announced."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    for event in ({"type": "init", "data": {}}, {"type": "tx", "db": "public.db", "data": {"txID": f"{0:016x}"}}):
        await send({"type": "http.response.body", "body": json.dumps(event).encode() + b"\n", "more_body": True})
    while (await receive())["type"] != "http.disconnect":
        pass


def _installed_plugins() -> dict:
    """Plugins Datasette loaded from installed packages, by name."""
    return {pm.get_name(plugin): plugin for plugin, _ in pm.list_plugin_distinfo()}


def _quiet_supervisor():
    return SimpleNamespace(log=lambda *args: None)


@pytest.fixture(scope="session")
def public_litefs_port():
    """Where the public LiteFS's event stream is served (one for the session)."""
    port = free_port()
    served = Served(public_litefs_events, port, "the public LiteFS's event stream")
    yield port
    served.server.force_exit = True
    served.stop()


@pytest.fixture(scope="session")
def plain_primary_files(tmp_path_factory) -> Path:
    """data.db as a new primary makes it (sample data, publish state, its
    cluster id) and public.db after the publisher's first cycle: made once,
    copied for each test."""
    root = tmp_path_factory.mktemp("plain-primary") / "primary"
    node = PrimaryNode(root=root, secret=SECRET, sample=True)
    node.data_db.parent.mkdir(parents=True)
    node.public_db.parent.mkdir(parents=True)
    node.init_data_db(_quiet_supervisor())
    publisher = Publisher(node.data_db, node.public_db, node.watermark_file)
    publisher.run_cycle()
    publisher.close()
    return root


@pytest.fixture
def plain_primary(plain_primary_files, public_litefs_port, tmp_path, monkeypatch):
    """A primary without LiteFS: see this module's docstring."""
    node = PrimaryNode(
        root=tmp_path / "primary",
        secret=SECRET,
        sample=True,
        control_port=free_port(),
        # The control plane's tracker follows this stub, never another test's LiteFS.
        public_litefs_loopback_port=public_litefs_port,
        team_password_hash=team_password_hash(),
    )
    shutil.copytree(plain_primary_files, node.root)
    for name, value in {**node.env(), "BROADSHEET_TEAM_PASSWORD_HASH": node.password_hash()}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DATASETTE_LOAD_PLUGINS", "")
    for variable in ("BROADSHEET_MAX_BODY", "BROADSHEET_TEAM_DB", "BROADSHEET_PAGE_SIZE"):
        monkeypatch.delenv(variable, raising=False)
    # Per-process caches of settings read from the environment.
    settings.cache_clear()
    team.team.cache_clear()
    monkeypatch.setattr(permissions, "_checker", None)
    monkeypatch.setattr(health, "_epoch_seen", [])

    # The team's Datasette runs with broadsheet's plugin alone (launch()
    # sets DATASETTE_LOAD_PLUGINS=""): set aside what this environment has
    # installed (datasette-auth-passwords would add its own /-/login).
    installed = _installed_plugins()
    for plugin in installed.values():
        pm.unregister(plugin)
    registered = not pm.is_registered(primary.datasette)
    if registered:
        pm.register(primary.datasette, name="primary.datasette")
    publisher = Publisher(node.data_db, node.public_db, node.watermark_file)
    plain = PlainPrimary(node, publisher, mint_token())
    try:
        with plain._exits:
            yield plain
    finally:
        publisher.close()
        if registered:
            pm.unregister(primary.datasette)
        for name, plugin in installed.items():
            pm.register(plugin, name=name)
        settings.cache_clear()
        team.team.cache_clear()


@contextlib.contextmanager
def setting(monkeypatch, name: str, value: str):
    """One primary setting changed for a block (settings are cached per process)."""
    monkeypatch.setenv(name, value)
    settings.cache_clear()
    try:
        yield
    finally:
        monkeypatch.delenv(name)
        settings.cache_clear()

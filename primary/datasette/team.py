"""Team members who sign in with a password: named users, their browser
sessions, and a brake on guessing.

Kept in a small SQLite file of its own beside the primary's other private
state (never in data.db, whose tables the team can browse, and never on a
LiteFS mount). Both of the primary's HTTP processes read it: the team's
Datasette signs people in and out, and the control plane accepts a login
cookie only while its session is live, so ``/-/logout`` ends a session
everywhere, even for a copy of the cookie.

Passwords are stored as datasette-auth-passwords hashes (PBKDF2-SHA256), so
a hash made by its tools works here too. The bootstrap user ``team`` comes
from ``BROADSHEET_TEAM_PASSWORD`` / ``…_HASH`` and cannot be removed here.
"""

from __future__ import annotations

import functools
import re
import secrets
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass

from datasette_auth_passwords.utils import hash_password, verify_password

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    key TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS failures_key ON failures (key, at);
"""

BOOTSTRAP_USER = "team"
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
SESSION_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class Throttle:
    """At most ``attempts`` failed logins per ``window`` seconds for one user
    name, and ``attempts * 4`` from one client address."""

    attempts: int = 5
    window: float = 300.0


class TeamError(ValueError):
    """A bad user name, a duplicate, an unknown user: the message says which."""


class Throttled(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"Too many failed logins: try again in {retry_after} s")
        self.retry_after = retry_after


_SCHEMA_READY: set[str] = set()


@functools.cache
def team() -> "Team":
    """The primary's team store, from its settings (one per process)."""
    from ..settings import settings

    return Team(settings().team_db, settings().team_password_hash)


class Team:
    def __init__(self, path: str, bootstrap_hash: str | None = None, throttle: Throttle = Throttle()):
        self.path = path
        self.bootstrap_hash = bootstrap_hash or None
        self.throttle = throttle

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        # Once per file and process: a session check runs on every request
        # that carries a login cookie.
        if self.path not in _SCHEMA_READY:
            conn.executescript(SCHEMA)
            _SCHEMA_READY.add(self.path)
        return conn

    # -- users ---------------------------------------------------------------
    def add_user(self, name: str, password: str) -> None:
        if not USER_NAME.match(name or ""):
            raise TeamError("A user name is 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit")
        if name == BOOTSTRAP_USER:
            raise TeamError(f"{BOOTSTRAP_USER!r} is the bootstrap login, set by BROADSHEET_TEAM_PASSWORD")
        if len(password) < 8:
            raise TeamError("A password has at least 8 characters")
        with closing(self._connect()) as conn:
            try:
                conn.execute(
                    "INSERT INTO users (name, password_hash, created_at) VALUES (?, ?, ?)",
                    (name, hash_password(password), time.time()),
                )
            except sqlite3.IntegrityError:
                raise TeamError(f"User {name!r} already exists") from None

    def remove_user(self, name: str) -> None:
        """Remove a user and end every session of theirs."""
        with closing(self._connect()) as conn:
            if conn.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
                raise TeamError(f"No user {name!r}")
            conn.execute("DELETE FROM sessions WHERE user = ?", (name,))

    def users(self) -> list[str]:
        with closing(self._connect()) as conn:
            names = [n for (n,) in conn.execute("SELECT name FROM users ORDER BY name")]
        return ([BOOTSTRAP_USER] if self.bootstrap_hash else []) + names

    def _hash(self, conn: sqlite3.Connection, name: str) -> str | None:
        if name == BOOTSTRAP_USER:
            return self.bootstrap_hash
        row = conn.execute("SELECT password_hash FROM users WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    # -- signing in ------------------------------------------------------------
    def login(self, name: str, password: str, client: str) -> str:
        """A new session id for ``name``; TeamError for wrong credentials,
        Throttled once too many attempts failed. Slow on purpose (PBKDF2):
        call it from a thread."""
        keys = (f"user:{name}", f"client:{client}")
        with closing(self._connect()) as conn:
            self._check_throttle(conn, keys)
            # Counted as a failure before the slow check, so that guesses
            # sent at once cannot all pass the throttle; taken back on success.
            now = time.time()
            pending = [conn.execute("INSERT INTO failures (key, at) VALUES (?, ?)", (k, now)).lastrowid for k in keys]
            stored = self._hash(conn, name)
            # Hash even for an unknown user, so timing does not tell names.
            ok = verify_password(password, stored or hash_password("", salt="nobody"))
            if not (ok and stored):
                raise TeamError("Wrong user name or password")
            conn.execute("DELETE FROM failures WHERE rowid IN (?, ?)", pending)
            conn.execute("DELETE FROM failures WHERE key = ?", (keys[0],))
            session = secrets.token_urlsafe(24)
            now = time.time()
            conn.execute(
                "INSERT INTO sessions (id, user, created_at, expires_at) VALUES (?, ?, ?, ?)",
                (session, name, now, now + SESSION_SECONDS),
            )
            conn.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
        return session

    def _check_throttle(self, conn: sqlite3.Connection, keys: tuple[str, str]) -> None:
        window = self.throttle.window
        now = time.time()
        conn.execute("DELETE FROM failures WHERE at < ?", (now - window,))
        for key, limit in zip(keys, (self.throttle.attempts, self.throttle.attempts * 4)):
            count, oldest = conn.execute(
                "SELECT count(*), min(at) FROM failures WHERE key = ?", (key,)
            ).fetchone()
            if count >= limit:
                raise Throttled(max(1, int(oldest + window - now) + 1))

    def live(self, session: str | None, name: str | None) -> bool:
        """Whether ``session`` is a live session of user ``name``."""
        if not session or not name:
            return False
        with closing(self._connect()) as conn:
            row = conn.execute(
                "SELECT 1 FROM sessions WHERE id = ? AND user = ? AND expires_at > ?", (session, name, time.time())
            ).fetchone()
        return row is not None

    def logout(self, session: str | None) -> None:
        if session:
            with closing(self._connect()) as conn:
                conn.execute("DELETE FROM sessions WHERE id = ?", (session,))

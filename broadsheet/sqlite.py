"""Opening SQLite databases with apsw, and write transactions that wait
for the lock rather than fail."""

from __future__ import annotations

import contextlib

import apsw


def connect(path: str, readonly: bool = False) -> apsw.Connection:
    """``path`` (a file name or a ``file:`` URI), with a busy timeout of 10 s;
    created if missing unless ``readonly``."""
    flags = apsw.SQLITE_OPEN_URI | (
        apsw.SQLITE_OPEN_READONLY if readonly else apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    )
    conn = apsw.Connection(path, flags=flags)
    conn.set_busy_timeout(10_000)
    return conn


@contextlib.contextmanager
def immediate(conn: apsw.Connection):
    """A write transaction that takes the write lock up front, so that it
    waits on the busy timeout instead of failing to upgrade a read lock."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")

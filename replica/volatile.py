"""Views whose rows are not a function of the data: they call random() or
read the clock (or read a view that does), so a page of theirs changes while
the position stays, and is never kept (replica/cache.py).

SQLite says which functions a view calls: compiling it reports each one to
the authorizer (``SQLITE_FUNCTION``), through every view it reads, and a
column that merely has a function's name (``date``) is not a call. SQLite
also says which scalar functions are not deterministic
(``pragma_function_list``); the date and time functions are marked
deterministic because SQLite checks their ``'now'`` at run time, so they
count whatever their arguments."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Iterable

from broadsheet.names import quote

CLOCK = frozenset({"date", "time", "datetime", "julianday", "unixepoch", "strftime", "timediff"})
_DETERMINISTIC = 0x800  # SQLITE_DETERMINISTIC, in pragma_function_list's flags


def volatile_views(path: str | Path, views: Iterable[str]) -> frozenset[str]:
    """Those of ``views`` in the database at ``path`` that call such a
    function, or no longer compile (never kept either: their pages are
    errors). On a connection of its own, read-only: the view is compiled,
    never run."""
    views = list(views)
    if not views:
        return frozenset()
    try:
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return frozenset(views)  # not known to be a function of the data: none is kept
    try:
        changing = CLOCK | {
            name.lower()
            for (name,) in conn.execute(
                "SELECT name FROM pragma_function_list WHERE type = 's' AND flags & ? = 0", [_DETERMINISTIC]
            )
        }
        called: set[str] = set()

        def authorize(action, arg1, arg2, db, trigger):
            if action == sqlite3.SQLITE_FUNCTION:
                called.add(arg2.lower())
            return sqlite3.SQLITE_OK

        conn.set_authorizer(authorize)
        volatile = set()
        for view in views:
            called.clear()
            try:
                conn.execute(f"EXPLAIN SELECT * FROM {quote(view)}").fetchall()
            except sqlite3.Error:
                volatile.add(view)
                continue
            if called & changing:
                volatile.add(view)
        return frozenset(volatile)
    finally:
        conn.close()

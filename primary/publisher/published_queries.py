"""The saved queries public.db holds: inside a publish cycle's transaction,
those of data.db that compile against the public copy as the cycle leaves
it (primary/store/queries.py judges them), and what the cycle did to each,
for its record."""

from __future__ import annotations

import re

import apsw

from broadsheet.names import PUBLIC_QUERIES
from primary.store.queries import QueryError, SavedQuery, check_fields, compile_check, readable

# public.db's copy: what read nodes serve, without who saved it or when.
PUBLIC_SCHEMA = f"""CREATE TABLE IF NOT EXISTS main.{PUBLIC_QUERIES} (
    name TEXT PRIMARY KEY, sql TEXT NOT NULL, title TEXT, description TEXT
)"""


def publish_into(
    conn: apsw.Connection, listed: list[str], live: dict[str, SavedQuery], current: dict[str, SavedQuery]
) -> tuple[tuple[str, ...], dict[str, tuple[SavedQuery, str]], dict[str, SavedQuery]]:
    """Inside a publish cycle's transaction on public.db (data.db attached as
    ``src``), once its tables and views are in place: make public.db's
    saved queries (``current``) those of data.db (``live``, read in this
    transaction) that compile against it now. Returns the names whose public
    copy changed, the queries left out (name -> (query, why)), which the
    caller withdraws, and public.db's saved queries now."""
    wanted = dict(live)
    allowed = readable(conn, "main", listed)
    left_out: dict[str, tuple[SavedQuery, str]] = {}
    # Datasette serves a table before a stored query of the same name.
    shadowing = {
        n.lower() for (n,) in conn.execute("SELECT name FROM main.sqlite_master WHERE type IN ('table', 'view')")
    }
    # Every name of data.db, private ones too, as saving refuses them: a
    # query written straight into data.db must not carry one to public.db.
    taken = {n.lower() for (n,) in conn.execute("SELECT name FROM src.sqlite_master WHERE type IN ('table', 'view')")}
    for name, query in list(wanted.items()):
        try:
            check_fields(query)
            if name.lower() in shadowing:
                raise QueryError(f"a public table or view is named {name!r} now: save the query under another name")
            if name.lower() in taken:
                raise QueryError(f"a table or view of data.db is named {name!r}: save the query under another name")
            compile_check(conn, query.sql, allowed)
        except QueryError as exc:
            left_out[name] = (query, exc.message)
            del wanted[name]
    changed = sorted(n for n in set(wanted) | set(current) if wanted.get(n) != current.get(n))
    for name in changed:
        conn.execute(f"DELETE FROM main.{PUBLIC_QUERIES} WHERE name = ?", (name,))
        if name in wanted:
            q = wanted[name]
            conn.execute(
                f"INSERT INTO main.{PUBLIC_QUERIES} (name, sql, title, description) VALUES (?, ?, ?, ?)",
                (q.name, q.sql, q.title, q.description),
            )
    return tuple(changed), left_out, wanted


def changes(
    changed: tuple[str, ...],
    before: dict[str, SavedQuery],
    after: dict[str, SavedQuery],
    left_out: dict[str, tuple[SavedQuery, str]],
    actors: dict[str, str | None],
) -> dict[str, dict]:
    """What a publish cycle did to each saved query whose public copy it
    changed (``publish_into``), as its record tells it: name -> {"action":
    "published" | "changed" | "removed" | "withdrawn", "actor": who saved or
    removed it since the last cycle (None: nobody, or the publisher itself),
    "reason": why the publisher withdrew it (None otherwise)}."""
    told = {}
    for name in changed:
        if name in after:
            action = "changed" if name in before else "published"
        else:
            action = "withdrawn" if name in left_out else "removed"
        withdrawn = action == "withdrawn"
        told[name] = {
            "action": action,
            "actor": None if withdrawn else actors.get(name),
            "reason": brief(left_out[name][1]) if withdrawn else None,
        }
    return told


_NOT_PUBLIC = re.compile(r"reads '((?:[^']|'')+)', which is not public")
_NO_COLUMN = re.compile(r"no such column: (\S+)")


def brief(reason: str) -> str:
    """Why a query was withdrawn, in a few words: "its table airports is no
    longer public" rather than the compiler's whole message."""
    tables = [t.replace("''", "'") for t in _NOT_PUBLIC.findall(reason)]
    if len(tables) == 1:
        return f"its table {tables[0]} is no longer public"
    if tables:
        return f"its tables {', '.join(tables)} are no longer public"
    column = _NO_COLUMN.search(reason)
    if column:
        return f"its column {column.group(1)} is no longer public"
    return reason

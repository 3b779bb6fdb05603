"""The sandbox every read-node connection runs in: anonymous visitors send
arbitrary SQL (``?sql=``, ``?_where=``), so no function, pragma or table
function may reach memory, files or another database.

Datasette's own check (``validate_sql_select``) covers ``?sql=`` only, and
only by pattern; ``?_where=`` fragments are not checked at all, and this
SQLite is built with the FTS3 tokenizer interface (``fts3_tokenizer()`` hands
out a pointer, and its two-argument form plants one). So the check is
SQLite's authorizer, which sees every function, pragma and table a statement
uses once SQLite has parsed it, whatever the text looked like. It allows
what is known to be safe and refuses the rest, so a function a newer SQLite
adds is refused until someone adds it here.
"""

from __future__ import annotations

import sqlite3

from broadsheet.sql_functions import SAFE_FUNCTIONS, SAFE_TABLE_FUNCTIONS

# Pragmas that describe the schema and take the name of a table or index
# (Datasette's table and row pages use them, and visitors may too).
NAMING_PRAGMAS = frozenset(
    {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo", "foreign_key_list"}
)
# Pragmas that may be read but never given a value: with a value, a pragma
# sets something. The FTS modules read page_size (FTS3/4) and data_version
# (FTS5) themselves.
READABLE_PRAGMAS = frozenset(
    {"data_version", "database_list", "function_list", "max_page_count", "page_count", "page_size", "schema_version"}
)

# Pragmas that may be set: Datasette wraps connections in sqlite-utils, which
# turns this on. It concerns triggers, which only writes fire.
SETTABLE_PRAGMAS = frozenset({"recursive_triggers"})

# What a read-only statement does, as the authorizer reports it. Anything
# else (writes, schema changes, ATTACH, DETACH, transactions, ANALYZE, ...)
# is refused. The one exception is SQLite's own bookkeeping: connecting a
# virtual table reports updates of sqlite_master that never happen.
_READING = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE})


def confine(conn: sqlite3.Connection) -> None:
    """Install the sandbox on a connection Datasette has just opened."""
    # The PRAGMA, not ``SELECT … FROM pragma_module_list``: a SELECT reads
    # the schema, which waits on LiteFS's lock while it applies a large
    # transaction (a node joining a large public.db), and a Datasette whose
    # first connection fails that way exits before it is ready.
    modules = {row[0] for row in conn.execute("PRAGMA module_list")}
    forbidden_tables = frozenset(modules - SAFE_TABLE_FUNCTIONS)
    # A second lock on the "other databases" door: even without the
    # authorizer, SQLite itself refuses to ATTACH anything.
    conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)

    def authorize(action, arg1, arg2, _db, _trigger):
        if action == sqlite3.SQLITE_FUNCTION:
            return _allow(arg2.lower() in SAFE_FUNCTIONS)
        if action == sqlite3.SQLITE_PRAGMA:
            name = arg1.lower()
            return _allow(
                name in NAMING_PRAGMAS or name in SETTABLE_PRAGMAS or (name in READABLE_PRAGMAS and arg2 is None)
            )
        if action == sqlite3.SQLITE_READ:
            return _allow(arg1.lower() not in forbidden_tables)
        if action == sqlite3.SQLITE_UPDATE:
            return _allow(arg1 == "sqlite_master")
        return _allow(action in _READING)

    conn.set_authorizer(authorize)


def _allow(allowed: bool) -> int:
    return sqlite3.SQLITE_OK if allowed else sqlite3.SQLITE_DENY

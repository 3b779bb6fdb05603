"""What a database holds, as SQLite itself reports it: ``PRAGMA table_list``
says which tables are ordinary, virtual (full-text indexes, R*Trees) or a
virtual table's shadow tables, and which are views. Which table a full-text
table indexes is its ``content=`` option (broadsheet/fts.py), read from the
schema SQLite keeps.

(Datasette's ``detect_fts`` answers the same for one table of the main
database; the publisher asks about data.db attached as ``src``, and wants
every full-text table of a table, so it asks ``table_list`` itself.)
"""

from __future__ import annotations

import apsw

from broadsheet import fts
from broadsheet.names import is_internal, quote


def _table_list(conn: apsw.Connection, schema: str) -> list[tuple[str, str]]:
    """(name, type) of everything in ``schema``: type is "table", "view",
    "virtual" or "shadow"."""
    return [(name, type_) for _, name, type_, *_ in conn.execute(f"PRAGMA {quote(schema)}.table_list")]


def user_tables(conn: apsw.Connection, schema: str = "main") -> list[str]:
    """A team's own tables, the ones that can be published: ordinary tables
    that are not internal; not virtual (full-text tables follow the table
    they index), not a virtual table's shadow tables."""
    return sorted(name for name, type_ in _table_list(conn, schema) if type_ == "table" and not is_internal(name))


def views(conn: apsw.Connection, schema: str = "main") -> list[str]:
    # The schema table says which are views, without table_list's work of
    # counting each view's columns (the publisher asks once per view).
    return [n for (n,) in conn.execute(f"SELECT name FROM {quote(schema)}.sqlite_master WHERE type = 'view' ORDER BY name")]


def virtual_tables(conn: apsw.Connection, schema: str = "main") -> list[tuple[str, str]]:
    """Every virtual table of ``schema``: (name, its CREATE VIRTUAL TABLE), in
    the order of the schema."""
    virtual = {name for name, type_ in _table_list(conn, schema) if type_ == "virtual"}
    return [
        (name, sql)
        for name, sql in conn.execute(f"SELECT name, sql FROM {quote(schema)}.sqlite_master WHERE type = 'table'")
        if name in virtual
    ]


def fts_companions(conn: apsw.Connection, schema: str, table: str) -> list[tuple[str, str]]:
    """External-content full-text tables that index ``table``: (name, sql)."""
    return [(name, sql) for name, sql in virtual_tables(conn, schema) if fts.content_table(sql) == table]


def shadow_tables(conn: apsw.Connection, schema: str, virtual: list[str]) -> list[str]:
    """The shadow tables of the ``virtual`` tables (those SQLite reports as
    shadow tables, named for their virtual table and a suffix)."""
    listed = _table_list(conn, schema)
    every_virtual = [name for name, type_ in listed if type_ == "virtual"]
    found = []
    for name, type_ in listed:
        if type_ != "shadow":
            continue
        # Its virtual table: the longest whose name and "_" begin it.
        owners = [v for v in every_virtual if name.startswith(v + "_")]
        if owners and max(owners, key=len) in virtual:
            found.append(name)
    return sorted(found)

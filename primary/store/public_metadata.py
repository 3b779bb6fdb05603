"""``_public_metadata``: the titles, descriptions, licenses and sources
that read nodes show, for the public instance itself and for each public
table."""

from __future__ import annotations

import json

import apsw

from broadsheet.names import PUBLIC_METADATA, quote
from broadsheet.sqlite import immediate

from .catalogue import user_tables, views
from .errors import PublishError, TableNotFound
from .migrations import migrate

METADATA_FIELDS = ("title", "description", "license", "license_url", "source", "source_url")
INSTANCE = ""  # the metadata row of the public instance itself
# A table's column descriptions (column name -> text), as Datasette's
# metadata has them: JSON in the row's ``columns``.
COLUMNS = "columns"


def check_metadata(values: dict) -> dict:
    """The metadata a client sent, checked: known fields, text, http(s)
    URLs. None (or "") clears a field."""
    unknown = set(values) - set(METADATA_FIELDS)
    if unknown:
        raise PublishError(f"Unknown metadata field(s): {', '.join(sorted(unknown))}; known: {', '.join(METADATA_FIELDS)}")
    for key, value in values.items():
        if value is not None and not isinstance(value, str):
            raise PublishError(f"{key} must be text")
        if value and key.endswith("_url") and not value.startswith(("https://", "http://")):
            raise PublishError(f"{key} must be an http(s) URL")
        if value and len(value) > 10_000:
            raise PublishError(f"{key} is longer than 10,000 characters")
    return {k: (v or None) for k, v in values.items()}


def set_metadata(conn: apsw.Connection, table: str, values: dict) -> dict:
    """Set (merge) the metadata of ``table`` (INSTANCE for the instance).
    Shown on read nodes for the instance and for public tables only."""
    values = check_metadata(values)
    with immediate(conn):
        migrate(conn)
        merged = write_metadata(conn, table, values)
    return {k: v for k, v in merged.items() if v and k != COLUMNS}


def write_metadata(conn: apsw.Connection, table: str, values: dict, columns: dict | None = None) -> dict:
    """Merge checked ``values`` (and, if given, column descriptions) into
    what ``table`` has, in the caller's transaction."""
    if table != INSTANCE and table not in user_tables(conn) + views(conn):
        raise TableNotFound(f"Table {table!r} does not exist in data.db", table)
    current = metadata(conn).get(table, {})
    merged = {**{k: current.get(k) for k in METADATA_FIELDS}, **values}
    described = {**current.get(COLUMNS, {}), **(columns or {})}
    conn.execute(
        f"INSERT OR REPLACE INTO {PUBLIC_METADATA} (table_name, {', '.join(METADATA_FIELDS)}, {COLUMNS})"
        f" VALUES (?, {', '.join('?' for _ in METADATA_FIELDS)}, ?)",
        (table, *(merged[k] for k in METADATA_FIELDS), json.dumps(described) if described else None),
    )
    return {**merged, COLUMNS: described} if described else merged


def metadata(conn: apsw.Connection, schema: str = "main") -> dict[str, dict]:
    """Every metadata row: table name ('' for the instance) -> its fields that
    are set (``columns``: its column descriptions, a dict)."""
    try:
        cursor = conn.execute(
            f"SELECT table_name, {', '.join(METADATA_FIELDS)}, {COLUMNS} FROM {quote(schema)}.{PUBLIC_METADATA}"
        )
    except apsw.SQLError:
        return {}  # a data.db from before metadata (or before column descriptions: migrate() adds them)
    found = {}
    for row in cursor:
        fields = {k: v for k, v in zip(METADATA_FIELDS, row[1:]) if v}
        if row[-1]:
            fields[COLUMNS] = json.loads(row[-1])
        found[row[0]] = fields
    return found

"""data.db as the team's Datasette reads it: through its own connections
(Python's SQLite), never apsw's in this process (see control_plane.py)."""

from __future__ import annotations

from pathlib import Path

from broadsheet.names import PUBLIC_TABLES

from .. import store
from ..settings import settings
from ..store import PublishSpec


def data_db_name() -> str:
    return Path(settings().data_db).stem


async def read_data_db(datasette, read):
    """``read(conn)`` on one of this Datasette's own read connections to
    data.db (Python's SQLite), never apsw's here: see control_plane.py."""
    return await datasette.get_database(data_db_name()).execute_fn(read)


async def public_specs(datasette) -> dict[str, PublishSpec]:
    """Every public table's spec, read on every team page view: through
    Datasette's own connection to data.db. A connection of apsw's SQLite in
    this process would, on closing, drop every POSIX lock the process holds
    on data.db (SQLite keeps its locks straight only among connections of one
    library), the write API's included, and LiteFS fails the next commit."""
    try:
        rows = (await datasette.get_database(data_db_name()).execute(f"SELECT table_name, spec FROM {PUBLIC_TABLES}")).rows
    except Exception as exc:  # a data.db broadsheet has not touched yet
        if "no such table" not in str(exc):
            raise
        return {}
    return {name: PublishSpec.from_json(spec) for name, spec in rows}


async def metadata_of(datasette, table: str) -> dict:
    return (await read_data_db(datasette, store.metadata)).get(table, {})

"""data.db's tables as the team sees them: each of its own tables, with the
spec it is public under (None: private). The control plane's ``GET /tables``
and ``broadsheet tables`` both list this."""

from __future__ import annotations

from dataclasses import dataclass

import apsw

from broadsheet.names import quote

from .catalogue import user_tables
from .spec import PublishSpec
from .visibility import public_specs


@dataclass(frozen=True)
class TableEntry:
    table: str
    spec: PublishSpec | None  # None: private
    rows: int | None = None  # counted only when asked (a full scan)

    @property
    def public(self) -> bool:
        return self.spec is not None

    @property
    def partial(self) -> bool:
        return self.spec is not None and not self.spec.whole


def tables(conn: apsw.Connection, count_rows: bool = False) -> list[TableEntry]:
    """Every user table of data.db (``user_tables``), by name."""
    specs = public_specs(conn)
    return [
        TableEntry(
            table,
            specs.get(table),
            conn.execute(f"SELECT count(*) FROM {quote(table)}").fetchone()[0] if count_rows else None,
        )
        for table in user_tables(conn)
    ]

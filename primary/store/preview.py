"""What a flip would expose, before it happens: computed on the primary from
data.db alone (read-only), never touching public.db."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import apsw

from broadsheet.names import quote

from .catalogue import views
from .errors import PublishError
from .spec import PublishSpec, SpecError
from .visibility import check_publishable, check_spec, public_specs, spec_columns

SAMPLE_ROWS = 5


@dataclass(frozen=True)
class Preview:
    table: str
    spec: dict
    columns: list[str]  # the columns read nodes will serve
    rows: int  # rows that will be public
    total_rows: int
    sample: list[dict]  # the first rows, exactly as read nodes will serve them
    estimated_bytes: int  # of the published values
    public_now: bool
    # For a table public already: what the new spec adds and takes away.
    columns_added: list[str] = field(default_factory=list)
    columns_removed: list[str] = field(default_factory=list)
    rows_added: int = 0
    rows_removed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def preview(conn: apsw.Connection, table: str, spec: PublishSpec) -> Preview:
    """Raises PublishError (as publishing would) for a table or spec
    that cannot be published."""
    check_publishable(conn, table)
    if table in views(conn):
        if not spec.whole:
            raise PublishError("A view is published whole: it has no columns or rows to choose", table)
    else:
        check_spec(conn, table, spec)
    columns = spec_columns(conn, table, spec)
    t = quote(table)
    where = f" WHERE ({spec.where})" if spec.where else ""
    # Masked columns as read nodes will serve them: their masks' values.
    cols = ", ".join(spec.select_sql(c) for c in columns)
    (total,) = conn.execute(f"SELECT count(*) FROM {t}").fetchone()
    size = " + ".join(f"ifnull(length(CAST({quote(c)} AS BLOB)), 0)" for c in columns)
    rows, estimated = conn.execute(f"SELECT count(*), total({size}) FROM (SELECT {cols} FROM {t}{where})").fetchone()
    sample = [dict(zip(columns, row)) for row in conn.execute(f"SELECT {cols} FROM {t}{where} LIMIT {SAMPLE_ROWS}")]
    current = public_specs(conn).get(table)
    result = Preview(
        table=table,
        spec=spec.to_dict(),
        columns=columns,
        rows=rows,
        total_rows=total,
        sample=sample,
        estimated_bytes=int(estimated),
        public_now=current is not None,
    )
    if current is None:
        return result
    try:
        before = spec_columns(conn, table, current)
    except SpecError:
        before = []  # the current spec no longer fits: the table is on its way to private
    # A row is public where the filter is true, as a WHERE clause takes it:
    # NULL (a NULL column compared) is not, so NOT of it is NULL too, not
    # true. iif() tests its condition exactly as WHERE does.
    old = f"({current.where})" if current.where else "1"
    new = f"({spec.where})" if spec.where else "1"
    added, removed = conn.execute(
        f"SELECT total(iif({new}, iif({old}, 0, 1), 0)), total(iif({old}, iif({new}, 0, 1), 0)) FROM {t}"
    ).fetchone()
    return Preview(
        **{
            **result.as_dict(),
            "columns_added": [c for c in columns if c not in before],
            "columns_removed": [c for c in before if c not in columns],
            "rows_added": int(added),
            "rows_removed": int(removed),
        }
    )

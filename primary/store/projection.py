"""A published table as public.db holds it: the projection of data.db's
table through its publish spec.

The public copy has only the published columns, and only the constraints,
indexes, foreign keys and full-text indexes that mention nothing excluded
or masked (a masked column is a plain column without a type, so it holds
exactly what its mask computes):
no private table or column name ever reaches public.db's schema. A table
published whole keeps data.db's own CREATE TABLE text (every constraint,
collation and generated column), unless it names a table that is not public
(a foreign key): then, like a partial projection, its schema is generated
from what SQLite reports about it.

Everything here reads through one connection that has data.db attached as
``src`` (the publisher's), so a projection belongs to one snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import apsw

from broadsheet.names import literal, quote

from .catalogue import fts_companions
from .spec import PublishSpec, SpecError


@dataclass(frozen=True)
class Projection:
    table: str
    spec: PublishSpec
    columns: tuple[str, ...]  # published, in table order, insertable (no generated ones)
    create_sql: str
    indexes: tuple[tuple[str, str], ...]  # (name, CREATE INDEX …)
    full_text: tuple[tuple[str, str], ...] = field(default=())  # (name, CREATE VIRTUAL TABLE …)
    has_rowid: bool = True
    visible: tuple[str, ...] = ()  # every column the copy has (generated ones too)

    @property
    def filter_sql(self) -> str:
        """`` AND (filter)`` for a WHERE clause, or ''."""
        return f" AND ({self.spec.where})" if self.spec.where else ""

    @property
    def select_sql(self) -> str:
        """The published columns as the publisher selects them from data.db:
        a masked column as its mask, under the column's name."""
        return ", ".join(self.spec.select_sql(c) for c in self.columns)

    def signature(self) -> list[tuple[str, str, str]]:
        """What public.db's schema holds for this table once copied: compared
        with ``copied_signature`` to tell whether it must be copied again."""
        return sorted(
            [
                ("table", self.table, self.create_sql),
                *(("index", n, s) for n, s in self.indexes),
                *(("fts", n, s) for n, s in self.full_text),
            ]
        )


def copied_signature(conn: apsw.Connection, table: str) -> list[tuple[str, str, str]]:
    """public.db's schema for ``table`` as it is (the ``main`` schema)."""
    rows = conn.execute(
        "SELECT type, name, sql FROM main.sqlite_master WHERE tbl_name = ? AND type IN ('table', 'index')"
        " AND sql IS NOT NULL",
        (table,),
    ).fetchall()
    return sorted([*(tuple(r) for r in rows), *(("fts", n, s) for n, s in fts_companions(conn, "main", table))])


@dataclass(frozen=True)
class TableShape:
    """A table as SQLite reports it: what a spec is checked against, and a
    projection built from. One home for the rules every caller shares."""

    xinfo: tuple  # PRAGMA table_xinfo rows
    rowid: bool  # a rowid table (not WITHOUT ROWID)

    @classmethod
    def read(cls, conn: apsw.Connection, table: str, schema: str = "main") -> "TableShape":
        xinfo = tuple(conn.execute(f"PRAGMA {quote(schema)}.table_xinfo({literal(table)})").fetchall())
        return cls(xinfo, has_rowid(conn, schema, table))

    @property
    def columns(self) -> list[str]:
        return [row[1] for row in self.xinfo]

    @property
    def generated(self) -> set[str]:
        return {row[1] for row in self.xinfo if row[6] in (2, 3)}

    @property
    def pk(self) -> list[str]:
        return [row[1] for row in sorted((r for r in self.xinfo if r[5]), key=lambda r: r[5])]

    @property
    def rowid_alias(self) -> str | None:
        """The INTEGER PRIMARY KEY: the rowid, the row's identity on read nodes."""
        pk = self.pk
        if self.rowid and len(pk) == 1 and next(r[2] for r in self.xinfo if r[1] == pk[0]).upper() == "INTEGER":
            return pk[0]
        return None

    def published(self, spec: PublishSpec) -> list[str]:
        """The columns ``spec`` publishes (SpecError if it no longer fits)."""
        chosen = spec.published_columns(self.columns, self.generated, self.rowid_alias)
        in_key = [c for c in spec.masked if c in self.pk]
        if in_key:
            # Masked values need not be unique: the key would not hold.
            raise SpecError(f"{in_key[0]!r} is part of the table's primary key (a row's identity) and cannot be masked")
        if not self.rowid and not set(self.pk) <= set(chosen):
            raise SpecError("A WITHOUT ROWID table can be published only with its whole primary key")
        return chosen


def project(
    conn: apsw.Connection,
    table: str,
    spec: PublishSpec,
    public: dict[str, set[str]],
    shape: TableShape | None = None,
) -> Projection:
    """``table`` of ``src`` as ``spec`` publishes it, given the tables public
    in this cycle with their published columns (a foreign key survives only
    if everything it names is public). Raises SpecError if the spec no
    longer fits the table."""
    shape = shape or TableShape.read(conn, table, "src")
    xinfo, generated, pk, rowid, rowid_alias = shape.xinfo, shape.generated, shape.pk, shape.rowid, shape.rowid_alias
    published = shape.published(spec)
    insertable = tuple(c for c in published if c not in generated)
    masked = set(spec.masked)
    foreign_keys = _foreign_keys(conn, table)
    shown = [fk for fk in foreign_keys if _names_only_public(conn, fk, public) and not set(fk["from"]) & masked]
    fts_tables = [
        (name, sql)
        for name, sql in fts_companions(conn, "src", table)
        if set(_fts_columns(conn, name)) <= set(published) - masked
    ]
    if not spec.reshaped and len(shown) == len(foreign_keys):
        # Published whole and naming no private table: data.db's own schema.
        (create_sql,) = conn.execute(
            "SELECT sql FROM src.sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()
        indexes = tuple(
            (name, sql)
            for name, sql in conn.execute(
                "SELECT name, sql FROM src.sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL"
                " ORDER BY name",
                (table,),
            )
        )
        return Projection(table, spec, insertable, create_sql, indexes, tuple(fts_tables), rowid, tuple(published))

    chosen = set(published)
    definitions = []
    for cid, name, type_, notnull, default, pk_order, hidden in xinfo:
        if name not in chosen:
            continue
        parts = [quote(name)]
        if name in masked:
            # No type (no affinity to convert what the mask computes), no
            # NOT NULL (a mask may be NULL), no default.
            definitions.append(quote(name))
            continue
        if type_:
            parts.append(type_)
        if name == rowid_alias:
            parts.append("PRIMARY KEY")
        if notnull:
            parts.append("NOT NULL")
        if default is not None and hidden in (0, 1):
            parts.append(f"DEFAULT ({default})")
        definitions.append(" ".join(parts))
    if pk and rowid_alias is None and set(pk) <= chosen:
        definitions.append(f"PRIMARY KEY ({', '.join(map(quote, pk))})")
    for fk in shown:
        if set(fk["from"]) <= chosen:
            definitions.append(
                f"FOREIGN KEY ({', '.join(map(quote, fk['from']))}) REFERENCES {quote(fk['table'])}"
                + (f" ({', '.join(map(quote, fk['to']))})" if all(fk["to"]) else "")
            )
    create_sql = f"CREATE TABLE {quote(table)} (\n   " + ",\n   ".join(definitions) + "\n)"
    if not rowid:
        create_sql += " WITHOUT ROWID"
    indexes = []
    for _, index, unique, origin, partial in conn.execute(f"PRAGMA src.index_list({literal(table)})").fetchall():
        if origin != "c" or partial:
            continue  # UNIQUE/PRIMARY KEY constraints come with the table; partial indexes read a WHERE
        keys = [row for row in conn.execute(f"PRAGMA src.index_xinfo({literal(index)})") if row[5]]
        names = [row[2] for row in keys]
        if any(n is None for n in names) or not set(names) <= chosen - masked:
            continue  # an expression, or an excluded or masked column
        cols = ", ".join(f"{quote(r[2])}{' DESC' if r[3] else ''}" for r in keys)
        indexes.append((index, f"CREATE {'UNIQUE ' if unique else ''}INDEX {quote(index)} ON {quote(table)} ({cols})"))
    # A generated column kept here is a plain column of the copy: its values
    # are copied, its expression (which may read anything) is not.
    return Projection(
        table, spec, tuple(published), create_sql, tuple(sorted(indexes)), tuple(fts_tables), rowid, tuple(published)
    )


def _fts_columns(conn: apsw.Connection, fts_table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA src.table_xinfo({literal(fts_table)})") if r[6] == 0]


def _names_only_public(conn: apsw.Connection, fk: dict, public: dict[str, set[str]]) -> bool:
    """Whether a foreign key names only what is public: its table, and the
    columns it references there (the primary key when it names none)."""
    target = fk["table"]
    if target not in public:
        return False
    to = fk["to"] if all(fk["to"]) else TableShape.read(conn, target, "src").pk
    return bool(to) and set(to) <= public[target]


def _foreign_keys(conn: apsw.Connection, table: str) -> list[dict]:
    keys: dict[int, dict] = {}
    for id_, seq, target, from_, to, *_ in conn.execute(f"PRAGMA src.foreign_key_list({literal(table)})"):
        key = keys.setdefault(id_, {"table": target, "from": [], "to": []})
        key["from"].append(from_)
        key["to"].append(to)
    return list(keys.values())


def has_rowid(conn: apsw.Connection, schema: str, table: str) -> bool:
    try:
        conn.execute(f"SELECT _rowid_ FROM {quote(schema)}.{quote(table)} LIMIT 0").fetchall()
        return True
    except apsw.SQLError:
        return False

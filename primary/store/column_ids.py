"""Which column is which: a publish spec follows the column, not its name.

SQLite renames a column in place (``ALTER TABLE … RENAME COLUMN``, alone or
inside a transaction with other changes) and rewrites every reference to it
in the schema, the column list of a trigger's ``UPDATE OF`` included. So
when a table is published, broadsheet records its columns as they are then
(``_public_tables.column_identity``: name, declared type, NOT NULL, default,
key and generated-ness, in order) and puts a trigger on the table that names
every one of them (``_public_cols_<table>``: ``AFTER UPDATE OF … WHEN 0``,
so it never does anything). SQLite keeps that list true under renames: it
says what each column recorded at publish time is called now. A dropped
column keeps its last name there.

The names a spec's meaning depends on (listed, excluded, read by its row
filter: ``PublishSpec.named_columns``) must denote the columns they did at
publish time. The table fails closed (``Record.problem`` says why) when:

- one of those names now denotes another column (two names swapped; a
  column renamed and another renamed or added under its old name) or no
  column (renamed, dropped);
- another recorded column answers to it too (one dropped, another renamed
  to its name);
- a column stands before it that is not a recorded column from before it:
  ALTER TABLE keeps columns in order and adds new ones at the end, so it
  was dropped and added again (or the schema was edited by hand);
- its column is defined otherwise (declared type, NOT NULL, default, key,
  generated), which no ALTER TABLE does in place;
- the trigger is gone or does not list them all (the table was rebuilt, or
  the trigger dropped by hand).

Columns the spec does not name may be renamed, dropped and added freely.

A table published whole without a row filter names no column: renaming,
adding or dropping its columns changes nothing about what is public, and
nothing here applies to it.

What a schema cannot tell: a named column dropped and one of the same name
and definition added again, when no recorded column after it survived (so
nothing but earlier columns stands before it). That column starts out empty
(or holding its default); what the team then writes into it is published, as
any write to a published column is.

Every function takes a connection with ``execute`` (apsw's or Python's
sqlite3), so the team's Datasette plugin uses them on its own connection.
"""

from __future__ import annotations

import json
import re
from dataclasses import astuple, dataclass

from broadsheet.names import PUBLIC_TABLES, literal, quote

TRIGGER_PREFIX = "_public_cols_"

# SQLite compares identifiers case-insensitively, in ASCII only.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold(name: str) -> str:
    return name.translate(_ASCII_LOWER)


@dataclass(frozen=True)
class Column:
    """A column as PRAGMA table_xinfo reports it, without its position."""

    name: str
    type: str
    notnull: bool
    default: str | None
    pk: int
    hidden: int

    @classmethod
    def from_xinfo(cls, row) -> "Column":
        _, name, type_, notnull, default, pk, hidden = row
        return cls(name, type_, bool(notnull), default, pk, hidden)

    def defined_as(self, other: "Column") -> bool:
        return astuple(self)[1:] == astuple(other)[1:]


def table_columns(conn, schema: str, table: str) -> list[Column]:
    return [Column.from_xinfo(row) for row in conn.execute(f"PRAGMA {quote(schema)}.table_xinfo({literal(table)})")]


def _triggers(conn, schema: str, table: str) -> list[tuple[str, str]]:
    """Our column triggers on ``table`` (by the table they sit on: a table
    renamed keeps its trigger, under the old name)."""
    return conn.execute(
        f"SELECT name, sql FROM {quote(schema)}.sqlite_master WHERE type = 'trigger' AND tbl_name = ?"
        " AND substr(name, 1, ?) = ?",
        (table, len(TRIGGER_PREFIX), TRIGGER_PREFIX),
    ).fetchall()


_NAME = r'"(?:[^"]|"")*"'
# The trigger as record() writes it; RENAME COLUMN rewrites each quoted
# name in place, quoted (embedded quotes doubled), and leaves the rest.
_UPDATE_OF = re.compile(rf"CREATE TRIGGER {_NAME} AFTER UPDATE OF ({_NAME}(?:, {_NAME})*) ON ")


def called_now(conn, schema: str, table: str) -> tuple[str, ...] | None:
    """What each column recorded at publish time is called now, from the
    trigger's column list (None: no trigger, several, or one we did not write)."""
    found = _triggers(conn, schema, table)
    if len(found) != 1:
        return None
    match = _UPDATE_OF.match(found[0][1] or "")
    if not match:
        return None
    return tuple(n[1:-1].replace('""', '"') for n in re.findall(_NAME, match.group(1)))


@dataclass(frozen=True)
class Record:
    """A published table's columns at publish time, and what SQLite says
    each is called now."""

    published: tuple[Column, ...]
    called_now: tuple[str, ...] | None

    def problem(self, columns: list[Column], names: set[str]) -> str | None:
        """Why one of the spec's ``names`` no longer denotes the column it
        did at publish time, given the table's ``columns`` now (None: each
        still does)."""
        if not names:
            return None
        if self.called_now is None or len(self.called_now) != len(self.published) or not self.published:
            return "its columns can no longer be followed (the publisher's column trigger is gone: was the table rebuilt?)"
        position = {fold(c.name): j for j, c in enumerate(columns)}
        # Which recorded columns answer to each name now (a dropped one to its last).
        claims: dict[str, list[int]] = {}
        for i, name in enumerate(self.called_now):
            claims.setdefault(fold(name), []).append(i)
        for name in sorted(names):
            i = next((k for k, c in enumerate(self.published) if fold(c.name) == fold(name)), None)
            if i is None:
                return f"{name!r} was not a column of the table when it was published"
            now = self.called_now[i]
            if fold(now) != fold(name):
                if fold(name) in position:
                    owners = [self.published[k].name for k in claims.get(fold(name), [])]
                    whose = f"the one published as {owners[0]!r}" if owners else "one added since"
                    return f"{name!r} now names another column ({whose})"
                if fold(now) not in position:
                    return f"{name!r} was renamed to {now!r}, which was dropped"
                return f"{name!r} was renamed to {now!r}"
            if fold(name) not in position:
                return f"{name!r} was dropped"
            others = [k for k in claims[fold(name)] if k != i]
            if others:
                return (
                    f"two published columns ({self.published[i].name!r} and {self.published[others[0]].name!r})"
                    f" are both called {name!r} now: one was dropped and the other renamed to its name"
                )
            # ALTER TABLE keeps columns in order and adds new ones at the
            # end: everything before this one must be a column published
            # before it, or it is a column dropped and added again.
            j = position[fold(name)]
            if any(not any(k < i for k in claims.get(fold(c.name), [])) for c in columns[:j]):
                return f"{name!r} is not where ALTER TABLE would have left it (was it dropped and added again?)"
            if not self.published[i].defined_as(columns[j]):
                return f"{name!r} is not defined as it was when published (was it dropped and added again?)"
        return None


def moved_by(names: set[str], renamed: dict[str, str], dropped: set[str], after: list[str]) -> str | None:
    """The same question for a rebuild whose operations are known (Datasette's
    alter API: columns ``renamed`` old -> new and ``dropped``, by their old
    names; ``after``: the table's columns afterwards): why one of the spec's
    ``names`` would no longer denote its column (None: each still does)."""
    folded_after = {fold(n) for n in after}
    became = {fold(new): old for old, new in renamed.items()}
    for name in sorted(names):
        new = None if name in dropped else renamed.get(name, name)
        if new is not None and fold(new) == fold(name):
            continue
        if fold(name) in folded_after:
            old = became.get(fold(name))
            return f"{name!r} now names another column ({f'the one published as {old!r}' if old else 'one added since'})"
        return f"{name!r} was dropped" if new is None else f"{name!r} was renamed to {new!r}"
    return None


def read(conn, schema: str, table: str) -> Record | None:
    """``table``'s record (None: nothing recorded yet, as for a table listed
    by writing ``_public_tables`` directly)."""
    row = conn.execute(
        f"SELECT column_identity FROM {quote(schema)}.{PUBLIC_TABLES} WHERE table_name = ?", (table,)
    ).fetchone()
    if row is None or row[0] is None:
        return None
    try:
        published = tuple(Column(*c) for c in json.loads(row[0]))
    except (ValueError, TypeError):
        published = ()  # not ours: it cannot vouch for anything
    return Record(published, called_now(conn, schema, table))


def record(conn, table: str) -> None:
    """Record ``table``'s columns as they are now and (re)create its trigger,
    in the caller's transaction on data.db (``main``), beside the row of
    ``_public_tables`` that lists it."""
    columns = table_columns(conn, "main", table)
    forget(conn, table)
    taken = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    name, n = TRIGGER_PREFIX + table, 1
    while name in taken:  # another table's, renamed from this name
        n += 1
        name = f"{TRIGGER_PREFIX}{table}_{n}"
    conn.execute(
        f"CREATE TRIGGER {quote(name)} AFTER UPDATE OF {', '.join(quote(c.name) for c in columns)}"
        f" ON {quote(table)} WHEN 0 BEGIN SELECT 1; END"
    )
    conn.execute(
        f"UPDATE {PUBLIC_TABLES} SET column_identity = ? WHERE table_name = ?",
        (json.dumps([astuple(c) for c in columns]), table),
    )


def forget(conn, table: str) -> None:
    """Drop ``table``'s trigger (in the caller's transaction)."""
    for name, _ in _triggers(conn, "main", table):
        conn.execute(f"DROP TRIGGER {quote(name)}")


def orphans(conn, listed: set[str]) -> list[str]:
    """Our triggers on tables that are not listed any more."""
    return [
        name
        for name, table in conn.execute(
            "SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger' AND substr(name, 1, ?) = ?",
            (len(TRIGGER_PREFIX), TRIGGER_PREFIX),
        ).fetchall()
        if table not in listed
    ]

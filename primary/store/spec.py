"""What of a table is public: the publish spec.

One value type, stored as JSON beside the table's name in data.db's
``_public_tables`` (same snapshot as the data), passed unchanged through the
CLI, the control plane, the table action and the publisher.

- ``PublishSpec()``: the whole table; columns added later are published too.
- ``columns``: exactly these columns; columns added later stay private.
- ``exclude_columns``: every column but these; columns added later are
  published.
- ``where``: a row filter, an SQL expression over the table's own columns
  (deterministic, built-in functions only, reading nothing else).
- ``masks``: column -> expression (``{"email": "NULL", "lat": "round(lat, 2)"}``):
  read nodes serve the expression's value under the column's name. The
  expression is checked as a row filter is; the publisher computes it on
  the primary, so the unmasked value never leaves it. A masked column must
  be published, and cannot be part of the primary key (the row's identity
  on read nodes) nor a generated column; while a table has masks, its
  generated columns are not published (their expressions may read a
  masked column).

A spec that no longer fits the table (a listed, excluded or filtered column
dropped or renamed) is not applied loosely: the table fails closed, private
until someone publishes it again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import apsw

from broadsheet.names import quote

# Deterministic built-in scalar functions a row filter may call. Anything
# else (random(), date('now'), an application function, an unknown name) is
# refused: the filter must give the same answer for a row whenever the
# publisher evaluates it.
FILTER_FUNCTIONS = frozenset(
    """
    abs char coalesce concat concat_ws format glob hex ifnull iif instr length like likelihood likely lower
    ltrim max min nullif octet_length printf quote replace round rtrim sign substr substring trim typeof
    unhex unicode unlikely upper
    json json_array json_array_length json_extract json_object json_quote json_type json_valid
    -> ->>
    acos asin atan atan2 ceil ceiling cos degrees exp floor ln log log10 log2 mod pi pow power radians sin
    sqrt tan trunc
    """.split()
)


def _check_one_expression(text: str, what: str = "The row filter") -> None:
    """One expression, so that ``AND (filter)`` (or ``(mask) AS column``)
    means what it says wherever the publisher puts it: outside quotes,
    parentheses balance and never close more than they opened, and there
    is no comment or semicolon."""
    depth, quote_char, i = 0, None, 0
    while i < len(text):
        c = text[i]
        if quote_char:
            if c == quote_char:
                quote_char = None
        elif c in "'\"`":
            quote_char = c
        elif c == "[":
            quote_char = "]"
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                raise SpecError(f"{what} closes a parenthesis it did not open")
        elif c == ";":
            raise SpecError(f"{what} must be one SQL expression, not several statements")
        elif text.startswith(("--", "/*"), i):
            raise SpecError(f"{what} may not contain a comment")
        i += 1
    if quote_char or depth:
        raise SpecError(f"{what} has an unclosed quote or parenthesis")


class SpecError(ValueError):
    """A spec that cannot be applied to its table; the message says why."""


@dataclass(frozen=True)
class PublishSpec:
    columns: tuple[str, ...] | None = None
    exclude_columns: tuple[str, ...] = ()
    where: str | None = None
    masks: tuple[tuple[str, str], ...] = ()  # (column, expression), in the order given

    @classmethod
    def from_dict(cls, data: dict | None) -> "PublishSpec":
        """From the JSON a client sends or data.db stores (None: whole table)."""
        data = data or {}
        if not isinstance(data, dict):
            raise SpecError("A publish spec is an object: {columns, exclude_columns, where, masks}")
        unknown = set(data) - {"columns", "exclude_columns", "where", "masks"}
        if unknown:
            raise SpecError(f"Unknown spec field(s): {', '.join(sorted(unknown))}")
        columns = data.get("columns")
        exclude = data.get("exclude_columns") or []
        where = data.get("where")
        for name, value in (("columns", columns), ("exclude_columns", exclude)):
            if value is not None and (
                not isinstance(value, list) or not all(isinstance(c, str) and c for c in value)
            ):
                raise SpecError(f"{name} must be a list of column names")
        if columns is not None and not columns:
            raise SpecError("columns must name at least one column")
        if columns is not None and exclude:
            raise SpecError("Give columns or exclude_columns, not both")
        if where is not None and (not isinstance(where, str) or not where.strip()):
            raise SpecError("where must be a non-empty SQL expression")
        masks = data.get("masks") or {}
        if not isinstance(masks, dict) or not all(
            isinstance(c, str) and c and isinstance(e, str) and e.strip() for c, e in masks.items()
        ):
            raise SpecError("masks must be an object of column name to a non-empty SQL expression")
        return cls(
            columns=tuple(columns) if columns is not None else None,
            exclude_columns=tuple(exclude),
            where=where.strip() if where else None,
            masks=tuple((c, e.strip()) for c, e in masks.items()),
        )

    @classmethod
    def from_json(cls, text: str | None) -> "PublishSpec":
        return cls.from_dict(json.loads(text) if text else None)

    def to_dict(self) -> dict:
        data: dict = {}
        if self.columns is not None:
            data["columns"] = list(self.columns)
        if self.exclude_columns:
            data["exclude_columns"] = list(self.exclude_columns)
        if self.where:
            data["where"] = self.where
        if self.masks:
            data["masks"] = dict(self.masks)
        return data

    def to_json(self) -> str | None:
        """None for the whole table (stored as NULL)."""
        data = self.to_dict()
        return json.dumps(data, sort_keys=True) if data else None

    @property
    def whole(self) -> bool:
        return self.columns is None and not self.exclude_columns and not self.where and not self.masks

    @property
    def partial_columns(self) -> bool:
        return self.columns is not None or bool(self.exclude_columns)

    @property
    def reshaped(self) -> bool:
        """Whether the public copy's schema is generated rather than data.db's
        own: some columns left out, or some masked (a masked column keeps
        neither its type, constraints nor indexes)."""
        return self.partial_columns or bool(self.masks)

    @property
    def masked(self) -> dict[str, str]:
        return dict(self.masks)

    def select_sql(self, column: str) -> str:
        """What the publisher selects from data.db for ``column``: its
        mask, named as the column, or the column itself."""
        mask = self.masked.get(column)
        return f"({mask}) AS {quote(column)}" if mask is not None else quote(column)

    def describe(self) -> str:
        parts = []
        if self.columns is not None:
            parts.append("columns " + ", ".join(self.columns))
        if self.exclude_columns:
            parts.append("all columns but " + ", ".join(self.exclude_columns))
        if self.where:
            parts.append(f"rows where {self.where}")
        if self.masks:
            parts.append("masked " + ", ".join(f"{c}={e}" for c, e in self.masks))
        return "; ".join(parts) or "the whole table"

    # -- against a table -----------------------------------------------------
    def published_columns(self, table_columns: list[str], generated: set[str], rowid_alias: str | None) -> list[str]:
        """The columns of a table with ``table_columns`` that this spec
        publishes, in table order. Raises SpecError if it no longer fits."""
        masked = [c for c, _ in self.masks]
        missing = [c for c in (self.columns or ()) + self.exclude_columns + tuple(masked) if c not in table_columns]
        if missing:
            raise SpecError(f"No such column(s): {', '.join(map(repr, missing))}")
        if self.whole:
            return list(table_columns)
        if rowid_alias is not None and rowid_alias in masked:
            raise SpecError(
                f"{rowid_alias!r} is the table's INTEGER PRIMARY KEY (its rowid, the row's identity on read"
                " nodes) and cannot be masked"
            )
        for column in masked:
            if column in generated:
                raise SpecError(f"{column!r} is a generated column: mask the columns it is computed from")
        if rowid_alias is not None and rowid_alias in self.exclude_columns:
            raise SpecError(
                f"{rowid_alias!r} is the table's INTEGER PRIMARY KEY (its rowid, the row's identity on read"
                " nodes) and cannot be excluded"
            )
        if self.columns is not None:
            chosen = [c for c in table_columns if c in self.columns]
            if rowid_alias is not None and rowid_alias not in chosen:
                raise SpecError(
                    f"{rowid_alias!r} is the table's INTEGER PRIMARY KEY (its rowid, the row's identity on read"
                    " nodes) and must be one of the columns"
                )
        else:
            chosen = [c for c in table_columns if c not in self.exclude_columns]
        if self.reshaped:
            # A generated column's expression may read an excluded or a
            # masked column.
            chosen = [c for c in chosen if c not in generated]
        unpublished = [c for c in masked if c not in chosen]
        if unpublished:
            raise SpecError(f"Masked column(s) not published: {', '.join(map(repr, unpublished))}")
        if not chosen:
            raise SpecError("The spec leaves no column to publish")
        return chosen

    def named_columns(self, table: str, columns: list[str]) -> set[str]:
        """Every column name the spec's meaning depends on: those it lists or
        excludes and those its row filter reads (SpecError if the filter is
        not valid over ``columns``). These must keep denoting the columns
        they did when the table was published."""
        return {
            *(self.columns or ()),
            *self.exclude_columns,
            *self.filter_columns(table, columns),
            *self.mask_columns(table, columns),
        }

    def check_where(self, table: str, columns: list[str]) -> None:
        """SpecError unless the row filter and every mask are pure,
        deterministic expressions over ``table``'s own ``columns``."""
        self.filter_columns(table, columns)
        self.mask_columns(table, columns)

    def mask_columns(self, table: str, columns: list[str]) -> set[str]:
        """The masked columns and every column of ``columns`` a mask reads,
        each mask checked exactly as the row filter is (filter_columns)."""
        names = {column for column, _ in self.masks}
        for column, mask in self.masks:
            # Checked where a row filter goes, too: a WHERE takes only a
            # scalar expression (no aggregate such as max(x), no window),
            # so the mask is one value per row.
            names |= _expression_columns(table, columns, mask, f"The mask of {column!r}")
        return names

    def filter_columns(self, table: str, columns: list[str]) -> set[str]:
        """The columns of ``columns`` the row filter reads. Refuses a row
        filter that is not a pure, deterministic expression over
        ``table``'s own ``columns``, asking SQLite: the filter is
        prepared (never run) against a table of those columns in an attached
        in-memory database named ``src``, as the publisher sees data.db, with
        double-quoted strings off (so a renamed column is an error, not a
        string) and under an authorizer that sees every table, column and
        function it would touch. The text itself must be one balanced
        expression: no comments, no semicolons, parentheses that close."""
        if not self.where:
            return set()
        return _expression_columns(table, columns, self.where, "The row filter")


def _expression_columns(table: str, columns: list[str], text: str, what: str) -> set[str]:
    """The columns of ``columns`` the expression ``text`` (a row filter or
    a mask) reads, checked as PublishSpec.filter_columns says."""
    _check_one_expression(text, what)
    conn = apsw.Connection(":memory:")
    try:
        conn.config(apsw.SQLITE_DBCONFIG_DQS_DML, 0)
        conn.config(apsw.SQLITE_DBCONFIG_DQS_DDL, 0)
        conn.execute("ATTACH ':memory:' AS src")
        conn.execute(f"CREATE TABLE src.{quote(table)} ({', '.join(map(quote, columns))})")
        sql = f"SELECT 1 FROM src.{quote(table)} WHERE ({text})"
        return _checked_reads(conn, table, sql, what) & set(columns)
    finally:
        conn.close()


def _checked_reads(conn: apsw.Connection, table: str, sql: str, what: str) -> set[str]:
    """Prepare ``sql`` (never run it) under an authorizer that allows one
    SELECT reading ``table`` of ``src`` and deterministic built-ins only;
    the columns it reads."""
    problems: list[str] = []
    reads: set[str] = set()
    selects = 0

    def authorizer(action, arg1, arg2, db_name, trigger):
        nonlocal selects
        if action == apsw.SQLITE_SELECT:
            selects += 1
            if selects > 1:
                problems.append("a subquery")
                return apsw.SQLITE_DENY
            return apsw.SQLITE_OK
        if action == apsw.SQLITE_READ:
            if arg1 != table or db_name != "src":
                problems.append(f"another table ({arg1})")
                return apsw.SQLITE_DENY
            reads.add(arg2)
            return apsw.SQLITE_OK
        if action == apsw.SQLITE_FUNCTION:
            if arg2.lower() not in FILTER_FUNCTIONS:
                problems.append(f"the function {arg2}() (not a deterministic built-in)")
                return apsw.SQLITE_DENY
            return apsw.SQLITE_OK
        problems.append("something other than an expression")
        return apsw.SQLITE_DENY

    conn.authorizer = authorizer
    try:
        conn.execute(f"EXPLAIN {sql}").fetchall()
    except apsw.Error as exc:
        if problems:
            raise SpecError(f"{what} may not use {problems[0]}") from None
        message = str(exc).removeprefix("SQLError: ")
        if message.startswith("no such table: "):
            # Only the table itself exists where the expression is checked.
            other = message.removeprefix("no such table: ")
            raise SpecError(f"{what} may not use another table ({other}), nor a subquery") from None
        raise SpecError(f"{what} is not valid SQL here: {message}") from None
    finally:
        conn.authorizer = None
    if problems:
        raise SpecError(f"{what} may not use {problems[0]}")
    return reads

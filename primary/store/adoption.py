"""Adopting whole SQLite files into data.db: their tables, views, indexes,
triggers and full-text tables (with their content), every table private,
with the metadata that came with them.

Copied with SQLite's own means: each source is attached read-only, each
object created from the schema text SQLite keeps (``sqlite_master``), and
the rows moved with ``INSERT … SELECT`` (rowids kept, so that full-text
indexes and the change log still point at the right rows); a virtual
table's shadow tables (an FTS index, an R*Tree) are copied as they are,
so a full-text index is not rebuilt. Indexes are made after the rows and
triggers last, so that no trigger fires for the copy.

**One data.db transaction** for the whole adoption (several files
included): the team's Datasette and the publisher see nothing or all of
it, and a failure at any point leaves data.db as it was. Everything that
can be checked is checked before it begins (``inspect``: the file is
SQLite, undamaged, and its schema can be made here; ``check``: no name
collides), so a refusal writes nothing at all. The transaction holds
data.db's write lock while it copies, about as long as copying the file
takes (bench/run.py, ``adopt``); other writers wait on their busy timeout.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import apsw

from broadsheet.names import PUBLIC_METADATA, is_internal, quote
from broadsheet.sqlite import connect

from .audit_log import now
from .datasette_metadata import AdoptedMetadata, read
from .errors import PublishError
from .migrations import migrate
from .public_metadata import COLUMNS, INSTANCE, write_metadata
from .visibility import fail_closed

SQLITE_HEADER = b"SQLite format 3\x00"


class AdoptError(PublishError):
    """A file that cannot be adopted (not SQLite, damaged, a schema this
    SQLite cannot make): a 400 naming the file."""


class NameCollision(AdoptError):
    """Names that exist already (in data.db, or in more than one of the
    files): a 409 naming each."""

    status = 409

    def __init__(self, message: str, names: list[str]):
        super().__init__(message)
        self.names = names


@dataclass(frozen=True)
class SchemaObject:
    type: str  # table, index, view, trigger
    name: str
    tbl_name: str
    sql: str
    virtual: bool = False


@dataclass(frozen=True)
class Source:
    """An SQLite file, inspected: what it holds, in the order of its schema."""

    path: Path
    name: str  # its database name, as ``datasette x.db`` names it: the file's stem
    size: int
    objects: tuple[SchemaObject, ...]
    shadow: tuple[str, ...]  # virtual tables' shadow tables, copied as they are
    without_rowid: frozenset[str] = frozenset()

    @property
    def tables(self) -> list[str]:
        return [o.name for o in self.objects if o.type == "table" and not o.virtual]

    @property
    def relations(self) -> list[str]:
        """Its tables, virtual tables and views: the names a table of
        another file (or of data.db) could collide with."""
        return [o.name for o in self.objects if o.type in ("table", "view")]


def inspect(path: str | os.PathLike, name: str | None = None) -> Source:
    """Open ``path`` read-only and say what it holds; AdoptError if it is
    not an SQLite database, is damaged, or holds a schema this SQLite
    cannot make (a virtual table of a module it lacks), before anything
    is written anywhere."""
    path = Path(path)
    label = name or path.name
    try:
        with open(path, "rb") as fp:
            header = fp.read(len(SQLITE_HEADER))
        size = path.stat().st_size
    except OSError as exc:
        raise AdoptError(f"{label}: {exc.strerror}") from None
    if header != SQLITE_HEADER:
        raise AdoptError(f"{label} is not an SQLite database (it does not begin with SQLite's header)")
    try:
        conn = connect(f"file:{_uri_path(path)}?mode=ro", readonly=True)
    except apsw.Error as exc:
        raise AdoptError(f"{label} cannot be opened as SQLite: {_message(exc)}") from None
    try:
        try:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise AdoptError(f"{label} is damaged: {'; '.join(problems)}")
            listed = {row[1]: (row[2], row[4]) for row in conn.execute("PRAGMA main.table_list")}
            rows = conn.execute(
                "SELECT type, name, tbl_name, sql FROM main.sqlite_master WHERE sql IS NOT NULL ORDER BY rowid"
            ).fetchall()
        except apsw.Error as exc:
            raise AdoptError(f"{label} is damaged: {_message(exc)}") from None
    finally:
        conn.close()
    shadow = tuple(n for n, (type_, _) in listed.items() if type_ == "shadow")
    objects = []
    for type_, obj_name, tbl_name, sql in rows:
        if obj_name.startswith("sqlite_") or tbl_name in shadow or obj_name in shadow:
            continue  # SQLite's own (sqlite_sequence, sqlite_stat1), or made with its virtual table
        if is_internal(obj_name) or is_internal(tbl_name):
            raise AdoptError(f"{label}: {obj_name!r} is a name broadsheet keeps for itself (_public_…)")
        virtual = type_ == "table" and listed.get(obj_name, ("",))[0] == "virtual"
        objects.append(SchemaObject(type_, obj_name, tbl_name, sql, virtual))
    source = Source(
        path=path, name=Path(label).stem, size=size, objects=tuple(objects), shadow=shadow,
        without_rowid=frozenset(n for n, (_, wr) in listed.items() if wr),
    )
    _try_schema(source, label)
    return source


def has_wal(path: str | os.PathLike) -> bool:
    """Whether ``path`` has a write-ahead log beside it with transactions
    in it, which a copy of the file alone would leave behind."""
    wal = Path(f"{path}-wal")
    return wal.exists() and wal.stat().st_size > 0


def snapshot(path: str | os.PathLike, to: Path) -> Path:
    """SQLite's own copy of ``path`` (the backup API: the file with its WAL,
    at one moment) into ``to``, a single file to send."""
    source = connect(f"file:{_uri_path(Path(path))}?mode=ro", readonly=True)
    target = apsw.Connection(str(to))
    try:
        with target.backup("main", source, "main") as copy:
            copy.step()  # all of it
        target.execute("PRAGMA journal_mode=DELETE")
    finally:
        target.close()
        source.close()
    return to


def _try_schema(source: Source, label: str) -> None:
    """Make the file's schema in a scratch database in memory: what this
    SQLite cannot make (an unknown virtual table module, say) is refused
    now, not half-way through data.db's transaction."""
    scratch = apsw.Connection(":memory:")
    try:
        for obj in _ordered(source):
            try:
                scratch.execute(obj.sql)
            except apsw.Error as exc:
                raise AdoptError(f"{label}: {obj.type} {obj.name!r} cannot be made here: {_message(exc)}") from None
    finally:
        scratch.close()


def _ordered(source: Source) -> list[SchemaObject]:
    """Tables, virtual tables, indexes, views, triggers: each group in the
    order of the file's schema (so a view made from another comes after it)."""
    rank = {"table": 0, "index": 2, "view": 3, "trigger": 4}
    return sorted(source.objects, key=lambda o: 1 if o.virtual else rank[o.type])


@dataclass
class Plan:
    """What an adoption will do to data.db: the tables and views it makes
    (and the ones of the same name it replaces)."""

    sources: list[Source]
    replaced: list[str] = field(default_factory=list)  # data.db's tables and views dropped first

    @property
    def created(self) -> list[str]:
        return [name for s in self.sources for name in s.relations]


def check_between(sources: list[Source]) -> None:
    """NameCollision if two of the files hold the same name (SQLite's names
    are one namespace, whatever their case), naming each."""
    seen: dict[str, list[tuple[str, SchemaObject]]] = {}
    for source in sources:
        for obj in source.objects:
            seen.setdefault(obj.name.lower(), []).append((source.path.name, obj))
    twice = {key: where for key, where in seen.items() if len(where) > 1}
    if twice:
        said = [" and ".join(f"{obj.type} {obj.name!r} in {file}" for file, obj in where) for where in twice.values()]
        raise NameCollision(
            "The files' names collide, nothing was adopted: " + "; ".join(said),
            [where[0][1].name for where in twice.values()],
        )


def check(conn: apsw.Connection, sources: list[Source], replace: bool = False) -> Plan:
    """NameCollision unless every name the files hold is new: to data.db
    (tables and views of data.db may be replaced, with ``replace``) and
    to the other files."""
    check_between(sources)
    existing = {
        name.lower(): (type_, name, tbl)
        for type_, name, tbl in conn.execute("SELECT type, name, tbl_name FROM main.sqlite_master")
    }
    plan = Plan(list(sources))
    replaced = set()
    if replace:
        for source in sources:
            for name in source.relations:
                found = existing.get(name.lower())
                if found and found[0] in ("table", "view") and not is_internal(found[1]):
                    replaced.add(found[1].lower())
                    plan.replaced.append(found[1])
    clashes: dict[str, str] = {}  # name -> its type in data.db
    for source in sources:
        for obj in source.objects:
            found = existing.get(obj.name.lower())
            if found is None or found[1].lower() in replaced:
                continue
            if found[0] in ("index", "trigger") and found[2].lower() in replaced:
                continue  # goes with the table it belongs to
            clashes[found[1]] = found[0]
    if clashes:
        # The tables and views first: their indexes and triggers follow them.
        relations = sorted(n for n, t in clashes.items() if t in ("table", "view"))
        others = sorted(n for n, t in clashes.items() if t not in ("table", "view"))
        said = ", ".join(repr(n) for n in relations)
        if others:
            said += (" and " if said else "") + "the indexes and triggers " + ", ".join(repr(n) for n in others)
        hint = "" if replace else " (--replace replaces tables and views of the same name)"
        raise NameCollision(f"data.db already has {said}{hint}; nothing was adopted", relations + others)
    return plan


@dataclass
class Adoption:
    """What an adoption did."""

    tables: list[str]  # tables and views created, every one private
    replaced: list[str]
    metadata: AdoptedMetadata
    rows: int
    seconds: float
    audit_id: int | None = None

    def as_dict(self) -> dict:
        return {
            "tables": self.tables, "replaced": self.replaced, "rows": self.rows, "seconds": round(self.seconds, 3),
            "metadata_tables": sorted(self.metadata.tables), "ignored": self.metadata.ignored,
        }


Progress = Callable[[str, int, int], None]  # (what, done, of)


def adopt(
    conn: apsw.Connection,
    sources: list[Source],
    metadata: dict | None = None,
    replace: bool = False,
    actor: str | None = None,
    progress: Progress | None = None,
) -> Adoption:
    """Copy ``sources`` (inspected) into data.db on ``conn``, with the
    metadata ``document`` (Datasette's format) for what they hold, in one
    transaction (see the module's docstring); every table private."""
    limit = conn.limit(apsw.SQLITE_LIMIT_ATTACHED, -1)
    if len(sources) > limit - 1:
        raise AdoptError(f"At most {limit - 1} files at once")
    taken = read(metadata or {}, {s.name: s.relations for s in sources})
    started = time.monotonic()
    aliases = [f"adopt_{i}" for i in range(len(sources))]
    steps = sum(len(s.objects) for s in sources)
    done = 0
    rows = 0
    # SQLite attaches outside transactions only.
    for alias, source in zip(aliases, sources):
        conn.execute("ATTACH ? AS " + alias, (f"file:{_uri_path(source.path)}?mode=ro",))
    previous_cache = conn.execute("PRAGMA main.cache_size").fetchone()[0]
    # The copy builds its pages in memory and writes each once (rather than
    # spilling dirty pages to the WAL, through FUSE, half-way).
    conn.execute("PRAGMA main.cache_size=-262144")
    conn.execute("PRAGMA temp_store=MEMORY")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            migrate(conn)
            plan = check(conn, sources, replace)
            for name in plan.replaced:
                fail_closed(conn, name, "replaced by an adopted file", by=actor or "broadsheet:adopt")
                kind = conn.execute("SELECT type FROM main.sqlite_master WHERE name = ?", (name,)).fetchone()[0]
                conn.execute(f"DROP {'VIEW' if kind == 'view' else 'TABLE'} main.{quote(name)}")
                conn.execute(f"DELETE FROM {PUBLIC_METADATA} WHERE table_name = ?", (name,))
            for alias, source in zip(aliases, sources):
                for obj in _ordered(source):
                    conn.execute(obj.sql)
                    if obj.type == "table" and not obj.virtual:
                        rows += _copy_rows(conn, alias, obj.name, obj.name in source.without_rowid)
                    elif obj.virtual:
                        for shadow in source.shadow:
                            if shadow.startswith(obj.name + "_"):
                                conn.execute(f"DELETE FROM main.{quote(shadow)}")
                                conn.execute(
                                    f"INSERT INTO main.{quote(shadow)} SELECT * FROM {alias}.{quote(shadow)}"
                                )
                    done += 1
                    if progress:
                        progress(obj.name, done, steps)
                _copy_sequences(conn, alias, source)
            if taken.instance:
                write_metadata(conn, INSTANCE, taken.instance)
            for table, fields in taken.tables.items():
                values = {k: v for k, v in fields.items() if k != COLUMNS}
                write_metadata(conn, table, values, fields.get(COLUMNS))
            conn.execute(
                "INSERT INTO _public_adoptions (timestamp, actor, files, tables, replaced, metadata, ignored)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    now(), actor,
                    json.dumps([{"name": s.path.name if s.name == s.path.stem else f"{s.name}.db", "bytes": s.size}
                                for s in sources]),
                    json.dumps(plan.created), json.dumps(plan.replaced),
                    json.dumps(metadata) if metadata else None, json.dumps(taken.ignored),
                ),
            )
            audit_id = conn.last_insert_rowid()
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        conn.execute(f"PRAGMA main.cache_size={previous_cache}")
        for alias in aliases:
            try:
                conn.execute(f"DETACH {alias}")
            except apsw.Error:
                pass
    return Adoption(plan.created, plan.replaced, taken, rows, time.monotonic() - started, audit_id)


def _copy_rows(conn: apsw.Connection, alias: str, table: str, without_rowid: bool) -> int:
    """Every row of ``alias.table`` into data.db's new table of that name,
    rowids kept (an FTS index and the change log point at rowids)."""
    columns = [row[1] for row in conn.execute(f"PRAGMA {alias}.table_xinfo({quote(table)})") if row[6] == 0]
    names = ", ".join(quote(c) for c in columns)
    rowid = None
    if not without_rowid:
        rowid = next((r for r in ("rowid", "_rowid_", "oid") if r not in {c.lower() for c in columns}), None)
    if rowid:
        names_with = f"{rowid}, {names}"
        conn.execute(f"INSERT INTO main.{quote(table)} ({names_with}) SELECT {names_with} FROM {alias}.{quote(table)}")
    else:
        conn.execute(f"INSERT INTO main.{quote(table)} ({names}) SELECT {names} FROM {alias}.{quote(table)}")
    return conn.changes()


def _copy_sequences(conn: apsw.Connection, alias: str, source: Source) -> None:
    """AUTOINCREMENT's counters, so that new rows never reuse a rowid."""
    has = conn.execute(f"SELECT 1 FROM {alias}.sqlite_master WHERE name = 'sqlite_sequence'").fetchone()
    if not has or not conn.execute("SELECT 1 FROM main.sqlite_master WHERE name = 'sqlite_sequence'").fetchone():
        return
    # Copying the rows set them to the largest rowid; the file's may be larger.
    names = json.dumps(source.tables)
    conn.execute("DELETE FROM main.sqlite_sequence WHERE name IN (SELECT value FROM json_each(?))", (names,))
    conn.execute(
        f"INSERT INTO main.sqlite_sequence (name, seq) SELECT name, seq FROM {alias}.sqlite_sequence"
        " WHERE name IN (SELECT value FROM json_each(?))",
        (names,),
    )


def adoptions(conn: apsw.Connection, limit: int = 100) -> list[dict]:
    """The newest adoptions, with what each created and the metadata keys it left."""
    try:
        cursor = conn.execute(
            "SELECT id, timestamp, actor, files, tables, replaced, ignored FROM _public_adoptions ORDER BY id DESC LIMIT ?",
            (limit,),
        )
    except apsw.SQLError:
        return []
    keys = ("id", "timestamp", "actor", "files", "tables", "replaced", "ignored")
    return [
        {k: (json.loads(v) if k in ("files", "tables", "replaced", "ignored") and v else v) for k, v in zip(keys, row)}
        for row in cursor
    ]


def _uri_path(path: Path) -> str:
    from urllib.parse import quote as url_quote

    return url_quote(str(Path(path).resolve()))


def _message(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return text.removeprefix(f"{name}: ")

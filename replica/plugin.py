"""The read node's Datasette plugin: anonymous visitors see exactly the tables
listed in the replicated ``_public_tables``, and nothing can be written.

The permission rule follows datasette-public's: a ``permission_resources_sql``
hook that allows ``view-table`` for every listed table. It reads the list from
public.db itself (not from Datasette's internal database, which is not
replicated). Datasette runs with ``--default-deny``, so whatever the rule does
not allow is denied: even a table that reached public.db by mistake is not
served. ``startup`` refuses to run otherwise.

Visitors are anonymous and may be hostile: their SQL runs in a sandbox
(``sandbox.py``), at most a few at a time (``custom_sql.py``), and bookmark
waits share one position watcher with a cap (``position.py``).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import re
import sqlite3
import weakref
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from urllib.parse import parse_qsl

from datasette import hookimpl
from datasette.database import QueryInterrupted
from datasette.handle_exception import handle_exception as render_exception
from datasette.permissions import PermissionSQL
from datasette.utils import StartupError, tilde_decode
from datasette.utils.asgi import Response
from datasette.views.base import DatasetteError

from broadsheet import fts
from broadsheet.asgi import error_body, respond
from broadsheet.litefs import Pos
from broadsheet.names import PUBLIC_TABLES, PUBLIC_TXID

from . import metadata, queries, sandbox, stall, stream
from .cache import ResponseCache
from .custom_sql import Busy, Slots, runs_custom_sql
from .position import PositionWatcher, Stalled, TooManyWaits
from .settings import BUILD, Settings, settings
from .status import ReplicaStatus

BOOKMARK_HEADER = b"broadsheet-min-txid"

# public.db holds nothing but published data, so read-only SQL against it is
# as public as its tables (under Datasette's sql_time_limit_ms).
DATABASE_ACTIONS = {"view-database", "execute-sql"}


def _file_databases(datasette) -> list:
    return [db for name, db in datasette.databases.items() if name != "_internal" and not db.is_memory]


def _public_databases(datasette) -> list:
    """The one database ``startup`` checked is this node's public.db, while
    Datasette still serves that same database: none before the check, and
    never one added later (a plugin's route could add a database)."""
    db = getattr(datasette, "_broadsheet_public_db", None)
    return [db] if db is not None and datasette.databases.get(db.name) is db else []


@dataclass
class Guards:
    """What one read node shares between all its visitors' requests."""

    position: PositionWatcher  # bookmark waits
    custom_sql: Slots  # visitors' own SQL
    streams: stream.Streams  # the primary following this node's position
    responses: ResponseCache  # whole responses at the current position
    watchdog: stall.Watchdog  # requests a stalled LiteFS holds up
    sized_at: Pos | None = None  # the position public.db's size was read at
    visible_at: Pos | None = None  # the last position SQLite was seen to show
    unconfirmed_at: Pos | None = None  # a position SQLite did not show in time (never cached)


_guards: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def guards(datasette) -> Guards:
    if datasette not in _guards:
        conf = settings()
        position = PositionWatcher(conf.public_db, conf.max_bookmark_waits, stall_timeout=conf.stall_timeout)
        _guards[datasette] = Guards(
            position=position,
            custom_sql=Slots(conf.max_sql_concurrency),
            streams=stream.Streams(conf.max_position_streams),
            responses=ResponseCache(conf.cache_bytes, conf.cache_max_entry),
            watchdog=stall.Watchdog(position),
        )
    return _guards[datasette]


# trylast: after every other plugin's startup (Datasette runs the team's
# read-node plugins' after broadsheet's own otherwise), so that a database
# one of them adds there is seen and refused.
@hookimpl(trylast=True)
def startup(datasette):
    """Refuse to serve unless this is what a read node must be: deny by
    default, and serve public.db alone. A read node without these would
    serve whatever its databases hold to anyone."""
    if not datasette.default_deny:
        raise StartupError("broadsheet read node: Datasette must run with --default-deny")
    dbs = _file_databases(datasette)
    names = ", ".join(db.name for db in dbs) or "none"
    if len(dbs) != 1:
        raise StartupError(f"broadsheet read node: serve exactly one database, public.db (serving: {names})")
    db, conf = dbs[0], settings()
    if not conf.public_db:
        raise StartupError("broadsheet read node: BROADSHEET_PUBLIC_DB (the LiteFS mount's public.db) is not set")
    if Path(db.path).resolve() != Path(conf.public_db).resolve():
        raise StartupError(f"broadsheet read node: serving {db.path}, but this node's public.db is {conf.public_db}")
    if not db.is_mutable:
        # An immutable database would never see the transactions LiteFS applies.
        raise StartupError("broadsheet read node: public.db must be opened mutable (not with -i)")
    datasette._broadsheet_public_db = db
    _note_interruptions(datasette, db)
    guards(datasette)
    return _refuse_wider_access(datasette, db)


# A table no read node lists, and what no visitor may ever do: asked of
# Datasette at startup, with every plugin loaded (the team's own too,
# BROADSHEET_READ_NODE_PLUGINS), as anonymous and as a signed-in actor.
_PROBE_TABLE = "broadsheet: a table that is not public"
_NEVER_ALLOWED = ("insert-row", "update-row", "delete-row", "create-table", "alter-table", "drop-table")


async def _refuse_wider_access(datasette, db) -> None:
    """Plugins may add pages and scripts, never access: refuse to serve if
    any plugin lets a visitor see an unlisted table or write, or wraps
    requests outside this plugin's rules (which refuse writes and unlisted
    tables before anything else runs)."""
    from datasette.plugins import pm
    from datasette.resources import DatabaseResource, TableResource

    outermost = pm.hook.asgi_wrapper.get_hookimpls()[0].plugin
    if outermost is not _this_module():
        raise StartupError(
            f"broadsheet read node: plugin {pm.get_name(outermost)!r} wraps requests outside the read node's rules"
        )
    for actor in (None, {"id": "broadsheet-probe"}):
        checks = [("view-table", TableResource(db.name, _PROBE_TABLE))] + [
            (name, TableResource(db.name, _PROBE_TABLE) if datasette.actions[name].resource_class is TableResource
             else DatabaseResource(db.name))
            for name in _NEVER_ALLOWED if name in datasette.actions
        ]
        for action, resource in checks:
            if await datasette.allowed(action=action, resource=resource, actor=actor):
                raise StartupError(
                    f"broadsheet read node: a plugin allows {action} on {resource.parent}/{resource.child or ''}"
                    f" to {actor or 'anonymous'}:"
                    " read nodes serve public tables, read-only"
                )


def _this_module():
    import sys

    return sys.modules[__name__]


@hookimpl
def prepare_connection(conn, database, datasette):
    # Every connection to a database visitors can query. (Datasette also
    # prepares scratch connections of its own, such as the one /-/versions
    # probes SQLite's features with.)
    # Every file database, not only the one startup checked: a connection
    # may be made before that check runs.
    if database in {db.name for db in _file_databases(datasette)}:
        sandbox.confine(conn)


# Datasette's own message for a query cut at sql_time_limit_ms.
TIME_LIMIT_MESSAGE = "SQL query took too long. The time limit is controlled by the sql_time_limit_ms setting."

# SQLite's verdicts on the statement itself (unknown column, syntax, refused
# by the sandbox, value too big): on a read node the statement's variable
# parts are the visitor's. The rest (I/O, corruption, busy, ...) are ours.
_STATEMENT_ERRORS = {"SQLITE_ERROR", "SQLITE_AUTH", "SQLITE_TOOBIG", "SQLITE_RANGE", "SQLITE_MISMATCH"}


@hookimpl(tryfirst=True)
def handle_exception(datasette, request, exception):
    """A visitor's bad request is a 400, whichever page it reached: Datasette
    turns these into 400s on its query page, but lets them escape as 500s
    from table pages (``?_facet=`` of no column, a ``?_where=`` cut at the
    time limit)."""
    if isinstance(exception, QueryInterrupted):
        error = DatasetteError(TIME_LIMIT_MESSAGE, title="SQL Interrupted", status=400)
    elif isinstance(exception, sqlite3.Error) and getattr(exception, "sqlite_errorname", "") in _STATEMENT_ERRORS:
        error = DatasetteError(str(exception), title="Invalid SQL", status=400)
    else:
        return None
    return render_exception(datasette, request, error)


@dataclass(frozen=True)
class Listing:
    """What the replicated ``_public_tables`` makes visible: the listed
    tables and views, and the full-text tables that index them (Datasette
    checks ``view-table`` on those to search)."""

    tables: tuple[str, ...] = ()
    full_text: tuple[str, ...] = ()
    # Listed views whose rows are not a function of the data (they call
    # random() or read the clock, or read such a view): never kept.
    volatile: frozenset[str] = frozenset()

    @cached_property
    def visible_json(self) -> str:
        """Every name ``view-table`` is allowed on, as the permission rule's
        parameter: made once per position, not once per permission check."""
        return json.dumps([*self.tables, *self.full_text])


_listing_cache: dict[str, tuple[Pos, Listing]] = {}


# The position a request is served at: read once per request by the ASGI
# wrapper and reused by every permission check the request makes.
_request_pos: contextvars.ContextVar[Pos | None] = contextvars.ContextVar("broadsheet_pos", default=None)


# The queries of one request that a time limit cut short, where Datasette
# answers 200 all the same (a facet in ``facets_timed_out``, a table page
# without its count, an autocomplete without rows): such a page depends on
# how busy the node was, not only on the request and the position.
_interrupted: contextvars.ContextVar[list | None] = contextvars.ContextVar("broadsheet_interrupted", default=None)


def _note_interruptions(datasette, db) -> None:
    """Note in ``_interrupted`` each query of public.db cut by a time limit,
    except the probes Datasette expects to be cut and only decorate a page
    (facet suggestions, the table counts of the index page: budgets of
    ``facet_suggest_time_limit_ms`` or less)."""
    if getattr(db.execute, "_broadsheet_noting", False):
        return
    execute = db.execute
    probe_ms = datasette.setting("facet_suggest_time_limit_ms")

    async def noting(*args, **kwargs):
        try:
            return await execute(*args, **kwargs)
        except QueryInterrupted:
            cut = _interrupted.get()
            budget = kwargs.get("custom_time_limit", args[3] if len(args) > 3 else None)
            if cut is not None and (not budget or budget > probe_ms):
                cut.append(args[0] if args else kwargs.get("sql"))
            raise

    noting._broadsheet_noting = True
    db.execute = noting


async def listing(db) -> Listing:
    """Cached per LiteFS position: the ``-pos`` file changes with every
    applied transaction, and reading it is cheaper than a query."""
    pos = _request_pos.get() or Pos.read(db.path)
    if pos.txid == 0:
        pos = None  # not on LiteFS (or nothing replicated yet): do not cache
    cached = _listing_cache.get(db.name)
    if pos is not None and cached is not None and cached[0] == pos:
        return cached[1]
    try:
        tables = [row[0] for row in (await db.execute(f"SELECT table_name FROM {PUBLIC_TABLES}")).rows]
        virtual = (
            await db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' AND sql LIKE 'CREATE VIRTUAL%'")
        ).rows
        views = dict((await db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'view'")).rows)
        result = Listing(
            tuple(tables),
            tuple(name for name, sql in virtual if fts.content_table(sql) in tables),
            _volatile_views(views),
        )
    except Exception:
        # Before the first publish cycle reaches this node there is no list:
        # nothing is public.
        result = Listing()
    if pos is not None:
        _listing_cache[db.name] = (pos, result)
    return result


# SQL functions whose result is not a function of their arguments and the
# data: the date and time ones read the clock when given 'now' (or nothing),
# so all of them count.
_VOLATILE = re.compile(
    r"\b(random|randomblob|date|time|datetime|julianday|unixepoch|strftime|timediff|current_date|current_time"
    r"|current_timestamp|changes|total_changes|last_insert_rowid)\b",
    re.IGNORECASE,
)


def _volatile_views(views: dict[str, str]) -> frozenset[str]:
    """The views (name -> CREATE VIEW) that call such a function, or read a
    view that does. A word match: a column named ``date`` counts too, which
    costs that view the cache, never a stale page."""
    volatile = {name for name, sql in views.items() if _VOLATILE.search(sql or "")}
    while True:
        more = {
            name
            for name, sql in views.items()
            if name not in volatile
            and any(re.search(rf"(?<![\w$]){re.escape(v)}(?![\w$])", sql or "", re.IGNORECASE) for v in volatile)
        }
        if not more:
            return frozenset(volatile)
        volatile |= more


async def _names_volatile_view(db, path: str) -> bool:
    """Whether a /db/name... path names a listed view that is not a function
    of the data."""
    parts = path.split("/")
    if len(parts) < 3 or not parts[2] or parts[2].startswith("-") or tilde_decode(parts[1]) != db.name:
        return False
    volatile = (await listing(db)).volatile
    return bool(volatile) and bool({tilde_decode(parts[2]), tilde_decode(parts[2].rsplit(".", 1)[0])} & volatile)


@hookimpl
async def permission_resources_sql(datasette, actor, action):
    if action == "view-instance":
        return PermissionSQL.allow(reason="broadsheet read node")
    rules = []
    for db in _public_databases(datasette):
        if action in DATABASE_ACTIONS:
            rules.append(
                PermissionSQL(
                    sql="SELECT :bs_db AS parent, NULL AS child, 1 AS allow, 'broadsheet: public database' AS reason",
                    params={"bs_db": db.name},
                )
            )
        elif action == "view-table":
            rules.append(
                PermissionSQL(
                    sql="SELECT :bs_db AS parent, value AS child, 1 AS allow,"
                    " 'broadsheet: listed in _public_tables' AS reason FROM json_each(:bs_tables)",
                    params={"bs_db": db.name, "bs_tables": (await listing(db)).visible_json},
                )
            )
    return rules or None


def _public_db(datasette):
    dbs = _public_databases(datasette)
    return dbs[0] if dbs else None


@hookimpl
def register_routes(datasette):
    return [(r"^/-/replication\.json$", replication_status)]


async def replication_status(datasette, request):
    """This node's replication state, for people, load balancers and the
    primary's propagation tracker."""
    db = _public_db(datasette)
    conf = settings()
    node = guards(datasette)
    try:
        pos = await node.position.fresh()  # the watcher's open file: one pread, not an open through FUSE
        status = await node.position.call(
            lambda: ReplicaStatus.read(
                Path(db.path),
                pos=pos,
                node=conf.node_name,
                region=conf.region,
                url=conf.public_url,
                bookmark_waits=node.position.waiting,
                custom_sql=node.custom_sql.taken,
                cache=node.responses.stats(),
            )
        )
    except Stalled as exc:
        # The health check fails while LiteFS does not answer.
        last = node.position.last
        body = {"ok": False, "node": conf.node_name, "stalled": True, "stalled_for_s": round(exc.seconds, 1),
                "txid": last.txid, "checksum": f"{last.checksum:016x}", "error": stall.message(exc, last.txid)}
        return Response.json(body, status=503, headers={"Retry-After": "1"})
    return Response.json(status.as_dict())


# trylast: applied last, so outermost: no other plugin's wrapper sees a
# request before these rules (startup checks it).
@hookimpl(trylast=True)
def asgi_wrapper(datasette):
    conf = settings()
    refusal = error_body(405, conf.write_error)

    def wrap(app):
        async def read_node(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
                return await respond(send, 405, refusal, [(b"allow", b"GET, HEAD, OPTIONS")])
            db = _public_db(datasette)
            node = guards(datasette)
            if scope["path"] == stream.PATH and db is not None:
                return await stream.serve(scope, receive, send, node.position, node.streams, conf.node_name)
            custom_sql = runs_custom_sql(scope["path"], scope.get("query_string", b""))
            # Refused before any other work (reading the position, waiting
            # for a bookmark), so that a flood of refusals costs little.
            if custom_sql and node.custom_sql.full:
                return await _too_busy(send, node.custom_sql)
            try:
                wanted = bookmark(scope)
            except ValueError as exc:
                return await respond(send, 400, error_body(400, str(exc)))
            refused = _unservable(datasette, scope)
            if refused is not None:
                return await respond(send, refused[0], error_body(*refused))
            try:
                pos = Pos(0) if db is None else await node.position.fresh()
                if db is not None:
                    await _sized(node, db, pos)
            except Stalled as exc:
                return await _while_stalled(scope, send, node, exc, custom_sql, wanted)
            # Wait for the bookmark first: a table published at TXID N is
            # listed only from N on.
            if wanted is not None and pos.txid < wanted:
                try:
                    pos = await node.position.wait_for(wanted, conf.bookmark_timeout)
                except Stalled as exc:
                    return await _while_stalled(scope, send, node, exc, custom_sql, wanted)
                except TooManyWaits:
                    message = (
                        f"This read node has public TXID {pos.txid} and too many requests waiting for newer ones."
                        f" Retry TXID {wanted} shortly, or ask another node."
                    )
                    return await respond(send, 503, error_body(503, message, txid=pos.txid, wanted=wanted), RETRY)
                if pos.txid < wanted:
                    message = (
                        f"This read node has public TXID {pos.txid}; TXID {wanted} did not arrive"
                        f" within {conf.bookmark_timeout:g}s. Retry, or ask another node."
                    )
                    return await respond(send, 504, error_body(504, message, txid=pos.txid, wanted=wanted), RETRY)
            with node.watchdog.watching(send) as watched:
                try:
                    return await at_position(scope, receive, watched.send, node, db, pos, custom_sql)
                except asyncio.CancelledError:
                    if watched.abandoned is None:
                        raise
                    asyncio.current_task().uncancel()  # let go by the watchdog: LiteFS stalled under it
                    if not watched.started:
                        await stall.refuse(send, watched.abandoned, pos.txid)

        async def at_position(scope, receive, send, node: Guards, db, pos: Pos, custom_sql: bool):
            """The request at ``pos``: from memory, or made (and kept)."""
            _request_pos.set(pos)  # the position this request is served at, for listing()
            shown = db is None or await _shown_by_sqlite(node, db, pos)
            if db is not None:
                await queries.sync(datasette, db, pos)  # the saved queries public at this TXID
                # A saved query is visitors' SQL too: a slot, never the cache.
                custom_sql = custom_sql or queries.named_in(scope["path"], db) is not None
            etag = f'"{pos.txid:x}-{pos.checksum:x}-{BUILD}"'.encode()
            key = None if custom_sql or not shown else node.responses.key(scope, pos)
            if key is not None:
                if await _names_volatile_view(db, scope["path"]):
                    key = None  # its rows change while the position stays
            if key is None:
                return await serve(scope, receive, send, node, db, pos, etag, custom_sql)
            # Kept, or being made right now for the same request: either way
            # made at this very position after passing the rules in serve()
            # (the 403 for a table that is not public, the team's metadata),
            # which depend on nothing but the request and the position: they
            # would pass again, so they are not asked again.
            hit = node.responses.get(pos, key) or await node.responses.join(pos, key)
            if hit is not None:
                if etag in _if_none_match(scope):
                    return await respond(send, 304, b"", _cache_headers(etag, pos, conf), content_type=None)
                return await hit.replay(send)
            cut: list = []
            _interrupted.set(cut)
            with node.responses.making(pos, key, send, spoiled=lambda: bool(cut)) as recording:
                return await serve(scope, receive, recording, node, db, pos, etag, custom_sql)

        async def serve(scope, receive, send, node: Guards, db, pos: Pos, etag: bytes, custom_sql: bool):
            """The node's rules at ``pos``, then Datasette."""
            if db is not None:
                await metadata.sync(datasette, db, pos)  # the team's titles and licenses, at this TXID
            table = await _unlisted_table(datasette, scope["path"])
            if table is not None:
                message = f"Table {table!r} is not public on this node."
                return await respond(send, 403, error_body(403, message))
            if etag in _if_none_match(scope):
                return await respond(send, 304, b"", _cache_headers(etag, pos, conf), content_type=None)
            if not custom_sql:
                return await app(scope, receive, _with_cache_headers(send, etag, pos, conf))
            try:
                with node.custom_sql.claim():
                    return await app(scope, receive, _with_cache_headers(send, etag, pos, conf))
            except Busy:  # taken while this request waited for its bookmark
                return await _too_busy(send, node.custom_sql)

        return read_node

    return wrap


RETRY = [(b"retry-after", b"1")]


# How long a request waits for SQLite to show the TXID LiteFS reports (a
# moment: LiteFS rewrites the shared-memory index right after it sets the
# position) before it is served unkept.
SHOWN_WAIT = 0.25


async def _shown_by_sqlite(node: Guards, db, pos: Pos) -> bool:
    """Whether a read of public.db now sees the transaction LiteFS reports
    at ``pos`` (or a newer one), waiting a moment for it. LiteFS sets a
    database's position before it makes the transaction visible to SQLite
    readers, so a request that read the position in between would run on
    the previous transaction: kept in the cache under the new position, an
    unpublished table would be served until the next publish. The publisher
    records each transaction's own TXID in public.db (``_public_txid``);
    once a read sees it, every later read does. A public.db that does not
    record it (written by an older publisher) is taken as shown; a position
    not shown in time is served, and never kept."""
    if node.visible_at == pos:
        return True
    if node.unconfirmed_at == pos:
        return False
    deadline = asyncio.get_running_loop().time() + SHOWN_WAIT
    while True:
        try:
            rows = (await db.execute(f"SELECT txid FROM {PUBLIC_TXID}")).rows
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            rows = []
        if not rows or rows[0][0] >= pos.txid:
            node.visible_at = pos
            return True
        if asyncio.get_running_loop().time() >= deadline:
            node.unconfirmed_at = pos
            return False
        await asyncio.sleep(0.002)


async def _sized(node: Guards, db, pos: Pos) -> None:
    """Datasette shows public.db's size, reading it with a stat() through
    FUSE on the event loop each time: read it here instead (bounded) once
    per position, which is the only time it changes."""
    if node.sized_at != pos:
        try:
            db.cached_size = await node.position.call(lambda: os.stat(db.path).st_size)
        except OSError:
            db.cached_size = None
        node.sized_at = pos


async def _while_stalled(scope, send, node: Guards, exc: Stalled, custom_sql: bool, wanted: int | None) -> None:
    """LiteFS has not answered: the node's position is still the last one
    read (a stalled LiteFS applies nothing), so its ETag and the responses
    kept at it are still exact; anything else is a 503 (replica/stall.py)."""
    pos, conf = node.position.last, settings()
    if wanted is None or wanted <= pos.txid:
        etag = f'"{pos.txid:x}-{pos.checksum:x}-{BUILD}"'.encode()
        if pos.txid and etag in _if_none_match(scope):
            return await respond(send, 304, b"", _cache_headers(etag, pos, conf), content_type=None)
        key = None if custom_sql else node.responses.key(scope, pos)
        hit = node.responses.get(pos, key) if key is not None else None
        if hit is not None:
            return await hit.replay(send)
    await stall.refuse(send, exc, pos.txid)


def _with_cache_headers(send, etag: bytes, pos: Pos, conf: "Settings"):
    """``send`` with the node's ETag, Cache-Control and TXID on a response
    that may be cached (ours replace Datasette's default_cache_ttl header),
    and the TXID on any other."""

    async def send_with_cache_headers(message):
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            cacheable = message["status"] == 200 and not any(k.lower() == b"set-cookie" for k, _ in headers)
            if cacheable:
                headers = [(k, v) for k, v in headers if k.lower() not in (b"cache-control", b"etag")]
                headers += _cache_headers(etag, pos, conf)
            else:
                headers.append((b"broadsheet-txid", str(pos.txid).encode()))
            message = {**message, "headers": headers}
        await send(message)

    return send_with_cache_headers


async def _too_busy(send, slots: Slots) -> None:
    message = (
        f"This read node is already running {slots.limit} SQL queries from visitors."
        " Retry shortly; table and row pages are not limited."
    )
    await respond(send, 429, error_body(429, message), RETRY)


def bookmark(scope) -> int | None:
    """The TXID a request asks to see at least: ``?_txid=N`` or the
    ``Broadsheet-Min-Txid`` header."""
    values = [v for k, v in parse_qsl(scope.get("query_string", b"").decode()) if k == "_txid"]
    values += [v.decode() for k, v in scope.get("headers", []) if k.lower() == BOOKMARK_HEADER]
    if not values:
        return None
    try:
        txid = max(int(v) for v in values)
    except ValueError:
        raise ValueError(f"Bookmark must be a TXID (a non-negative integer), not {values[0]!r}")
    if txid < 0:
        raise ValueError(f"Bookmark must be a TXID (a non-negative integer), not {txid}")
    return txid


# /db/table.ext, /db/query.ext, /db/-/query.ext: the pages Datasette renders
# in a format the path names (not /-/..., where plugins add their routes).
_FORMATTED = re.compile(r"^/(?!-/)[^/]+/(?:-/query|[^/]+)\.(\w+)$")


# Datasette parses the whole query string again for each parameter it looks
# up (request.args), so its pages cost the square of their parameters'
# number, on the event loop: 2,000 held a read node for half a minute.
MAX_PARAMETERS = 200


def _unservable(datasette, scope) -> tuple[int, str] | None:
    """What Datasette would answer with a 500 rather than a 4xx: a format
    it has no renderer for (it asserts), a ``?_timelimit=`` that is not an
    integer (it calls int() on it); or only after a stall: more query
    parameters than MAX_PARAMETERS."""
    named = _FORMATTED.match(scope["path"])
    if named and named.group(1) not in ("html", "csv") and named.group(1) not in datasette.renderers:
        return 404, f"There is no {named.group(1)!r} format here: try .json or .csv"
    parameters = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    if len(parameters) > MAX_PARAMETERS:
        return 400, f"Too many query parameters ({len(parameters):,}): at most {MAX_PARAMETERS} on a read node"
    for key, value in parameters:
        if key == "_timelimit" and value:
            try:
                int(value)
            except ValueError:
                return 400, "_timelimit must be a whole number of milliseconds"
    return None


def _if_none_match(scope) -> list[bytes]:
    for k, v in scope.get("headers", []):
        if k.lower() == b"if-none-match":
            return [tag.strip() for tag in v.split(b",")]
    return []


def _cache_headers(etag: bytes, pos: Pos, conf: "Settings") -> list:
    return [
        (b"etag", etag),
        (b"cache-control", f"public, max-age={conf.cache_max_age}".encode()),
        (b"broadsheet-txid", str(pos.txid).encode()),
    ]


async def _unlisted_table(datasette, path: str) -> str | None:
    """The table a /db/table... path names, if that table is not public.

    Every such path gets the same 403, whether or not the table exists in
    public.db, so a visitor cannot probe for private names; Datasette alone
    would answer 404 for a table that was unpublished (and dropped)."""
    parts = path.split("/")
    if len(parts) < 3 or not parts[2] or parts[2].startswith("-"):
        return None
    db = datasette.databases.get(tilde_decode(parts[1]))
    if db is None or db.name == "_internal":
        return None
    # "airports.json" names the table "airports"; Datasette tilde-encodes a
    # dot that belongs to a table name.
    name = tilde_decode(parts[2].rsplit(".", 1)[0])
    listed = (await listing(db)).tables
    if name in listed or tilde_decode(parts[2]) in listed or queries.named_in(path, db) is not None:
        return None
    return name


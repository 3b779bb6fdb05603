"""The team's Datasette plugin, on the primary.

- Team members (any actor with an id: a signed ``dstok_`` token or a password
  login) may do everything Datasette offers on data.db, including its JSON
  write API, except write to broadsheet's own ``_public_*`` tables. Anonymous
  visitors get nothing (Datasette runs with ``--default-deny``).
- "Make public" / "Change what is public" / "Make private" table actions in
  the style of datasette-public, leading to a page (protected by Datasette's
  CSRF check) where the team ticks columns and types a row filter, previews
  exactly what read nodes will serve, confirms, and sees the public TXID and
  where the table is live.
- A "What read nodes show" form on that page for the table's metadata
  (title, description, license, source, with URLs), and the same form for
  the public instance at ``/-/broadsheet/metadata``.
- A "public" or "partial" badge beside each public table's name.
- Publish and unpublish are Datasette events (``track_event``) for every
  flip, whichever path made it: fired from the audit log (``events.py``).
- A "Publish this query" query action, leading to ``/-/broadsheet/query/data``
  where the team names a query and publishes it as a saved query (served by
  every read node at ``/public/NAME``), and removes saved queries.
- Datasette's alter API follows columns through the rebuild it makes:
  a public table whose spec's names would denote other columns afterwards
  (renames that swap names, a column added under a renamed one's name) is
  made private in the alteration's own transaction, audit-logged with why,
  and never published again in the altering actor's name.
- Write API responses carry ``Broadsheet-Private-Txid``; send
  ``Broadsheet-Wait: public`` to also get ``Broadsheet-Public-Txid``, the
  public.db TXID that holds the write (a bookmark for read nodes), and
  ``Broadsheet-Wait: standby`` to be answered only once the standby has the
  write (``Broadsheet-Standby-Txid``), else 504.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs, urlencode
from urllib.parse import quote as quote_path

import httpx
from datasette import Forbidden, hookimpl
from datasette.events import LoginEvent
from datasette.permissions import Action, PermissionSQL
from datasette.resources import DatabaseResource, TableResource
from datasette.utils import tilde_decode, tilde_encode
from datasette.utils.asgi import Response

from broadsheet.asgi import JSON, error_body, respond
from broadsheet.litefs import Pos
from broadsheet.log import log
from broadsheet.names import INTERNAL_PREFIXES, PUBLIC_TABLES, quote

from . import publishing, queries, store, team
from .publisher import cycle_log_path
from .publisher.events import AuditFollower, PublishTableEvent, UnpublishTableEvent
from .publisher.events import cursor_file as events_cursor_file
from .settings import settings
from .standby import acknowledged
from .store import Preview, PublishSpec, SpecError, TableShape, column_ids

WRITE_ACTIONS = {"insert-row", "update-row", "delete-row", "drop-table", "alter-table"}

# Making a table public (or private again) is a Datasette action, so that
# Datasette's permissions and token restrictions decide who may do it,
# wherever the flip starts: the table action here, the control plane.
PUBLISH_ACTION = "broadsheet-publish"


@hookimpl
def register_actions(datasette):
    return [
        Action(
            name=PUBLISH_ACTION,
            abbr="bp",
            description="Make a table public on the read nodes, or private again",
            resource_class=TableResource,
        )
    ]


async def may_publish(datasette, actor, table: str) -> bool:
    return await datasette.allowed(
        action=PUBLISH_ACTION, resource=TableResource(_data_db_name(), table), actor=actor
    )


def publish_forbidden(table: str) -> str:
    return f"This actor may not make {table!r} public or private (the {PUBLISH_ACTION} action)"


@hookimpl
def register_events(datasette):
    return [PublishTableEvent, UnpublishTableEvent]


_followers: dict = {}


@hookimpl
def startup(datasette):
    """The team's Datasette (the one serving data.db, not the control plane's
    permission checker) fires the publish events of every flip, whichever
    path made it, by following the audit log (primary/publisher/events.py)."""
    if _data_db_name() not in datasette.databases or datasette in _followers:
        return
    follower = AuditFollower(
        datasette, settings().data_db, events_cursor_file(settings().watermark_file), _data_db_name(),
        cycle_log=cycle_log_path(settings().watermark_file),
    )
    _followers[datasette] = asyncio.get_running_loop().create_task(follower.run())


@hookimpl
def track_event(datasette, event):
    # Every Datasette event (logins, writes, publishes) goes to the process
    # log, one JSON line each, for whoever reads the logs.
    actor = event.actor.get("id") if isinstance(event.actor, dict) else None
    log("event", json.dumps({"event": event.name, "actor": actor, **event.properties()}, default=str))
    if event.name == "alter-table" and event.database == _data_db_name() and _is_team(event.actor):
        return _republish_rebuilt(datasette, event.table, event.actor, event.after_schema)
    if event.name == "logout" and isinstance(event.actor, dict):
        team.team().logout(event.actor.get("sid"))
    return None


async def _republish_rebuilt(datasette, table: str, actor: dict, after_schema: str | None) -> None:
    """Datasette's alter-table may rebuild a table (create, copy, drop,
    rename), which the publisher cannot tell from a table dropped and created
    again: it makes a public one private. The team member who altered it
    meant to keep it: publish it again in their name, with the spec it had,
    once the publisher has seen the alteration, if they may publish it, the
    spec still fits the new schema (otherwise it stays private) and the
    table is still as the alteration left it. An alteration that moved
    columns under the spec made it private itself, with its reason
    (follow_columns), so the newest audit entry is not the rebuild's and
    nothing is published again."""
    mark = _altered.pop(table, None)
    if mark is None:
        return  # it was not public, or the alteration made it private itself
    private_txid = Pos.read(settings().data_db).txid
    try:
        await publishing.wait_published(private_txid, 10.0)
    except publishing.PublishTimeout:
        return
    if not await may_publish(datasette, actor, table):
        return
    # Read through this Datasette's own connection, and flipped by the
    # control plane: never apsw on data.db in this process (_flip_by_control_plane).
    db = datasette.get_database(_data_db_name())
    rows = (
        await db.execute(
            f"SELECT {', '.join(store.AUDIT_COLUMNS)} FROM _public_audit_log WHERE table_name = ? ORDER BY id DESC LIMIT 1",
            (table,),
        )
    ).rows
    newest = [dict(zip(store.AUDIT_COLUMNS, row)) for row in rows]
    if not newest or (newest[0]["operation"], newest[0]["actor"]) != ("unpublish", store.REBUILT_ACTOR):
        return
    if newest[0]["id"] <= mark or not await db.table_exists(table):
        return  # made private by an earlier rebuild, not by this alteration
    now = (await db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))).rows
    if not now or now[0][0] != after_schema:
        log("primary", f"{table!r} stays private: it changed again after the alteration")
        return
    spec = PublishSpec.from_json(newest[0]["spec_before"])
    rebuilder = {"id": f"{publishing.actor_label(actor)} (alter-table)"}
    try:
        await _flip_by_control_plane(datasette, rebuilder, table, True, spec)
    except store.PublishError as exc:
        log("primary", f"{table!r} stays private after the alteration: its spec no longer fits ({exc.message})")


# The request body the primary's ASGI wrapper read, kept in the scope for
# follow_columns (Datasette reads it once, and does not keep it).
BODY = "broadsheet.body"


@hookimpl
def write_wrapper(datasette, database, request, transaction):
    """Datasette's alter API renames columns by rebuilding the table
    (sqlite-utils' transform), which no trigger survives, so the publisher
    cannot follow columns through it (primary/store/column_ids.py). The request's
    own operations can: inside the alteration's transaction, a public
    table whose spec's names would denote other columns afterwards (or
    none), or whose columns had already moved, is made private, audit-logged
    with why. Datasette's connection does the writing (never apsw on
    data.db in this process: see _public_specs)."""
    if database != _data_db_name() or request is None or not request.path.endswith("/-/alter"):
        return None
    table = tilde_decode(request.url_vars.get("table", ""))
    renamed, dropped = _alter_operations(request.scope.get(BODY))
    by = f"broadsheet:alter-table by {publishing.actor_label(request.actor or {})}"

    def follow_columns(conn):
        row = conn.execute(f"SELECT spec FROM {PUBLIC_TABLES} WHERE table_name = ?", (table,)).fetchone()
        if row is None or table not in store.user_tables(conn):
            yield
            return
        spec = PublishSpec.from_json(row[0])
        before = column_ids.table_columns(conn, "main", table)
        try:
            names = spec.named_columns(table, [c.name for c in before])
        except SpecError:
            names = {*(spec.columns or ()), *spec.exclude_columns}
        record = column_ids.read(conn, "main", table)
        problem = record.problem(before, names) if record is not None else None
        (mark,) = conn.execute("SELECT ifnull(max(id), 0) FROM _public_audit_log").fetchone()
        result = yield
        if problem is None:
            after = [c.name for c in column_ids.table_columns(conn, "main", table)]
            problem = column_ids.moved_by(names, renamed, dropped, after)
        if problem is not None and store.fail_closed(conn, table, f"spec no longer fits: {problem}", by=by):
            log("primary", f"{table!r} made private by the alteration: {problem}")
        elif problem is None:
            # Public before, its columns where they were: if the publisher
            # now finds it rebuilt, publish it again (_republish_rebuilt).
            after_name = result[2] if isinstance(result, tuple) and len(result) == 3 else table
            _altered[after_name] = mark

    return follow_columns


# Tables an alteration left public with their columns in place, with the
# newest audit entry before it: the republish takes only a rebuild after it.
_altered: dict[str, int] = {}


def _alter_operations(body: bytes | None) -> tuple[dict[str, str], set[str]]:
    """The columns an alter API request renames (old -> new) and drops (by
    their old names), as Datasette applies them. Datasette has checked the
    body by the time it writes."""
    renamed: dict[str, str] = {}
    dropped: set[str] = set()
    try:
        operations = json.loads(body or b"{}").get("operations") or []
    except (ValueError, AttributeError):
        return renamed, dropped
    for operation in operations if isinstance(operations, list) else []:
        if not isinstance(operation, dict) or not isinstance(operation.get("args"), dict):
            continue
        args = operation["args"]
        if operation.get("op") == "rename_column":
            renamed[args.get("name")] = args.get("to")
        elif operation.get("op") == "drop_column":
            dropped.add(args.get("name"))
    return renamed, dropped


def _is_team(actor) -> bool:
    return isinstance(actor, dict) and bool(actor.get("id"))


def _data_db_name() -> str:
    return Path(settings().data_db).stem


@hookimpl
def permission_resources_sql(datasette, actor, action):
    if not _is_team(actor):
        return None
    rules = [PermissionSQL.allow(reason="broadsheet: team member")]
    if action in WRITE_ACTIONS:
        # The audit log and publish state change only through broadsheet.
        # (This SQL runs against Datasette's internal catalog.)
        rules.append(
            PermissionSQL(
                sql="SELECT database_name AS parent, table_name AS child, 0 AS allow,"
                " 'broadsheet: internal table' AS reason FROM catalog_tables, json_each(:bs_prefixes)"
                " WHERE database_name = :bs_db AND lower(substr(table_name, 1, length(value))) = value",
                params={"bs_db": _data_db_name(), "bs_prefixes": json.dumps(INTERNAL_PREFIXES)},
            )
        )
    return rules


ANONYMOUS_POSTS = {"/-/login"}
AUTH_REQUIRED = "Authentication required: send Authorization: Bearer dstok_…"
AUTH_HEADERS = [(b"www-authenticate", b'Bearer realm="broadsheet"')]


@hookimpl
def forbidden(datasette, request, message):
    """Anonymous requests: a 401 a client can act on, or the login page."""
    if request.actor:
        return None
    if _wants_json(request):
        return Response(
            error_body(401, AUTH_REQUIRED),
            status=401,
            headers={k.decode(): v.decode() for k, v in AUTH_HEADERS},
            content_type=JSON.decode(),
        )
    return Response.redirect(datasette.urls.path("/-/login"))


def _wants_json(request) -> bool:
    return (
        request.method != "GET"
        or request.path.endswith(".json")
        or "/-/" in request.path
        or "application/json" in request.headers.get("accept", "")
    )


@hookimpl
def table_actions(datasette, actor, database, table, request):
    if not _is_team(actor) or database != _data_db_name() or table.startswith(INTERNAL_PREFIXES):
        return None

    async def inner():
        if not await may_publish(datasette, actor, table):
            return []
        href = datasette.urls.path(f"/-/broadsheet/visibility/{tilde_encode(database)}/{tilde_encode(table)}")
        if table not in await _public_specs(datasette):
            return [
                {
                    "href": href,
                    "label": "Make public",
                    "description": "Choose its columns and rows, preview them, and serve them from every read node",
                }
            ]
        return [
            {
                "href": href,
                "label": "Change what is public",
                "description": "Choose other columns or rows, and preview the change",
            },
            {
                "href": href + "#make-private",
                "label": "Make private",
                "description": "Stop serving it from the read nodes and erase it there",
            },
        ]

    return inner


async def _public_specs(datasette) -> dict[str, PublishSpec]:
    """Every public table's spec, read on every team page view: through
    Datasette's own connection to data.db. A connection of apsw's SQLite in
    this process would, on closing, drop every POSIX lock the process holds
    on data.db (SQLite keeps its locks straight only among connections of one
    library), the write API's included, and LiteFS fails the next commit."""
    try:
        rows = (await datasette.get_database(_data_db_name()).execute(f"SELECT table_name, spec FROM {PUBLIC_TABLES}")).rows
    except Exception as exc:  # a data.db broadsheet has not touched yet
        if "no such table" not in str(exc):
            raise
        return {}
    return {name: PublishSpec.from_json(spec) for name, spec in rows}


BADGE_SCRIPT = """
(() => {
  const badges = %s;
  const style = document.createElement("style");
  // Specific enough to win over Datasette's own heading link styles.
  style.textContent = "h1 a.broadsheet-badge, .db-table h3 a.broadsheet-badge, li a.broadsheet-badge {"
    + " font-size: 0.6em; font-weight: normal; padding: 0.1em 0.6em; margin-left: 0.5em; border-radius: 0.8em;"
    + " vertical-align: middle; text-decoration: none; color: #fff; background: #2a7d3f }"
    + " h1 a.broadsheet-partial, .db-table h3 a.broadsheet-partial, li a.broadsheet-partial { background: #b36200 }";
  document.head.appendChild(style);
  const badge = (b) => {
    const a = document.createElement("a");
    a.className = "broadsheet-badge broadsheet-" + b.label;
    a.textContent = b.label;
    a.title = b.title;
    a.href = b.href;
    return a;
  };
  const onTablePage = %s;
  if (onTablePage) {
    const h1 = document.querySelector(".page-header h1");
    if (h1 && badges[onTablePage]) h1.append(badge(badges[onTablePage]));
    return;
  }
  document.querySelectorAll(".db-table h3 > a:first-child, #views + ul li > a:first-child").forEach((a) => {
    if (Object.hasOwn(badges, a.textContent)) a.after(badge(badges[a.textContent]));
  });
})();
"""


@hookimpl
def extra_body_script(datasette, database, table, view_name):
    """A "public" or "partial" badge beside each public table's name on the
    team's database page, and in a public table's page header (Datasette's
    database.html has no per-table block a template could extend)."""
    if database != _data_db_name() or view_name not in ("database", "table"):
        return None
    return _badges(datasette, database, table, view_name)


async def _badges(datasette, database: str, table: str | None, view_name: str) -> str:
    specs = await _public_specs(datasette)
    if view_name == "table" and table not in specs:
        return ""  # (an awaited None would become the script "None")
    badges = {
        name: {
            "label": "public" if spec.whole else "partial",
            "title": f"Public: {spec.describe()}",
            "href": datasette.urls.path(f"/-/broadsheet/visibility/{tilde_encode(database)}/{tilde_encode(name)}"),
        }
        for name, spec in specs.items()
        if view_name == "database" or name == table
    }
    return BADGE_SCRIPT % (_script_json(badges), _script_json(table if view_name == "table" else None))


def _script_json(value) -> str:
    """JSON that is safe inside a <script> element."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@hookimpl
def register_routes(datasette):
    return [
        (r"^/-/broadsheet/visibility/(?P<database>[^/]+)/(?P<table>[^/]+)$", visibility),
        (r"^/-/broadsheet/metadata/(?P<database>[^/]+)/(?P<table>[^/]+)$", table_metadata),
        (r"^/-/broadsheet/metadata$", instance_metadata),
        (r"^/-/broadsheet/query/(?P<database>[^/]+)$", publish_query),
        (r"^/-/login$", login),
    ]


async def login(datasette, request):
    """Named team members sign in with a password (primary/team.py): a
    session per login, ended everywhere by /-/logout, and a brake on
    guessing (429 with Retry-After)."""
    context = {"error": None, "username": "", "next": request.args.get("next") or ""}
    status = 200
    headers = {}
    if request.method == "POST":
        form = await request.post_vars()
        name, password = form.get("username") or "", form.get("password") or ""
        context.update(username=name, next=form.get("next") or "")
        client = (request.scope.get("client") or ("unknown",))[0]
        try:
            session = await asyncio.to_thread(team.team().login, name, password, client)
        except team.Throttled as exc:
            context["error"], status, headers = str(exc), 429, {"Retry-After": str(exc.retry_after)}
        except team.TeamError as exc:
            context["error"], status = str(exc), 401
        else:
            target = context["next"] if _local_path(context["next"]) else "/"
            response = Response.redirect(target)
            actor = {"id": name, "sid": session}
            datasette.set_actor_cookie(response, actor, expire_after=team.SESSION_SECONDS)
            await datasette.track_event(LoginEvent(actor=actor))
            return response
    html = await datasette.render_template("broadsheet_login.html", context, request=request)
    return Response.html(html, status=status, headers=headers)


def _local_path(url: str) -> bool:
    """A path on this site (not //host or /\\host, which browsers treat as
    another site)."""
    return url.startswith("/") and not url.startswith(("//", "/\\")) and "\\" not in url


def _session_is_live(datasette, cookie: str) -> bool:
    """Whether a ``ds_actor`` cookie belongs to a live team session. A cookie
    without a session (signed by hand with the secret) is not one."""
    try:
        actor = datasette.unsign(cookie, "actor").get("a") or {}
    except Exception:
        return False
    return isinstance(actor, dict) and team.team().live(actor.get("sid"), actor.get("id"))


def _without_dead_login(datasette, scope):
    """The request as Datasette should see it: a login cookie whose session
    has ended (logged out elsewhere, user removed) is dropped, so the request
    is anonymous. The cookie is read exactly as Datasette reads it (the last
    Cookie header, parsed by SimpleCookie), and a dead one leaves a single
    rebuilt Cookie header without it."""
    headers = scope.get("headers", [])
    cookie_headers = [v for k, v in headers if k.lower() == b"cookie"]
    if not cookie_headers:
        return scope
    jar = SimpleCookie()
    try:
        jar.load(cookie_headers[-1].decode("latin-1"))
    except CookieError:
        jar = SimpleCookie()
    live = "ds_actor" in jar and _session_is_live(datasette, jar["ds_actor"].value)
    if len(cookie_headers) == 1 and (live or "ds_actor" not in jar):
        return scope
    kept = "; ".join(f"{name}={m.coded_value}" for name, m in jar.items() if name != "ds_actor" or live)
    headers = [(k, v) for k, v in headers if k.lower() != b"cookie"] + ([(b"cookie", kept.encode("latin-1"))] if kept else [])
    return {**scope, "headers": headers}


@dataclass(frozen=True)
class SpecForm:
    """The Make public page's form, and the PublishSpec it means: ticked
    columns, a row filter, and whether columns added later stay private.

    Everything ticked publishes the whole table (no column list), so that
    columns added later are published too, unless ``freeze_columns`` asks
    for an explicit list; some columns unticked publish all but those
    (``exclude_columns``), or exactly the ticked ones with ``freeze_columns``.
    """

    ticked: tuple[str, ...]
    where: str = ""
    freeze_columns: bool = False

    @classmethod
    def from_post(cls, fields: dict[str, list[str]], rowid_alias: str | None) -> "SpecForm":
        ticked = fields.get("columns", [])
        # The INTEGER PRIMARY KEY's checkbox is disabled, so never sent.
        if rowid_alias is not None and rowid_alias not in ticked:
            ticked = [rowid_alias, *ticked]
        return cls(tuple(ticked), (fields.get("where") or [""])[0].strip(), bool(fields.get("freeze_columns")))

    @classmethod
    def from_spec(cls, spec: PublishSpec, columns: list[str]) -> "SpecForm":
        if spec.columns is not None:
            ticked = [c for c in columns if c in spec.columns]
        else:
            ticked = [c for c in columns if c not in spec.exclude_columns]
        return cls(tuple(ticked), spec.where or "", spec.columns is not None)

    def spec(self, columns: list[str]) -> PublishSpec:
        """Raises SpecError for a form no spec can come from (nothing ticked)."""
        unticked = [c for c in columns if c not in self.ticked]
        data: dict = {}
        if self.freeze_columns:
            data["columns"] = [c for c in columns if c in self.ticked] + [c for c in self.ticked if c not in columns]
        elif unticked:
            data["exclude_columns"] = unticked
        if self.where:
            data["where"] = self.where
        return PublishSpec.from_dict(data)


async def _publishable_table(datasette, request) -> tuple[str, str]:
    """The database and table a Make public request names, once its actor
    may publish that table (else Forbidden)."""
    if not _is_team(request.actor):
        raise Forbidden("Log in as a team member to change what is public")
    database = tilde_decode(request.url_vars["database"])
    table = tilde_decode(request.url_vars["table"])
    if database != _data_db_name():
        raise Forbidden(f"Only tables of {_data_db_name()} can be published")
    if not await may_publish(datasette, request.actor, table):
        raise Forbidden(publish_forbidden(table))
    return database, table


async def visibility(datasette, request):
    """The Make public page. GET: the table's state, and a form to choose
    its columns and rows (pre-filled with the current spec of a public
    table). POST ``action=preview``: what that spec would publish, with a
    Publish button that publishes exactly it. POST ``action=publish`` (or
    no action, as scripts send it: the whole table) or
    ``operation=unpublish``: the flip, its public TXID and where it is live."""
    database, table = await _publishable_table(datasette, request)
    fields = None
    if request.method == "POST":
        fields = parse_qs((await request.post_body()).decode("utf-8"), keep_blank_values=True)
    return await _visibility_page(datasette, request, database, table, fields=fields)


async def _visibility_page(
    datasette, request, database: str, table: str, fields: dict | None = None, metadata: MetadataForm | None = None
) -> Response:
    """The Make public page, after the publish form's POST ``fields`` (if
    any) or with what became of saving the table's ``metadata``."""
    context = {"database": database, "table": table, "outcome": None, "error": None, "live": [], "preview": None}
    def read(conn):
        is_view = table in store.views(conn)
        exists = is_view or table in store.user_tables(conn)
        shape = TableShape.read(conn, table) if exists and not is_view else TableShape((), True)
        return is_view, exists, shape, store.public_specs(conn).get(table)

    is_view, exists, shape, current = await _read_data_db(datasette, read)
    form = SpecForm.from_spec(current or PublishSpec(), shape.columns)
    if fields is not None:
        operation, action = (fields.get("operation") or [None])[0], (fields.get("action") or [None])[0]
        if "action" in fields:
            form = SpecForm.from_post(fields, shape.rowid_alias)
        try:
            if operation not in ("publish", "unpublish") or action not in (None, "preview", "publish"):
                raise store.PublishError("Choose publish or unpublish, and preview or publish")
            spec = form.spec(shape.columns) if action and operation == "publish" else PublishSpec()
            if action == "preview":
                context["preview"] = await _preview_by_control_plane(request.actor, table, spec)
            else:
                await _flip(datasette, request.actor, database, table, operation == "publish", spec, context)
        except SpecError as exc:
            context["error"] = str(exc)
        except (store.PublishError, publishing.PublishTimeout) as exc:
            context["error"] = exc.message
    def read_after(conn):
        return store.public_specs(conn).get(table), store.audit_entries(conn, table=table, limit=20), store.metadata(conn)

    current, context["audit"], every_metadata = await _read_data_db(datasette, read_after)
    metadata = metadata or MetadataForm(every_metadata.get(table, {}))
    for entry in context["audit"]:
        published = entry["operation"] == "publish"
        entry["published"] = PublishSpec.from_json(entry["spec_after"]).describe() if published else None
    if context["preview"] is not None:
        context["sample"] = [[_cell(row[c]) for c in context["preview"].columns] for row in context["preview"].sample]
    if context["outcome"] is not None:
        form = SpecForm.from_spec(current or PublishSpec(), shape.columns)
    if not exists and current is None and context["outcome"] is None:
        context["error"] = context["error"] or f"Table {table!r} does not exist"
    context.update(
        public=current is not None,
        current=current,
        exists=exists,
        is_view=is_view,
        form=form,
        shape=shape,
        watch_url=f"{settings().control_url}/watch",
        metadata_form=metadata,
        metadata_action=datasette.urls.path(
            f"/-/broadsheet/metadata/{tilde_encode(database)}/{tilde_encode(table)}#metadata"
        ),
        instance_metadata_url=(
            datasette.urls.path("/-/broadsheet/metadata")
            if await may_set_instance_metadata(datasette, request.actor)
            else None
        ),
    )
    if metadata.error:
        status = metadata.status
    else:
        status = 400 if context["error"] and request.method == "POST" else 200
    return Response.html(
        await datasette.render_template("broadsheet_visibility.html", context, request=request), status=status
    )


@dataclass(frozen=True)
class MetadataForm:
    """The "What read nodes show" form: the six metadata fields of a table
    or of the instance (store.METADATA_FIELDS), and what became of saving
    them: ``saved``, or the ``error`` (and its HTTP ``status``) with the
    team's input kept to correct it."""

    values: dict
    saved: bool = False
    error: str | None = None
    status: int = 200

    @classmethod
    async def save(cls, datasette, request, table: str) -> "MetadataForm":
        """Save the posted fields (merged, as the control plane's PUT does:
        a field left out keeps its value, an empty one is cleared). A bad
        value changes nothing."""
        posted = {k: v.strip() for k, v in (await request.post_vars()).items() if k != "csrftoken"}
        path = "/metadata" if table == store.INSTANCE else f"/tables/{quote_path(table, safe='')}/metadata"
        try:
            return cls(await _ask_control_plane(request.actor["id"], "PUT", path, posted, table), saved=True)
        except store.PublishError as exc:
            current = await _metadata_of(datasette, table)
            return cls({**current, **posted}, error=exc.message, status=exc.status)


async def _metadata_of(datasette, table: str) -> dict:
    return (await _read_data_db(datasette, store.metadata)).get(table, {})


async def table_metadata(datasette, request):
    """POST: save a table's metadata from the Make public page's "What
    read nodes show" form, and show that page again with the outcome. Kept
    apart from the publish flow: saving metadata flips nothing, and read
    nodes show it while the table is public, from the next publish cycle."""
    database, table = await _publishable_table(datasette, request)
    if request.method != "POST":
        return Response.redirect(
            datasette.urls.path(f"/-/broadsheet/visibility/{tilde_encode(database)}/{tilde_encode(table)}")
            + "#metadata"
        )
    metadata = await MetadataForm.save(datasette, request, table)
    return await _visibility_page(datasette, request, database, table, metadata=metadata)


async def may_set_instance_metadata(datasette, actor) -> bool:
    """The instance's title, license and source head every read node's
    pages, above every public table, so setting them takes
    broadsheet-publish on data.db as a whole: a team member, or a token
    allowed the action on every table or on the database. A token allowed
    it on one table only, or restricted to viewing, may not."""
    return _is_team(actor) and await datasette.allowed(
        action=PUBLISH_ACTION, resource=DatabaseResource(_data_db_name()), actor=actor
    )


async def may_publish_queries(datasette, actor) -> bool:
    """A saved query may read every public table, so saving or removing one
    takes what the instance's metadata takes: broadsheet-publish on data.db
    as a whole."""
    return await may_set_instance_metadata(datasette, actor)


@hookimpl
def query_actions(datasette, actor, database, query_name, request, sql, params):
    if not _is_team(actor) or database != _data_db_name() or not sql:
        return None

    async def inner():
        if not await may_publish_queries(datasette, actor):
            return []
        args = urlencode({"sql": sql, **({"name": query_name} if query_name else {})})
        return [
            {
                "href": datasette.urls.path(f"/-/broadsheet/query/{tilde_encode(database)}?{args}"),
                "label": "Publish this query",
                "description": "Name it and serve it from every read node, if it reads only public tables",
            }
        ]

    return inner


@hookimpl
def database_actions(datasette, actor, database, request):
    if not _is_team(actor) or database != _data_db_name():
        return None

    async def inner():
        if not await may_publish_queries(datasette, actor):
            return []
        return [
            {
                "href": datasette.urls.path(f"/-/broadsheet/query/{tilde_encode(database)}"),
                "label": "Published queries",
                "description": "The saved queries every read node serves: publish one, or remove it",
            }
        ]

    return inner


QUERY_FORM_FIELDS = ("name", "sql", "title", "description")


async def publish_query(datasette, request):
    """The "Publish this query" page. GET: a form pre-filled from the query
    string (``sql``, ``name``), and every saved query. POST: save and
    publish it (a 400 page naming what it reads that is not public), or
    ``operation=remove`` a saved query; either shows the public TXID."""
    if not _is_team(request.actor):
        raise Forbidden("Log in as a team member to publish queries")
    if tilde_decode(request.url_vars["database"]) != _data_db_name():
        raise Forbidden(f"Only queries of {_data_db_name()} can be published")
    if not await may_publish_queries(datasette, request.actor):
        raise Forbidden(
            f"This actor may not publish saved queries (the {PUBLISH_ACTION} action on {_data_db_name()} as a whole)"
        )
    form = {k: request.args.get(k) or "" for k in QUERY_FORM_FIELDS}
    context = {"database": _data_db_name(), "form": form, "outcome": None, "error": None}
    status = 200
    if request.method == "POST":
        posted = await request.post_vars()
        form.update({k: (posted.get(k) or "").strip() for k in QUERY_FORM_FIELDS})
        # Saved and removed by the control plane, in its own process (see _ask_control_plane).
        try:
            if posted.get("operation") == "remove":
                answer = await _ask_control_plane(
                    request.actor["id"], "DELETE", f"/queries/{quote_path(form['name'], safe='')}", None, None
                )
            else:
                body = {**{k: form[k] for k in ("name", "sql")}, "title": form["title"] or None,
                        "description": form["description"] or None}
                answer = await _ask_control_plane(request.actor["id"], "POST", "/queries", body, None)
            context["outcome"] = queries.Outcome(**{f.name: answer[f.name] for f in dataclasses.fields(queries.Outcome)})
        except store.PublishError as exc:
            context["error"], status = exc.message, exc.status
    context["saved"] = await _read_data_db(datasette, store.queries.saved)
    return Response.html(
        await datasette.render_template("broadsheet_query.html", context, request=request), status=status
    )


async def instance_metadata(datasette, request):
    """The public instance's metadata page: GET the form pre-filled with
    what is set, POST to save it (shown at the next publish cycle)."""
    if not _is_team(request.actor):
        raise Forbidden("Log in as a team member to change what read nodes show")
    if not await may_set_instance_metadata(datasette, request.actor):
        raise Forbidden(
            f"This actor may not change the public instance's metadata (the {PUBLISH_ACTION} action on"
            f" {_data_db_name()} as a whole)"
        )
    if request.method == "POST":
        metadata = await MetadataForm.save(datasette, request, store.INSTANCE)
    else:
        metadata = MetadataForm(await _metadata_of(datasette, store.INSTANCE))
    context = {
        "metadata_form": metadata,
        "metadata_action": datasette.urls.path("/-/broadsheet/metadata"),
        "database": _data_db_name(),
    }
    return Response.html(
        await datasette.render_template("broadsheet_metadata.html", context, request=request),
        status=metadata.status if metadata.error else 200,
    )


async def _preview_by_control_plane(actor: dict, table: str, spec: PublishSpec) -> Preview:
    """What ``spec`` would publish, computed by the control plane in its own
    process: even a read-only apsw connection's close here would drop the
    write API's locks on data.db (see _ask_control_plane)."""
    body = spec.to_dict() if not spec.whole else None
    answer = await _ask_control_plane(actor["id"], "POST", f"/tables/{quote_path(table, safe='')}/preview", body, table)
    return Preview(**answer)


def _cell(value) -> str:
    """A sample value as Datasette's table page shows it."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return f"<Binary: {len(value):,} byte{'' if len(value) == 1 else 's'}>"
    return str(value)


async def _flip(datasette, actor: dict, database: str, table: str, public: bool, spec: PublishSpec, context: dict):
    outcome = await _flip_by_control_plane(datasette, actor, table, public, spec)
    context["outcome"] = outcome
    # Its event comes from the audit log, as every flip's does (events.py).
    if outcome.public_txid is not None:
        context["live"] = await _where_live(datasette, actor, table, outcome.public_txid)


async def _read_data_db(datasette, read):
    """``read(conn)`` on one of this Datasette's own read connections to
    data.db (Python's SQLite), never apsw's here: see _ask_control_plane."""
    return await datasette.get_database(_data_db_name()).execute_fn(read)


async def _flip_by_control_plane(
    datasette, actor: dict, table: str, public: bool, spec: PublishSpec
) -> publishing.Outcome:
    """The flip, made in the control plane's process for this actor (whom
    this page has already checked)."""
    verb = "publish" if public else "unpublish"
    body = spec.to_dict() if public and not spec.whole else None
    answer = await _ask_control_plane(actor["id"], "POST", f"/tables/{quote_path(table, safe='')}/{verb}", body, table)
    return publishing.Outcome(table, public, answer["changed"], answer["private_txid"], answer["public_txid"])


async def _ask_control_plane(actor_id: str, method: str, path: str, body: dict | None, table: str | None) -> dict:
    """A change to data.db, made by the control plane in its own process,
    with a short-lived token of ``actor_id``. Not in this one: here
    Datasette has data.db open with Python's SQLite, and a connection of
    apsw's SQLite in the same process shares the process's POSIX locks
    unknowingly, so its write could run beside one of the write API's and
    its close drops their locks (table-action flips under a stream of writes
    corrupted data.db). PublishError with the control plane's status."""
    from .auth import create_token

    token = await create_token(actor_id, expires_after=60)
    try:
        async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {token}"}) as client:
            response = await client.request(method, f"{settings().control_url}{path}", json=body)
        answer = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        error = store.PublishError(f"The control plane ({settings().control_url}) did not answer: {exc}", table)
        error.status = 502
        raise error from None
    if response.status_code >= 400:
        error = store.PublishError(str(answer.get("error") or answer.get("detail") or answer), table)
        error.status = response.status_code
        raise error
    return answer


async def _where_live(datasette, actor: dict, table: str, txid: int, timeout: float = 3.0) -> list[dict]:
    """Each read node, and whether it has public TXID ``txid`` yet, from the
    control plane's propagation record (waiting a little for it, since
    propagation takes milliseconds)."""
    token = await datasette.create_token(actor["id"], expires_after=60)
    arrivals = {}
    # Read nodes come and go (DNS discovery): ask the control plane which
    # there are; the statically listed ones if it cannot answer.
    nodes = [{"name": n.name, "url": n.public_url or n.url} for n in settings().read_nodes]
    try:
        async with httpx.AsyncClient(
            timeout=timeout + 2, headers={"Authorization": f"Bearer {token}"}
        ) as client:
            response = await client.get(f"{settings().control_url}/publishes/{txid}", params={"wait": timeout})
            if response.status_code == 200:
                arrivals = {a["name"]: a for a in response.json()["nodes"]}
            listed = await client.get(f"{settings().control_url}/nodes")
            if listed.status_code == 200:
                nodes = listed.json()
    except httpx.HTTPError:
        pass  # the control plane is down: every node shows as unknown
    return [
        {
            "name": node["name"],
            "url": f"{node['url']}/public/{tilde_encode(table)}",
            "live": bool(arrivals.get(node["name"], {}).get("arrived")),
            "ms": arrivals.get(node["name"], {}).get("ms"),
        }
        for node in nodes
    ]


# Deeper than this, a JSON body is refused before Datasette parses it (its
# parser would recurse until Python's limit and answer 500).
MAX_JSON_DEPTH = 64


class BadBody(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


async def read_body(receive, headers: dict, limit: int) -> bytes:
    """The whole request body, refused (413) past ``limit`` bytes whether or
    not the client sent a Content-Length, and (400) if it is JSON nested
    deeper than MAX_JSON_DEPTH."""
    length = headers.get(b"content-length", b"")
    too_big = f"Request body over {limit} bytes: send rows in batches"
    if length.isdigit() and int(length) > limit:
        raise BadBody(413, too_big)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            # Cut short: a truncated body (a form field, say) may still parse.
            raise BadBody(400, "The request body ended before it was complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BadBody(413, too_big)
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    if json_nesting(body) > MAX_JSON_DEPTH:
        raise BadBody(400, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return body


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_nesting(body: bytes) -> int:
    """About how deeply ``body``'s JSON nests (0 for a body that is not
    well-bracketed JSON: the parser will say what is wrong with it). Every
    step runs at C speed: strings removed, then everything but brackets, then
    the innermost pairs peeled off one layer (or two) per pass."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return 0
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    for passes in range(MAX_JSON_DEPTH + 1):
        if not brackets:
            return passes
        peeled = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if peeled == brackets:
            return 0
        brackets = peeled
    return MAX_JSON_DEPTH + 1


def replay(body: bytes):
    """A ``receive`` that hands Datasette the body already read."""
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


@hookimpl
def asgi_wrapper(datasette):
    def wrap(app):
        async def primary(scope, receive, send):
            if scope["type"] == "http":
                scope = _without_dead_login(datasette, scope)
            if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
                return await app(scope, receive, send)
            headers = {k.lower(): v for k, v in scope.get("headers", [])}
            if (
                b"authorization" not in headers
                and b"ds_actor=" not in headers.get(b"cookie", b"")
                and scope["path"] not in ANONYMOUS_POSTS
            ):
                return await respond(send, 401, error_body(401, AUTH_REQUIRED), AUTH_HEADERS)
            try:
                body = await read_body(receive, headers, settings().max_body)
            except BadBody as exc:
                return await respond(send, exc.status, error_body(exc.status, exc.message))
            receive = replay(body)
            scope = {**scope, BODY: body}
            waits = {w.strip() for w in headers.get(b"broadsheet-wait", b"").lower().split(b",")}
            wait_public = b"public" in waits
            wait_standby = b"standby" in waits
            if wait_standby and not settings().standby_url:
                # Refused before the write: the caller asked for a copy that cannot be made.
                message = "Broadsheet-Wait: standby, but this primary has no standby (BROADSHEET_STANDBY_URL)"
                return await respond(send, 400, error_body(400, message))
            replaced = False

            async def send_with_txids(message):
                nonlocal replaced
                if replaced:
                    return  # Datasette's body of a response replaced by the 504
                if message["type"] == "http.response.start" and message["status"] < 400:
                    # The write (if any) has committed by the time the response starts.
                    private_txid = Pos.read(settings().data_db).txid
                    extra = [(b"broadsheet-private-txid", str(private_txid).encode())]
                    if wait_standby:
                        missing = await acknowledged.wait_for(private_txid)
                        if missing is not None:
                            replaced = True
                            return await respond(send, 504, error_body(504, missing, private_txid=private_txid), extra)
                        extra.append((b"broadsheet-standby-txid", str(private_txid).encode()))
                    if wait_public:
                        with contextlib.suppress(publishing.PublishTimeout):
                            mark = await publishing.wait_published(private_txid, 10.0)
                            extra.append((b"broadsheet-public-txid", str(mark.public_txid).encode()))
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
                await send(message)

            await app(scope, receive, send_with_txids)

        return primary

    return wrap

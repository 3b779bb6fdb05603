"""The control plane: publish state, propagation and health over HTTP.

Runs beside the team's Datasette on the primary (``uvicorn primary.control:app``).
Every route but ``/health`` needs a team actor: a Datasette API token
(``Authorization: Bearer dstok_…``) or the browser's ``ds_actor`` cookie.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Annotated, AsyncIterator, Literal

from datasette.csrf import CrossOriginProtectionMiddleware
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from broadsheet.asgi import error_body, respond
from broadsheet.litefs import Pos

from . import publishing, queries, store
from .auth import NotAuthenticated, actor_from, may_publish, may_publish_queries, may_set_instance_metadata
from .plugin import publish_forbidden
from .discovery import Discovery
from .propagation import Tracker
from .publisher import Watermark, Withdrawals, cycle_log_path, withdrawals_path
from .settings import settings
from .store import PublishSpec, SpecError
from .store.preview import preview

# -- models ---------------------------------------------------------------------


class Error(BaseModel):
    ok: bool = False
    error: str
    table: str | None = None


class TableInfo(BaseModel):
    table: str
    public: bool
    spec: dict | None = Field(None, description="What of it is public ({} for the whole table); null when private")
    partial: bool = Field(False, description="Public with chosen columns or a row filter")


class SpecBody(BaseModel):
    """What of a table to publish. No body, or an empty one: the whole table.
    ``columns``: exactly these (columns added later stay private);
    ``exclude_columns``: all but these (columns added later are published);
    ``where``: a row filter, an SQL expression over the table's own columns."""

    # Unknown fields reach PublishSpec, which names them in a 400.
    model_config = ConfigDict(extra="allow")

    columns: list[str] | None = None
    exclude_columns: list[str] | None = None
    where: str | None = None

    def spec(self) -> PublishSpec:
        try:
            return PublishSpec.from_dict(self.model_dump(exclude_none=True))
        except SpecError as exc:
            raise HTTPException(400, {"ok": False, "error": str(exc)})


class PreviewResult(BaseModel):
    """What publishing with a spec would expose; nothing is changed."""

    table: str
    spec: dict
    columns: list[str]
    rows: int
    total_rows: int
    sample: list[dict]
    estimated_bytes: int
    public_now: bool
    columns_added: list[str]
    columns_removed: list[str]
    rows_added: int
    rows_removed: int


class FlipResult(BaseModel):
    """The outcome of publish/unpublish. ``public_txid`` is the public.db TXID
    that holds the change (ask any read node for ``?_txid=`` that);
    ``propagation`` is where to watch it reach every node."""

    ok: bool = True
    table: str
    public: bool
    changed: bool
    private_txid: int
    public_txid: int | None
    propagation: str | None


class AuditEntry(BaseModel):
    id: int
    timestamp: str
    actor: str | None
    operation: str
    table_name: str
    private_txid: int | None
    public_txid: int | None
    spec_before: str | None = Field(None, description="The spec (JSON) before the change; null: private or whole")
    spec_after: str | None = Field(None, description="The spec (JSON) after the change")
    reason: str | None = Field(
        None, description="Why broadsheet itself made the table private (its columns moved, it was dropped, …); null: a person did"
    )


class Bookmark(BaseModel):
    """data.db up to ``private_txid`` is in public.db at ``public_txid``."""

    private_txid: int
    public_txid: int


class NodeInfo(BaseModel):
    name: str
    url: str
    region: str = Field("", description="Where the node runs (FLY_REGION), when it says")
    txid: int
    connected: bool
    primary_reachable: bool | None
    behind_txids: int
    lag_ms: float
    updated_at: str | None


class Arrival(BaseModel):
    name: str
    arrived: bool
    arrived_at: str | None
    ms: float | None


class QueryChange(BaseModel):
    """What one publish cycle did to a saved query."""

    action: Literal["published", "changed", "removed", "withdrawn"]
    actor: str | None = Field(default=None, description="Who saved or removed it (null: the publisher withdrew it)")
    reason: str | None = Field(default=None, description="Why the publisher withdrew it")


class CycleSummary(BaseModel):
    """What the publish cycle that made this TXID did, from the publisher's
    own record of it."""

    published: list[str] = Field(default=[], description="Tables (and views) newly public")
    unpublished: list[str] = Field(default=[], description="Tables made private, erased from public.db")
    recopied: list[str] = Field(default=[], description="Tables copied again whole (a new spec, a schema change)")
    rows_by_table: dict[str, int] = Field(default={}, description="Rows copied or changed, per table")
    actors: dict[str, str] = Field(default={}, description="Who asked: table -> actor of its flip (audit log)")
    queries_changed: list = Field(default=[], description="Saved queries this cycle changed")
    query_changes: dict[str, QueryChange] = Field(
        default={}, description="What happened to each of those saved queries, and who asked"
    )


class PropagationRecord(BaseModel):
    txid: int
    committed_at: str | None
    changes: list[str] = Field(
        default=[], description='What this TXID was, in words: "planes published by alice", "42 rows changed in airports"'
    )
    cycle: CycleSummary | None = Field(default=None, description="The same, as data (null: not a publish cycle's, or not read yet)")
    nodes: list[Arrival]
    complete: bool


class StandbyInfo(BaseModel):
    """The standby's copy of data.db, and how far behind it is: the writes a
    promotion now would lose are those after ``txid``, committed within the
    last ``lag_ms``."""

    url: str
    connected: bool = Field(description="Whether its status API answers")
    txid: int | None = None
    behind_txids: int | None = None
    lag_ms: float | None = Field(None, description="0 when current; else how old its newest transaction is")
    epoch: int | None = Field(None, description="The epoch of its copy of data.db")
    acknowledged_txid: int | None = Field(
        None, description="The highest data.db TXID it acknowledged (Broadsheet-Wait: standby): its copy never goes below it"
    )
    following: bool | None = Field(None, description="Whether its LiteFS is streaming data.db from this primary")
    refused: str | None = Field(
        None, description="Why it refuses this primary's data.db and keeps its own (an older or another data.db), if it does"
    )
    error: str | None = None


class Withdrawn(BaseModel):
    """A table, view or saved query broadsheet took off the read nodes by
    itself, not published again since."""

    name: str
    kind: Literal["table", "view", "query"]
    reason: str = Field(description='Why: "view no longer compiles: no such table: t", "spec no longer fits: …"')
    at: str = Field(description="When (the audit or saved-query log entry's timestamp)")


class Health(BaseModel):
    ok: bool
    data_db_txid: int
    public_db_txid: int
    published_up_to: Bookmark | None
    nodes_connected: int
    nodes: int
    subscribers: int = Field(description="Clients following /events")
    epoch: int = Field(1, description="data.db's epoch: one more for each promotion of a standby")
    standby: StandbyInfo | None = Field(None, description="The standby, when BROADSHEET_STANDBY_URL names one")
    withdrawn: list[Withdrawn] = Field(
        default=[], description="What broadsheet withdrew by itself (and why), private until published or saved again"
    )


ERRORS = {401: {"model": Error}, 403: {"model": Error}, 404: {"model": Error}}

# -- app ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    conf = settings()
    discovery = (
        Discovery(conf.read_nodes_dns, conf.read_node_port)
        if conf.read_nodes_dns
        else None
    )
    app.state.tracker = Tracker(
        conf.public_litefs_url, conf.read_nodes, discovery=discovery, discovery_interval=conf.discovery_interval,
        cycle_log=cycle_log_path(conf.watermark_file),
    )
    app.state.tracker.start()
    yield
    await app.state.tracker.stop()


app = FastAPI(
    title="broadsheet control plane",
    version="0.1.0",
    description="Publish state, propagation to read nodes, and health of a broadsheet primary.",
    lifespan=lifespan,
)


class CrossOriginProtection(CrossOriginProtectionMiddleware):
    """Datasette's own CSRF defence (Sec-Fetch-Site, else Origin against
    Host; Bearer tokens exempt), on the control plane too: a login cookie
    travels with a form another site posts here. Refusals are JSON, like
    every other error of this API."""

    def __init__(self, app):
        super().__init__(app, datasette=None)

    async def _forbid(self, send, reason):
        message = f"Cross-site request refused: {reason}. Scripts send Authorization: Bearer instead of a cookie."
        await respond(send, 403, error_body(403, message))


app.add_middleware(CrossOriginProtection)


@app.exception_handler(HTTPException)
async def http_error(request: Request, exc: HTTPException):
    body = exc.detail if isinstance(exc.detail, dict) else {"ok": False, "error": str(exc.detail)}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def team_actor(request: Request) -> dict:
    try:
        actor = await actor_from(request.headers.get("authorization"), dict(request.cookies))
    except NotAuthenticated as exc:
        raise HTTPException(401, {"ok": False, "error": exc.message}, headers={"WWW-Authenticate": "Bearer"})
    return actor


Actor = Annotated[dict, Depends(team_actor)]


def tracker(request: Request) -> Tracker:
    return request.app.state.tracker


def _connect(readonly: bool = False):
    return store.connect(settings().data_db, readonly=readonly)


@app.get("/health", response_model=Health, tags=["health"])
async def health(request: Request) -> Health:
    conf = settings()
    nodes = tracker(request).node_list()
    mark = Watermark.read(conf.watermark_file)
    data_db_txid = Pos.read(conf.data_db).txid
    return Health(
        ok=Path(conf.data_db).exists() and Path(conf.public_db).exists(),
        data_db_txid=data_db_txid,
        public_db_txid=Pos.read(conf.public_db).txid,
        published_up_to=Bookmark(**vars(mark)) if mark else None,
        nodes_connected=sum(n["connected"] for n in nodes),
        nodes=len(nodes),
        subscribers=tracker(request).subscriber_count,
        epoch=await asyncio.to_thread(_epoch),
        standby=await _standby(conf.standby_url, data_db_txid) if conf.standby_url else None,
        withdrawn=[Withdrawn(**vars(w)) for w in Withdrawals.read_file(withdrawals_path(conf.watermark_file))],
    )


_epoch_seen: list[int] = []


def _epoch() -> int:
    """data.db's epoch, read once: it changes only when a standby is
    promoted, which starts a new control plane. (No data.db connection per
    health check: see the README's Known limits on LiteFS.)"""
    from .backup import epoch_of

    if not _epoch_seen:
        try:
            conn = _connect(readonly=True)
        except Exception:
            return 1
        try:
            _epoch_seen.append(epoch_of(conn))
        finally:
            conn.close()
    return _epoch_seen[0]


async def _standby(url: str, data_db_txid: int) -> StandbyInfo:
    import time

    import httpx

    try:
        async with httpx.AsyncClient(timeout=2) as client:
            response = await client.get(f"{url}/status")
        if response.status_code != 200:
            raise ValueError(f"{url}/status answered HTTP {response.status_code}: not a broadsheet standby?")
        status = response.json()
        standby_txid = int(status["txid"])
    except (httpx.HTTPError, ValueError, TypeError, KeyError) as exc:
        return StandbyInfo(url=url, connected=False, error=str(exc) or type(exc).__name__)
    behind = max(0, data_db_txid - standby_txid)
    lag: float | None = 0.0
    if behind:
        committed_at = status.get("committed_at")
        lag = max(0.0, (time.time() - float(committed_at)) * 1000) if committed_at else None
    refused = status.get("refused")
    if refused:
        lag = None  # it holds another data.db than this primary's: no lag to speak of
    return StandbyInfo(
        url=url, connected=True, txid=standby_txid, behind_txids=behind, lag_ms=lag, epoch=status.get("epoch"),
        acknowledged_txid=status.get("acknowledged_txid"), following=status.get("following"),
        refused=refused.get("reason") if isinstance(refused, dict) else None,
    )


# -- tables ---------------------------------------------------------------------

tables = APIRouter(prefix="/tables", tags=["tables"], responses=ERRORS)


@tables.get("", response_model=list[TableInfo])
async def list_tables(actor: Actor) -> list[TableInfo]:
    conn = _connect(readonly=True)
    try:
        specs = store.public_specs(conn)
        return [
            TableInfo(
                table=t,
                public=t in specs,
                spec=specs[t].to_dict() if t in specs else None,
                partial=t in specs and not specs[t].whole,
            )
            for t in store.user_tables(conn)
        ]
    finally:
        conn.close()


async def _flip(
    table: str, public: bool, actor: dict, wait: bool, timeout: float, spec: PublishSpec | None = None
) -> FlipResult:
    if not await may_publish(actor, table):
        raise HTTPException(403, {"ok": False, "error": publish_forbidden(table), "table": table})
    try:
        outcome = await publishing.flip(table, public, publishing.actor_label(actor), wait, timeout, spec)
    except store.PublishError as exc:
        raise HTTPException(exc.status, {"ok": False, "error": exc.message, "table": exc.table})
    except publishing.PublishTimeout as exc:
        raise HTTPException(exc.status, {"ok": False, "error": exc.message, "table": table})
    return FlipResult(
        **vars(outcome),
        propagation=f"/publishes/{outcome.public_txid}" if outcome.public_txid else None,
    )


WaitQuery = Annotated[bool, Query(description="Wait for the publisher and return the public TXID")]
TimeoutQuery = Annotated[float, Query(gt=0, le=60, description="Seconds to wait for the publisher")]


@tables.post(
    "/{table}/publish",
    response_model=FlipResult,
    responses={400: {"model": Error}, 409: {"model": Error}, 504: {"model": Error}},
)
async def publish(
    table: str,
    actor: Actor,
    body: SpecBody | None = None,
    wait: WaitQuery = True,
    timeout: TimeoutQuery = 10,
) -> FlipResult:
    """Make a table (or a view over public tables) public: the whole table,
    or the columns and rows the body chooses. Publishing a public table with
    another spec changes its spec. Idempotent: ``changed`` says whether
    anything changed. 404: no such table; 403: an internal table, or an
    actor without the broadsheet-publish action; 409: a view that reads
    private tables; 400: a virtual table, or a spec that does not fit (the
    error says why); 504: the publisher did not get there within
    ``timeout``."""
    return await _flip(table, True, actor, wait, timeout, body.spec() if body else None)


@tables.post("/{table}/preview", response_model=PreviewResult, responses={400: {"model": Error}})
async def preview_publish(table: str, actor: Actor, body: SpecBody | None = None) -> PreviewResult:
    """What publishing ``table`` with this spec would expose: the columns,
    how many rows of the total, the first rows exactly as read nodes would
    serve them, an estimate of the bytes, and for a public table what the
    change adds and removes. Computed from data.db; changes nothing."""
    if not await may_publish(actor, table):
        raise HTTPException(403, {"ok": False, "error": publish_forbidden(table), "table": table})
    spec = body.spec() if body else PublishSpec()
    conn = _connect(readonly=True)
    try:
        return PreviewResult(**(await asyncio.to_thread(preview, conn, table, spec)).as_dict())
    except store.PublishError as exc:
        raise HTTPException(exc.status, {"ok": False, "error": exc.message, "table": exc.table})
    finally:
        conn.close()


@tables.post("/{table}/unpublish", response_model=FlipResult, responses={504: {"model": Error}})
async def unpublish(table: str, actor: Actor, wait: WaitQuery = True, timeout: TimeoutQuery = 10) -> FlipResult:
    """Make a table private; its rows are erased from public.db in the same cycle."""
    return await _flip(table, False, actor, wait, timeout)


class Metadata(BaseModel):
    """Shown on read nodes where Datasette shows metadata: for the instance,
    and for each public table. A field set to null (or "") is cleared."""

    model_config = ConfigDict(extra="allow")  # unknown fields: a 400 that names them

    title: str | None = None
    description: str | None = None
    license: str | None = None
    license_url: str | None = None
    source: str | None = None
    source_url: str | None = None


class MetadataAll(BaseModel):
    instance: dict
    tables: dict[str, dict]


def _set_metadata(table: str, body: Metadata) -> dict:
    conn = _connect()
    try:
        return store.set_metadata(conn, table, body.model_dump(exclude_unset=True))
    except store.PublishError as exc:
        raise HTTPException(exc.status, {"ok": False, "error": exc.message, "table": exc.table})
    finally:
        conn.close()


@tables.put("/{table}/metadata", response_model=dict, responses={400: {"model": Error}})
async def set_table_metadata(table: str, body: Metadata, actor: Actor) -> dict:
    """Set a table's title, description, license, license_url, source,
    source_url (merged with what it has). Shown on read nodes while the
    table is public, updated without a restart."""
    if not await may_publish(actor, table):
        raise HTTPException(403, {"ok": False, "error": publish_forbidden(table), "table": table})
    return await asyncio.to_thread(_set_metadata, table, body)


app.include_router(tables)

metadata_router = APIRouter(tags=["metadata"], responses=ERRORS)


@metadata_router.get("/metadata", response_model=MetadataAll)
async def get_metadata(actor: Actor) -> MetadataAll:
    conn = _connect(readonly=True)
    try:
        rows = store.metadata(conn)
    finally:
        conn.close()
    return MetadataAll(instance=rows.pop(store.INSTANCE, {}), tables=rows)


@metadata_router.put("/metadata", response_model=dict, responses={400: {"model": Error}})
async def set_instance_metadata(body: Metadata, actor: Actor) -> dict:
    """Set the public instance's title, description, license, source and
    their URLs (merged with what it has). 403 unless the actor may use the
    broadsheet-publish action on the whole database."""
    if not await may_set_instance_metadata(actor):
        message = "This actor may not set the instance's metadata (broadsheet-publish on the whole database)"
        raise HTTPException(403, {"ok": False, "error": message})
    return await asyncio.to_thread(_set_metadata, store.INSTANCE, body)


app.include_router(metadata_router)

# -- saved queries ------------------------------------------------------------------


class SavedQueryBody(BaseModel):
    """A named, read-only SQL query to publish. It may read only what is
    public (it must compile against public.db) and take named parameters
    (``:tz``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Its URL on read nodes: /public/NAME (letters, digits, _ and -)")
    sql: str
    title: str | None = None
    description: str | None = None


class SavedQueryInfo(BaseModel):
    name: str
    sql: str
    title: str | None
    description: str | None
    saved_by: str | None
    saved_at: str | None
    published: bool = Field(description="Whether public.db holds it now (read nodes serve it)")
    withdrawn: str | None = Field(
        description="Why the publisher withdrew it (save it again to publish it); null: not withdrawn"
    )


class QueryResult(BaseModel):
    """A save or remove. ``public_txid`` holds it; ``published`` says
    whether read nodes serve the query from there (false after a remove, or
    if the publisher withdrew it meanwhile: ``withdrawn`` says why)."""

    ok: bool = True
    name: str
    changed: bool
    private_txid: int
    public_txid: int | None
    published: bool
    withdrawn: str | None
    propagation: str | None


class QueryLogEntry(BaseModel):
    id: int
    timestamp: str
    actor: str | None
    operation: str = Field(description="save, remove, or withdraw (by the publisher)")
    name: str
    sql_before: str | None
    sql_after: str | None
    reason: str | None
    private_txid: int | None
    public_txid: int | None


saved_queries = APIRouter(prefix="/queries", tags=["queries"], responses=ERRORS)

QUERIES_FORBIDDEN = "This actor may not publish saved queries (broadsheet-publish on the whole database)"


@saved_queries.get("", response_model=list[SavedQueryInfo])
async def list_queries(actor: Actor) -> list[SavedQueryInfo]:
    """Every saved query, whether read nodes serve it, and why not."""

    def read():
        conn = _connect(readonly=True)
        try:
            rows = store.queries.saved(conn)
        finally:
            conn.close()
        try:
            public = store.queries.connect_public(settings().public_db)
        except Exception:
            return rows, {}
        try:
            return rows, store.queries.published(public)
        finally:
            public.close()

    rows, public = await asyncio.to_thread(read)
    fields = ("name", "sql", "title", "description")
    return [
        SavedQueryInfo(**row, published=public.get(row["name"]) == store.queries.SavedQuery(*(row[f] for f in fields)))
        for row in rows
    ]


async def _query_result(work) -> QueryResult:
    try:
        outcome = await work
    except store.PublishError as exc:
        raise HTTPException(exc.status, {"ok": False, "error": exc.message, "table": exc.table})
    except publishing.PublishTimeout as exc:
        raise HTTPException(exc.status, {"ok": False, "error": exc.message})
    return QueryResult(
        **vars(outcome), propagation=f"/publishes/{outcome.public_txid}" if outcome.public_txid else None
    )


@saved_queries.post("", response_model=QueryResult, responses={400: {"model": Error}, 504: {"model": Error}})
async def save_query(
    body: SavedQueryBody, actor: Actor, wait: WaitQuery = True, timeout: TimeoutQuery = 10
) -> QueryResult:
    """Save (or replace) a query and publish it: every read node serves it
    at ``/public/NAME`` (``.json``, ``.csv``). 400 if it reads anything that
    is not public, writes, or is not one statement (the error says what);
    403 unless the actor may use broadsheet-publish on the whole database."""
    if not await may_publish_queries(actor):
        raise HTTPException(403, {"ok": False, "error": QUERIES_FORBIDDEN})
    query = store.queries.SavedQuery(body.name, body.sql, body.title, body.description)
    return await _query_result(queries.save_and_wait(query, publishing.actor_label(actor), wait, timeout))


@saved_queries.delete("/{name}", response_model=QueryResult, responses={504: {"model": Error}})
async def remove_query(name: str, actor: Actor, wait: WaitQuery = True, timeout: TimeoutQuery = 10) -> QueryResult:
    """Remove a saved query: read nodes stop serving it (403) from the
    returned public TXID, and its text is erased from public.db."""
    if not await may_publish_queries(actor):
        raise HTTPException(403, {"ok": False, "error": QUERIES_FORBIDDEN})
    return await _query_result(queries.remove_and_wait(name, publishing.actor_label(actor), wait, timeout))


@saved_queries.get("/log", response_model=list[QueryLogEntry])
async def query_log(
    actor: Actor, name: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[QueryLogEntry]:
    """Who saved or removed which query, and which the publisher withdrew, newest first."""
    conn = _connect(readonly=True)
    try:
        return [QueryLogEntry(**entry) for entry in store.queries.log_entries(conn, name, limit)]
    finally:
        conn.close()


app.include_router(saved_queries)

# -- audit and bookmarks -----------------------------------------------------------

audit = APIRouter(tags=["audit"], responses=ERRORS)


@audit.get("/audit", response_model=list[AuditEntry])
async def audit_log(actor: Actor, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[AuditEntry]:
    conn = _connect(readonly=True)
    try:
        return [AuditEntry(**entry) for entry in store.audit_entries(conn, limit=limit)]
    finally:
        conn.close()


@audit.get("/bookmarks", response_model=Bookmark, responses={504: {"model": Error}})
async def bookmark(
    actor: Actor,
    private_txid: Annotated[int | None, Query(ge=0, description="data.db TXID (default: the current one)")] = None,
    timeout: TimeoutQuery = 10,
) -> Bookmark:
    """The public TXID that holds everything up to a data.db TXID, waiting
    (bounded) for the publisher if it is not there yet."""
    wanted = Pos.read(settings().data_db).txid if private_txid is None else private_txid
    try:
        mark = await publishing.wait_published(wanted, timeout)
    except publishing.PublishTimeout as exc:
        raise HTTPException(exc.status, {"ok": False, "error": exc.message})
    return Bookmark(private_txid=wanted, public_txid=mark.public_txid)


app.include_router(audit)

# -- propagation ----------------------------------------------------------------------

propagation = APIRouter(tags=["propagation"], responses=ERRORS)


@propagation.get("/nodes", response_model=list[NodeInfo])
async def nodes(request: Request, actor: Actor) -> list[NodeInfo]:
    return tracker(request).node_list()


@propagation.get("/publishes", response_model=list[PropagationRecord])
async def publishes(
    request: Request, actor: Actor, limit: Annotated[int, Query(ge=1, le=500)] = 20
) -> list[PropagationRecord]:
    return tracker(request).recent(limit)


@propagation.get("/publishes/{txid}", response_model=PropagationRecord)
async def publish_record(
    request: Request,
    txid: int,
    actor: Actor,
    wait: Annotated[float, Query(ge=0, le=60, description="Seconds to wait for every node to have it")] = 0,
) -> PropagationRecord:
    """When public TXID ``txid`` reached each read node."""
    t = tracker(request)
    record = await t.wait_for(txid, wait) if wait else t.propagation(txid)
    if record is None:
        raise HTTPException(404, {"ok": False, "error": f"no record of public TXID {txid}"})
    return record


@propagation.get(
    "/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "`node` and `propagation` events"}},
)
async def events(request: Request, actor: Actor) -> StreamingResponse:
    """Server-sent events: ``node`` (a node's position changed) and
    ``propagation`` (a public TXID was committed or reached a node). The
    stream opens with every node's current position."""
    t = tracker(request)
    queue = t.subscribe()

    async def stream() -> AsyncIterator[bytes]:
        try:
            for node in t.node_list():
                yield _sse("node", node)
            while True:
                try:
                    event, data = await asyncio.wait_for(queue.get(), 15)
                except asyncio.TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                yield _sse(event, data)
        finally:
            t.unsubscribe(queue)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


@propagation.get("/watch", response_class=HTMLResponse, include_in_schema=False)
async def watch_page(actor: Actor) -> HTMLResponse:
    return HTMLResponse((Path(__file__).parent / "templates" / "watch.html").read_text())


app.include_router(propagation)

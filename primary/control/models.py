"""The control plane's request and response models: what its OpenAPI
document says each route takes and answers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from broadsheet.bookmark import Bookmark as BookmarkRecord
from broadsheet.bookmark import PrivateTxid, PublicTxid

from ..store import PublishSpec


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
    ``where``: a row filter, an SQL expression over the table's own columns;
    ``masks``: column name -> SQL expression over the table's own columns,
    whose value read nodes serve under the column's name (computed on the
    primary: the unmasked value never leaves it)."""

    # Unknown fields reach PublishSpec, which names them in a 400.
    model_config = ConfigDict(extra="allow")

    columns: list[str] | None = None
    exclude_columns: list[str] | None = None
    where: str | None = None
    masks: dict[str, str] | None = None

    def spec(self) -> PublishSpec:
        """SpecError (a 400: errors.py) for a spec no table could have."""
        return PublishSpec.from_dict(self.model_dump(exclude_none=True))


class ScheduleBody(BaseModel):
    """An embargo: publish (with ``spec``) or unpublish ``table`` at ``at``."""

    table: str
    operation: Literal["publish", "unpublish"] = "publish"
    at: str = Field(description="ISO 8601 with a zone, e.g. 2026-12-02T09:30:00Z; in the future")
    spec: SpecBody | None = None


class ScheduleEntry(BaseModel):
    """A pending publish or unpublish, and who set it."""

    id: int
    table: str
    operation: Literal["publish", "unpublish"]
    spec: dict | None = None
    at: str = Field(description="The moment, UTC")
    set_by: str | None = None
    set_at: str


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


class AdoptResult(BaseModel):
    """What an adoption created in data.db (every table private), what it
    replaced, the tables given metadata, the metadata keys left unused (kept
    in data.db's ``_public_adoptions``), the data.db TXID that holds it, and
    the outcome of each publish asked for."""

    ok: bool = True
    tables: list[str]
    replaced: list[str]
    rows: int
    seconds: float = Field(description="How long data.db's transaction took")
    metadata_tables: list[str]
    ignored: list[str]
    private_txid: int
    published: list[FlipResult] = []


class AdoptedFile(BaseModel):
    name: str
    bytes: int


class AdoptionEntry(BaseModel):
    """One adoption, from data.db's ``_public_adoptions``: who, when, the
    files, the tables and views it created and those it replaced, and the
    metadata keys it did not use (the document itself is kept whole in
    data.db)."""

    id: int
    timestamp: str
    actor: str | None
    files: list[AdoptedFile]
    tables: list[str]
    replaced: list[str]
    ignored: list[str] | None


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
    """data.db up to ``private_txid`` is in public.db at ``public_txid``
    (``broadsheet.bookmark.Bookmark`` on the wire)."""

    private_txid: PrivateTxid
    public_txid: PublicTxid

    @classmethod
    def of(cls, bookmark: BookmarkRecord) -> "Bookmark":
        return cls(**bookmark.as_dict())


class NodeInfo(BaseModel):
    name: str
    url: str
    region: str = Field("", description="Where the node runs (its BROADSHEET_REGION, by default FLY_REGION), when it says")
    txid: int
    connected: bool
    primary_reachable: bool | None = Field(
        description="Whether the node hears from the primary's replication stream (false: its link is cut)"
    )
    last_heard_s: float | None = Field(None, description="Seconds since the node last heard from the primary")
    behind_txids: int
    lag_ms: float = Field(description="How long the oldest public TXID this node lacks has existed (0: it lacks none)")
    state: Literal["live", "behind", "joining", "cut off"] = Field(
        "live",
        description="joining: it has not answered yet (its first copy of public.db has not arrived, or it does not"
        " start); cut off: it answered before and does not now, or cannot reach the primary; behind: it lacks TXIDs",
    )
    since: str | None = Field(None, description="When the control plane began to follow it")
    updated_at: str | None


class LagSample(BaseModel):
    at: str
    lag_ms: float
    behind_txids: int
    state: str


class WatchState(BaseModel):
    """What the /watch page opens with; the event stream keeps it current."""

    primary_txid: int
    public_db_bytes: int | None = Field(description="The primary's public.db, in bytes (what a joining node receives)")
    lag_interval_s: float = Field(description="Seconds between two lag samples")
    nodes: list[NodeInfo]
    publishes: list["PropagationRecord"] = Field(description="The newest first")
    lag: dict[str, list[LagSample]] = Field(description="Each node's lag samples, oldest first")


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


class StagingProgress(BaseModel):
    """A large first copy under way (primary/publisher/staging.py): staged
    over several cycles, not public until a cycle publishes it."""

    state: str = Field(description='"copying", "done" (made public by the next cycle), "erasing" or "erased"')
    copied: int = Field(default=0, description="Rows staged so far")
    total: int = Field(default=0, description="Rows to stage, counted when staging began")


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
    staging: dict[str, StagingProgress] = Field(
        default={}, description="Large first copies under way: table -> rows staged of the total (progress)"
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


WatchState.model_rebuild()


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


class OffsiteInfo(BaseModel):
    """Off-site backups (BROADSHEET_BACKUP_URL), from the uploader's status file."""

    url: str | None = Field(None, description="s3://bucket/prefix")
    state: str | None = Field(None, description="starting, uploading, behind (see last_error) or fenced")
    generation: str | None = None
    epoch: int | None = None
    uploaded_txid: int = Field(0, description="The newest data.db TXID in the bucket")
    behind_txids: int = Field(0, description="data.db TXIDs not in the bucket yet")
    lag_seconds: float = Field(0.0, description="Since the oldest transaction not in the bucket was committed")
    last_upload_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    objects: int | None = None
    updated_at: float | None = None


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
    cut_off_nodes: list[str] = Field(
        default=[],
        description="Read nodes that do not hear from the primary (their link is cut): they serve their last position meanwhile",
    )
    unverified_nodes: list[str] = Field(
        default=[], description="Read nodes holding a position that no release signed by the publisher covers"
    )
    heals: list[dict] = Field(
        default=[], description="The newest times public.db was found written behind the publisher's back and rebuilt"
    )
    offsite: OffsiteInfo | None = Field(None, description="Off-site backups, when BROADSHEET_BACKUP_URL is set")


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


# What every route that needs a team actor may answer instead.
ERRORS = {401: {"model": Error}, 403: {"model": Error}, 404: {"model": Error}}

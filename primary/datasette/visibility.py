"""The Make public page (``/-/broadsheet/visibility/DB/TABLE``): the team
ticks columns and types a row filter, previews exactly what read nodes will
serve, confirms, and sees the public TXID and where the table is live."""

from __future__ import annotations

from urllib.parse import parse_qs

from datasette import Forbidden
from datasette.utils import tilde_decode, tilde_encode
from datasette.utils.asgi import Response

from .. import publishing, store
from ..settings import settings
from ..store import PublishSpec, SpecError, TableShape
from . import control_plane
from .actors import is_team
from .data_db import data_db_name, read_data_db
from .forms import MetadataForm, SpecForm
from .permissions import may_publish, may_set_instance_metadata, publish_forbidden


async def publishable_table(datasette, request) -> tuple[str, str]:
    """The database and table a Make public request names, once its actor
    may publish that table (else Forbidden)."""
    if not is_team(request.actor):
        raise Forbidden("Log in as a team member to change what is public")
    database = tilde_decode(request.url_vars["database"])
    table = tilde_decode(request.url_vars["table"])
    if database != data_db_name():
        raise Forbidden(f"Only tables of {data_db_name()} can be published")
    if not await may_publish(datasette, request.actor, table):
        raise Forbidden(publish_forbidden(table))
    return database, table


async def visibility(datasette, request):
    """The Make public page. GET: the table's state, and a form to choose
    its columns and rows (pre-filled with the current spec of a public
    table). POST ``action=preview``: what that spec would publish, with a
    Publish button that publishes exactly it. POST ``action=publish`` (or
    no action, as scripts send it: the whole table) or
    ``operation=unpublish``: the flip, its public TXID and where it is live;
    with ``at`` (a moment), the flip is scheduled instead (an embargo,
    listed with a countdown), and ``operation=cancel`` with ``entry``
    cancels a pending one."""
    database, table = await publishable_table(datasette, request)
    fields = None
    if request.method == "POST":
        fields = parse_qs((await request.post_body()).decode("utf-8"), keep_blank_values=True)
    return await visibility_page(datasette, request, database, table, fields=fields)


async def visibility_page(
    datasette, request, database: str, table: str, fields: dict | None = None, metadata: MetadataForm | None = None
) -> Response:
    """The Make public page, after the publish form's POST ``fields`` (if
    any) or with what became of saving the table's ``metadata``."""
    context = {
        "database": database, "table": table, "outcome": None, "error": None, "live": [], "preview": None,
        "scheduled": None, "cancelled": None,
    }
    def read(conn):
        is_view = table in store.views(conn)
        exists = is_view or table in store.user_tables(conn)
        shape = TableShape.read(conn, table) if exists and not is_view else TableShape((), True)
        return is_view, exists, shape, store.public_specs(conn).get(table)

    is_view, exists, shape, current = await read_data_db(datasette, read)
    form = SpecForm.from_spec(current or PublishSpec(), shape.columns)
    if fields is not None:
        operation, action = (fields.get("operation") or [None])[0], (fields.get("action") or [None])[0]
        if "action" in fields:
            form = SpecForm.from_post(fields, shape.rowid_alias)
        at = (fields.get("at") or [""])[0].strip()
        try:
            if operation == "cancel":
                entry = (fields.get("entry") or [""])[0]
                if not entry.isdigit():
                    raise store.PublishError("Say which scheduled entry to cancel")
                context["cancelled"] = await control_plane.cancel_scheduled(datasette, request.actor, table, int(entry))
            elif operation not in ("publish", "unpublish") or action not in (None, "preview", "publish"):
                raise store.PublishError("Choose publish or unpublish, and preview or publish")
            else:
                spec = form.spec(shape.columns) if action and operation == "publish" else PublishSpec()
                if action == "preview":
                    context["preview"] = await control_plane.preview(datasette, request.actor, table, spec)
                elif at:
                    context["scheduled"] = await control_plane.schedule(
                        datasette, request.actor, table, operation == "publish", at, spec
                    )
                else:
                    await _flip(datasette, request.actor, database, table, operation == "publish", spec, context)
        except SpecError as exc:
            context["error"] = str(exc)
        except (store.PublishError, publishing.PublishTimeout) as exc:
            context["error"] = exc.message
    def read_after(conn):
        return store.public_specs(conn).get(table), store.audit_entries(conn, table=table, limit=20), store.metadata(conn)

    current, context["audit"], every_metadata = await read_data_db(datasette, read_after)
    metadata = metadata or MetadataForm(every_metadata.get(table, {}))
    for entry in context["audit"]:
        published = entry["operation"] == "publish"
        entry["published"] = PublishSpec.from_json(entry["spec_after"]).describe() if published else None
    if context["preview"] is not None:
        context["sample"] = [[_cell(row[c]) for c in context["preview"].columns] for row in context["preview"].sample]
    if context["outcome"] is not None:
        form = SpecForm.from_spec(current or PublishSpec(), shape.columns)
    context["pending"] = await control_plane.scheduled(datasette, request.actor, table) if exists else []
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


def _cell(value) -> str:
    """A sample value as Datasette's table page shows it."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return f"<Binary: {len(value):,} byte{'' if len(value) == 1 else 's'}>"
    return str(value)


async def _flip(datasette, actor: dict, database: str, table: str, public: bool, spec: PublishSpec, context: dict):
    outcome = await control_plane.flip(datasette, actor, table, public, spec)
    context["outcome"] = outcome
    # Its event comes from the audit log, as every flip's does (events.py).
    if outcome.public_txid is not None:
        context["live"] = await control_plane.where_live(datasette, actor, table, outcome.public_txid)

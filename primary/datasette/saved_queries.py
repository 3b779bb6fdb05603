"""The "Publish this query" page (``/-/broadsheet/query/DB``): name a query
and publish it as a saved query (every read node serves it at
``/public/NAME``), or remove one."""

from __future__ import annotations

import dataclasses

from datasette import Forbidden
from datasette.utils import tilde_decode
from datasette.utils.asgi import Response

from .. import queries, store
from . import control_plane
from .actors import is_team
from .data_db import data_db_name, read_data_db
from .permissions import PUBLISH_ACTION, may_publish_queries

QUERY_FORM_FIELDS = ("name", "sql", "title", "description")


async def publish_query(datasette, request):
    """The "Publish this query" page. GET: a form pre-filled from the query
    string (``sql``, ``name``), and every saved query. POST: save and
    publish it (a 400 page naming what it reads that is not public), or
    ``operation=remove`` a saved query; either shows the public TXID."""
    if not is_team(request.actor):
        raise Forbidden("Log in as a team member to publish queries")
    if tilde_decode(request.url_vars["database"]) != data_db_name():
        raise Forbidden(f"Only queries of {data_db_name()} can be published")
    if not await may_publish_queries(datasette, request.actor):
        raise Forbidden(
            f"This actor may not publish saved queries (the {PUBLISH_ACTION} action on {data_db_name()} as a whole)"
        )
    form = {k: request.args.get(k) or "" for k in QUERY_FORM_FIELDS}
    context = {"database": data_db_name(), "form": form, "outcome": None, "error": None}
    status = 200
    if request.method == "POST":
        posted = await request.post_vars()
        form.update({k: (posted.get(k) or "").strip() for k in QUERY_FORM_FIELDS})
        # Saved and removed by the control plane, in its own process (see control_plane.py).
        try:
            if posted.get("operation") == "remove":
                answer = await control_plane.ask(datasette, request.actor, lambda client: client.remove_query(form["name"]))
            else:
                answer = await control_plane.ask(datasette, request.actor, lambda client: client.save_query(
                    form["name"], form["sql"], form["title"] or None, form["description"] or None
                ))
            context["outcome"] = queries.Outcome(**{f.name: answer[f.name] for f in dataclasses.fields(queries.Outcome)})
        except store.PublishError as exc:
            context["error"], status = exc.message, exc.status
    context["saved"] = await read_data_db(datasette, store.queries.saved)
    return Response.html(
        await datasette.render_template("broadsheet_query.html", context, request=request), status=status
    )

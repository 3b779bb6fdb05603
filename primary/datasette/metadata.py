"""The metadata pages: a table's "What read nodes show" form (posted from
the Make public page) and the public instance's, at ``/-/broadsheet/metadata``."""

from __future__ import annotations

from datasette import Forbidden
from datasette.utils import tilde_encode
from datasette.utils.asgi import Response

from .. import store
from .actors import is_team
from .data_db import data_db_name, metadata_of
from .forms import MetadataForm
from .permissions import PUBLISH_ACTION, may_set_instance_metadata
from .visibility import publishable_table, visibility_page


async def instance_metadata(datasette, request):
    """The public instance's metadata page: GET the form pre-filled with
    what is set, POST to save it (shown at the next publish cycle)."""
    if not is_team(request.actor):
        raise Forbidden("Log in as a team member to change what read nodes show")
    if not await may_set_instance_metadata(datasette, request.actor):
        raise Forbidden(
            f"This actor may not change the public instance's metadata (the {PUBLISH_ACTION} action on"
            f" {data_db_name()} as a whole)"
        )
    if request.method == "POST":
        metadata = await MetadataForm.save(datasette, request, store.INSTANCE)
    else:
        metadata = MetadataForm(await metadata_of(datasette, store.INSTANCE))
    context = {
        "metadata_form": metadata,
        "metadata_action": datasette.urls.path("/-/broadsheet/metadata"),
        "database": data_db_name(),
    }
    return Response.html(
        await datasette.render_template("broadsheet_metadata.html", context, request=request),
        status=metadata.status if metadata.error else 200,
    )


async def table_metadata(datasette, request):
    """POST: save a table's metadata from the Make public page's "What
    read nodes show" form, and show that page again with the outcome. Kept
    apart from the publish flow: saving metadata flips nothing, and read
    nodes show it while the table is public, from the next publish cycle."""
    database, table = await publishable_table(datasette, request)
    if request.method != "POST":
        return Response.redirect(
            datasette.urls.path(f"/-/broadsheet/visibility/{tilde_encode(database)}/{tilde_encode(table)}")
            + "#metadata"
        )
    metadata = await MetadataForm.save(datasette, request, table)
    return await visibility_page(datasette, request, database, table, metadata=metadata)

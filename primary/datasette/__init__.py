"""The team's Datasette plugin, on the primary: its hooks, each handing the
work to the module named for what it does.

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
  flip, whichever path made it: fired from the audit log (primary/publisher/events.py).
- A "Watch propagation" link in the team's menu, to ``/-/broadsheet/watch``:
  every read node by region, each public TXID's arrival on each, live.
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

Where each lives: ``permissions`` (who may do what, the publish action),
``actions`` (menu items), ``login`` (passwords, sessions, anonymous
requests) with ``team`` (the team store, team.db), the pages
``visibility`` (Make public), ``metadata`` and ``saved_queries``, their
``forms``, ``badges``, ``body_guard`` and ``asgi`` (the ASGI wrapper),
``alterations`` (the alter API followed), ``events``, ``watch`` (the
/watch page, ``/-/broadsheet/watch``), ``data_db`` (data.db
through this Datasette's connections), ``actors``, and ``control_plane``
(every change to data.db, made by the control plane over HTTP).
"""

from __future__ import annotations

from datasette import hookimpl

from ..publisher.events import PublishTableEvent, UnpublishTableEvent
from . import (
    actions,
    alterations,
    asgi,
    badges,
    events,
    login,
    metadata,
    permissions,
    saved_queries,
    team,
    visibility,
    watch,
)
from .actors import is_team
from .data_db import data_db_name


@hookimpl
def register_actions(datasette):
    return permissions.actions()


@hookimpl
def register_events(datasette):
    return [PublishTableEvent, UnpublishTableEvent]


@hookimpl
def startup(datasette):
    events.follow_audit_log(datasette)


@hookimpl
def track_event(datasette, event):
    events.log_event(event)
    if event.name == "alter-table" and event.database == data_db_name() and is_team(event.actor):
        return alterations.republish_rebuilt(datasette, event.table, event.actor, event.after_schema)
    if event.name == "logout" and isinstance(event.actor, dict):
        team.team().logout(event.actor.get("sid"))
    return None


@hookimpl
def write_wrapper(datasette, database, request, transaction):
    return alterations.follow_columns(database, request)


@hookimpl
def permission_resources_sql(datasette, actor, action):
    return permissions.resources_sql(actor, action)


@hookimpl
def forbidden(datasette, request, message):
    return login.forbidden(datasette, request)


@hookimpl
def table_actions(datasette, actor, database, table, request):
    return actions.table_actions(datasette, actor, database, table)


@hookimpl
def query_actions(datasette, actor, database, query_name, request, sql, params):
    return actions.query_actions(datasette, actor, database, query_name, sql)


@hookimpl
def database_actions(datasette, actor, database, request):
    return actions.database_actions(datasette, actor, database)


@hookimpl
def extra_body_script(datasette, database, table, view_name):
    return badges.body_script(datasette, database, table, view_name)


@hookimpl
def register_routes(datasette):
    return [
        (r"^/-/broadsheet/visibility/(?P<database>[^/]+)/(?P<table>[^/]+)$", visibility.visibility),
        (r"^/-/broadsheet/metadata/(?P<database>[^/]+)/(?P<table>[^/]+)$", metadata.table_metadata),
        (r"^/-/broadsheet/metadata$", metadata.instance_metadata),
        (r"^/-/broadsheet/query/(?P<database>[^/]+)$", saved_queries.publish_query),
        (r"^/-/broadsheet/watch$", watch.watch_page),
        (r"^/-/broadsheet/watch/state\.json$", watch.watch_state),
        (r"^/-/broadsheet/watch/events$", watch.watch_events),
        (r"^/-/login$", login.login),
    ]


@hookimpl
def menu_links(datasette, actor, request):
    return watch.menu_links(datasette, actor)


@hookimpl
def asgi_wrapper(datasette):
    return asgi.wrapper(datasette)

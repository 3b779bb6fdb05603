"""The read node's Datasette plugin: anonymous visitors see exactly the tables
listed in the replicated ``_public_tables``, and nothing can be written.

The hooks only; each concept has a module of its own:

- ``startup.py``: refuse to run unless Datasette denies by default, serves
  this node's public.db alone, and no plugin widens access.
- ``rule.py``: the permission rule, in the style of datasette-public (a
  ``permission_resources_sql`` hook that allows ``view-table`` for every
  listed table), read from public.db itself (not from Datasette's internal
  database, which is not replicated).
- ``pipeline.py``: the ASGI wrapper every request passes through first:
  refusals, bookmark waits (``bookmarks.py``), the response cache, then the
  rule and Datasette.
- ``errors.py``: a visitor's bad request is a 4xx, never a 500.
- ``status.py``: ``/-/replication.json``.

Visitors are anonymous and may be hostile: their SQL runs in a sandbox
(``sandbox.py``), at most a few at a time (``custom_sql.py``), and bookmark
waits share one position watcher with a cap (``position.py``), all held in
the node's ``Guards`` (``guards.py``).
"""

from __future__ import annotations

import re
import sys

from datasette import hookimpl

from broadsheet.positions import STATUS_PATH

from . import errors, pipeline, rule, sandbox, status
from . import startup as checks


# trylast: after every other plugin's startup (Datasette runs the team's
# read-node plugins' after broadsheet's own otherwise), so that a database
# one of them adds there is seen and refused.
@hookimpl(trylast=True)
def startup(datasette):
    """Refuse to serve unless this is what a read node must be: deny by
    default, and serve public.db alone. A read node without these would
    serve whatever its databases hold to anyone."""
    return checks.check(datasette, sys.modules[__name__])


@hookimpl
def prepare_connection(conn, database, datasette):
    # Every connection to a database visitors can query. (Datasette also
    # prepares scratch connections of its own, such as the one /-/versions
    # probes SQLite's features with.)
    # Every file database, not only the one startup checked: a connection
    # may be made before that check runs.
    if database in {db.name for db in checks.file_databases(datasette)}:
        sandbox.confine(conn)


@hookimpl(tryfirst=True)
def handle_exception(datasette, request, exception):
    """A visitor's bad request is a 400, whichever page it reached."""
    return errors.bad_request(datasette, request, exception)


@hookimpl
async def permission_resources_sql(datasette, actor, action):
    return await rule.resources_sql(datasette, actor, action)


@hookimpl
def register_routes(datasette):
    return [
        (f"^{re.escape(STATUS_PATH)}$", status.replication_status),
        (f"^{re.escape(status.RELEASE_PATH)}$", status.release_status),
    ]


# trylast: applied last, so outermost: no other plugin's wrapper sees a
# request before these rules (startup checks it).
@hookimpl(trylast=True)
def asgi_wrapper(datasette):
    return pipeline.wrapper(datasette)

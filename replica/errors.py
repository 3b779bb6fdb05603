"""A visitor's bad request is a 4xx, never a 500: what Datasette would
answer with a 500 is turned into a 400 (``bad_request``) or refused before
Datasette sees it (``unservable``). On a read node the statement's variable
parts are the visitor's."""

from __future__ import annotations

import re
import sqlite3
from urllib.parse import parse_qsl

from datasette.database import QueryInterrupted
from datasette.handle_exception import handle_exception as render_exception
from datasette.views.base import DatasetteError

# Datasette's own message for a query cut at sql_time_limit_ms.
TIME_LIMIT_MESSAGE = "SQL query took too long. The time limit is controlled by the sql_time_limit_ms setting."

# SQLite's verdicts on the statement itself (unknown column, syntax, refused
# by the sandbox, value too big): on a read node the statement's variable
# parts are the visitor's. The rest (I/O, corruption, busy, ...) are ours.
_STATEMENT_ERRORS = {"SQLITE_ERROR", "SQLITE_AUTH", "SQLITE_TOOBIG", "SQLITE_RANGE", "SQLITE_MISMATCH"}


def bad_request(datasette, request, exception):
    """The 400 page for an ``exception`` that is the visitor's doing, else
    None (Datasette's own handling): Datasette turns these into 400s on its
    query page, but lets them escape as 500s from table pages (``?_facet=``
    of no column, a ``?_where=`` cut at the time limit)."""
    if isinstance(exception, QueryInterrupted):
        error = DatasetteError(TIME_LIMIT_MESSAGE, title="SQL Interrupted", status=400)
    elif isinstance(exception, sqlite3.Error) and getattr(exception, "sqlite_errorname", "") in _STATEMENT_ERRORS:
        error = DatasetteError(str(exception), title="Invalid SQL", status=400)
    else:
        return None
    return render_exception(datasette, request, error)


# /db/table.ext, /db/query.ext, /db/-/query.ext: the pages Datasette renders
# in a format the path names (not /-/..., where plugins add their routes).
_FORMATTED = re.compile(r"^/(?!-/)[^/]+/(?:-/query|[^/]+)\.(\w+)$")


# Datasette parses the whole query string again for each parameter it looks
# up (request.args), so its pages cost the square of their parameters'
# number, on the event loop: 2,000 held a read node for half a minute.
MAX_PARAMETERS = 200


def unservable(datasette, scope) -> tuple[int, str] | None:
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

"""One exception handler per error kind: what a client of the control plane
sees when a request cannot be carried out. Every body is JSON, ``{"ok":
false, "error": "…"}``, with the table it concerns where there is one.

Routes raise the error where it arises (a PublishError from data.db, a
PublishTimeout from the wait for the publisher, NotAllowed from a
permission check) and never translate it themselves.
"""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from ..publishing import PublishTimeout
from ..store import PublishError, SpecError
from .auth import NotAuthenticated
from .permissions import NotAllowed

_NO_TABLE = object()


def _error(status: int, message: str, table=_NO_TABLE, headers: dict | None = None) -> JSONResponse:
    body = {"ok": False, "error": message} if table is _NO_TABLE else {"ok": False, "error": message, "table": table}
    return JSONResponse(body, status_code=status, headers=headers)


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """FastAPI's own (a 404 of a route, say): its detail is the message."""
    body = exc.detail if isinstance(exc.detail, dict) else {"ok": False, "error": str(exc.detail)}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def not_authenticated(request: Request, exc: NotAuthenticated) -> JSONResponse:
    """401: no team actor (no token, a bad one, an ended login session)."""
    return _error(401, exc.message, headers={"WWW-Authenticate": "Bearer"})


async def not_allowed(request: Request, exc: NotAllowed) -> JSONResponse:
    """403: a team actor whom the team's permissions refuse this."""
    return _error(403, exc.message, exc.table if exc.table is not None else _NO_TABLE)


async def publish_error(request: Request, exc: PublishError) -> JSONResponse:
    """The status the error carries (400, 403, 404, 409): a table or a saved
    query that cannot be changed so; says which table, if any (null)."""
    return _error(exc.status, exc.message, exc.table)


async def publish_timeout(request: Request, exc: PublishTimeout) -> JSONResponse:
    """504: the change is in data.db, the publisher has not reached it in time."""
    return _error(exc.status, exc.message, exc.table if exc.table is not None else _NO_TABLE)


async def spec_error(request: Request, exc: SpecError) -> JSONResponse:
    """400: a spec no table could have (an unknown field, both column lists)."""
    return _error(400, str(exc))


HANDLERS = {
    HTTPException: http_error,
    NotAuthenticated: not_authenticated,
    NotAllowed: not_allowed,
    PublishError: publish_error,
    PublishTimeout: publish_timeout,
    SpecError: spec_error,
}


def install(app: FastAPI) -> None:
    for kind, handler in HANDLERS.items():
        app.exception_handler(kind)(handler)

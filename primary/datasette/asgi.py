"""The primary's ASGI wrapper: a dead login cookie dropped, anonymous writes
refused, write bodies read whole (body_guard.py), and write API responses
carrying ``Broadsheet-Private-Txid`` (with ``Broadsheet-Wait: public`` also
``Broadsheet-Public-Txid``; with ``Broadsheet-Wait: standby`` an answer only
once the standby has the write, ``Broadsheet-Standby-Txid``, else 504)."""

from __future__ import annotations

import contextlib

from broadsheet.asgi import error_body, respond
from broadsheet.litefs import Pos

from .. import publishing
from ..settings import settings
from ..standby import acknowledged
from .body_guard import BODY, BadBody, read_body, replay
from .login import ANONYMOUS_POSTS, AUTH_HEADERS, AUTH_REQUIRED, without_dead_login


def wrapper(datasette):
    """The primary's ASGI wrapper around the team's Datasette."""
    def wrap(app):
        async def primary(scope, receive, send):
            if scope["type"] == "http":
                scope = without_dead_login(datasette, scope)
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

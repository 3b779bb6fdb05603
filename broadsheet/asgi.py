"""Responses that both roles' ASGI wrappers send before Datasette sees a
request: one JSON error shape, the one Datasette's own API uses."""

from __future__ import annotations

import json

JSON = b"application/json; charset=utf-8"


def error_body(status: int, message: str, **extra) -> bytes:
    return json.dumps({"ok": False, "status": status, "error": message, "errors": [message], **extra}).encode()


async def respond(send, status: int, body: bytes, headers: list | None = None, content_type: bytes | None = JSON) -> None:
    base = [(b"content-type", content_type)] if content_type else []
    await send({"type": "http.response.start", "status": status, "headers": [*base, *(headers or [])]})
    await send({"type": "http.response.body", "body": body})

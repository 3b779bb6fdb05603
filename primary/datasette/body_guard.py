"""Write requests' bodies, read whole before Datasette sees them: refused
past the size limit or nested too deep, then handed to Datasette (and kept
for the alteration that needs it again)."""

from __future__ import annotations

import re

# The request body the primary's ASGI wrapper read, kept in the scope for
# follow_columns (Datasette reads it once, and does not keep it).
BODY = "broadsheet.body"


# Deeper than this, a JSON body is refused before Datasette parses it (its
# parser would recurse until Python's limit and answer 500).
MAX_JSON_DEPTH = 64


class BadBody(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


async def read_body(receive, headers: dict, limit: int) -> bytes:
    """The whole request body, refused (413) past ``limit`` bytes whether or
    not the client sent a Content-Length, and (400) if it is JSON nested
    deeper than MAX_JSON_DEPTH."""
    length = headers.get(b"content-length", b"")
    too_big = f"Request body over {limit} bytes: send rows in batches"
    if length.isdigit() and int(length) > limit:
        raise BadBody(413, too_big)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            # Cut short: a truncated body (a form field, say) may still parse.
            raise BadBody(400, "The request body ended before it was complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BadBody(413, too_big)
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    if json_nesting(body) > MAX_JSON_DEPTH:
        raise BadBody(400, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return body


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_nesting(body: bytes) -> int:
    """About how deeply ``body``'s JSON nests (0 for a body that is not
    well-bracketed JSON: the parser will say what is wrong with it). Every
    step runs at C speed: strings removed, then everything but brackets, then
    the innermost pairs peeled off one layer (or two) per pass."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return 0
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    for passes in range(MAX_JSON_DEPTH + 1):
        if not brackets:
            return passes
        peeled = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if peeled == brackets:
            return 0
        brackets = peeled
    return MAX_JSON_DEPTH + 1


def replay(body: bytes):
    """A ``receive`` that hands Datasette the body already read."""
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive

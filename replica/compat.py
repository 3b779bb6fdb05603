"""Read-node plugins written for Datasette 0.64 on Datasette 1.0.

Datasette 1.0 answers a JSON request that asks for an ``_extra`` it does not
know with a 400; ``next_url`` and ``next`` are no longer extras because
every table JSON response carries them. datasette-cluster-map (0.18) loads
its markers with ``?_extra=next_url``, so on 1.0 its map stays empty. This
plugin drops just those names from ``_extra`` before Datasette reads the
query string: what the response carries is unchanged.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

from datasette import hookimpl

# Keys of every table JSON response on Datasette 1.0 that 0.64 served as extras.
ALWAYS_THERE = {"next_url", "next"}


def without_built_in_extras(query_string: bytes) -> bytes:
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    if not any(k == "_extra" and set(v.split(",")) & ALWAYS_THERE for k, v in pairs):
        return query_string
    kept = []
    for key, value in pairs:
        if key == "_extra":
            value = ",".join(name for name in value.split(",") if name not in ALWAYS_THERE)
            if not value:
                continue
        kept.append((key, value))
    return urlencode(kept).encode("latin-1")


@hookimpl
def asgi_wrapper(datasette):
    def wrap(app):
        async def compat(scope, receive, send):
            if scope["type"] == "http" and b"_extra" in scope.get("query_string", b""):
                scope = {**scope, "query_string": without_built_in_extras(scope["query_string"])}
            return await app(scope, receive, send)

        return compat

    return wrap

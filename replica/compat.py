"""Read-node plugins written for Datasette 0.64 on Datasette 1.0.

Datasette 1.0 answers a JSON request that asks for an ``_extra`` it does not
know with a 400; ``next_url`` and ``next`` are no longer extras because
every table JSON response carries them. datasette-cluster-map (0.18) loads
its markers with ``?_extra=next_url``, so on 1.0 its map stays empty. This
plugin drops just those names from ``_extra`` before Datasette reads the
query string: what the response carries is unchanged.
"""

from __future__ import annotations

from urllib.parse import quote, unquote_plus

from datasette import hookimpl

# Keys of every table JSON response on Datasette 1.0 that 0.64 served as extras.
ALWAYS_THERE = {"next_url", "next"}


def without_built_in_extras(query_string: bytes) -> bytes:
    """The query string without those ``_extra`` names; every other part is
    left byte for byte as the visitor sent it."""
    kept, changed = [], False
    for part in query_string.split(b"&"):
        key, sep, value = part.partition(b"=")
        if unquote_plus(key.decode("latin-1")) == "_extra" and sep:
            names = unquote_plus(value.decode("latin-1")).split(",")
            wanted = [name for name in names if name not in ALWAYS_THERE]
            if len(wanted) != len(names):
                changed = True
                if not wanted:
                    continue
                part = key + b"=" + quote(",".join(wanted), safe=",").encode("latin-1")
        kept.append(part)
    return b"&".join(kept) if changed else query_string


@hookimpl
def asgi_wrapper(datasette):
    def wrap(app):
        async def compat(scope, receive, send):
            if scope["type"] == "http" and b"_extra" in scope.get("query_string", b""):
                scope = {**scope, "query_string": without_built_in_extras(scope["query_string"])}
            return await app(scope, receive, send)

        return compat

    return wrap

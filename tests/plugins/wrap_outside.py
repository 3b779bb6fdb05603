"""A read-node plugin whose ASGI wrapper would see requests before the read
node's rules do (a read node must refuse to start with it)."""

from datasette import hookimpl


@hookimpl(trylast=True)
def asgi_wrapper(datasette):
    def wrap(app):
        async def outside(scope, receive, send):
            return await app(scope, receive, send)

        return outside

    return wrap

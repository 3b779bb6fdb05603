"""The control plane's FastAPI application (``uvicorn primary.control.app:app``):
the propagation tracker for its lifetime, Datasette's CSRF defence, one
exception handler per error kind, and one router per resource."""

from __future__ import annotations

import contextlib

from datasette.csrf import CrossOriginProtectionMiddleware
from fastapi import FastAPI

from broadsheet.asgi import error_body, respond

from ..publisher import cycle_log_path
from ..settings import settings
from . import errors
from .discovery import Discovery
from .routes import adoptions, audit, health, metadata, propagation, queries, schedule, tables
from .tracker import Tracker


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    conf = settings()
    discovery = (
        Discovery(conf.read_nodes_dns, conf.read_node_port)
        if conf.read_nodes_dns
        else None
    )
    app.state.tracker = Tracker(
        conf.public_litefs_url, conf.read_nodes, discovery=discovery, discovery_interval=conf.discovery_interval,
        cycle_log=cycle_log_path(conf.watermark_file), public_db=conf.public_db,
    )
    app.state.tracker.start()
    yield
    await app.state.tracker.stop()


app = FastAPI(
    title="broadsheet control plane",
    version="0.1.0",
    description="Publish state, propagation to read nodes, and health of a broadsheet primary.",
    lifespan=lifespan,
)


class CrossOriginProtection(CrossOriginProtectionMiddleware):
    """Datasette's own CSRF defence (Sec-Fetch-Site, else Origin against
    Host; Bearer tokens exempt), on the control plane too: a login cookie
    travels with a form another site posts here. Refusals are JSON, like
    every other error of this API."""

    def __init__(self, app):
        super().__init__(app, datasette=None)

    async def _forbid(self, send, reason):
        message = f"Cross-site request refused: {reason}. Scripts send Authorization: Bearer instead of a cookie."
        await respond(send, 403, error_body(403, message))


app.add_middleware(CrossOriginProtection)
errors.install(app)

for resource in (health, tables, adoptions, schedule, metadata, queries, audit, propagation):
    app.include_router(resource.router)

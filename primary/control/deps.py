"""What the control plane's routes depend on: the team actor making the
request, the propagation tracker, data.db, and the query parameters that
several routes share."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from .. import store
from ..settings import settings
from .auth import actor_from
from .tracker import Tracker


async def team_actor(request: Request) -> dict:
    """The team actor (NotAuthenticated, a 401, if there is none)."""
    return await actor_from(request.headers.get("authorization"), dict(request.cookies))


Actor = Annotated[dict, Depends(team_actor)]


def tracker(request: Request) -> Tracker:
    return request.app.state.tracker


def connect(readonly: bool = False):
    return store.connect(settings().data_db, readonly=readonly)


WaitQuery = Annotated[bool, Query(description="Wait for the publisher and return the public TXID")]
TimeoutQuery = Annotated[float, Query(gt=0, le=60, description="Seconds to wait for the publisher")]

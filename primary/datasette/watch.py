"""The /watch page in the team's Datasette (``/-/broadsheet/watch``, linked
from the team's menu): each read node by region, each public TXID's arrival
on every node as a waterfall, each node's lag over the last minutes, live.

The browser asks only this Datasette: ``/-/broadsheet/watch/state.json``
and ``/-/broadsheet/watch/events`` pass the control plane's ``/watch/state``
and ``/events`` on, asked with a short-lived token of the signed-in team
member (as every change this Datasette offers is, control_plane.py). The
script and style are primary/watch's, shared with the control plane's own
``/watch``."""

from __future__ import annotations

import asyncio
import json

import httpx
from datasette import Forbidden
from datasette.utils.asgi import Response
from markupsafe import Markup

from broadsheet.client import ControlError

from .. import watch as assets
from ..settings import settings
from .actors import is_team
from .control_plane import ask

PATH = "/-/broadsheet/watch"
# A proxied event stream ends after this long (the browser reconnects at
# once, with a new token): a session ended meanwhile stops being followed.
STREAM_SECONDS = 300.0
LIMITS = {"limit": (1, 200, 20), "seconds": (0, 600, 300)}


def _team(request) -> dict:
    if not is_team(request.actor):
        raise Forbidden("Log in as a team member to watch propagation")
    return request.actor


def menu_links(datasette, actor):
    if not is_team(actor):
        return None
    return [{"href": datasette.urls.path(PATH), "label": "Watch propagation"}]


async def watch_page(datasette, request):
    _team(request)
    context = {
        "watch_style": Markup(assets.style()),
        "watch_body": Markup(
            assets.container(datasette.urls.path(f"{PATH}/state.json"), datasette.urls.path(f"{PATH}/events"))
        ),
        "watch_script": Markup(assets.script()),
    }
    return Response.html(await datasette.render_template("broadsheet_watch.html", context, request=request))


def _error(status: int, message: str) -> Response:
    return Response.json({"ok": False, "error": message, "status": status}, status=status)


async def watch_state(datasette, request):
    actor = _team(request)
    params = {}
    for name, (low, high, default) in LIMITS.items():
        raw = request.args.get(name)
        try:
            value = default if raw is None else int(raw)
        except ValueError:
            return _error(400, f"{name} must be a whole number from {low} to {high}")
        if not low <= value <= high:
            return _error(400, f"{name} must be a whole number from {low} to {high}")
        params[name] = value
    try:
        state = await ask(datasette, actor, lambda client: client.watch_state(**params), timeout=10)
    except Exception as exc:  # PublishError with the control plane's status
        return _error(getattr(exc, "status", 502), str(exc))
    return Response.json(state, headers={"Cache-Control": "no-store"})


async def watch_events(datasette, request, send, receive):
    """The control plane's event stream, passed on as it comes until the
    browser goes away (or STREAM_SECONDS pass)."""
    actor = _team(request)
    token = await datasette.create_token(actor["id"], expires_after=int(STREAM_SECONDS) + 60)
    headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-store")]

    started = False

    async def relay():
        nonlocal started
        timeout = httpx.Timeout(5.0, read=None)
        async with httpx.AsyncClient(timeout=timeout) as client:
            async with client.stream(
                "GET", f"{settings().control_url}/events", headers={"Authorization": f"Bearer {token}"}
            ) as response:
                if response.status_code >= 400:
                    raise ControlError(response.status_code, (await response.aread()).decode(errors="replace"))
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                started = True
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def gone():
        while (await receive())["type"] != "http.disconnect":
            pass

    relaying, leaving = asyncio.ensure_future(relay()), asyncio.ensure_future(gone())
    try:
        done, _ = await asyncio.wait({relaying, leaving}, timeout=STREAM_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        if relaying in done and relaying.exception() is not None and not started:
            exc = relaying.exception()
            status = exc.status if isinstance(exc, ControlError) else 502
            body = {"ok": False, "error": f"the control plane's events: {exc}", "status": status}
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": json.dumps(body).encode()})
    finally:
        for task in (relaying, leaving):
            task.cancel()
        await asyncio.gather(relaying, leaving, return_exceptions=True)
    if started:
        try:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except Exception:
            pass  # the browser has gone: nothing to end

"""Team logins: named team members sign in with a password (team.py), a
session per login that ``/-/logout`` ends everywhere, a brake on guessing;
a login cookie whose session has ended counts for nothing; and anonymous
requests get a 401 a client can act on, or the login page."""

from __future__ import annotations

import asyncio
from http.cookies import CookieError, SimpleCookie

from datasette.events import LoginEvent
from datasette.utils.asgi import Response

from broadsheet.asgi import JSON, error_body

from . import team

ANONYMOUS_POSTS = {"/-/login"}
AUTH_REQUIRED = "Authentication required: send Authorization: Bearer dstok_…"
AUTH_HEADERS = [(b"www-authenticate", b'Bearer realm="broadsheet"')]


def forbidden(datasette, request):
    """Anonymous requests: a 401 a client can act on, or the login page."""
    if request.actor:
        return None
    if _wants_json(request):
        return Response(
            error_body(401, AUTH_REQUIRED),
            status=401,
            headers={k.decode(): v.decode() for k, v in AUTH_HEADERS},
            content_type=JSON.decode(),
        )
    return Response.redirect(datasette.urls.path("/-/login"))


def _wants_json(request) -> bool:
    """A script's request (a write, a .json, asking for JSON, a /-/ API
    path), not a browser's: a browser asks for HTML, on a /-/ page too."""
    accept = request.headers.get("accept", "")
    if request.method != "GET" or request.path.endswith(".json") or "application/json" in accept:
        return True
    return "/-/" in request.path and "text/html" not in accept


async def login(datasette, request):
    """Named team members sign in with a password (team.py): a
    session per login, ended everywhere by /-/logout, and a brake on
    guessing (429 with Retry-After)."""
    context = {"error": None, "username": "", "next": request.args.get("next") or ""}
    status = 200
    headers = {}
    if request.method == "POST":
        form = await request.post_vars()
        name, password = form.get("username") or "", form.get("password") or ""
        context.update(username=name, next=form.get("next") or "")
        client = (request.scope.get("client") or ("unknown",))[0]
        try:
            session = await asyncio.to_thread(team.team().login, name, password, client)
        except team.Throttled as exc:
            context["error"], status, headers = str(exc), 429, {"Retry-After": str(exc.retry_after)}
        except team.TeamError as exc:
            context["error"], status = str(exc), 401
        else:
            target = context["next"] if _local_path(context["next"]) else "/"
            response = Response.redirect(target)
            actor = {"id": name, "sid": session}
            datasette.set_actor_cookie(response, actor, expire_after=team.SESSION_SECONDS)
            await datasette.track_event(LoginEvent(actor=actor))
            return response
    html = await datasette.render_template("broadsheet_login.html", context, request=request)
    return Response.html(html, status=status, headers=headers)


def _local_path(url: str) -> bool:
    """A path on this site (not //host or /\\host, which browsers treat as
    another site)."""
    return url.startswith("/") and not url.startswith(("//", "/\\")) and "\\" not in url


def _session_is_live(datasette, cookie: str) -> bool:
    """Whether a ``ds_actor`` cookie belongs to a live team session. A cookie
    without a session (signed by hand with the secret) is not one."""
    try:
        actor = datasette.unsign(cookie, "actor").get("a") or {}
    except Exception:
        return False
    return isinstance(actor, dict) and team.team().live(actor.get("sid"), actor.get("id"))


def without_dead_login(datasette, scope):
    """The request as Datasette should see it: a login cookie whose session
    has ended (logged out elsewhere, user removed) is dropped, so the request
    is anonymous. The cookie is read exactly as Datasette reads it (the last
    Cookie header, parsed by SimpleCookie), and a dead one leaves a single
    rebuilt Cookie header without it."""
    headers = scope.get("headers", [])
    cookie_headers = [v for k, v in headers if k.lower() == b"cookie"]
    if not cookie_headers:
        return scope
    jar = SimpleCookie()
    try:
        jar.load(cookie_headers[-1].decode("latin-1"))
    except CookieError:
        jar = SimpleCookie()
    live = "ds_actor" in jar and _session_is_live(datasette, jar["ds_actor"].value)
    if len(cookie_headers) == 1 and (live or "ds_actor" not in jar):
        return scope
    kept = "; ".join(f"{name}={m.coded_value}" for name, m in jar.items() if name != "ds_actor" or live)
    headers = [(k, v) for k, v in headers if k.lower() != b"cookie"] + ([(b"cookie", kept.encode("latin-1"))] if kept else [])
    return {**scope, "headers": headers}

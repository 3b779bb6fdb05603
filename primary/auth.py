"""Team actors, as Datasette knows them: signed API tokens (``dstok_``) and
the browser's signed ``ds_actor`` cookie. The control plane checks both with
Datasette's own code and the one secret every process shares."""

from __future__ import annotations

import os

os.environ.setdefault("DATASETTE_LOAD_PLUGINS", "")  # no third-party plugins here

from types import SimpleNamespace  # noqa: E402

from datasette.actor_auth_cookie import actor_from_request  # noqa: E402
from datasette.app import Datasette  # noqa: E402
from datasette.tokens import TokenInvalid  # noqa: E402

from .settings import settings  # noqa: E402
from .team import team  # noqa: E402

_instances: dict[str, Datasette] = {}


def datasette(secret: str | None = None) -> Datasette:
    """A database-less Datasette holding the shared secret: used only to sign
    and verify, so token logic is Datasette's, not a copy of it."""
    secret = secret or settings().secret
    if secret not in _instances:
        _instances[secret] = Datasette(secret=secret)
    return _instances[secret]


class NotAuthenticated(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


async def actor_from(authorization: str | None, cookies: dict[str, str]) -> dict:
    """The team actor making a request, or NotAuthenticated."""
    ds = datasette()
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise NotAuthenticated("Authorization header must be 'Bearer <token>'")
        try:
            actor = await ds.verify_token(token.strip())
        except TokenInvalid as exc:
            raise NotAuthenticated(exc.message)
        if actor is None:
            raise NotAuthenticated("Unrecognised token")
        return actor
    if "ds_actor" in cookies:
        # Datasette's own cookie check; it reads nothing but request.cookies.
        actor = actor_from_request(ds, SimpleNamespace(cookies=cookies))
        if actor:
            # Only while its session lives: /-/logout ends it here too.
            if not team().live(actor.get("sid"), actor.get("id")):
                raise NotAuthenticated("This login session has ended: log in again")
            return actor
    raise NotAuthenticated("A team token is required: Authorization: Bearer dstok_…")


_checker: Datasette | None = None


async def _checker_datasette() -> Datasette:
    """A Datasette with the team's plugin registered (in this process only
    when first asked, so that a process that merely signs tokens loads no
    plugin): permission answers exactly as the team's Datasette gives them,
    with the team's own plugins (BROADSHEET_TEAM_PLUGINS_DIR) too."""
    global _checker
    if _checker is None:
        from datasette.plugins import pm

        from . import plugin

        if not pm.is_registered(plugin):
            pm.register(plugin, name="primary.plugin")
        checker = Datasette(secret=settings().secret, plugins_dir=settings().team_plugins_dir)
        await checker.invoke_startup()
        _checker = checker
    return _checker


async def may_publish(actor: dict, table: str) -> bool:
    """Whether ``actor`` may flip ``table``: Datasette's answer for the
    broadsheet-publish action, with the team's plugin rules and the token's
    restrictions."""
    from . import plugin

    return await plugin.may_publish(await _checker_datasette(), actor, table)


async def may_set_instance_metadata(actor: dict) -> bool:
    """The same rule as the team Datasette's instance metadata page."""
    from . import plugin

    return await plugin.may_set_instance_metadata(await _checker_datasette(), actor)


async def may_publish_queries(actor: dict) -> bool:
    """The same rule as the team Datasette's "Publish this query"."""
    from . import plugin

    return await plugin.may_publish_queries(await _checker_datasette(), actor)


async def create_token(actor_id: str, expires_after: int | None = None, secret: str | None = None) -> str:
    return await datasette(secret).create_token(actor_id, expires_after=expires_after)

"""Team actors, as Datasette knows them: signed API tokens (``dstok_``) and
the browser's signed ``ds_actor`` cookie. The control plane checks both with
Datasette's own code and the one secret every process shares, and the CLI
signs tokens with it."""

from __future__ import annotations

from types import SimpleNamespace

from datasette.actor_auth_cookie import actor_from_request
from datasette.app import Datasette
from datasette.tokens import TokenInvalid

from ..datasette.team import team
from ..settings import settings

_instances: dict[str, Datasette] = {}


def datasette(secret: str | None = None) -> Datasette:
    """A database-less Datasette holding the shared secret: used only to sign
    and verify, so token logic is Datasette's, not a copy of it."""
    secret = secret or settings().secret
    if secret not in _instances:
        _instances[secret] = Datasette(secret=secret)
    return _instances[secret]


class NotAuthenticated(Exception):
    """No team actor: a 401 (errors.py)."""

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


async def create_token(actor_id: str, expires_after: int | None = None, secret: str | None = None) -> str:
    return await datasette(secret).create_token(actor_id, expires_after=expires_after)

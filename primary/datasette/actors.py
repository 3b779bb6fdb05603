"""Who a request's actor is to broadsheet: a team member is any actor with
an id (a signed ``dstok_`` token, a password login); audit entries and
saved queries name them by their label."""

from __future__ import annotations


def is_team(actor) -> bool:
    return isinstance(actor, dict) and bool(actor.get("id"))


def actor_label(actor: dict) -> str:
    return str(actor.get("id") or actor)

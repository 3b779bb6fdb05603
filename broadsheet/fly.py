"""Names on Fly.io, derived from the variables Fly sets on every machine
(``FLY_APP_NAME``, ``FLY_REGION``, ``FLY_MACHINE_ID``), so that nothing in
``fly.toml`` names the app and no name is edited by hand.

Fly's internal DNS names each process group ``<group>.process.<app>.internal``
(IPv6 addresses only, on the private 6PN network). broadsheet's ``fly.toml``
has two groups, ``primary`` and ``replica``.
"""

from __future__ import annotations

from typing import Mapping

PRIMARY_GROUP = "primary"
REPLICA_GROUP = "replica"
PUBLIC_LITEFS_PORT = 20203


def app_name(environ: Mapping[str, str]) -> str | None:
    return (environ.get("FLY_APP_NAME") or "").strip() or None


def group_name(group: str, app: str) -> str:
    """``<group>.process.<app>.internal``: every machine of one process group."""
    return f"{group}.process.{app}.internal"


def primary_litefs_url(environ: Mapping[str, str]) -> str | None:
    """Where read nodes stream public.db from on Fly: the primary group's
    public LiteFS port (None when not on Fly)."""
    app = app_name(environ)
    return f"http://{group_name(PRIMARY_GROUP, app)}:{PUBLIC_LITEFS_PORT}" if app else None


def read_nodes_dns(environ: Mapping[str, str]) -> str | None:
    """The name that resolves to every read node on Fly (None when not on Fly)."""
    app = app_name(environ)
    return group_name(REPLICA_GROUP, app) if app else None

"""The checks a read node makes before it serves anything: deny by default,
serve this node's public.db alone, and no plugin that widens access. A read
node without these would serve whatever its databases hold to anyone."""

from __future__ import annotations

from pathlib import Path

from datasette.utils import StartupError

from . import interruptions
from .guards import guards
from .settings import settings


def file_databases(datasette) -> list:
    return [db for name, db in datasette.databases.items() if name != "_internal" and not db.is_memory]


def public_databases(datasette) -> list:
    """The one database ``check`` checked is this node's public.db, while
    Datasette still serves that same database: none before the check, and
    never one added later (a plugin's route could add a database)."""
    db = getattr(datasette, "_broadsheet_public_db", None)
    return [db] if db is not None and datasette.databases.get(db.name) is db else []


def public_db(datasette):
    dbs = public_databases(datasette)
    return dbs[0] if dbs else None


def check(datasette, plugin):
    """Refuse to serve unless this is what a read node must be (``plugin``,
    the read node's plugin module, wrapping every request outermost); the
    rest of the check, which asks Datasette's permissions, is returned to
    be awaited."""
    if not datasette.default_deny:
        raise StartupError("broadsheet read node: Datasette must run with --default-deny")
    dbs = file_databases(datasette)
    names = ", ".join(db.name for db in dbs) or "none"
    if len(dbs) != 1:
        raise StartupError(f"broadsheet read node: serve exactly one database, public.db (serving: {names})")
    db, conf = dbs[0], settings()
    if not conf.public_db:
        raise StartupError("broadsheet read node: BROADSHEET_PUBLIC_DB (the LiteFS mount's public.db) is not set")
    if Path(db.path).resolve() != Path(conf.public_db).resolve():
        raise StartupError(f"broadsheet read node: serving {db.path}, but this node's public.db is {conf.public_db}")
    if not db.is_mutable:
        # An immutable database would never see the transactions LiteFS applies.
        raise StartupError("broadsheet read node: public.db must be opened mutable (not with -i)")
    datasette._broadsheet_public_db = db
    interruptions.note(datasette, db)
    guards(datasette)
    return _refuse_wider_access(datasette, db, plugin)


# A table no read node lists, and what no visitor may ever do: asked of
# Datasette at startup, with every plugin loaded (the team's own too,
# BROADSHEET_READ_NODE_PLUGINS), as anonymous and as a signed-in actor.
_PROBE_TABLE = "broadsheet: a table that is not public"
_NEVER_ALLOWED = ("insert-row", "update-row", "delete-row", "create-table", "alter-table", "drop-table")


async def _refuse_wider_access(datasette, db, plugin) -> None:
    """Plugins may add pages and scripts, never access: refuse to serve if
    any plugin lets a visitor see an unlisted table or write, or wraps
    requests outside this plugin's rules (which refuse writes and unlisted
    tables before anything else runs)."""
    from datasette.plugins import pm
    from datasette.resources import DatabaseResource, TableResource

    outermost = pm.hook.asgi_wrapper.get_hookimpls()[0].plugin
    if outermost is not plugin:
        raise StartupError(
            f"broadsheet read node: plugin {pm.get_name(outermost)!r} wraps requests outside the read node's rules"
        )
    for actor in (None, {"id": "broadsheet-probe"}):
        checks = [("view-table", TableResource(db.name, _PROBE_TABLE))] + [
            (name, TableResource(db.name, _PROBE_TABLE) if datasette.actions[name].resource_class is TableResource
             else DatabaseResource(db.name))
            for name in _NEVER_ALLOWED if name in datasette.actions
        ]
        for action, resource in checks:
            if await datasette.allowed(action=action, resource=resource, actor=actor):
                raise StartupError(
                    f"broadsheet read node: a plugin allows {action} on {resource.parent}/{resource.child or ''}"
                    f" to {actor or 'anonymous'}:"
                    " read nodes serve public tables, read-only"
                )

"""Who may publish, as the team's Datasette answers it: the control plane
asks a Datasette with the team's plugin registered, so that its answers are
exactly the table action's, with the team's own plugins and each token's
restrictions."""

from __future__ import annotations

from datasette.app import Datasette

from .. import datasette as team_plugin
from ..datasette import permissions as team_permissions
from ..settings import settings


class NotAllowed(Exception):
    """A team actor whom the team's permissions refuse: a 403 (errors.py),
    naming the table if it is about one."""

    def __init__(self, message: str, table: str | None = None):
        super().__init__(message)
        self.message, self.table = message, table


QUERIES_FORBIDDEN = "This actor may not publish saved queries (broadsheet-publish on the whole database)"
INSTANCE_METADATA_FORBIDDEN = "This actor may not set the instance's metadata (broadsheet-publish on the whole database)"

_checker: Datasette | None = None


async def _checker_datasette() -> Datasette:
    """A Datasette with the team's plugin registered (in this process only
    when first asked, so that a process that merely imports it, to sign
    tokens or check a login, runs none of its hooks): permission answers
    exactly as the team's Datasette gives them, with the team's own plugins
    (BROADSHEET_TEAM_PLUGINS_DIR) too."""
    global _checker
    if _checker is None:
        from datasette.plugins import pm

        if not pm.is_registered(team_plugin):
            pm.register(team_plugin, name="primary.datasette")
        checker = Datasette(secret=settings().secret, plugins_dir=settings().team_plugins_dir)
        await checker.invoke_startup()
        _checker = checker
    return _checker


async def may_publish(actor: dict, table: str) -> bool:
    """Whether ``actor`` may flip ``table``: Datasette's answer for the
    broadsheet-publish action, with the team's plugin rules and the token's
    restrictions."""
    return await team_permissions.may_publish(await _checker_datasette(), actor, table)


async def may_set_instance_metadata(actor: dict) -> bool:
    """The same rule as the team Datasette's instance metadata page."""
    return await team_permissions.may_set_instance_metadata(await _checker_datasette(), actor)


async def may_publish_queries(actor: dict) -> bool:
    """The same rule as the team Datasette's "Publish this query"."""
    return await team_permissions.may_publish_queries(await _checker_datasette(), actor)


ADOPT_FORBIDDEN = "This actor may not adopt files (create-table on data.db, and drop-table to replace)"


async def check_adopt(actor: dict, replace: bool = False) -> None:
    if not await team_permissions.may_adopt(await _checker_datasette(), actor, replace):
        raise NotAllowed(ADOPT_FORBIDDEN)


async def check_publish(actor: dict, table: str) -> None:
    """NotAllowed unless ``actor`` may flip ``table`` (or set its metadata)."""
    if not await may_publish(actor, table):
        raise NotAllowed(team_permissions.publish_forbidden(table), table)


async def check_instance_metadata(actor: dict) -> None:
    if not await may_set_instance_metadata(actor):
        raise NotAllowed(INSTANCE_METADATA_FORBIDDEN)


async def check_publish_queries(actor: dict) -> None:
    if not await may_publish_queries(actor):
        raise NotAllowed(QUERIES_FORBIDDEN)

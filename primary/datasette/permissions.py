"""Who may do what on the team's Datasette: team members everything but
writing broadsheet's own tables, and making a table public (or private
again) is a Datasette action, so that Datasette's permissions and token
restrictions decide who may do it, wherever the flip starts. The control
plane asks the same functions (primary/control/permissions.py)."""

from __future__ import annotations

import json

from datasette.permissions import Action, PermissionSQL
from datasette.resources import DatabaseResource, TableResource

from broadsheet.names import INTERNAL_PREFIXES

from .actors import is_team
from .data_db import data_db_name

WRITE_ACTIONS = {"insert-row", "update-row", "delete-row", "drop-table", "alter-table"}


# Making a table public (or private again) is a Datasette action, so that
# Datasette's permissions and token restrictions decide who may do it,
# wherever the flip starts: the table action here, the control plane.
PUBLISH_ACTION = "broadsheet-publish"


def actions() -> list[Action]:
    """The actions this plugin registers with Datasette."""
    return [
        Action(
            name=PUBLISH_ACTION,
            abbr="bp",
            description="Make a table public on the read nodes, or private again",
            resource_class=TableResource,
        )
    ]


async def may_publish(datasette, actor, table: str) -> bool:
    return await datasette.allowed(
        action=PUBLISH_ACTION, resource=TableResource(data_db_name(), table), actor=actor
    )


def publish_forbidden(table: str) -> str:
    return f"This actor may not make {table!r} public or private (the {PUBLISH_ACTION} action)"


async def may_set_instance_metadata(datasette, actor) -> bool:
    """The instance's title, license and source head every read node's
    pages, above every public table, so setting them takes
    broadsheet-publish on data.db as a whole: a team member, or a token
    allowed the action on every table or on the database. A token allowed
    it on one table only, or restricted to viewing, may not."""
    return is_team(actor) and await datasette.allowed(
        action=PUBLISH_ACTION, resource=DatabaseResource(data_db_name()), actor=actor
    )


async def may_publish_queries(datasette, actor) -> bool:
    """A saved query may read every public table, so saving or removing one
    takes what the instance's metadata takes: broadsheet-publish on data.db
    as a whole."""
    return await may_set_instance_metadata(datasette, actor)


async def may_adopt(datasette, actor, replace: bool = False) -> bool:
    """Adopting a file creates tables in data.db (Datasette's create-table
    on the database), and with ``replace`` drops some (drop-table)."""
    resource = DatabaseResource(data_db_name())
    if not await datasette.allowed(action="create-table", resource=resource, actor=actor):
        return False
    return not replace or await datasette.allowed(action="drop-table", resource=resource, actor=actor)


def resources_sql(actor, action) -> list[PermissionSQL] | None:
    """Team members may do everything Datasette offers, except write to
    broadsheet's own tables."""
    if not is_team(actor):
        return None
    rules = [PermissionSQL.allow(reason="broadsheet: team member")]
    if action in WRITE_ACTIONS:
        # The audit log and publish state change only through broadsheet.
        # (This SQL runs against Datasette's internal catalog.)
        rules.append(
            PermissionSQL(
                sql="SELECT database_name AS parent, table_name AS child, 0 AS allow,"
                " 'broadsheet: internal table' AS reason FROM catalog_tables, json_each(:bs_prefixes)"
                " WHERE database_name = :bs_db AND lower(substr(table_name, 1, length(value))) = value",
                params={"bs_db": data_db_name(), "bs_prefixes": json.dumps(INTERNAL_PREFIXES)},
            )
        )
    return rules

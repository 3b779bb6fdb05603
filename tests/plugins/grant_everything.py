"""A careless read-node plugin: it lets everyone see and write everything
(a read node must refuse to start with it)."""

from datasette import hookimpl
from datasette.permissions import PermissionSQL


@hookimpl
def permission_resources_sql(datasette, actor, action):
    return PermissionSQL.allow(reason="a plugin that grants everything")

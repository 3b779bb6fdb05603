"""A team's own rule, as a plugin: nobody may make ``payroll`` public. The
team's Datasette and the control plane both load it, so every path obeys."""

from datasette import hookimpl
from datasette.permissions import PermissionSQL


@hookimpl
def permission_resources_sql(datasette, actor, action):
    if action == "broadsheet-publish":
        return PermissionSQL(
            sql="SELECT 'data' AS parent, 'payroll' AS child, 0 AS allow, 'team rule: payroll stays private' AS reason"
        )
    return None

"""``python -m replica.serve serve public.db ...``: the read node's Datasette."""

from broadsheet.datasette_launcher import launch

# replica.compat: plugins written for Datasette 0.64 (see its docstring).
PLUGINS = ["replica.plugin", "replica.queries", "replica.compat"]

if __name__ == "__main__":
    import sys

    from .settings import settings

    # The team's own plugins (BROADSHEET_READ_NODE_PLUGINS) beside ours:
    # replica/startup.py refuses to serve should one widen access.
    launch(PLUGINS, sys.argv[1:], packages=settings().plugins)

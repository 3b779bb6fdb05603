"""``python -m replica.serve serve public.db ...``: the read node's Datasette."""

from broadsheet.datasette_launcher import launch

PLUGINS = ["replica.plugin", "replica.queries"]

if __name__ == "__main__":
    import sys

    launch(PLUGINS, sys.argv[1:])

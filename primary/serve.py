"""``python -m primary.serve serve data.db ...``: the team's Datasette."""

from broadsheet.datasette_launcher import launch

PLUGINS = ["primary.plugin", "datasette_auth_passwords"]

if __name__ == "__main__":
    import sys

    launch(PLUGINS, sys.argv[1:])

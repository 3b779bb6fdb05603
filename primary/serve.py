"""``python -m primary.serve serve data.db ...``: the team's Datasette."""

from broadsheet.datasette_launcher import launch

PLUGINS: list[str] = []

if __name__ == "__main__":
    import sys

    launch(PLUGINS, sys.argv[1:])

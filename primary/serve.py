"""``python -m primary.serve serve data.db ...``: the team's Datasette."""

from broadsheet.datasette_launcher import launch

# Logins are the team plugin's own (named users, sessions, a throttle:
# primary/datasette/team.py), not datasette-auth-passwords', whose hashes it reads.
PLUGINS = ["primary.datasette"]

if __name__ == "__main__":
    import sys

    launch(PLUGINS, sys.argv[1:])

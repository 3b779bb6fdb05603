"""``python -m primary.serve serve data.db ...``: the team's Datasette."""

from broadsheet.datasette_launcher import launch

# Logins are primary.plugin's own (named users, sessions, a throttle:
# primary/team.py), not datasette-auth-passwords', whose hashes it reads.
PLUGINS = ["primary.plugin"]

if __name__ == "__main__":
    import sys

    from broadsheet.config import ConfigError
    from primary.settings import settings

    try:
        settings()  # every setting, checked before Datasette starts
    except ConfigError as exc:
        sys.exit(f"primary.serve: {exc}")
    launch(PLUGINS, sys.argv[1:])

"""``python -m primary.serve serve data.db ...``: the team's Datasette."""

from broadsheet.datasette_launcher import launch

# Logins are the team plugin's own (named users, sessions, a throttle:
# primary/datasette/team.py), not datasette-auth-passwords', whose hashes it reads.
PLUGINS = ["primary.datasette"]

if __name__ == "__main__":
    import sys

    from broadsheet import plugins
    from broadsheet.config import ConfigError
    from primary.settings import settings

    try:
        conf = settings()  # every setting, checked before Datasette starts
        plugins.check_team(conf.team_plugins)
    except ConfigError as exc:
        sys.exit(f"primary.serve: {exc}")
    launch(PLUGINS, sys.argv[1:], packages=conf.team_plugins)

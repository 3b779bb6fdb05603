"""What a read node must never hold: the team's secrets.

A read node faces the public. Anything on it that can mint a team token
(``DATASETTE_SECRET``), log in as the team (the team password or its hash),
or act as the team (a team token) would let one compromised read node write
to the private database. The primary makes its own secret on its volume
(``primary/node.py``), so no deployment needs to hand one to every machine;
a read node that finds one in its environment refuses to start.
"""

from __future__ import annotations

from typing import Mapping

from .config import ConfigError

# Variables that carry a team secret, with what each one is.
TEAM_SECRET_VARS = {
    "DATASETTE_SECRET": "the key that signs team tokens and logins",
    "BROADSHEET_SECRET_FILE": "the file holding the key that signs team tokens",
    "BROADSHEET_TEAM_PASSWORD": "the team's login password",
    "BROADSHEET_TEAM_PASSWORD_HASH": "the team's login password hash",
    "BROADSHEET_TOKEN": "a team API token",
    # Off-site backups (primary/offsite/): the key opens every object of the
    # bucket, the credentials reach the bucket itself.
    "BROADSHEET_BACKUP_KEY": "the key that opens the off-site backups of the private database",
    "BROADSHEET_BACKUP_KEY_FILE": "the file holding the key of the off-site backups",
    "AWS_ACCESS_KEY_ID": "a credential of the object store (off-site backups)",
    "AWS_SECRET_ACCESS_KEY": "a credential of the object store (off-site backups)",
    "AWS_SESSION_TOKEN": "a credential of the object store (off-site backups)",
}


def refuse_team_secrets(environ: Mapping[str, str]) -> None:
    """ConfigError naming every team secret set in ``environ``."""
    found = [name for name in TEAM_SECRET_VARS if environ.get(name)]
    if not found:
        return
    what = "; ".join(f"{name} ({TEAM_SECRET_VARS[name]})" for name in found)
    raise ConfigError(
        f"refusing to start a read node that holds a team secret: {what}. A read node faces the"
        " public, and with this a compromised one could act as the team and write to the private"
        " database. Remove it from this machine's environment (on Fly: `fly secrets unset "
        + " ".join(found)
        + "`; secrets there reach every machine, and the primary makes its own on its volume)."
    )


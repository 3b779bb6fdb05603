"""The primary's settings, from environment variables with defaults that make
the local cluster work. The supervisor sets them for every process it starts.

Every one is read through ``broadsheet.config.Env``: a bad value is a
ConfigError that names the variable, raised when ``broadsheet primary``
starts (``PrimaryNode.from_env`` reads them all once) and again, should one
be started by hand, when a process of the primary first reads them."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from typing import Mapping

from broadsheet import plugins
from broadsheet.config import ConfigError, Env


@dataclass(frozen=True)
class ReadNodeAddress:
    """Where the primary finds one read node: its Datasette (for
    ``/-/replication.json``) and its LiteFS HTTP API (for ``/events``)."""

    name: str
    url: str
    litefs_url: str = ""  # no longer used: read nodes stream their position from url
    region: str = ""
    public_url: str = ""  # how visitors reach it, when the node says


@dataclass(frozen=True)
class Settings:
    data_db: str
    public_db: str
    watermark_file: str
    public_litefs_url: str
    datasette_url: str
    control_url: str
    read_nodes: tuple[ReadNodeAddress, ...]
    read_nodes_dns: str | None  # a name that resolves to every read node
    read_node_port: int  # their Datasette, on each address the name resolves to
    discovery_interval: float  # seconds between two look-ups of read_nodes_dns
    team_db: str  # team members, their sessions, failed logins (primary/datasette/team.py)
    max_body: int  # largest write request, bytes
    adopt_max_bytes: int  # largest SQLite file the control plane takes for adoption (POST /adoptions)
    page_size: int  # of a new public.db
    # A first copy larger than this is staged over several publish cycles,
    # each changing about this much of public.db (primary/publisher/staging.py).
    publish_batch_bytes: int = 4 * 1024 * 1024
    # The team's own Datasette plugins (*.py), loaded by the team's Datasette
    # and by the control plane's permission checker alike.
    team_plugins_dir: str | None = None
    # Packaged plugins the team's Datasette loads (BROADSHEET_TEAM_PLUGINS),
    # never a read node's (broadsheet/plugins.py).
    team_plugins: tuple[str, ...] = ()
    standby_url: str = ""  # the standby's status API (primary/standby/api.py), if there is one
    standby_wait: float = 5.0  # longest wait for the standby on Broadsheet-Wait: standby, seconds
    offsite_status: str = ""  # the off-site uploader's status file, when backups go off-site

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = Env(environ)
        watermark = env.str("BROADSHEET_WATERMARK", "/var/lib/broadsheet/publisher-watermark.json")
        return cls(
            data_db=env.str("BROADSHEET_DATA_DB", "/litefs/private/data.db"),
            public_db=env.str("BROADSHEET_PUBLIC_DB", "/litefs/public/public.db"),
            watermark_file=watermark,
            # Beside the node's other private state, off the LiteFS mounts.
            team_db=env.optional("BROADSHEET_TEAM_DB") or os.path.join(os.path.dirname(watermark), "team.db"),
            public_litefs_url=env.url("BROADSHEET_PUBLIC_LITEFS_URL", "http://127.0.0.1:20203"),
            datasette_url=env.url("BROADSHEET_DATASETTE_URL", "http://127.0.0.1:8001"),
            control_url=env.url("BROADSHEET_CONTROL_URL", "http://127.0.0.1:8004"),
            read_nodes=read_nodes(env),
            read_nodes_dns=env.optional("BROADSHEET_READ_NODES_DNS"),
            read_node_port=env.port("BROADSHEET_READ_NODE_PORT", 8001),
            discovery_interval=env.seconds("BROADSHEET_DISCOVERY_INTERVAL", 2.0, positive=True),
            max_body=env.at_least("BROADSHEET_MAX_BODY", 10 * 1024 * 1024, minimum=1, what="a number of bytes (1 or more)"),
            adopt_max_bytes=env.at_least(
                "BROADSHEET_ADOPT_MAX_BYTES", 2 * 1024**3, minimum=1, what="a number of bytes (1 or more)"
            ),
            # 16 KiB pages make a large first publish about 40% faster than
            # SQLite's 4 KiB (a quarter of the FUSE writes and LTX page headers),
            # while a one-row change still ships a few pages: see bench/.
            page_size=_page_size(env, "BROADSHEET_PAGE_SIZE", 16384),
            # LiteFS v0.5.14 blocks a read node's readers while an LTX
            # arrives, and SQLite fails them after ~10 s: 4 MiB crosses a
            # 10 Mbit/s link in ~3.5 s (docs/internals.md, "Known limits").
            publish_batch_bytes=env.at_least(
                "BROADSHEET_PUBLISH_BATCH_BYTES", 4 * 1024 * 1024, minimum=0, what="a number of bytes (0: never stage)"
            ),
            team_plugins_dir=env.optional("BROADSHEET_TEAM_PLUGINS_DIR"),
            team_plugins=plugins.requirements(env.optional(plugins.TEAM_PLUGINS_VAR), plugins.TEAM_PLUGINS_VAR),
            standby_url=env.url("BROADSHEET_STANDBY_URL").rstrip("/"),
            # The standby's /wait answers waits of up to 60 s.
            standby_wait=env.seconds("BROADSHEET_STANDBY_WAIT_TIMEOUT", 5.0, positive=True, at_most=60),
            offsite_status=env.str("BROADSHEET_BACKUP_STATUS", ""),
        )

    @property
    def team_password_hash(self) -> str | None:
        """The browser login "team" (primary/datasette/team.py) until the team sets
        its own; read when needed, as the secret is."""
        return Env().optional("BROADSHEET_TEAM_PASSWORD_HASH")

    @property
    def secret(self) -> str:
        # Read when needed, never stored in a settings dump.
        secret = Env().optional("DATASETTE_SECRET")
        if not secret:
            raise RuntimeError("DATASETTE_SECRET is not set: tokens cannot be checked")
        return secret


def read_nodes(env: Env) -> tuple[ReadNodeAddress, ...]:
    """BROADSHEET_READ_NODES: a JSON list of {name, url} (and optionally
    region, public_url)."""
    try:
        return tuple(ReadNodeAddress(**n) for n in json.loads(env.str("BROADSHEET_READ_NODES", "[]")))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"BROADSHEET_READ_NODES must be a JSON list of {{name, url}}: {exc}") from None


def _page_size(env: Env, name: str, default: int) -> int:
    value = env.int(name, default)
    # SQLite ignores any other page size without a word.
    if value < 512 or value > 65536 or value & (value - 1):
        raise ConfigError(f"{name} must be a power of two from 512 to 65536 (an SQLite page size), not {value}")
    return value


@cache
def settings() -> Settings:
    return Settings.from_env()

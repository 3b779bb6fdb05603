"""The primary's settings, from environment variables with defaults that make
the local cluster work. The supervisor sets them for every process it starts."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache


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
    team_db: str  # team members, their sessions, failed logins (primary/team.py)
    max_body: int  # largest write request, bytes
    page_size: int  # of a new public.db
    # The team's own Datasette plugins (*.py), loaded by the team's Datasette
    # and by the control plane's permission checker alike.
    team_plugins_dir: str | None = None
    standby_url: str = ""  # the standby's status API (primary/standby/api.py), if there is one
    standby_wait: float = 5.0  # longest wait for the standby on Broadsheet-Wait: standby, seconds

    @property
    def secret(self) -> str:
        # Read when needed, never stored in a settings dump.
        secret = os.environ.get("DATASETTE_SECRET")
        if not secret:
            raise RuntimeError("DATASETTE_SECRET is not set: tokens cannot be checked")
        return secret


@cache
def settings() -> Settings:
    nodes = json.loads(os.environ.get("BROADSHEET_READ_NODES", "[]"))
    watermark = os.environ.get("BROADSHEET_WATERMARK", "/var/lib/broadsheet/publisher-watermark.json")
    return Settings(
        data_db=os.environ.get("BROADSHEET_DATA_DB", "/litefs/private/data.db"),
        public_db=os.environ.get("BROADSHEET_PUBLIC_DB", "/litefs/public/public.db"),
        watermark_file=watermark,
        # Beside the node's other private state, off the LiteFS mounts.
        team_db=os.environ.get("BROADSHEET_TEAM_DB") or os.path.join(os.path.dirname(watermark), "team.db"),
        public_litefs_url=os.environ.get("BROADSHEET_PUBLIC_LITEFS_URL", "http://127.0.0.1:20203"),
        datasette_url=os.environ.get("BROADSHEET_DATASETTE_URL", "http://127.0.0.1:8001"),
        control_url=os.environ.get("BROADSHEET_CONTROL_URL", "http://127.0.0.1:8004"),
        read_nodes=tuple(ReadNodeAddress(**n) for n in nodes),
        read_nodes_dns=os.environ.get("BROADSHEET_READ_NODES_DNS") or None,
        read_node_port=int(os.environ.get("BROADSHEET_READ_NODE_PORT") or "8001"),
        discovery_interval=float(os.environ.get("BROADSHEET_DISCOVERY_INTERVAL") or "2"),
        max_body=int(os.environ.get("BROADSHEET_MAX_BODY", str(10 * 1024 * 1024))),
        # 16 KiB pages make a large first publish about 40% faster than
        # SQLite's 4 KiB (a quarter of the FUSE writes and LTX page headers),
        # while a one-row change still ships a few pages: see bench/.
        page_size=int(os.environ.get("BROADSHEET_PAGE_SIZE", "16384")),
        team_plugins_dir=os.environ.get("BROADSHEET_TEAM_PLUGINS_DIR") or None,
        standby_url=os.environ.get("BROADSHEET_STANDBY_URL", "").rstrip("/"),
        standby_wait=float(os.environ.get("BROADSHEET_STANDBY_WAIT_TIMEOUT") or "5"),
    )

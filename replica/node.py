"""A read node: a LiteFS replica of the public cluster and a Datasette that
serves its public.db with --default-deny and the read-node rule.

``broadsheet replica`` runs it from environment variables alone
(``ReadNode.from_env``); the local cluster builds the same environment for
each of its read nodes and starts the same services.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import httpx

from broadsheet import fly, plugins
from broadsheet.config import DEFAULT_ROOT, ConfigError, Env, http_url, listen_host, split_addr
from broadsheet.gate import gate_service
from broadsheet.litefs import MountConfig, is_mounted, wait_for_file
from broadsheet.supervisor import Service
from broadsheet.team_secrets import TEAM_SECRET_VARS, refuse_team_secrets

from .settings import Settings

# How long a read node that has never synced waits for its first public.db.
FIRST_SYNC_TIMEOUT = 60.0


def default_name(environ: Mapping[str, str]) -> str:
    """A name that stays the node's across restarts: the Fly machine id, else
    the host name (a container's id)."""
    return environ.get("FLY_MACHINE_ID") or os.uname().nodename


@dataclass
class ReadNode:
    """Everything a read node runs, and where. Each field is one environment
    variable (see ``from_env``)."""

    name: str
    root: Path  # LiteFS data and mount: a volume that outlives restarts
    primary_public_url: str  # the public cluster's primary: the only LiteFS it joins
    host: str = "127.0.0.1"  # where Datasette listens (the node's public face)
    port: int = 8001
    litefs_addr: str = "127.0.0.1:20202"  # LiteFS's API: never published
    primary_hostname: str = "primary"
    primary_team_url: str = ""  # named in the error a write attempt gets
    public_url: str = ""  # how visitors reach this node, if known
    region: str = ""
    compress: bool = True
    # A read node serves no history to anyone: it keeps LTX files (which
    # still hold rows a later cycle erased) only briefly.
    retention: str = "10s"
    # The team's Datasette plugins for read nodes, as the environment gives
    # them (broadsheet/plugins.py reads and checks them).
    plugins: str = ""
    plugins_config: str = ""
    # Its LiteFS streams through a gate on its own loopback
    # (broadsheet/gate.py), which presents the replication key to the
    # primary's gate: the key reads the public stream and nothing else.
    gate_addr: str = "127.0.0.1:20214"
    replication_key: str = ""
    replication_tls_pin: str = ""  # the primary gate's certificate, for an https:// primary

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "ReadNode":
        environ = os.environ if environ is None else environ
        refuse_team_secrets(environ)
        env = Env(environ)
        node = cls(
            name=env.str("BROADSHEET_NODE_NAME", default_name(environ)),
            root=Path(env.str("BROADSHEET_ROOT", DEFAULT_ROOT)),
            primary_public_url=env.str(
                "BROADSHEET_PRIMARY_LITEFS_URL", fly.primary_litefs_url(environ) or "http://primary:20203"
            ),
            host=env.str("BROADSHEET_HOST", "127.0.0.1"),
            port=env.port("BROADSHEET_PORT", 8001),
            litefs_addr=env.str("BROADSHEET_LITEFS_ADDR", "127.0.0.1:20202"),
            primary_hostname=env.str("BROADSHEET_PRIMARY_HOSTNAME", "primary"),
            primary_team_url=env.str("BROADSHEET_PRIMARY_URL", ""),
            public_url=env.str("BROADSHEET_PUBLIC_URL", ""),
            region=env.str("BROADSHEET_REGION", env.optional("FLY_REGION") or ""),
            compress=env.bool("BROADSHEET_LTX_COMPRESS", True),
            retention=env.str("BROADSHEET_LTX_RETENTION", "10s"),
            plugins=env.str(plugins.PLUGINS_VAR, ""),
            plugins_config=env.str(plugins.CONFIG_VAR, ""),
            gate_addr=env.str("BROADSHEET_GATE_ADDR", "127.0.0.1:20214"),
            replication_key=env.str("BROADSHEET_REPLICATION_KEY", ""),
            replication_tls_pin=env.str("BROADSHEET_REPLICATION_TLS_PIN", ""),
        )
        split_addr(node.litefs_addr, "BROADSHEET_LITEFS_ADDR")
        split_addr(node.gate_addr, "BROADSHEET_GATE_ADDR")
        if not node.primary_public_url.startswith(("http://", "https://")):
            raise ConfigError(f"BROADSHEET_PRIMARY_LITEFS_URL must be an http:// or https:// URL, not {node.primary_public_url!r}")
        if node.replication_tls_pin and not node.primary_public_url.startswith("https://"):
            raise ConfigError("BROADSHEET_REPLICATION_TLS_PIN needs an https:// BROADSHEET_PRIMARY_LITEFS_URL")
        # The Datasette it starts reads the rest (bookmark and SQL limits):
        # a bad value stops the node here, with the variable's name.
        Settings.from_env(environ)
        return node

    def to_env(self) -> dict[str, str]:
        """The environment ``from_env`` reads back as this node."""
        return {
            "BROADSHEET_NODE_NAME": self.name,
            "BROADSHEET_ROOT": str(self.root),
            "BROADSHEET_PRIMARY_LITEFS_URL": self.primary_public_url,
            "BROADSHEET_HOST": self.host,
            "BROADSHEET_PORT": str(self.port),
            "BROADSHEET_LITEFS_ADDR": self.litefs_addr,
            "BROADSHEET_PRIMARY_HOSTNAME": self.primary_hostname,
            "BROADSHEET_PRIMARY_URL": self.primary_team_url,
            "BROADSHEET_PUBLIC_URL": self.public_url,
            "BROADSHEET_REGION": self.region,
            "BROADSHEET_LTX_COMPRESS": "true" if self.compress else "false",
            "BROADSHEET_LTX_RETENTION": self.retention,
            plugins.PLUGINS_VAR: self.plugins,
            plugins.CONFIG_VAR: self.plugins_config,
            "BROADSHEET_GATE_ADDR": self.gate_addr,
            "BROADSHEET_REPLICATION_KEY": self.replication_key,
            "BROADSHEET_REPLICATION_TLS_PIN": self.replication_tls_pin,
        }

    @property
    def gate_url(self) -> str:
        return http_url(*split_addr(self.gate_addr, "BROADSHEET_GATE_ADDR"))

    @property
    def gate_service(self) -> str:
        return f"{self.name}-gate"

    @property
    def litefs(self) -> MountConfig:
        return MountConfig(
            mount_dir=self.root / "mnt",
            data_dir=self.root / "litefs",
            http_addr=self.litefs_addr,
            # Never the primary itself: the gate on this node's loopback.
            primary_url=self.gate_url,
            primary_hostname=self.primary_hostname,
            candidate=False,
            # Serve what is on disk while the primary is unreachable.
            skip_sync=True,
            compress=self.compress,
            retention=self.retention,
        )

    @property
    def public_db(self) -> Path:
        return self.root / "mnt" / "public.db"

    def ltx_path(self, txid: int) -> Path:
        """The LTX file (in LiteFS's data directory) that brought TXID ``txid``."""
        return self.litefs.data_dir / "dbs" / "public.db" / "ltx" / f"{txid:016x}-{txid:016x}.ltx"

    @property
    def url(self) -> str:
        """This node's Datasette, as seen from this machine."""
        return http_url(self.host, self.port)

    @property
    def litefs_service(self) -> str:
        return f"{self.name}-litefs"

    @property
    def datasette_service(self) -> str:
        return f"{self.name}-datasette"

    @property
    def datasette_config(self) -> Path:
        """The read node's Datasette configuration: the team's plugin
        settings and nothing else."""
        return self.root / "datasette-plugins.json"

    def _prepare_datasette(self) -> None:
        self.datasette_config.write_text(json.dumps({"plugins": plugins.config(self.plugins_config)}))
        # A node that has never synced has no public.db yet: Datasette
        # starts once the first LTX has arrived.
        wait_for_file(self.public_db, timeout=FIRST_SYNC_TIMEOUT) or _no_db(self)
        # While LiteFS applies a snapshot (a node joining a large public.db)
        # it holds the database's lock: Datasette's first reads would fail
        # with "database is locked" and it would exit. Start it once SQLite
        # can read the schema (or after the same bound, as before).
        wait_until_readable(self.public_db, timeout=FIRST_SYNC_TIMEOUT)

    @property
    def banner(self) -> str:
        return f"read node {self.name} is up: {self.url}/public, following {self.primary_public_url}"

    def start(self, supervisor) -> None:
        """Start LiteFS, then (once public.db has arrived) Datasette."""
        supervisor.claim(self.root)
        for service in self.services():
            supervisor.start(service)

    def services(self) -> list[Service]:
        fs = self.litefs
        return [
            gate_service(
                self.gate_service,
                {
                    "BROADSHEET_GATE_ROLE": "client",
                    "BROADSHEET_GATE_NAME": self.gate_service,
                    "BROADSHEET_GATE_LISTEN": self.gate_addr,
                    "BROADSHEET_GATE_UPSTREAM": self.primary_public_url,
                    "BROADSHEET_REPLICATION_KEY": self.replication_key,
                    "BROADSHEET_REPLICATION_TLS_PIN": self.replication_tls_pin,
                },
                self.gate_url,
                drop_env=tuple(TEAM_SECRET_VARS),
            ),
            Service(
                name=self.litefs_service,
                argv=fs.argv(),
                env=fs.env(),
                mount=fs.mount_dir,
                ready=lambda: is_mounted(fs.mount_dir) and httpx.get(f"{fs.url}/info", timeout=1).status_code == 200,
                prepare=lambda: fs.data_dir.mkdir(parents=True, exist_ok=True),
                stop_signal=signal.SIGINT,
                restart=True,
                drop_env=tuple(TEAM_SECRET_VARS),
            ),
            Service(
                name=self.datasette_service,
                argv=[
                    sys.executable, "-m", "replica.serve", "serve", str(self.public_db),
                    "--host", listen_host(self.host), "--port", str(self.port),
                    "--default-deny",
                    "--setting", "default_allow_sql", "on",
                    "--setting", "sql_time_limit_ms", "1000",
                    "--config", str(self.datasette_config),
                ],
                env={
                    "BROADSHEET_PUBLIC_DB": str(self.public_db),
                    "BROADSHEET_PRIMARY_URL": self.primary_team_url,
                    "BROADSHEET_NODE_NAME": self.name,
                    "BROADSHEET_REGION": self.region,
                    "BROADSHEET_PUBLIC_URL": self.public_url,
                    "BROADSHEET_LITEFS_DATA_DIR": str(fs.data_dir),
                    plugins.PLUGINS_VAR: self.plugins,
                    plugins.CONFIG_VAR: self.plugins_config,
                },
                prepare=self._prepare_datasette,
                ready=lambda: httpx.get(f"{self.url}/-/versions.json", timeout=1).status_code == 200,
                ready_timeout=FIRST_SYNC_TIMEOUT,
                restart=True,
                # It keeps public.db open: a new mount needs a new Datasette.
                depends_on=(self.litefs_service,),
                # The primary's position stream never ends by itself.
                force_after=2.0,
                # Nor the replication key: only the gate presents it.
                drop_env=(*TEAM_SECRET_VARS, "BROADSHEET_REPLICATION_KEY"),
            ),
        ]


def wait_until_readable(path: Path, timeout: float) -> bool:
    """Whether SQLite could read ``path``'s schema within ``timeout`` seconds."""
    import sqlite3
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return True
            finally:
                conn.close()
        except sqlite3.Error:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)


def _no_db(node: ReadNode) -> None:
    raise RuntimeError(
        f"{node.name}: public.db did not arrive from {node.primary_public_url} within {FIRST_SYNC_TIMEOUT:.0f}s"
    )

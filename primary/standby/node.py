"""What a standby runs: its LiteFS (a replica of the private cluster,
streaming data.db through the guard), its status API and, if scheduled,
its backups. Each field of ``StandbyNode`` is one environment variable."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import httpx

from broadsheet.config import DEFAULT_ROOT, ConfigError, Env, http_url, listen_host, split_addr
from broadsheet.gate import derived_key
from broadsheet.litefs import MountConfig, NewestLtx, Pos, derived_cluster_id, is_mounted
from broadsheet.supervisor import Service
from primary import backup
from primary.backup import check_schedule, default_cluster_id
from primary.node import litefs_service

DATA_DB = "data.db"


@dataclass
class StandbyNode:
    """What a standby runs. Each field is one environment variable."""

    root: Path
    primary_private_url: str  # BROADSHEET_PRIVATE_PRIMARY_URL: the primary's private LiteFS
    host: str = "127.0.0.1"  # where the status API listens (the private network's side)
    port: int = 8006
    litefs_addr: str = "127.0.0.1:20202"  # its own LiteFS API: loopback
    # The guard its LiteFS streams data.db through (guard.py): loopback.
    guard_addr: str = "127.0.0.1:20201"
    primary_hostname: str = "primary"
    cluster_id: str = ""
    compress: bool = True
    retention: str = "1m"
    peers: list[str] = field(default_factory=list)
    backup_dir: Path | None = None
    backup_interval: float = 0.0
    backup_keep: int = 7
    # What the primary's data.db gate admits (broadsheet/gate.py), derived
    # from DATASETTE_SECRET, which the standby holds anyway.
    replication_key: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "StandbyNode":
        environ = os.environ if environ is None else environ
        env = Env(environ)
        secret = env.optional("DATASETTE_SECRET")
        if not secret and not env.optional("BROADSHEET_CLUSTER_ID"):
            raise ConfigError("DATASETTE_SECRET is not set: a standby needs the primary's (it is promoted with it)")
        node = cls(
            root=Path(env.str("BROADSHEET_ROOT", DEFAULT_ROOT)),
            primary_private_url=env.url("BROADSHEET_PRIVATE_PRIMARY_URL", "http://primary-private:20202"),
            host=env.str("BROADSHEET_HOST", "127.0.0.1"),
            port=env.port("BROADSHEET_STANDBY_PORT", 8006),
            litefs_addr=env.str("BROADSHEET_STANDBY_LITEFS_ADDR", "127.0.0.1:20202"),
            guard_addr=env.str("BROADSHEET_STANDBY_GUARD_ADDR", "127.0.0.1:20201"),
            primary_hostname=env.str("BROADSHEET_PRIVATE_PRIMARY_HOSTNAME", "primary"),
            cluster_id=env.str("BROADSHEET_CLUSTER_ID", default_cluster_id(secret or "")),
            compress=env.bool("BROADSHEET_LTX_COMPRESS", True),
            retention=env.str("BROADSHEET_LTX_RETENTION", "1m"),
            peers=env.urls("BROADSHEET_PEERS"),
            backup_dir=Path(env.str("BROADSHEET_BACKUP_DIR", "")) if env.optional("BROADSHEET_BACKUP_DIR") else None,
            backup_interval=env.int("BROADSHEET_BACKUP_INTERVAL", 0),
            backup_keep=env.int("BROADSHEET_BACKUP_KEEP", 7),
            replication_key=derived_key(secret, "private replication") if secret else "",
        )
        split_addr(node.litefs_addr, "BROADSHEET_STANDBY_LITEFS_ADDR")
        split_addr(node.guard_addr, "BROADSHEET_STANDBY_GUARD_ADDR")
        check_schedule(node.backup_interval, node.backup_keep)
        return node

    @property
    def private(self) -> MountConfig:
        # The same directories as a primary's private cluster: promotion
        # restarts LiteFS on them as the candidate.
        return MountConfig(
            mount_dir=self.root / "private" / "mnt",
            data_dir=self.root / "private" / "litefs",
            http_addr=self.litefs_addr,
            # Never the primary itself: the guard, which relays its stream.
            primary_url=self.guard_url,
            primary_hostname=self.primary_hostname,
            candidate=False,
            # Mount what it has even while the primary is unreachable: a
            # standby is most needed exactly then.
            skip_sync=True,
            compress=self.compress,
            retention=self.retention,
            litefs_cluster_id=derived_cluster_id(self.cluster_id, "private"),
        )

    @property
    def data_db(self) -> Path:
        return self.private.mount_dir / "data.db"

    @property
    def guard_url(self) -> str:
        return http_url(*split_addr(self.guard_addr, "BROADSHEET_STANDBY_GUARD_ADDR"))

    @property
    def url(self) -> str:
        return http_url(self.host, self.port)

    def position(self) -> Pos:
        """data.db's position here: from the mount while LiteFS runs, else
        from its newest LTX file (the same, without LiteFS)."""
        if is_mounted(self.private.mount_dir):
            return Pos.read(self.data_db)
        newest = NewestLtx.read(self.private.data_dir, DATA_DB)
        return newest.pos if newest is not None else Pos(0)

    @property
    def banner(self) -> str:
        return f"standby is up: data.db from {self.primary_private_url}, status {self.url}/status"

    def start(self, supervisor) -> None:
        supervisor.claim(self.root)
        supervisor.start(litefs_service("standby-litefs", self.private))
        supervisor.start(
            Service(
                name="standby-status",
                argv=[
                    sys.executable, "-m", "uvicorn", "primary.standby.api:app",
                    "--host", listen_host(self.host), "--port", str(self.port),
                    "--no-access-log", "--log-level", "warning",
                ],
                env={
                    "BROADSHEET_STANDBY_ROOT": str(self.root),
                    "BROADSHEET_STANDBY_DATA_DB": str(self.data_db),
                    "BROADSHEET_STANDBY_LITEFS_DATA_DIR": str(self.private.data_dir),
                    "BROADSHEET_STANDBY_GUARD_ADDR": self.guard_addr,
                    "BROADSHEET_PRIVATE_PRIMARY_URL": self.primary_private_url,
                    "BROADSHEET_STANDBY_REPLICATION_KEY": self.replication_key,
                },
                ready=lambda: httpx.get(f"{self.url}/status", timeout=1).status_code == 200,
                restart=True,
                depends_on=("standby-litefs",),
                force_after=1.0,
            )
        )
        if self.backup_interval > 0:
            dest = self.backup_dir or self.root / "backups"
            supervisor.start(
                backup.service("standby-backups", self.data_db, dest, self.backup_keep, self.backup_interval, "standby-litefs")
            )

    def stop(self, supervisor) -> None:
        for name in ("standby-backups", "standby-status", "standby-litefs"):
            if supervisor.running(name):
                supervisor.stop(name)

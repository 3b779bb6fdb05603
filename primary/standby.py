"""The standby: a second node of the private side that keeps an up-to-date
copy of data.db, and can be promoted to primary when the primary is lost.

It joins the *private* cluster as a LiteFS replica (never a candidate), over
a network read nodes are not on: the primary's private LiteFS listens on an
address of that network (``BROADSHEET_PRIVATE_LITEFS_ADDR``), the standby's
own LiteFS API on its loopback. Beside it runs a small status API (this
``primary/standby_api.py``, on the private network too): its data.db position and the
commit time of its newest transaction (``GET /status``, which the primary's
control plane shows on ``/health``), and ``GET /wait?txid=N`` that answers
once the standby has data.db TXID N (``Broadsheet-Wait: standby``).

``broadsheet promote`` on the standby records the promotion
(``promoted.json`` under its root, with a new epoch) and tells the running
``broadsheet standby`` (SIGUSR1) to become the primary of both clusters on
the same directory: its private LiteFS restarts as the candidate (data.db
continues from the TXID it had), the public LiteFS starts with the public
cluster's id (derived from the cluster id, so read nodes accept it), then
the publisher rebuilds public.db from data.db, the team's Datasette and the
control plane start. Started again later, it runs as primary.

Fencing: LiteFS's static lease cannot stop an old primary from coming back
as a second primary. A node about to start as primary asks each of its peers'
private LiteFS (``BROADSHEET_PEERS``) whether it is primary, and refuses to
start if one is; and data.db's epoch (``_public_cluster.epoch``), raised by
every promotion, says which primary is newer.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import httpx

from broadsheet.config import ConfigError, Env, http_url, split_addr
from broadsheet.litefs import MountConfig, Pos, derived_cluster_id
from broadsheet.supervisor import Service, StartError

from .backup import check_schedule, default_cluster_id

PROMOTED = "promoted.json"


class AnotherPrimary(StartError):
    """A peer is primary already: this node must not start as one."""


def check_no_other_primary(peers: list[str], own_url: str, timeout: float = 2.0) -> None:
    """Refuse (AnotherPrimary) if any peer's private LiteFS says it is
    primary. A peer that does not answer is not counted: see the README's
    notes on fencing."""
    for peer in peers:
        if peer.rstrip("/") == own_url.rstrip("/"):
            continue
        try:
            info = httpx.get(f"{peer.rstrip('/')}/info", timeout=timeout).json()
        except (httpx.HTTPError, ValueError):
            continue
        if info.get("isPrimary"):
            raise AnotherPrimary(
                f"{peer} is the private cluster's primary already: this node must not start as a second"
                " primary. If it was promoted while this one was away, this node's data.db is stale:"
                " wipe its volume and run it as a standby (broadsheet standby)"
            )


async def wait_for(txid: int) -> str | None:
    """Wait (bounded: BROADSHEET_STANDBY_WAIT_TIMEOUT) until the standby has
    data.db TXID ``txid``: None once it has, else why not, for a 504."""
    from .settings import settings

    conf = settings()
    try:
        async with httpx.AsyncClient(timeout=conf.standby_wait + 2) as client:
            response = await client.get(f"{conf.standby_url}/wait", params={"txid": txid, "timeout": conf.standby_wait})
    except httpx.HTTPError as exc:
        return f"the write is committed on the primary (data.db TXID {txid}), but the standby did not answer: {exc or type(exc).__name__}"
    if response.status_code == 200:
        return _same_data_db(response.json(), txid, Pos.read(conf.data_db))
    return (
        f"the write is committed on the primary (data.db TXID {txid}), but the standby has not confirmed it"
        f" within {conf.standby_wait:g}s: it would be lost if the primary were lost now"
    )


def _same_data_db(answer: dict, txid: int, primary: Pos) -> str | None:
    """None if the standby's position (``answer`` from its /wait) can be
    this primary's data.db at or past ``txid``; else why not. A standby
    ahead of the primary, or at the primary's TXID with another checksum,
    holds another data.db (an older primary's, until LiteFS resyncs it)."""
    try:
        at, checksum = int(answer["txid"]), int(answer.get("checksum", "0"), 16)
    except (KeyError, TypeError, ValueError):
        return f"the write is committed on the primary (data.db TXID {txid}), but the standby's answer is not a position: {answer!r}"
    if at > primary.txid or (at == primary.txid and answer.get("checksum") is not None and checksum != primary.checksum):
        return (
            f"the write is committed on the primary (data.db TXID {txid}), but the standby holds another data.db"
            f" (TXID {at}, checksum {checksum:016x}; the primary is at {primary}): not a copy of this write"
        )
    return None


def promotion(root: Path) -> dict | None:
    try:
        return json.loads((Path(root) / PROMOTED).read_text())
    except (FileNotFoundError, ValueError):
        return None


@dataclass
class StandbyNode:
    """What a standby runs. Each field is one environment variable."""

    root: Path
    primary_private_url: str  # BROADSHEET_PRIVATE_PRIMARY_URL: the primary's private LiteFS
    host: str = "127.0.0.1"  # where the status API listens (the private network's side)
    port: int = 8006
    litefs_addr: str = "127.0.0.1:20202"  # its own LiteFS API: loopback
    primary_hostname: str = "primary"
    cluster_id: str = ""
    compress: bool = True
    retention: str = "1m"
    peers: list[str] = field(default_factory=list)
    backup_dir: Path | None = None
    backup_interval: float = 0.0
    backup_keep: int = 7

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "StandbyNode":
        environ = os.environ if environ is None else environ
        env = Env(environ)
        secret = env.optional("DATASETTE_SECRET")
        if not secret and not env.optional("BROADSHEET_CLUSTER_ID"):
            raise ConfigError("DATASETTE_SECRET is not set: a standby needs the primary's (it is promoted with it)")
        node = cls(
            root=Path(env.str("BROADSHEET_ROOT", "/var/lib/broadsheet")),
            primary_private_url=env.url("BROADSHEET_PRIVATE_PRIMARY_URL", "http://primary-private:20202"),
            host=env.str("BROADSHEET_HOST", "127.0.0.1"),
            port=env.port("BROADSHEET_STANDBY_PORT", 8006),
            litefs_addr=env.str("BROADSHEET_STANDBY_LITEFS_ADDR", "127.0.0.1:20202"),
            primary_hostname=env.str("BROADSHEET_PRIVATE_PRIMARY_HOSTNAME", "primary"),
            cluster_id=env.str("BROADSHEET_CLUSTER_ID", default_cluster_id(secret or "")),
            compress=env.bool("BROADSHEET_LTX_COMPRESS", True),
            retention=env.str("BROADSHEET_LTX_RETENTION", "1m"),
            peers=env.urls("BROADSHEET_PEERS"),
            backup_dir=Path(env.str("BROADSHEET_BACKUP_DIR", "")) if env.optional("BROADSHEET_BACKUP_DIR") else None,
            backup_interval=env.int("BROADSHEET_BACKUP_INTERVAL", 0),
            backup_keep=env.int("BROADSHEET_BACKUP_KEEP", 7),
        )
        split_addr(node.litefs_addr, "BROADSHEET_STANDBY_LITEFS_ADDR")
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
            primary_url=self.primary_private_url,
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
    def url(self) -> str:
        return http_url(self.host, self.port)

    @property
    def banner(self) -> str:
        return f"standby is up: data.db from {self.primary_private_url}, status {self.url}/status"

    def start(self, supervisor) -> None:
        supervisor.claim(self.root)
        from .node import _litefs_service

        supervisor.start(_litefs_service("standby-litefs", self.private))
        supervisor.start(
            Service(
                name="standby-status",
                argv=[
                    sys.executable, "-m", "uvicorn", "primary.standby_api:app",
                    "--host", self.host, "--port", str(self.port),
                    "--no-access-log", "--log-level", "warning",
                ],
                env={"BROADSHEET_STANDBY_DATA_DB": str(self.data_db), "BROADSHEET_STANDBY_LITEFS_URL": self.private.url},
                ready=lambda: httpx.get(f"{self.url}/status", timeout=1).status_code == 200,
                restart=True,
                depends_on=("standby-litefs",),
                force_after=1.0,
            )
        )
        if self.backup_interval > 0:
            from . import backup

            dest = self.backup_dir or self.root / "backups"
            supervisor.start(
                backup.service("standby-backups", self.data_db, dest, self.backup_keep, self.backup_interval, "standby-litefs")
            )

    def stop(self, supervisor) -> None:
        for name in ("standby-backups", "standby-status", "standby-litefs"):
            if supervisor.running(name):
                supervisor.stop(name)


def become_primary(standby: "StandbyNode | None", supervisor, environ: Mapping[str, str] | None = None):
    """Stop the standby's processes (if running) and start this node as the
    primary of both clusters, on the same root, configured as
    ``broadsheet primary`` would be (from ``environ``). Returns the
    PrimaryNode."""
    from .node import PrimaryNode

    primary = PrimaryNode.from_env(environ)
    if standby is not None:
        standby.stop(supervisor)
    primary.start(supervisor)
    return primary


def promote(root: Path, data_db: Path) -> dict:
    """Record this standby's promotion (the epoch after data.db's) in its
    root; the running standby picks it up on SIGUSR1, or at its next start."""
    from . import backup, state

    epoch = 1
    if data_db.exists():
        conn = state.connect(str(data_db), readonly=True)
        try:
            epoch = backup.epoch_of(conn) + 1
        finally:
            conn.close()
    record = {"epoch": epoch, "promoted_at": state.now(), "data_db_txid": Pos.read(data_db).txid}
    tmp = Path(root) / f"{PROMOTED}.tmp"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, Path(root) / PROMOTED)
    return record

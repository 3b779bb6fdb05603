"""The standby: a second node of the private side that keeps an up-to-date
copy of data.db, and can be promoted to primary when the primary is lost.

It joins the *private* cluster as a LiteFS replica (never a candidate), over
a network read nodes are not on: the primary's private LiteFS listens on an
address of that network (``BROADSHEET_PRIVATE_LITEFS_ADDR``), the standby's
own LiteFS API on its loopback. Its LiteFS reaches the primary only through
the guard (``primary/standby_guard.py``), which never lets a snapshot move
the standby backwards: a primary started on an empty volume cannot wipe it.
Beside it runs a small status API (``primary/standby_api.py``, on the
private network too): its data.db position, identity and the commit time of
its newest transaction (``GET /status``, which the primary's control plane
shows on ``/health``), and ``GET /wait?txid=N`` that answers once the
standby has data.db TXID N (``Broadsheet-Wait: standby``), recording the
highest TXID it acknowledged in ``standby-acknowledged.json`` under its
root, outside anything LiteFS writes.

``broadsheet promote`` on the standby records the promotion
(``promoted.json`` under its root, with a new epoch), refusing a copy older
than what the standby acknowledged, and tells the running ``broadsheet
standby`` (SIGUSR1) to become the primary of both clusters on the same
directory: its private LiteFS restarts as the candidate (data.db continues
from the TXID it had), the public LiteFS starts with the public cluster's
id (derived from the cluster id, so read nodes accept it), then the
publisher rebuilds public.db from data.db, the team's Datasette and the
control plane start. Started again later, it runs as primary.

Fencing: LiteFS's static lease cannot stop an old primary from coming back
as a second primary, nor an empty one from replacing the standby's copy. A
node about to start as primary asks each of its peers' private LiteFS
(``BROADSHEET_PEERS``) whether it is primary, and its standby whether it
holds a newer data.db than its own (``check_no_newer_copy``), and refuses
to start if either is so; data.db's epoch (``_public_cluster.epoch``),
raised by every promotion, says which primary is newer.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import httpx

from broadsheet.config import ConfigError, Env, http_url, split_addr
from broadsheet.litefs import MountConfig, NewestLtx, Pos, derived_cluster_id, is_mounted
from broadsheet.supervisor import Service, StartError

from .backup import Identity, check_schedule, default_cluster_id, identity_of_file

PROMOTED = "promoted.json"
ACKNOWLEDGED = "standby-acknowledged.json"
DATA_DB = "data.db"


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


class NewerCopyElsewhere(StartError):
    """The standby holds a newer data.db than this node: starting as primary
    here would put an older copy above it."""


# How long a primary with an empty volume waits for its standby to answer
# (as when both start at once) before it refuses to start.
EMPTY_PRIMARY_WAITS = 60.0


def check_no_newer_copy(
    standby_urls: list[str],
    own: NewestLtx | None,
    cluster_id: str,
    timeout: float = 2.0,
    wait: float = EMPTY_PRIMARY_WAITS,
    say=lambda line: None,
) -> None:
    """Refuse (NewerCopyElsewhere) if a standby (its status API) holds, or
    acknowledged, data.db of this cluster at a later TXID than ``own`` (this
    node's newest LTX file: None for an empty volume), or another data.db at
    the same TXID. A node with data.db of its own starts even if its
    standby does not answer (the standby's guard still refuses to be
    overwritten); an empty one waits ``wait`` seconds for it, then refuses:
    it cannot know what the standby holds, and a standby that is only
    restarting, or being promoted, may hold every acknowledged write."""
    mine = own.pos if own is not None else Pos(0)
    for url in standby_urls:
        deadline, said = time.monotonic() + wait, False
        while True:
            try:
                status = httpx.get(f"{url.rstrip('/')}/status", timeout=timeout).json()
                theirs = Pos(int(status["txid"]), int(status.get("checksum") or "0", 16))
                acknowledged = int(status.get("acknowledged_txid") or 0)
                break
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                if own is not None:
                    status = None
                    break
                if time.monotonic() >= deadline:
                    raise NewerCopyElsewhere(
                        f"this node's data.db is empty (no data.db in its LiteFS directory), and its standby at {url}"
                        f" has not answered for {wait:.0f}s ({exc or type(exc).__name__}): an empty primary does not"
                        " start without knowing what its standby holds, which may be every acknowledged write."
                        " Start the standby (an empty one is fine), or promote it; if there is none any more,"
                        " start this node without BROADSHEET_STANDBY_URL"
                    ) from None
                if not said:
                    say(f"this node's data.db is empty: waiting (up to {wait:.0f}s) for the standby at {url} to say what it holds")
                    said = True
                time.sleep(1.0)
        if status is None or status.get("cluster_id") not in (None, cluster_id):
            continue  # no answer (this node has data of its own), or another deployment's standby
        other = theirs.txid == mine.txid > 0 and theirs.checksum != mine.checksum
        if max(theirs.txid, acknowledged) <= mine.txid and not other:
            continue
        here = "empty (no data.db in its LiteFS directory)" if own is None else f"at TXID {mine.txid}"
        held = f"data.db TXID {theirs.txid} (epoch {status.get('epoch', 1)})"
        if acknowledged:
            held += f", and acknowledged writes (Broadsheet-Wait: standby) up to TXID {acknowledged}"
        raise NewerCopyElsewhere(
            f"this node's data.db is {here}, and the standby at {url} holds {held}"
            + (": another data.db at the same TXID" if other else "")
            + ". Starting as primary here would put an older copy above it, and lose those writes."
            " Promote the standby instead (broadsheet promote on it; a local cluster: broadsheet promote --dir DIR),"
            " or, to start this node from a backup, empty the standby's volume first (and start it again, empty),"
            " start this node again and run broadsheet restore"
        )


@dataclass(frozen=True)
class Acknowledged:
    """The highest data.db TXID this standby told a primary it holds
    (``/wait``: a write acknowledged with ``Broadsheet-Wait: standby``), and
    of which data.db. Kept under the standby's root, outside its LiteFS
    directories: nothing LiteFS does can replace it."""

    txid: int
    identity: Identity
    at: float

    @classmethod
    def read(cls, root: Path) -> "Acknowledged | None":
        try:
            data = json.loads((Path(root) / ACKNOWLEDGED).read_text())
            return cls(int(data["txid"]), Identity(data.get("cluster_id"), int(data.get("epoch", 1)), data.get("generation")), float(data["at"]))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def write(self, root: Path) -> None:
        record = {"txid": self.txid, "at": self.at, "cluster_id": self.identity.cluster_id,
                  "epoch": self.identity.epoch, "generation": self.identity.generation}
        _write_durably(Path(root) / ACKNOWLEDGED, json.dumps(record))


def _write_durably(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fp:
        fp.write(text)
        fp.flush()
        os.fsync(fp.fileno())
    os.replace(tmp, path)


def kept(pos: Pos, copy: Identity, acknowledged: "Acknowledged | None") -> list:
    """What a snapshot must not take from a standby whose LiteFS holds
    data.db at ``pos`` (of identity ``copy``) and which acknowledged
    ``acknowledged``."""
    from .standby_guard import Kept

    found = []
    if pos.txid:
        found.append(Kept("this standby's copy", pos.txid, copy, strict=True))
    if acknowledged is not None and acknowledged.txid:
        found.append(Kept("the writes this standby acknowledged (Broadsheet-Wait: standby)", acknowledged.txid, acknowledged.identity))
    return found


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
    if response.status_code == 409:  # its guard refuses this primary's data.db
        return f"the write is committed on the primary (data.db TXID {txid}), but the standby does not follow this primary: {response.json().get('error')}"
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
    # The guard its LiteFS streams data.db through (standby_guard.py): loopback.
    guard_addr: str = "127.0.0.1:20201"
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
            guard_addr=env.str("BROADSHEET_STANDBY_GUARD_ADDR", "127.0.0.1:20201"),
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
                env={
                    "BROADSHEET_STANDBY_ROOT": str(self.root),
                    "BROADSHEET_STANDBY_DATA_DB": str(self.data_db),
                    "BROADSHEET_STANDBY_LITEFS_DATA_DIR": str(self.private.data_dir),
                    "BROADSHEET_STANDBY_GUARD_ADDR": self.guard_addr,
                    "BROADSHEET_PRIVATE_PRIMARY_URL": self.primary_private_url,
                },
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


class PromoteRefused(Exception):
    """This standby's copy must not be promoted; the message says why."""


def promote(node: StandbyNode) -> dict:
    """Record this standby's promotion (the epoch after data.db's) in its
    root; the running standby picks it up on SIGUSR1, or at its next start.
    Refused (PromoteRefused) when its copy is older than, or not the
    data.db of, the writes it acknowledged: promoting it would lose them."""
    pos = node.position()
    if pos.txid == 0:
        raise PromoteRefused(
            f"no data.db in {node.private.data_dir}: this standby has never received data.db from the primary;"
            " nothing to promote"
        )
    mounted = is_mounted(node.private.mount_dir)
    copy = identity_of_file(node.data_db) if mounted else None
    acknowledged = Acknowledged.read(node.root)
    if acknowledged is not None:
        other = copy is not None and acknowledged.identity.generation and copy.generation != acknowledged.identity.generation
        if pos.txid < acknowledged.txid or other:
            raise PromoteRefused(
                f"this standby's data.db (TXID {pos.txid}{f', {copy}' if copy else ''}) is older than what it"
                f" acknowledged (TXID {acknowledged.txid}, {acknowledged.identity}, Broadsheet-Wait: standby):"
                " promoting it would lose acknowledged writes. Restore the newest backup instead (broadsheet restore)"
            )
    newest = NewestLtx.read(node.private.data_dir, DATA_DB)
    record = {
        # Without LiteFS running, data.db's epoch is read when it starts as
        # the primary (PrimaryNode.init_data_db), and written back here.
        "epoch": copy.epoch + 1 if copy is not None else None,
        "promoted_at": time.time(),
        "data_db_txid": pos.txid,
        "committed_at": newest.committed_at if newest is not None and newest.pos.txid == pos.txid else None,
        "acknowledged_txid": acknowledged.txid if acknowledged is not None else 0,
    }
    _write_durably(Path(node.root) / PROMOTED, json.dumps(record))
    return record


def record_epoch(root: Path, epoch: int) -> None:
    """The epoch a promotion made, once known (see ``promote``)."""
    record = promotion(root) or {}
    _write_durably(Path(root) / PROMOTED, json.dumps({**record, "epoch": epoch}))


def loss_window(record: dict) -> str:
    """What a promotion recorded in ``record`` lost, in words that are true
    of it: the writes after its TXID; and none acknowledged with
    ``Broadsheet-Wait: standby``, since ``promote`` refuses a copy older
    than those."""
    import datetime

    when = ""
    if record.get("committed_at"):
        moment = datetime.datetime.fromtimestamp(record["committed_at"], datetime.timezone.utc)
        when = f", committed at {moment.isoformat(timespec='milliseconds')}"
    acknowledged = record.get("acknowledged_txid") or 0
    kept = (
        f"every write acknowledged with Broadsheet-Wait: standby (up to TXID {acknowledged}) is in it"
        if acknowledged
        else "no write was acknowledged with Broadsheet-Wait: standby"
    )
    return (
        f"writes the old primary committed after data.db TXID {record['data_db_txid']}{when} are lost;"
        f" {kept}"
    )

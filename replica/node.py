"""A read node: a LiteFS replica of the public cluster and a Datasette that
serves its public.db with --default-deny and the read-node rule."""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from broadsheet.litefs import MountConfig, is_mounted, wait_for_file
from broadsheet.supervisor import Service


@dataclass
class ReadNode:
    name: str
    root: Path
    port: int
    litefs_port: int
    primary_public_url: str  # the public cluster's primary: the only LiteFS it joins
    primary_hostname: str = "primary"
    primary_team_url: str = ""  # named in the error a write attempt gets
    compress: bool = True

    @property
    def litefs(self) -> MountConfig:
        return MountConfig(
            mount_dir=self.root / "mnt",
            data_dir=self.root / "litefs",
            http_addr=f"127.0.0.1:{self.litefs_port}",
            primary_url=self.primary_public_url,
            primary_hostname=self.primary_hostname,
            candidate=False,
            # Serve what is on disk while the primary is unreachable.
            skip_sync=True,
            compress=self.compress,
        )

    @property
    def public_db(self) -> Path:
        return self.root / "mnt" / "public.db"

    def ltx_path(self, txid: int) -> Path:
        """The LTX file (in LiteFS's data directory) that brought TXID ``txid``."""
        return self.litefs.data_dir / "dbs" / "public.db" / "ltx" / f"{txid:016x}-{txid:016x}.ltx"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def litefs_service(self) -> str:
        return f"{self.name}-litefs"

    @property
    def datasette_service(self) -> str:
        return f"{self.name}-datasette"

    def services(self) -> list[Service]:
        fs = self.litefs
        return [
            Service(
                name=self.litefs_service,
                argv=fs.argv(),
                env=fs.env(),
                mount=fs.mount_dir,
                ready=lambda: is_mounted(fs.mount_dir) and httpx.get(f"{fs.url}/info", timeout=1).status_code == 200,
                prepare=lambda: fs.data_dir.mkdir(parents=True, exist_ok=True),
                stop_signal=signal.SIGINT,
            ),
            Service(
                name=self.datasette_service,
                argv=[
                    sys.executable, "-m", "replica.serve", "serve", str(self.public_db),
                    "--host", "127.0.0.1", "--port", str(self.port),
                    "--default-deny",
                    "--setting", "default_allow_sql", "on",
                    "--setting", "sql_time_limit_ms", "1000",
                ],
                env={"BROADSHEET_PRIMARY_URL": self.primary_team_url, "BROADSHEET_NODE_NAME": self.name},
                # A node that has never synced has no public.db yet: Datasette
                # starts once the first LTX has arrived.
                prepare=lambda: wait_for_file(self.public_db, timeout=60) or _no_db(self),
                ready=lambda: httpx.get(f"{self.url}/-/versions.json", timeout=1).status_code == 200,
                restart=True,
            ),
        ]


def _no_db(node: ReadNode) -> None:
    raise RuntimeError(f"{node.name}: public.db did not arrive from {node.primary_public_url} within 60s")

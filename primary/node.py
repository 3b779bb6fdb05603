"""The primary node: two LiteFS clusters (private data.db, public public.db),
the publisher, and the team's Datasette."""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from broadsheet.litefs import MountConfig, is_mounted
from broadsheet.supervisor import Service


@dataclass
class PrimaryNode:
    root: Path
    port: int  # the team's Datasette
    private_litefs_port: int
    public_litefs_port: int
    hostname: str = "primary"
    compress: bool = True

    @property
    def private(self) -> MountConfig:
        # Loopback only, and no read node is ever given this address: the
        # private cluster has exactly one member.
        return self._mount("private", self.private_litefs_port)

    @property
    def public(self) -> MountConfig:
        return self._mount("public", self.public_litefs_port)

    def _mount(self, cluster: str, port: int) -> MountConfig:
        return MountConfig(
            mount_dir=self.root / cluster / "mnt",
            data_dir=self.root / cluster / "litefs",
            http_addr=f"127.0.0.1:{port}",
            primary_url=f"http://127.0.0.1:{port}",
            primary_hostname=self.hostname,
            candidate=True,
            compress=self.compress,
        )

    @property
    def data_db(self) -> Path:
        return self.private.mount_dir / "data.db"

    @property
    def public_db(self) -> Path:
        return self.public.mount_dir / "public.db"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def litefs_services(self) -> list[Service]:
        return [_litefs_service(name, fs) for name, fs in (("private-litefs", self.private), ("public-litefs", self.public))]

    def app_services(self) -> list[Service]:
        return [
            Service(
                name="publisher",
                argv=[
                    sys.executable, "-m", "broadsheet.cli", "run-publisher",
                    "--data-db", str(self.data_db),
                    "--public-db", str(self.public_db),
                    "--litefs-url", self.private.url,
                ],
                ready=lambda: self.public_db.exists(),
            ),
            Service(
                name="primary-datasette",
                argv=[
                    sys.executable, "-m", "primary.serve", "serve", str(self.data_db),
                    "--host", "127.0.0.1", "--port", str(self.port),
                    "--default-deny",
                ],
                ready=lambda: httpx.get(f"{self.url}/-/versions.json", timeout=1).status_code in (200, 403),
            ),
        ]


def _litefs_service(name: str, fs: MountConfig) -> Service:
    return Service(
        name=name,
        argv=fs.argv(),
        env=fs.env(),
        mount=fs.mount_dir,
        prepare=lambda: fs.data_dir.mkdir(parents=True, exist_ok=True),
        ready=lambda: is_mounted(fs.mount_dir) and httpx.get(f"{fs.url}/info", timeout=1).status_code == 200,
        stop_signal=signal.SIGINT,
    )

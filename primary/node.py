"""The primary node: two LiteFS clusters (private data.db, public public.db),
the publisher, and the team's Datasette."""

from __future__ import annotations

import json
import secrets
import signal
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from broadsheet.litefs import MountConfig, is_mounted
from broadsheet.supervisor import Service

from .settings import ReadNodeAddress

TEMPLATES = Path(__file__).parent / "templates"


def hash_password(password: str) -> str:
    from datasette_auth_passwords.utils import hash_password as hash_

    return hash_(password)


@dataclass
class PrimaryNode:
    root: Path
    port: int  # the team's Datasette
    private_litefs_port: int
    public_litefs_port: int
    control_port: int
    hostname: str = "primary"
    compress: bool = True
    read_nodes: list[ReadNodeAddress] = field(default_factory=list)

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
    def watermark_file(self) -> Path:
        return self.root / "publisher-watermark.json"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    @property
    def secret_file(self) -> Path:
        return self.root / "secret"

    def secret(self) -> str:
        """The one secret every process that signs or checks tokens shares.
        Made on first start, kept beside the node's data, never in the repo."""
        return _private_file(self.secret_file, lambda: secrets.token_hex(32))

    @property
    def password_file(self) -> Path:
        return self.root / "team-password"

    def team_password(self) -> str:
        """The local cluster's browser login (user ``team``): made on first
        start; Datasette sees only its hash."""
        return _private_file(self.password_file, lambda: secrets.token_urlsafe(12))

    def datasette_config(self) -> Path:
        path = self.root / "datasette.json"
        path.write_text(
            json.dumps(
                {
                    "plugins": {
                        "datasette-auth-passwords": {
                            "team_password_hash": {"$env": "BROADSHEET_TEAM_PASSWORD_HASH"},
                        }
                    }
                },
                indent=2,
            )
        )
        return path

    def env(self) -> dict[str, str]:
        """Settings for the primary's own processes (see primary/settings.py)."""
        return {
            "DATASETTE_SECRET": self.secret(),
            "BROADSHEET_DATA_DB": str(self.data_db),
            "BROADSHEET_PUBLIC_DB": str(self.public_db),
            "BROADSHEET_WATERMARK": str(self.watermark_file),
            "BROADSHEET_PUBLIC_LITEFS_URL": self.public.url,
            "BROADSHEET_DATASETTE_URL": self.url,
            "BROADSHEET_CONTROL_URL": self.control_url,
            "BROADSHEET_READ_NODES": json.dumps([asdict(n) for n in self.read_nodes]),
        }

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
                    "--watermark", str(self.watermark_file),
                ],
                ready=lambda: self.public_db.exists(),
                restart=True,
            ),
            Service(
                name="primary-datasette",
                argv=[
                    sys.executable, "-m", "primary.serve", "serve", str(self.data_db),
                    "--host", "127.0.0.1", "--port", str(self.port),
                    "--default-deny",
                    "--config", str(self.datasette_config()),
                    "--template-dir", str(TEMPLATES),
                ],
                env={**self.env(), "BROADSHEET_TEAM_PASSWORD_HASH": hash_password(self.team_password())},
                ready=lambda: httpx.get(f"{self.url}/-/login", timeout=1).status_code == 200,
                restart=True,
            ),
            self.control_service(),
        ]

    def control_service(self) -> Service:
        return Service(
            name="control-plane",
            argv=[
                sys.executable, "-m", "uvicorn", "primary.control:app",
                "--host", "127.0.0.1", "--port", str(self.control_port),
                "--no-access-log", "--log-level", "warning",
            ],
            env=self.env(),
            ready=lambda: httpx.get(f"{self.control_url}/health", timeout=1).status_code == 200,
            restart=True,
        )


def _private_file(path: Path, make) -> str:
    """The contents of a file only root may read, made with ``make()`` if absent."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(make())
    return path.read_text().strip()


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

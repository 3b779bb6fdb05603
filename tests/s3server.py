"""A real S3-compatible server for the off-site backup tests: versitygw
(built into ./bin by scripts/setup) on 127.0.0.1, storing objects as files
in a directory of the test's. Stopped and started again on the same port
and directory, it is a store that went down and came back."""

from __future__ import annotations

import base64
import os
import subprocess
import time
from pathlib import Path

import httpx

from local.cluster import free_port

BINARY = Path(__file__).resolve().parent.parent / "bin" / "versitygw"


class S3Server:
    def __init__(self, root: Path, bucket: str = "broadsheet-backups"):
        self.root = Path(root)
        self.data = self.root / "objects"
        self.data.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.access, self.secret = "test-access", base64.b16encode(os.urandom(12)).decode()
        self.bucket = bucket
        self.key = base64.b64encode(os.urandom(32)).decode()
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, prefix: str = "team") -> str:
        return f"s3://{self.bucket}/{prefix}"

    def env(self, prefix: str = "team") -> dict[str, str]:
        """What a primary is configured with to back up here."""
        return {
            "BROADSHEET_BACKUP_URL": self.url(prefix), "BROADSHEET_BACKUP_KEY": self.key,
            "AWS_ACCESS_KEY_ID": self.access, "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_ENDPOINT_URL_S3": self.endpoint, "AWS_REGION": "us-east-1",
        }

    def start(self) -> None:
        if not BINARY.exists():
            raise RuntimeError(f"{BINARY} is missing: run scripts/setup")
        log = open(self.root / "versitygw.log", "ab")
        self.process = subprocess.Popen(
            [str(BINARY), "--access", self.access, "--secret", self.secret, "--port", f"127.0.0.1:{self.port}",
             "posix", str(self.data)],
            stdout=log, stderr=subprocess.STDOUT, env={"PATH": os.environ.get("PATH", "")},
        )
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                httpx.get(self.endpoint, timeout=0.5)
                return
            except httpx.HTTPError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"versitygw exited: see {self.root / 'versitygw.log'}")
                time.sleep(0.05)
        raise RuntimeError("versitygw did not answer within 15 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def store(self, prefix: str = "team", key: str | None = None):
        from primary.offsite import crypto
        from primary.offsite.store import Store

        env = {**self.env(prefix), **({"BROADSHEET_BACKUP_KEY": key} if key else {})}
        return Store(self.url(prefix), crypto.key_from_env(env), env)

    def object_files(self):
        """Every object as the server keeps it on disk: (path, bytes)."""
        for path in (self.data / self.bucket).rglob("*"):
            if path.is_file():
                yield path, path.read_bytes()

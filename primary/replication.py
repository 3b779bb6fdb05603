"""The primary's side of the replication gate (``broadsheet/gate.py``): who
may stream public.db, and over what.

- **Who.** The holder of the cluster's replication key
  (``BROADSHEET_REPLICATION_KEY``: the local cluster and Compose's setup
  script make one and give it to the read nodes); without one, the primary
  makes its own on its volume (``replication-key``, for the read nodes to be
  given). On Fly, where a secret would reach every machine anyway and
  nothing should be set by hand, a caller is admitted without a key when its
  6PN address is one of the app's replica machines
  (``replica.process.<app>.internal``), which Fly's DNS alone answers and no
  machine of another app can take.
- **Over what.** Plain HTTP/2, or with ``BROADSHEET_REPLICATION_TLS``, TLS
  with the certificate ``BROADSHEET_REPLICATION_TLS_CERT`` and ``_KEY``
  name, else one the primary makes on its volume (``replication-tls/``, the
  key 0600), whose fingerprint it logs for read nodes to pin.
"""

from __future__ import annotations

import datetime
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from broadsheet import fly
from broadsheet.config import ConfigError, Env
from broadsheet.private_file import private_file


@dataclass(frozen=True)
class Replication:
    key: str | None  # the read nodes' credential; None on Fly without one
    peers_dns: str | None  # admitted without a key (Fly's replica group)
    tls: bool = False
    cert: Path | None = None
    cert_key: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str], root: Path) -> "Replication":
        env = Env(environ)
        tls = env.bool("BROADSHEET_REPLICATION_TLS", False)
        cert, cert_key = env.optional("BROADSHEET_REPLICATION_TLS_CERT"), env.optional("BROADSHEET_REPLICATION_TLS_KEY")
        if bool(cert) != bool(cert_key):
            raise ConfigError("BROADSHEET_REPLICATION_TLS_CERT and BROADSHEET_REPLICATION_TLS_KEY go together")
        for name, path in (("BROADSHEET_REPLICATION_TLS_CERT", cert), ("BROADSHEET_REPLICATION_TLS_KEY", cert_key)):
            if path and not Path(path).is_file():
                raise ConfigError(f"{name} is not a file: {path}")
        return cls(
            key=env.optional("BROADSHEET_REPLICATION_KEY"),
            peers_dns=fly.read_nodes_dns(environ),
            tls=tls or bool(cert),
            cert=Path(cert) if cert else (root / "replication-tls" / "cert.pem" if tls else None),
            cert_key=Path(cert_key) if cert_key else (root / "replication-tls" / "key.pem" if tls else None),
        )

    def prepare(self, root: Path) -> "Replication":
        """This, with what the primary makes for itself (a key where nothing
        admits a read node otherwise, a certificate), made now."""
        key = self.key
        if not key and not self.peers_dns:
            path = root / "replication-key"
            key = private_file(path, lambda: secrets.token_urlsafe(32))
        if self.tls and self.cert is not None and not self.cert.exists():
            make_certificate(self.cert, self.cert_key)
        return Replication(key, self.peers_dns, self.tls, self.cert, self.cert_key)

    def gate_env(self) -> dict[str, str]:
        env = {"BROADSHEET_REPLICATION_KEY": self.key or "", "BROADSHEET_GATE_PEERS_DNS": self.peers_dns or ""}
        if self.tls and self.cert is not None:
            env |= {"BROADSHEET_GATE_TLS_CERT": str(self.cert), "BROADSHEET_GATE_TLS_KEY": str(self.cert_key)}
        return env


def make_certificate(cert: Path, key_path: Path | None) -> None:
    """A self-signed certificate (P-256, ten years: read nodes pin it, so
    no authority vouches for it and nothing about it expires in use), its
    key written 0600 before the certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    assert key_path is not None
    key = ec.generate_private_key(ec.SECP256R1())
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    private_file(key_path, lambda: pem_key.strip())
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broadsheet replication")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    private_file(cert, lambda: certificate.public_bytes(serialization.Encoding.PEM).decode().strip())

"""The replication gate: what stands between the network and a LiteFS port.

LiteFS has no authentication, and its HTTP API does far more than stream:
``POST /import`` replaces a database, ``POST /tx`` applies an LTX file,
``POST /halt`` stops writes, ``GET /export`` reads any database, ``/debug``
shows the process. A LiteFS v0.5.14 replica (``http/client.go``
``Client.Stream``, called from ``store.go`` while it follows a primary)
needs exactly one of them: ``POST /stream`` with its position map as the
body and its node id in ``Litefs-Id``, no query. It sends ``/halt`` and
``/tx`` only when an application writes through it, which a read node
never does, and ``/promote`` or ``/handoff`` only when asked to lead, which
a non-candidate never is.

So a gated LiteFS listens on loopback, and the port the network reaches is a
``Gate`` (``role="server"``): it answers ``POST /stream`` from a caller it
admits, and 403 (401 without a credential) to anything else, before reading
a byte of its body. It admits a caller that presents the cluster's
replication key (``broadsheet-replication-key``, compared in constant
time), or, on Fly, one whose 6PN address is a machine of the app's replica
group (``Admission.peers_dns``). The key lets its holder read the public
stream and nothing else: it is not a team secret, and a read node may hold
it (``broadsheet/team_secrets.py``).

On a read node, its LiteFS's primary is a ``Gate`` (``role="client"``) on
its own loopback, which passes the same one request on to the primary's gate
with the key added, over TLS when the primary's URL is ``https://``
(checked against ``BROADSHEET_REPLICATION_TLS_PIN``, a certificate's
SHA-256 fingerprint).

Run as ``python -m broadsheet.gate`` with its settings in the environment
(``Gate.from_env``); the nodes start it as a supervised service.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import socket
import ssl
import sys
import time
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from .supervisor import Service

from .config import ConfigError, Env, listen_host, split_addr
from .h2relay import SILENCE, Downstream, Request, Server, Target, Upstream, fingerprint, relay, silence_from_env

KEY_HEADER = "broadsheet-replication-key"
# The one request a LiteFS v0.5.14 replica makes of its primary.
STREAM = ("POST", "/stream")
# What fencing asks of another primary-group node (primary/standby/fencing.py):
# whether it is primary. Only data.db's gate answers it.
INFO = ("GET", "/info")
# How long a resolution of the replica group is trusted.
PEERS_TTL = 5.0


def refusal(request: Request, allowed: frozenset = frozenset({STREAM})) -> tuple[int, str] | None:
    """Why ``request`` is not one of the ``allowed`` (method, path) pairs,
    as LiteFS's own client sends them (no query), or None if it is."""
    parts = urllib.parse.urlsplit(request.target)
    if (request.method, parts.path) not in allowed:
        what = ", ".join(" ".join(pair) for pair in sorted(allowed))
        return 403, f"{request.method} {parts.path} refused: this LiteFS port serves {what}, nothing else\n"
    if parts.query:
        return 403, f"{request.method} {parts.path} takes no query here\n"
    return None


def derived_key(secret: str, purpose: str) -> str:
    """A key for ``purpose`` that every node holding ``secret`` derives
    alike, and that reveals nothing of it: data.db's gate admits the
    standby with one made from the secret both already hold."""
    return hmac.new(secret.encode(), f"broadsheet {purpose}".encode(), "sha256").hexdigest()


def parse_allowed(value: str) -> frozenset:
    """``POST /stream,GET /info`` as (method, path) pairs."""
    pairs = frozenset(tuple(item.split()) for item in value.split(",") if item.strip())
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ConfigError(f"BROADSHEET_GATE_ALLOW must be METHOD /path pairs separated by commas, not {value!r}")
    return pairs


@dataclass
class Admission:
    """Who may stream: the holder of ``key``, or a caller whose address is
    one ``peers_dns`` resolves to (Fly's ``replica.process.<app>.internal``)."""

    key: str | None = None
    peers_dns: str | None = None
    _peers: frozenset[str] = frozenset()
    _resolved_at: float = -PEERS_TTL

    def __post_init__(self) -> None:
        if not self.key and not self.peers_dns:
            raise ConfigError("a gate admits no one without BROADSHEET_REPLICATION_KEY (or, on Fly, the replica group)")

    async def admits(self, request: Request) -> bool:
        offered = request.headers.get(KEY_HEADER, "")
        if self.key and offered and hmac.compare_digest(offered.encode(), self.key.encode()):
            return True
        if self.peers_dns:
            return _normal_ip(request.peer) in await self._peer_addresses()
        return False

    async def _peer_addresses(self) -> frozenset[str]:
        if time.monotonic() - self._resolved_at >= PEERS_TTL:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(self.peers_dns, None, type=socket.SOCK_STREAM)
                self._peers = frozenset(_normal_ip(info[4][0]) for info in infos)
            except OSError:
                pass  # keep what it resolved to last
            self._resolved_at = time.monotonic()
        return self._peers


def _normal_ip(address: str) -> str:
    address = address.split("%", 1)[0]
    return address.removeprefix("::ffff:")


class Gate:
    """One gate: an HTTP/2 server on ``listen`` passing the one request a
    replica makes on to ``upstream``. As a server (``admission`` given) it
    admits callers; as a client (``key`` given) it presents the key."""

    def __init__(
        self,
        upstream: Target,
        admission: Admission | None = None,
        key: str | None = None,
        tls: ssl.SSLContext | None = None,
        name: str = "gate",
        allowed: frozenset = frozenset({STREAM}),
        silence: float = SILENCE,
    ):
        self.upstream, self.admission, self.key, self.name = upstream, admission, key, name
        self.allowed = allowed
        # A connection on either side silent this long is dead (h2relay.py).
        self.silence = silence
        self.server = Server(self._handle, self.log, tls=tls, screen=self._screen, silence=silence)
        self.refused = 0

    def log(self, line: str) -> None:
        print(f"{self.name}: {line}", flush=True)

    async def start(self, host: str, port: int) -> None:
        await self.server.start(host, port)

    async def close(self) -> None:
        await self.server.close()

    async def _screen(self, request: Request) -> tuple[int, str] | None:
        why = refusal(request, self.allowed)
        if why is None and self.admission is not None and not await self.admission.admits(request):
            presented = bool(request.headers.get(KEY_HEADER))
            why = (403 if presented else 401), (
                "the replication key presented is not this cluster's\n"
                if presented
                else f"streaming needs this cluster's replication key ({KEY_HEADER})\n"
            )
        if why is not None:
            self.refused += 1
            self.log(f"refused {request.method} {request.target} from {request.peer}: {why[0]}")
        return why

    async def _handle(self, request: Request, down: Downstream) -> None:
        # What a LiteFS replica asks for, once per (re)connection.
        self.log(f"passing {request.method} {request.target} from {request.peer} (litefs-id {request.headers.get('litefs-id', '-')})")
        headers = [(k, v) for k, v in request.headers.items() if k.startswith("litefs-")]
        if self.key:
            headers.append((KEY_HEADER, self.key))
        try:
            upstream = await Upstream.open(
                self.upstream, request.method, request.target, headers, request.body, silence=self.silence
            )
        except (ConnectionError, OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            with contextlib.suppress(Exception):  # the caller may have gone meanwhile
                await down.respond(502, f"{self.upstream.authority}: {exc}\n".encode())
            return
        try:
            if upstream.status != 200:
                await down.respond(upstream.status, await upstream.rest(limit=65536))
                return
            await down.start(200, [(k, v) for k, v in upstream.headers.items() if k.startswith("litefs-")])
            await relay(upstream, down)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # either side went: LiteFS reconnects
            self.log(f"stream from {self.upstream.authority} ended: {exc!r}")
            down.reset()
        finally:
            upstream.close()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> tuple["Gate", str, int]:
        """The gate ``BROADSHEET_GATE_*`` describe, and where it listens.

        ``BROADSHEET_GATE_ROLE`` ``server`` (in front of a LiteFS) or
        ``client`` (on a read node); ``BROADSHEET_GATE_LISTEN`` host:port;
        ``BROADSHEET_GATE_UPSTREAM`` the URL it passes requests to;
        ``BROADSHEET_REPLICATION_KEY`` the key it admits (server) or
        presents (client); ``BROADSHEET_GATE_PEERS_DNS`` a name whose
        addresses it admits without a key (server); ``BROADSHEET_GATE_TLS_CERT``
        and ``_KEY`` PEM files it serves TLS with (server);
        ``BROADSHEET_REPLICATION_TLS_PIN`` the fingerprint an ``https://``
        upstream must present (client); ``BROADSHEET_GATE_ALLOW`` what a
        server passes (``POST /stream``; data.db's gate adds ``GET /info``);
        ``BROADSHEET_REPLICATION_TIMEOUT`` how long a connection may be silent
        before it counts as dead (``broadsheet/h2relay.py``)."""
        env = Env(environ)
        silence = silence_from_env(environ)
        role = env.str("BROADSHEET_GATE_ROLE")
        if role not in ("server", "client"):
            raise ConfigError(f"BROADSHEET_GATE_ROLE must be server or client, not {role!r}")
        host, port = split_addr(env.str("BROADSHEET_GATE_LISTEN"), "BROADSHEET_GATE_LISTEN")
        upstream = Target.from_url(
            env.url("BROADSHEET_GATE_UPSTREAM") or env.str("BROADSHEET_GATE_UPSTREAM"),
            env.optional("BROADSHEET_REPLICATION_TLS_PIN"),
        )
        key = env.optional("BROADSHEET_REPLICATION_KEY")
        if role == "server":
            tls = None
            if cert := env.optional("BROADSHEET_GATE_TLS_CERT"):
                tls = server_tls(cert, env.str("BROADSHEET_GATE_TLS_KEY"))
            gate = cls(upstream, Admission(key, env.optional("BROADSHEET_GATE_PEERS_DNS")), tls=tls,
                       name=env.str("BROADSHEET_GATE_NAME", "gate"),
                       allowed=parse_allowed(env.str("BROADSHEET_GATE_ALLOW", "POST /stream")), silence=silence)
        else:
            gate = cls(upstream, key=key, name=env.str("BROADSHEET_GATE_NAME", "gate"), silence=silence)
        return gate, listen_host(host), port


def pem_pin(cert: str) -> str:
    """The pin (``sha256:`` fingerprint) of the first certificate in a PEM file."""
    with open(cert) as fp:
        pem = fp.read()
    end_marker = "-----END CERTIFICATE-----"
    start = pem.index("-----BEGIN CERTIFICATE-----")
    return fingerprint(ssl.PEM_cert_to_DER_cert(pem[start : pem.index(end_marker, start) + len(end_marker)]))


def server_tls(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    return ctx


def gate_service(name: str, env: dict[str, str], url: str, **extra) -> "Service":
    """The supervised process of one gate, ready once it accepts connections
    at ``url``."""
    from .supervisor import Service

    parts = urllib.parse.urlsplit(url)

    def ready() -> bool:
        with contextlib.suppress(OSError), socket.create_connection((parts.hostname, parts.port), timeout=1):
            return True
        return False

    return Service(name=name, argv=[sys.executable, "-m", "broadsheet.gate"], env=env, ready=ready, restart=True, **extra)


async def _serve(gate: Gate, host: str, port: int, cert: str | None) -> None:
    await gate.start(host, port)
    gate.log(f"listening on {host or '*'}:{port}, in front of {gate.upstream.authority}")
    if cert:
        gate.log(f"TLS with {cert}: read nodes pin BROADSHEET_REPLICATION_TLS_PIN={pem_pin(cert)}")
    await asyncio.Event().wait()


def main() -> int:
    try:
        gate, host, port = Gate.from_env(os.environ)
    except (ConfigError, OSError, ssl.SSLError) as exc:
        print(f"gate: {exc}", file=sys.stderr, flush=True)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(gate, host, port, os.environ.get("BROADSHEET_GATE_TLS_CERT")))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The replication gate's logic (broadsheet/gate.py), in-process: which
requests pass, who is admitted, and the TLS pin, over real HTTP/2 on
loopback with a stand-in for LiteFS behind it."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from broadsheet.config import ConfigError
from broadsheet.gate import INFO, KEY_HEADER, STREAM, Admission, Gate, derived_key, parse_allowed, refusal, server_tls
from broadsheet.h2relay import Request, Server, Target, fingerprint
from primary.replication import make_certificate


def request(method: str, target: str, headers: dict | None = None, peer: str = "10.0.0.9") -> Request:
    return Request(method, target, headers or {}, b"", peer)


@pytest.mark.parametrize(
    "method,target",
    [
        ("POST", "/import?name=public.db"),
        ("POST", "/tx?name=public.db&lockID=1"),
        ("POST", "/halt?name=public.db&id=1"),
        ("DELETE", "/halt?name=public.db&id=1"),
        ("GET", "/export?name=public.db"),
        ("GET", "/debug/pprof/"),
        ("GET", "/info"),
        ("POST", "/promote"),
        ("POST", "/handoff?nodeID=1"),
        ("GET", "/stream"),
        ("POST", "/stream?filter=data.db"),
        ("POST", "/stream/../import"),
    ],
)
def test_only_the_replicas_stream_request_passes(method, target):
    status, text = refusal(request(method, target))
    assert status == 403 and text


def test_the_stream_request_passes():
    assert refusal(request("POST", "/stream")) is None


def test_data_dbs_gate_also_answers_fencing():
    allowed = parse_allowed("POST /stream, GET /info")
    assert allowed == frozenset({STREAM, INFO})
    assert refusal(request("GET", "/info"), allowed) is None
    assert refusal(request("POST", "/stream"), allowed) is None
    for method, target in (("POST", "/info"), ("GET", "/info?x=1"), ("POST", "/import?name=data.db")):
        assert refusal(request(method, target), allowed)[0] == 403
    with pytest.raises(ConfigError, match="BROADSHEET_GATE_ALLOW"):
        parse_allowed("POST")


def test_data_dbs_key_is_derived_and_tells_nothing_of_the_secret():
    key = derived_key("s3cret", "private replication")
    assert key == derived_key("s3cret", "private replication")
    assert key != derived_key("s3cret", "public replication") != derived_key("other", "private replication")
    assert "s3cret" not in key and len(key) == 64


def test_admission_by_key():
    admission = Admission(key="k" * 43)
    assert asyncio.run(admission.admits(request("POST", "/stream", {KEY_HEADER: "k" * 43})))
    assert not asyncio.run(admission.admits(request("POST", "/stream", {KEY_HEADER: "k" * 42 + "x"})))
    assert not asyncio.run(admission.admits(request("POST", "/stream")))


def test_admission_by_the_replica_groups_addresses():
    # On Fly: replica.process.<app>.internal; here a name that resolves to loopback.
    admission = Admission(peers_dns="localhost")
    assert asyncio.run(admission.admits(request("POST", "/stream", peer="127.0.0.1")))
    assert asyncio.run(admission.admits(request("POST", "/stream", peer="::ffff:127.0.0.1")))
    assert not asyncio.run(admission.admits(request("POST", "/stream", peer="10.1.2.3")))


def test_a_gate_admits_someone():
    with pytest.raises(ValueError, match="BROADSHEET_REPLICATION_KEY"):
        Admission()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Relay:
    """A stand-in LiteFS (answers POST /stream with a body, records every
    request), its gate server, and a read node's gate client."""

    KEY = "the-clusters-replication-key"

    def __init__(self, tls=None, pin: str | None = None):
        self.seen: list[Request] = []
        self.ports = [free_port() for _ in range(3)]
        self.tls, self.pin = tls, pin

    async def start(self):
        async def litefs(req: Request, down):
            self.seen.append(req)
            await down.start(200, [("litefs-cluster-id", "LFSC0")])
            await down.send(b"frames " * 10000)
            down.end()

        litefs_port, server_port, client_port = self.ports
        self.litefs = Server(litefs, print)
        await self.litefs.start("127.0.0.1", litefs_port)
        self.server = Gate(Target("127.0.0.1", litefs_port), Admission(self.KEY), tls=self.tls)
        await self.server.start("127.0.0.1", server_port)
        scheme = "https" if self.tls else "http"
        self.client = Gate(Target.from_url(f"{scheme}://127.0.0.1:{server_port}", self.pin), key=self.KEY)
        await self.client.start("127.0.0.1", client_port)
        return self

    async def close(self):
        for s in (self.client, self.server, self.litefs):
            await s.close()

    def url(self, which: str) -> str:
        return f"http://127.0.0.1:{self.ports[{'server': 1, 'client': 2}[which]]}"


def h2c() -> httpx.AsyncClient:
    return httpx.AsyncClient(http1=False, http2=True, timeout=10)


async def _exchanges(relay: Relay):
    async with h2c() as client:
        big = b"\0" * (4 << 20)  # a whole database: refused before it is read
        forged = await client.post(relay.url("server") + "/import?name=public.db", content=big, headers={KEY_HEADER: relay.KEY})
        halt = await client.post(relay.url("server") + "/halt?name=public.db&id=1", headers={KEY_HEADER: relay.KEY})
        anonymous = await client.post(relay.url("server") + "/stream", content=b"\0\0\0\0")
        wrong = await client.post(relay.url("server") + "/stream", content=b"\0\0\0\0", headers={KEY_HEADER: "guess"})
        through_client = await client.post(relay.url("client") + "/stream", content=b"\0\0\0\0", headers={"litefs-id": "ABC"})
        client_tx = await client.post(relay.url("client") + "/tx?name=public.db&lockID=1", content=b"LTX1")
    return forged, halt, anonymous, wrong, through_client, client_tx


def test_gates_pass_the_stream_and_refuse_the_rest():
    async def run():
        relay = await Relay().start()
        try:
            return relay, await _exchanges(relay)
        finally:
            await relay.close()

    relay, (forged, halt, anonymous, wrong, through, client_tx) = asyncio.run(run())
    assert forged.status_code == 403 and halt.status_code == 403
    assert anonymous.status_code == 401 and wrong.status_code == 403
    assert client_tx.status_code == 403
    assert through.status_code == 200 and through.content == b"frames " * 10000
    assert through.headers["litefs-cluster-id"] == "LFSC0"
    # The stand-in LiteFS saw the one stream request, and not the key.
    assert [(r.method, r.path) for r in relay.seen] == [("POST", "/stream")]
    assert relay.seen[0].headers["litefs-id"] == "ABC" and KEY_HEADER not in relay.seen[0].headers


def test_tls_with_a_made_certificate_and_its_pin(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_certificate(cert, key)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    import ssl

    pin = fingerprint(ssl.PEM_cert_to_DER_cert(cert.read_text()))

    async def run(pin):
        relay = await Relay(tls=server_tls(str(cert), str(key)), pin=pin).start()
        try:
            async with h2c() as client:
                return await client.post(relay.url("client") + "/stream", content=b"\0\0\0\0")
        finally:
            await relay.close()

    assert asyncio.run(run(pin)).status_code == 200
    mismatch = asyncio.run(run("sha256:" + "00" * 32))
    assert mismatch.status_code == 502 and b"pinned" in mismatch.content

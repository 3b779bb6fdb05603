"""Nothing on the network can change what the public reads (issue 21): from a
read node's place (the primary's public LiteFS port, as a read node reaches
it, holding the read nodes' replication key), every request LiteFS would
accept to change public.db is refused by the gate, a stream without the key
is refused, and with it read nodes stream as before, with no private byte
on the way."""

from __future__ import annotations

import struct
import time

import httpx

from broadsheet.gate import KEY_HEADER
from broadsheet.litefs import Pos
from conftest import create_table, rows, wait_until
from primary import store
from test_publish import publish

SENTINEL = b"GATE-SENTINEL-PRIVATE-5d1e"


def forged_ltx(pos: Pos, page: bytes, page_size: int) -> bytes:
    """A one-page LTX file (LiteFS's format: a 100-byte header, a page
    header, the page, a trailer) that continues public.db from ``pos``."""
    header = b"LTX1" + struct.pack(
        ">IIIQQqQqqIIQ", 0, page_size, 1 << 20, pos.txid + 1, pos.txid + 1, int(time.time() * 1000),
        pos.checksum, 0, 0, 0, 0, 0,
    )
    return header.ljust(100, b"\0") + struct.pack(">I", 1) + page + b"\0" * 16


def chunked(data: bytes) -> bytes:
    """LiteFS's chunked body (internal/chunk): 2-byte size, bytes; 0 ends."""
    out = bytearray()
    for at in range(0, len(data), 0xFFFF):
        piece = data[at : at + 0xFFFF]
        out += struct.pack(">H", len(piece)) + piece
    return bytes(out + b"\0\0")


def test_from_a_read_nodes_place_nothing_but_streaming_passes(cluster, db):
    primary = cluster.primary
    gate = primary.public_gate_url
    key = primary.replication.key
    # LiteFS itself is on loopback, behind the gate.
    assert primary.public.http_addr.startswith("127.0.0.1:") and primary.public.url != gate
    before = Pos.read(primary.public_db)
    public_bytes = primary.public_db.read_bytes()
    page_size = struct.unpack(">H", public_bytes[16:18])[0] or 65536
    forged_db = public_bytes.replace(b"Lake Geneva", b"Lake Forged", 1)  # one row changed
    own = {KEY_HEADER: key}

    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        attempts = {
            "import": client.post(f"{gate}/import", params={"name": "public.db"}, content=forged_db, headers=own),
            "halt": client.post(f"{gate}/halt", params={"name": "public.db", "id": "1"}, headers={**own, "litefs-id": "1"}),
            "tx": client.post(
                f"{gate}/tx", params={"name": "public.db", "lockID": "1"}, headers={**own, "litefs-id": "1"},
                content=chunked(forged_ltx(before, public_bytes[:page_size], page_size)),
            ),
            "release": client.delete(f"{gate}/halt", params={"name": "public.db", "id": "1"}, headers=own),
            "export": client.get(f"{gate}/export", params={"name": "public.db"}, headers=own),
            "debug": client.get(f"{gate}/debug/pprof/", headers=own),
            "info": client.get(f"{gate}/info", headers=own),
            "stream without the key": client.post(f"{gate}/stream", content=b"\0\0\0\0"),
            "stream with a guessed key": client.post(f"{gate}/stream", content=b"\0\0\0\0", headers={KEY_HEADER: "guess"}),
        }
    for what, response in attempts.items():
        assert 400 <= response.status_code < 500, f"{what}: {response.status_code} {response.text}"
    assert attempts["stream without the key"].status_code == 401
    # public.db is as the publisher left it, and read nodes serve no forged row.
    assert Pos.read(primary.public_db) == before
    assert b"Lake Forged" not in primary.public_db.read_bytes()

    # With the key, the stream flows, and carries no private byte.
    create_table(cluster, "gate_private", [{"id": 1, "note": SENTINEL.decode()}])
    create_table(cluster, "gate_bulletin", [{"id": 1, "text": "through the gate"}])
    publish(cluster, "gate_bulletin")
    for node in cluster.replicas:
        wait_until(lambda: rows(node.url, "gate_bulletin"), message=f"gate_bulletin on {node.name}")
    size = primary.public_db.stat().st_size
    received = bytearray()
    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        with client.stream("POST", f"{gate}/stream", content=b"\0\0\0\0", headers=own) as response:
            assert response.status_code == 200
            deadline = time.monotonic() + 10
            for piece in response.iter_bytes():
                received += piece
                # The snapshot (uncompressed in this cluster) holds every page.
                if (b"through the gate" in received and len(received) >= size) or time.monotonic() > deadline:
                    break
    assert b"through the gate" in received
    assert SENTINEL not in received
    with store.immediate(db):
        db.execute("UPDATE gate_bulletin SET text = 'still through the gate' WHERE id = 1")
    for node in cluster.replicas:
        wait_until(
            lambda: rows(node.url, "gate_bulletin")[0]["text"] == "still through the gate",
            message=f"the update on {node.name}",
        )

    # What the real LiteFS replicas asked of their gates (each logs what it
    # passes): POST /stream, no query, and nothing else, ever.
    for node in cluster.replicas:
        log = (cluster.supervisor.log_dir / f"{node.gate_service}.log").read_text()
        asked = [line.split("passing ", 1)[1].split(" from ")[0] for line in log.splitlines() if "passing " in line]
        assert asked and set(asked) == {"POST /stream"}, log
        assert "refused" not in log, log


def test_the_standbys_link_to_data_db_is_gated_too(new_cluster):
    cluster = new_cluster(replicas=1, sample=False, standby=True)
    primary = cluster.primary
    gate = primary.private.primary_url
    assert primary.private.http_addr.startswith("127.0.0.1:") and primary.private.url != gate
    private_key = primary.private_replication_key
    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        # A read node's key is not data.db's: it streams public.db alone.
        for headers, expected in (({}, 401), ({KEY_HEADER: primary.replication.key}, 403)):
            assert client.post(f"{gate}/stream", content=b"\0\0\0\0", headers=headers).status_code == expected
            assert client.get(f"{gate}/info", headers=headers).status_code == expected
        own = {KEY_HEADER: private_key}
        for method, path in (("POST", "/import?name=data.db"), ("POST", "/halt?name=data.db&id=1"),
                             ("POST", "/tx?name=data.db&lockID=1"), ("GET", "/export?name=data.db"),
                             ("GET", "/debug/pprof/")):
            assert client.request(method, f"{gate}{path}", headers=own).status_code == 403, path
        # Fencing's question passes, with the key.
        assert client.get(f"{gate}/info", headers=own).json()["isPrimary"] is True
    # The standby follows data.db through its guard and the gate.
    create_table(cluster, "gate_standby", [{"id": 1}])
    wait_until(
        lambda: Pos.read(cluster.standby.data_db).txid >= Pos.read(primary.data_db).txid,
        message="the standby caught up through the gate",
    )
    log = (cluster.supervisor.log_dir / "private-gate.log").read_text()
    assert "passing POST /stream" in log, log

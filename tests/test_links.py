"""Links with distance (local/links.py): specs, and a real toxiproxy between
two real sockets (fast: no LiteFS); then a local cluster whose read nodes sit
behind links of different delays (cluster)."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import closing

import pytest
from click.testing import CliRunner

from broadsheet.config import ConfigError
from broadsheet.litefs import Pos
from broadsheet.supervisor import Supervisor
from conftest import create_table, wait_until
from local.cluster import free_port
from local.links import Links, LinkSpec, parse_links


def test_specs_parse_and_print():
    assert parse_links(["syd=130ms,iad=40ms", "fra=0.2s:jitter=5ms:rate=10mbit"]) == [
        LinkSpec("syd", 130),
        LinkSpec("iad", 40),
        LinkSpec("fra", 200, 5, 10_000),
    ]
    assert str(LinkSpec("fra", 200, 5, 10_000)) == "fra=200ms:jitter=5ms:rate=10000kbit"


@pytest.mark.parametrize("bad, says", [
    ("syd", "NAME=DELAY"),
    ("Sydney Harbour=1ms", "NAME=DELAY"),
    ("syd=fast", "not a duration"),
    ("syd=2min", "not a duration"),
    ("syd=61s", "more than a minute"),
    ("syd=1ms:loss=1%", "unknown option"),
    ("syd=1ms:rate=lots", "not a rate"),
    ("syd=1ms:rate=0mbit", "not a rate"),
    ("syd=1ms:jitter", "KEY=VALUE"),
    ("syd=1ms,syd=2ms", "more than once"),
])
def test_bad_specs_say_why(bad, says):
    with pytest.raises(ConfigError, match=says):
        parse_links([bad])


def test_up_refuses_a_bad_link_before_starting(tmp_path):
    from broadsheet.cli import cli

    result = CliRunner().invoke(cli, ["up", "--dir", str(tmp_path), "--link", "syd=soon"])
    assert result.exit_code != 0
    assert "not a duration" in result.output
    assert not any(tmp_path.iterdir())


def _echo_server():
    """A TCP echo server on loopback: (port, stop)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    done = threading.Event()

    def serve(conn):
        with conn:
            while chunk := conn.recv(65536):
                conn.sendall(chunk)

    def accept():
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()

    def stop():
        done.set()
        listener.close()

    return listener.getsockname()[1], stop


def _round_trip(port: int, payload: bytes = b"x", timeout: float = 10.0) -> float:
    start = time.monotonic()
    with closing(socket.create_connection(("127.0.0.1", port), timeout=timeout)) as conn:
        conn.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            got += chunk
    assert got == payload
    return time.monotonic() - start


@pytest.fixture
def proxy(tmp_path):
    echo_port, stop_echo = _echo_server()
    links = Links(free_port())
    listen = free_port()
    links.add(LinkSpec("syd", 150), f"127.0.0.1:{listen}", f"127.0.0.1:{echo_port}")
    supervisor = Supervisor(tmp_path / "logs")
    supervisor.start(links.service())
    try:
        yield links, listen
    finally:
        supervisor.stop_all()
        stop_echo()


def test_a_link_delays_each_way_and_cuts_and_heals(proxy):
    links, port = proxy
    # One-way 150 ms each direction: a round trip takes at least 300 ms.
    assert _round_trip(port) >= 0.3
    links.set("syd", LinkSpec("syd", 0))
    assert _round_trip(port) < 0.3
    links.cut("syd")
    with pytest.raises((TimeoutError, socket.timeout)):
        _round_trip(port, timeout=1.0)
    links.heal("syd")
    wait_until(lambda: _round_trip(port, timeout=1.0) < 1.0, timeout=10, message="the healed link to carry bytes")
    links.cut("syd", mode="refuse")
    with pytest.raises((ConnectionError, OSError)):
        _round_trip(port, timeout=1.0)
    links.heal("syd")
    wait_until(lambda: _round_trip(port, timeout=1.0) < 1.0, timeout=10, message="the healed link to carry bytes")


def test_a_link_limits_bandwidth(proxy):
    links, port = proxy
    links.set("syd", LinkSpec("syd", 0, rate_kbit=800))  # 100 KB/s each way
    # 200 KB out and back at 100 KB/s: at least two seconds of bandwidth,
    # far above loopback's time for it.
    assert _round_trip(port, b"y" * 200_000, timeout=30) >= 1.5


def test_links_come_back_when_the_proxy_restarts(proxy, tmp_path):
    links, port = proxy
    links.cut("syd")
    # A fresh toxiproxy knows nothing; apply() (what the supervisor's ready
    # check runs after every start) puts the link and its cut back.
    with links._client() as client:
        client.post("/reset").raise_for_status()
        client.delete("/proxies/syd").raise_for_status()
    links.apply()
    with pytest.raises((TimeoutError, socket.timeout)):
        _round_trip(port, timeout=1.0)
    links.heal("syd")
    wait_until(lambda: _round_trip(port, timeout=1.0) >= 0.3, timeout=10, message="the link back, delay and all")


def test_read_nodes_behind_links_receive_in_the_order_of_their_delays(new_cluster):
    from primary import store

    c = new_cluster(replicas=3, sample=False, links=parse_links(["far=400ms,near=60ms"]))
    far, near, direct = c.replicas
    assert [n.primary_public_url != c.primary.public_gate_url for n in c.replicas] == [True, True, False]
    create_table(c, "flights", [{"id": 1, "to": "SYD"}])
    conn = store.connect(str(c.primary.data_db))
    store.set_public(conn, "flights", True, actor="test")
    conn.close()
    wait_until(lambda: Pos.read(c.primary.public_db).txid > 0, timeout=30, message="the first publish")
    c.wait_for_replicas(timeout=30)
    seen: list[dict[str, float]] = []
    for i in range(3):
        before = Pos.read(c.primary.public_db).txid
        create_table(c, "flights", [{"id": 10 + i, "to": "IAD"}])
        txid = wait_until(lambda: Pos.read(c.primary.public_db).txid > before and Pos.read(c.primary.public_db).txid,
                          timeout=15, message="the write's public TXID")
        committed = time.monotonic()
        times: dict[str, float] = {}

        def watch(node):
            wait_until(lambda: Pos.read(node.public_db).txid >= txid, timeout=15, message=f"{node.name} at {txid}")
            times[node.name] = time.monotonic() - committed

        threads = [threading.Thread(target=watch, args=(n,)) for n in c.replicas]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(times) == 3, times
        seen.append(times)
    for times in seen:
        assert times[far.name] >= 0.35, seen  # never sooner than its link allows
        assert times[direct.name] < times[far.name], seen
    # The far node trails the near one by about the difference of delays.
    avg = {n.name: sum(t[n.name] for t in seen) / len(seen) for n in c.replicas}
    assert avg[far.name] > avg[near.name] + 0.2, seen
    print("arrival after commit (s):", seen)
    assert c.links.as_dict()["far"]["spec"] == "far=400ms"

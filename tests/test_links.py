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


def test_link_commands_cut_heal_and_set_a_running_clusters_link(proxy, tmp_path):
    """`broadsheet link cut|heal|set|list`, from another process than the
    one that started the proxy: what cluster.json records is enough."""
    import json

    from broadsheet.cli import cli

    links, port = proxy
    root = tmp_path / "c"
    root.mkdir()
    (root / "cluster.json").write_text(json.dumps({"links": links.as_dict(), "links_api_port": links.api_port}))
    run = CliRunner()

    def invoke(*args):
        result = run.invoke(cli, ["link", *args, "--dir", str(root)])
        assert result.exit_code == 0, result.output
        return result.output

    assert "cut" in invoke("cut", "syd")
    with pytest.raises((TimeoutError, socket.timeout)):
        _round_trip(port, timeout=1.0)
    assert "CUT (drop)" in invoke("list")
    assert json.loads((root / "cluster.json").read_text())["links"]["syd"]["cut"] == "drop"
    invoke("heal", "syd")
    wait_until(lambda: _round_trip(port, timeout=1.0) >= 0.3, timeout=10, message="the healed link, delay and all")
    invoke("cut", "syd", "--mode", "refuse")
    with pytest.raises((ConnectionError, OSError)):
        _round_trip(port, timeout=1.0)
    invoke("heal", "syd")
    invoke("set", "syd=0ms")
    wait_until(lambda: _round_trip(port, timeout=1.0) < 0.3, timeout=10, message="the link without its delay")
    assert "syd=0ms" in invoke("list") and " up " in invoke("list")
    bad = run.invoke(cli, ["link", "cut", "nowhere", "--dir", str(root)])
    assert bad.exit_code != 0 and "no link named 'nowhere'" in bad.output
    none = run.invoke(cli, ["link", "list", "--dir", str(tmp_path / "absent")])
    assert none.exit_code != 0 and "no running cluster" in none.output


# -- a relay notices a dark link (broadsheet/h2relay.py) ----------------------


def _relay_behind_a_link(tmp_path, server_silence: float, beat: float | None):
    """An HTTP/2 relay server whose one handler answers 200 and then sends
    b"beat" every ``beat`` seconds (None: nothing), behind a toxiproxy link;
    returns (links, link port, server, events: a list the handler notes
    "started" and "cancelled" in, stop)."""
    import asyncio

    from broadsheet.h2relay import Server

    events: list[str] = []
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box = {}

    async def handle(request, down):
        events.append("started")
        try:
            await down.start(200, [])
            while True:
                await asyncio.sleep(beat or 3600)
                await down.send(b"beat")
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    async def main():
        server = Server(handle, lambda line: events.append(line), silence=server_silence)
        box["port"] = free_port()
        await server.start("127.0.0.1", box["port"])
        box["server"] = server
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(main()), loop.run_forever()), daemon=True)
    thread.start()
    ready.wait(10)
    links = Links(free_port())
    listen = free_port()
    links.add(LinkSpec("syd", 0), f"127.0.0.1:{listen}", f"127.0.0.1:{box['port']}")
    supervisor = Supervisor(tmp_path / "logs")
    supervisor.start(links.service())

    def stop():
        supervisor.stop_all()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)

    return links, listen, events, stop


def _follow(port: int, silence: float, seconds: float, cut=None):
    """Open a stream through the link and read it for ``seconds`` (calling
    ``cut`` after the first bytes): (bytes read, the error that ended it or
    None, when it ended after the cut)."""
    import asyncio

    from broadsheet.h2relay import Target, Upstream

    async def run():
        upstream = await Upstream.open(Target("127.0.0.1", port), "POST", "/stream", [], b"x", silence=silence)
        got, cut_at = b"", None
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                try:
                    piece = await asyncio.wait_for(upstream.read_some(), max(0.01, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    continue
                got += piece
                if cut is not None and cut_at is None:
                    await asyncio.to_thread(cut)
                    cut_at = time.monotonic()
            return got, None, None
        except ConnectionError as exc:
            return got, exc, time.monotonic() - (cut_at or time.monotonic())
        finally:
            upstream.close()

    return asyncio.run(run())


def test_a_relay_gives_up_a_black_holed_upstream(tmp_path):
    links, port, events, stop = _relay_behind_a_link(tmp_path, server_silence=60, beat=0.2)
    try:
        # The client side: nothing arrives after the cut (no FIN, no RST):
        # given up after its silence, not held for ever.
        got, error, after = _follow(port, silence=1.5, seconds=10, cut=lambda: links.cut("syd"))
        assert got.startswith(b"beat") and error is not None, (got, error)
        assert "not even an answer to a ping" in str(error) and 0.8 <= after < 3.5, after
        links.heal("syd")
    finally:
        stop()


def test_a_relay_server_closes_a_connection_whose_peer_went_dark(tmp_path):
    # Silences of 2 s: a loaded machine (the suite beside other work) must
    # not delay a ping's answer past it.
    links, port, events, stop = _relay_behind_a_link(tmp_path, server_silence=2.0, beat=None)
    try:
        # A stream that carries nothing for longer than the silence stays
        # open while its peer answers pings ...
        # (the server ending it early would have ended the read with an
        # error; the client closing it at the end may be noted as cancelled)
        got, error, _ = _follow(port, silence=2.0, seconds=3.0)
        assert error is None, (error, events)
        # ... and the server lets it go once the peer is behind a black hole.
        import asyncio

        from broadsheet.h2relay import Target, Upstream

        async def dark():
            upstream = await Upstream.open(Target("127.0.0.1", port), "POST", "/stream", [], b"x", silence=60)
            await asyncio.to_thread(links.cut, "syd")
            cut_at = time.monotonic()
            while not any("not even an answer to a ping: closed" in e for e in events) and time.monotonic() - cut_at < 10:
                await asyncio.sleep(0.05)
            upstream.close()
            return time.monotonic() - cut_at

        took = asyncio.run(dark())
        assert any("not even an answer to a ping: closed" in e for e in events), events
        assert 1.0 <= took < 4.5, (events, took)
    finally:
        stop()

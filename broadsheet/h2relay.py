"""HTTP/2 without TLS the way LiteFS speaks it (prior knowledge, "h2c"), as
a server towards a LiteFS and a client towards another, with the ``h2``
library: what every relay of a LiteFS replication stream in broadsheet is
built from (the replication gate, ``broadsheet/gate.py``; the standby's
guard, ``primary/standby/guard.py``).

LiteFS v0.5.14's client (``http/client.go``) is Go's ``http2.Transport``
with ``AllowHTTP`` and a dialer that never speaks TLS; its server answers
``/stream`` over HTTP/2 only (``http/server.go``: 426 to HTTP/1.1). So a
relay is an HTTP/2 server (``Server``: one connection per LiteFS, each
request handed to a coroutine with its ``Downstream``) and an HTTP/2
client (``Upstream``: one request, its response body read as it comes,
within flow control). ``Upstream`` may speak TLS (ALPN ``h2``) and check the
certificate against a pinned SHA-256 fingerprint.

A link that goes dark (a partition that drops every packet: no FIN, no
RST) would leave both ends waiting for ever: LiteFS's client sets no read
deadline, and TCP notices only after many minutes of retransmissions, or
never while nothing is sent. So both ends of a relay's connection watch
it: when nothing has arrived for a third of ``silence`` seconds they send
an HTTP/2 PING (answered by any HTTP/2 peer, LiteFS's Go server and client
included, and never held back by flow control), and a connection on which
nothing at all has arrived for ``silence`` seconds is dead: it is closed,
its streams end, and LiteFS reconnects (its primary sends a heartbeat
every second on ``/stream``, so a live stream is never that quiet).
``BROADSHEET_REPLICATION_TIMEOUT`` sets it (``silence_from_env``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import Awaitable, Callable

CONNECT_TIMEOUT = 5.0
# Seconds a connection may carry nothing (no frame, no answer to a ping)
# before a relay counts it as dead (BROADSHEET_REPLICATION_TIMEOUT).
SILENCE = 5.0


def silence_from_env(environ=None) -> float:
    """``BROADSHEET_REPLICATION_TIMEOUT``: how long a replication
    connection may be silent before it counts as dead (ConfigError names the
    variable for a bad value)."""
    from .config import Env

    return Env(environ).seconds("BROADSHEET_REPLICATION_TIMEOUT", SILENCE, positive=True, at_most=600)


class Liveness:
    """When a connection last carried anything, and whether it is time to
    ping it or to give it up."""

    def __init__(self, silence: float):
        self.silence = silence
        self.ping_every = max(0.05, silence / 3)
        self.heard_at = time.monotonic()

    def heard(self) -> None:
        self.heard_at = time.monotonic()

    @property
    def quiet_for(self) -> float:
        return time.monotonic() - self.heard_at

    @property
    def dead(self) -> bool:
        return self.quiet_for >= self.silence

    async def read(self, reader: asyncio.StreamReader, conn, writer) -> bytes | None:
        """The next bytes from ``reader``; None after ``ping_every`` seconds
        without any (a PING is then on its way, if the connection is not
        dead by now)."""
        try:
            data = await asyncio.wait_for(reader.read(65536), self.ping_every)
        except asyncio.TimeoutError:
            if not self.dead:
                conn.ping(os.urandom(8))
                writer.write(conn.data_to_send())  # no drain: a dark link must not hold this up
            return None
        self.heard()
        return data


@dataclass(frozen=True)
class Request:
    """One HTTP/2 request a relay received, whole (LiteFS's are small: a
    position map)."""

    method: str
    target: str  # the path with its query
    headers: dict[str, str]
    body: bytes
    peer: str  # the caller's IP address

    @property
    def path(self) -> str:
        return urllib.parse.urlsplit(self.target).path


Handler = Callable[[Request, "Downstream"], Awaitable[None]]
# Looks at a request's headers (its body empty) as they arrive: a refusal
# (status, text) is answered at once and the body, however long, is never
# kept; None lets the request through to the handler.
Screen = Callable[[Request], Awaitable["tuple[int, str] | None"]]


class Server:
    """An HTTP/2 (prior knowledge) server whose every request goes to
    ``handle``; with ``tls``, HTTP/2 over TLS (ALPN ``h2``)."""

    def __init__(
        self,
        handle: Handler,
        log: Callable[[str], None],
        tls: ssl.SSLContext | None = None,
        screen: Screen | None = None,
        silence: float = SILENCE,
    ):
        self.handle, self.log, self.tls, self.screen = handle, log, tls, screen
        self.silence = silence
        self._server: asyncio.AbstractServer | None = None
        self.on_close: Callable[[], None] = lambda: None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._connection, host or None, port, ssl=self.tls)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import h2.config
        import h2.connection
        import h2.events

        peername = writer.get_extra_info("peername") or ("", 0)
        peer = str(peername[0])
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        requests: dict[int, tuple[dict, bytearray]] = {}
        windows: dict[int, asyncio.Event] = {}
        tasks: dict[int, asyncio.Task] = {}

        def finished(stream_id: int):
            def forget(task) -> None:
                tasks.pop(stream_id, None)
                windows.pop(stream_id, None)

            return forget

        liveness = Liveness(self.silence)
        try:
            conn.initiate_connection()
            writer.write(conn.data_to_send())
            while True:
                data = await liveness.read(reader, conn, writer)
                if data is None:
                    if liveness.dead:
                        self.log(f"connection from {peer}: nothing for {liveness.quiet_for:.1f}s, not even an answer to a ping: closed")
                        break
                    continue
                if not data:
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        headers = dict(event.headers)
                        refusal = None
                        if self.screen is not None:
                            refusal = await self.screen(_request(headers, b"", peer))
                        if refusal is not None:
                            status, text = refusal
                            conn.send_headers(
                                event.stream_id,
                                [(":status", str(status)), ("content-type", "text/plain; charset=utf-8")],
                            )
                            # Whatever body follows (an LTX file, a database) is
                            # let through flow control and dropped, never kept.
                            conn.send_data(event.stream_id, text.encode(), end_stream=True)
                            continue
                        requests[event.stream_id] = (headers, bytearray())
                        windows[event.stream_id] = asyncio.Event()
                    elif isinstance(event, h2.events.DataReceived):
                        if event.stream_id in requests:
                            body = requests[event.stream_id][1]
                            body.extend(event.data)
                            if len(body) > MAX_REQUEST_BODY:
                                raise ValueError("a request body larger than any LiteFS replica sends")
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded) and event.stream_id in requests:
                        headers, body = requests.pop(event.stream_id)
                        request = _request(headers, bytes(body), peer)
                        stream = Downstream(conn, writer, event.stream_id, windows[event.stream_id])
                        task = asyncio.get_running_loop().create_task(self.handle(request, stream))
                        tasks[event.stream_id] = task
                        task.add_done_callback(finished(event.stream_id))
                    elif isinstance(event, h2.events.WindowUpdated):
                        for stream_id in [event.stream_id] if event.stream_id else list(windows):
                            if stream_id in windows:
                                windows[stream_id].set()
                    elif isinstance(event, h2.events.StreamReset):
                        # LiteFS gave up on it (it is stopping, or reconnecting).
                        requests.pop(event.stream_id, None)
                        if (task := tasks.get(event.stream_id)) is not None:
                            task.cancel()
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        return
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, OSError, ssl.SSLError):
            pass
        except Exception as exc:  # a protocol error (HTTP/1.1, garbage): the connection ends
            self.log(f"connection from {peer} ended: {exc!r}")
        finally:
            for task in list(tasks.values()):
                task.cancel()
            self.on_close()
            writer.close()


def _request(headers: dict[str, str], body: bytes, peer: str) -> Request:
    return Request(headers.get(":method", ""), headers.get(":path", "/"), headers, body, peer)


# A position map is 4 bytes, then per database its name and 16 bytes.
MAX_REQUEST_BODY = 1 << 20


class PinMismatch(ConnectionError):
    pass


def fingerprint(der: bytes) -> str:
    """``sha256:`` and the hex SHA-256 of a certificate (DER), as
    ``BROADSHEET_REPLICATION_TLS_PIN`` takes it."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


def normal_pin(pin: str) -> str:
    """A pin as given (``sha256:AB:CD…``, ``ab cd…``, plain hex) in the one
    form ``fingerprint`` makes."""
    digits = pin.strip().lower().removeprefix("sha256:").replace(":", "").replace(" ", "")
    return "sha256:" + digits


def client_tls(pin: str | None) -> ssl.SSLContext:
    """TLS towards an upstream: with a pin, the certificate is the one whose
    fingerprint it names (checked after the handshake, so a certificate the
    primary made itself serves); without, the system's CAs and the name."""
    ctx = ssl.create_default_context()
    if pin:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    return ctx


@dataclass(frozen=True)
class Target:
    """Where an ``Upstream`` connects: host, port, and TLS (with its pin)."""

    host: str
    port: int
    tls: ssl.SSLContext | None = None
    pin: str | None = None

    @classmethod
    def from_url(cls, url: str, pin: str | None = None) -> "Target":
        parts = urllib.parse.urlsplit(url)
        secure = parts.scheme == "https"
        return cls(
            parts.hostname or "127.0.0.1",
            parts.port or (443 if secure else 80),
            client_tls(pin) if secure else None,
            normal_pin(pin) if (secure and pin) else None,
        )

    @property
    def authority(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class Upstream:
    """One HTTP/2 request to a LiteFS (or to a gate in front of one), whose
    response body is read a number of bytes at a time. Received data is
    acknowledged (its flow-control window opened again) only as it is read,
    so a stream held back here holds the sender back, not this process's
    memory."""

    WINDOW = 1 << 22

    def __init__(self, reader, writer, conn, stream_id: int, silence: float = SILENCE, authority: str = ""):
        self.reader, self.writer, self.conn, self.stream_id = reader, writer, conn, stream_id
        self.liveness = Liveness(silence)
        self.authority = authority
        self.buffer = bytearray()
        self.arrived = asyncio.Event()
        self.response: asyncio.Future = asyncio.get_running_loop().create_future()
        self.ended = False
        self.error: Exception | None = None
        self.status, self.headers = 0, {}
        self._pump = asyncio.get_running_loop().create_task(self._receive())

    @classmethod
    async def open(
        cls, target: Target, method: str, path: str, headers: list[tuple[str, str]], body: bytes,
        silence: float = SILENCE,
    ) -> "Upstream":
        import h2.config
        import h2.connection
        import h2.settings

        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                target.host, target.port, ssl=target.tls, server_hostname=target.host if target.tls else None
            ),
            CONNECT_TIMEOUT,
        )
        if target.pin:
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            if fingerprint(der) != target.pin:
                writer.close()
                raise PinMismatch(
                    f"{target.authority} presented a certificate {fingerprint(der)}, not the pinned {target.pin}"
                )
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.local_settings = h2.settings.Settings(client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: cls.WINDOW})
        conn.initiate_connection()
        conn.increment_flow_control_window(cls.WINDOW)
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(
            stream_id,
            [(":method", method), (":scheme", "https" if target.tls else "http"), (":authority", target.authority),
             (":path", path), *headers, ("content-length", str(len(body)))],
            end_stream=not body,
        )
        if body:
            conn.send_data(stream_id, body, end_stream=True)
        writer.write(conn.data_to_send())
        upstream = cls(reader, writer, conn, stream_id, silence, target.authority)
        try:
            upstream.status, upstream.headers = await asyncio.wait_for(asyncio.shield(upstream.response), CONNECT_TIMEOUT)
        except BaseException:
            upstream.close()
            raise
        return upstream

    async def _receive(self) -> None:
        import h2.events

        try:
            while not self.ended:
                data = await self.liveness.read(self.reader, self.conn, self.writer)
                if data is None:
                    if self.liveness.dead:
                        raise ConnectionError(
                            f"nothing from {self.authority or 'the upstream'} for {self.liveness.quiet_for:.1f}s,"
                            " not even an answer to a ping: the link is down"
                        )
                    continue
                if not data:
                    raise ConnectionError("the upstream closed the connection")
                for event in self.conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived) and not self.response.done():
                        headers = dict(event.headers)
                        self.response.set_result((int(headers.pop(":status", "0")), headers))
                    elif isinstance(event, h2.events.DataReceived) and event.stream_id == self.stream_id:
                        self.buffer += event.data
                        if padding := event.flow_controlled_length - len(event.data):
                            self.conn.acknowledge_received_data(padding, self.stream_id)
                    elif isinstance(event, h2.events.StreamEnded) and event.stream_id == self.stream_id:
                        self.ended = True
                    elif isinstance(event, h2.events.StreamReset) and event.stream_id == self.stream_id:
                        raise ConnectionError(f"the upstream reset the stream (error {event.error_code})")
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        raise ConnectionError("the upstream ended the connection")
                self.writer.write(self.conn.data_to_send())
                self.arrived.set()
                await self.writer.drain()
        except Exception as exc:
            self.error = exc
        finally:
            if not self.response.done():
                self.response.set_exception(self.error or ConnectionError("no response"))
            self.arrived.set()

    async def read(self, n: int) -> bytes:
        """``n`` bytes of the body; IncompleteReadError once it has ended
        (with what was left, if anything)."""
        while len(self.buffer) < n:
            if self.ended or self.error is not None:
                if self.error is not None and not self.ended:
                    raise self.error
                partial, self.buffer = bytes(self.buffer), bytearray()
                raise asyncio.IncompleteReadError(partial, n)
            self.arrived.clear()
            await self.arrived.wait()
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        self._acknowledge(n)
        return out

    async def read_some(self) -> bytes:
        """Whatever of the body has arrived (waiting for some); b"" once it
        has ended."""
        while not self.buffer:
            if self.error is not None and not self.ended:
                raise self.error
            if self.ended:
                return b""
            self.arrived.clear()
            await self.arrived.wait()
        out, self.buffer = bytes(self.buffer), bytearray()
        self._acknowledge(len(out))
        return out

    def _acknowledge(self, n: int) -> None:
        self.conn.acknowledge_received_data(n, self.stream_id)
        self.writer.write(self.conn.data_to_send())

    async def rest(self, limit: int) -> bytes:
        with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
            deadline = time.monotonic() + CONNECT_TIMEOUT
            while not (self.ended or self.error) and len(self.buffer) < limit and time.monotonic() < deadline:
                self.arrived.clear()
                await asyncio.wait_for(self.arrived.wait(), max(0.01, deadline - time.monotonic()))
        return bytes(self.buffer[:limit])

    def close(self) -> None:
        self._pump.cancel()
        self.writer.close()


class Downstream:
    """One HTTP/2 response to the LiteFS that asked, within its flow control."""

    def __init__(self, conn, writer: asyncio.StreamWriter, stream_id: int, window: asyncio.Event):
        self.conn, self.writer, self.stream_id, self.window = conn, writer, stream_id, window
        self.started = False

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.conn.send_headers(self.stream_id, [(":status", str(status)), *headers])
        self.started = True
        await self._flush()

    async def respond(self, status: int, body: bytes) -> None:
        await self.start(status, [("content-type", "text/plain; charset=utf-8")])
        await self.send(body)
        self.end()

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            room = min(self.conn.local_flow_control_window(self.stream_id), self.conn.max_outbound_frame_size)
            if room <= 0:
                self.window.clear()
                await self.window.wait()
                continue
            self.conn.send_data(self.stream_id, view[:room])
            view = view[room:]
            await self._flush()

    def end(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.end_stream(self.stream_id)
            self.writer.write(self.conn.data_to_send())

    def reset(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.reset_stream(self.stream_id, 2)  # INTERNAL_ERROR: LiteFS drops the stream and reconnects
            self.writer.write(self.conn.data_to_send())

    async def _flush(self) -> None:
        self.writer.write(self.conn.data_to_send())
        await self.writer.drain()


async def relay(upstream: Upstream, down: Downstream) -> None:
    """The rest of ``upstream``'s body to ``down``, as it comes, then its end."""
    while data := await upstream.read_some():
        await down.send(data)
    down.end()

"""Between two staging batches (staging.py): wait until the read nodes have
the last one.

Bounding each LTX is not enough on its own. A replica of LiteFS v0.5.14
takes its write lock again the moment the next LTX's header arrives, and a
visitor's query waiting in SQLite's retry loop (sleeping longer and longer
between tries) misses the instant between two LTXs: batches committed
faster than a slow link carries them queue up on it, arrive back to back,
and reads fail after ten seconds of them as they would for one large LTX
(measured: 30 MB in 4 MiB batches over 10 Mbit/s, 15 of 20 reads failed).
So the runner commits the next batch only once every read node that
answers has the last one, so that each one's reads get a gap between two
batches; a node that is not following (cut off, down, slower than the wait
allows) is not waited for again until it has caught up.

The read nodes are those the control plane watches: ``BROADSHEET_READ_NODES``
and every address ``BROADSHEET_READ_NODES_DNS`` resolves to, asked at
``/-/replication.json`` (the same status the tracker reads).
"""

from __future__ import annotations

import socket
import threading
import time

import httpx

from broadsheet.config import http_url
from broadsheet.positions import STATUS_PATH, NodePosition
from primary.settings import ReadNodeAddress


class Pacer:
    def __init__(self, read_nodes: tuple[ReadNodeAddress, ...] = (), dns: str | None = None, port: int = 8001,
                 wait: float = 30.0):
        self.urls = [n.url for n in read_nodes]
        self.dns = dns
        self.port = port
        self.wait = wait
        self.skipped: set[str] = set()  # not following: not waited for until caught up

    def _addresses(self) -> list[str]:
        urls = list(self.urls)
        if self.dns:
            try:
                infos = socket.getaddrinfo(self.dns, self.port, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError):
                infos = []
            urls += sorted({http_url(info[4][0], self.port) for info in infos})
        return urls

    def until_applied(self, txid: int, stopped: threading.Event) -> float:
        """Wait (at most ``wait`` seconds) until every read node that answers
        holds public TXID ``txid``; returns the seconds waited."""
        started = time.monotonic()
        deadline = started + self.wait
        waiting = set(self._addresses())
        with httpx.Client(timeout=2) as client:
            while waiting and not stopped.is_set():
                for url in list(waiting):
                    try:
                        at = NodePosition.from_dict(client.get(f"{url}{STATUS_PATH}").json()).txid
                    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
                        waiting.discard(url)  # not answering: nothing to pace
                        continue
                    if at >= txid:
                        waiting.discard(url)
                        self.skipped.discard(url)
                    elif url in self.skipped:
                        waiting.discard(url)
                if not waiting:
                    break
                if time.monotonic() > deadline:
                    self.skipped |= waiting
                    break
                stopped.wait(0.05)
        return time.monotonic() - started

"""Finding read nodes: the statically listed ones, and every address that one
DNS name resolves to (the compose service name, or a Fly app's internal
name), looked up again every few seconds so that nodes can come and go.

A node found by DNS tells its own name (stable across restarts), region and
public URL through its ``/-/replication.json``.
"""

from __future__ import annotations

import asyncio
import socket

import httpx

from broadsheet.config import http_url

from ..settings import ReadNodeAddress


async def resolve(name: str, port: int) -> set[str]:
    """Every IP address ``name`` resolves to (none if it does not resolve)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return set()
    return {info[4][0] for info in infos}


class Discovery:
    """Turns a DNS name into read-node addresses, asking each new address
    who it is."""

    def __init__(self, name: str, port: int):
        self.name = name
        self.port = port
        self._known: dict[str, ReadNodeAddress] = {}  # IP -> the node there

    async def nodes(self, client: httpx.AsyncClient) -> list[ReadNodeAddress]:
        """The read nodes behind the name now. An address whose Datasette
        does not answer yet is left for the next look-up."""
        ips = await resolve(self.name, self.port)
        for ip in list(self._known):
            if ip not in ips:
                del self._known[ip]
        for ip in ips - set(self._known):
            url = http_url(ip, self.port)
            try:
                status = (await client.get(f"{url}/-/replication.json")).json()
                name = status["node"]
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                continue
            self._known[ip] = ReadNodeAddress(
                name=name,
                url=url,
                region=status.get("region") or "",
                public_url=status.get("url") or "",
            )
        return list(self._known.values())

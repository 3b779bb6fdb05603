"""Links with distance between the local cluster's nodes: a read node in
"Sydney" behind a primary in "London", on one machine.

Each link is a real TCP proxy (toxiproxy's server, built by
``scripts/toxiproxy``; the kernel here has no netem) between a read node's
gate and the primary's replication gate, or between the standby and data.db's
LiteFS. A link has a one-way delay (applied in each direction, so a round
trip costs twice it), optional jitter and bandwidth, and can be cut and
healed while the cluster runs.

    broadsheet up --replicas 3 --link syd=130ms,iad=40ms:rate=10mbit

A spec is ``NAME=DELAY[:jitter=J][:rate=R]``: DELAY and J in ``ms`` or
``s``, R in ``kbit``, ``mbit`` or ``gbit`` per second. Links are given to
read nodes in order (the first read node is ``syd`` above); ``standby=…``
puts the standby behind one. Packet loss is not offered: a TCP proxy sees a
byte stream, not packets, and TCP turns loss into delay anyway.
"""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from broadsheet.config import ConfigError
from broadsheet.supervisor import Service

STANDBY = "standby"
SERVICE = "links"
NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s)$")
_RATE = re.compile(r"^(\d+(?:\.\d+)?)(kbit|mbit|gbit)$")
_RATE_KBIT = {"kbit": 1, "mbit": 1000, "gbit": 1000_000}


def _ms(text: str, what: str) -> int:
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise ConfigError(f"{what}: {text!r} is not a duration such as 130ms or 0.2s")
    value = float(match[1]) * (1000 if match[2] == "s" else 1)
    if value > 60_000:
        raise ConfigError(f"{what}: {text!r} is more than a minute")
    return round(value)


@dataclass(frozen=True)
class LinkSpec:
    """What one link does to the bytes crossing it."""

    name: str
    delay_ms: int = 0  # one way: each direction waits this long
    jitter_ms: int = 0
    rate_kbit: int | None = None  # per second, each direction; None: unlimited

    @classmethod
    def parse(cls, text: str) -> "LinkSpec":
        name, sep, rest = text.strip().partition("=")
        name = name.strip().lower()
        if not sep or not NAME.match(name):
            raise ConfigError(
                f"link {text!r}: give NAME=DELAY (for example syd=130ms), NAME a lowercase region name"
            )
        delay, *options = rest.split(":")
        spec = {"name": name, "delay_ms": _ms(delay, f"link {name}")}
        for option in options:
            key, sep, value = option.partition("=")
            key = key.strip().lower()
            if not sep:
                raise ConfigError(f"link {name}: {option!r} is not KEY=VALUE (jitter=10ms, rate=10mbit)")
            if key == "jitter":
                spec["jitter_ms"] = _ms(value, f"link {name} jitter")
            elif key == "rate":
                match = _RATE.match(value.strip().lower())
                if not match or float(match[1]) <= 0:
                    raise ConfigError(f"link {name}: rate {value!r} is not a rate such as 10mbit or 512kbit")
                spec["rate_kbit"] = max(1, round(float(match[1]) * _RATE_KBIT[match[2]]))
            else:
                raise ConfigError(f"link {name}: unknown option {key!r} (jitter, rate)")
        return cls(**spec)

    def __str__(self) -> str:
        text = f"{self.name}={self.delay_ms}ms"
        if self.jitter_ms:
            text += f":jitter={self.jitter_ms}ms"
        if self.rate_kbit:
            text += f":rate={self.rate_kbit}kbit"
        return text

    def toxics(self) -> list[dict]:
        """toxiproxy's toxics for this link, both directions."""
        found = []
        for stream in ("upstream", "downstream"):
            if self.delay_ms or self.jitter_ms:
                found.append({
                    "name": f"delay-{stream}", "type": "latency", "stream": stream, "toxicity": 1.0,
                    "attributes": {"latency": self.delay_ms, "jitter": self.jitter_ms},
                })
            if self.rate_kbit:
                found.append({
                    "name": f"rate-{stream}", "type": "bandwidth", "stream": stream, "toxicity": 1.0,
                    # toxiproxy's rate is KB/s
                    "attributes": {"rate": max(1, self.rate_kbit // 8)},
                })
        return found


def parse_links(values: tuple[str, ...] | list[str]) -> list[LinkSpec]:
    """``--link`` values (each may hold several, comma-separated) as specs;
    a name given twice is refused."""
    specs: list[LinkSpec] = []
    for value in values:
        for part in value.split(","):
            if part.strip():
                specs.append(LinkSpec.parse(part))
    names = [spec.name for spec in specs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(f"link {', '.join(twice)} given more than once")
    return specs


def toxiproxy_binary() -> str:
    """``toxiproxy-server`` beside the running Python (where scripts/setup
    links it), else on PATH."""
    beside = Path(sys.executable).parent / "toxiproxy-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("toxiproxy-server")
    if found is None:
        raise ConfigError("no toxiproxy-server: build it with scripts/setup (scripts/toxiproxy)")
    return found


@dataclass
class Link:
    """One proxy: ``listen`` (on loopback) forwards to ``upstream``."""

    spec: LinkSpec
    listen: str  # host:port
    upstream: str  # host:port

    @property
    def name(self) -> str:
        return self.spec.name


class Links:
    """One toxiproxy server and the links it carries. ``service()`` is what
    the supervisor runs; every (re)start of it puts the links back (toxiproxy
    keeps nothing), so a crashed proxy heals like any other process. A link
    cut with ``cut`` stays cut across such a restart until ``heal``."""

    def __init__(self, api_port: int):
        self.api = f"http://127.0.0.1:{api_port}"
        self.api_port = api_port
        self.links: dict[str, Link] = {}
        self._cut: dict[str, str] = {}

    def add(self, spec: LinkSpec, listen: str, upstream: str) -> Link:
        link = Link(spec, listen, upstream)
        self.links[spec.name] = link
        return link

    def service(self) -> Service:
        return Service(
            name=SERVICE,
            argv=[toxiproxy_binary(), "-host", "127.0.0.1", "-port", str(self.api_port)],
            ready=self._ready,
            restart=True,
        )

    def _ready(self) -> bool:
        try:
            self.apply()
        except httpx.HTTPError:
            return False
        return True

    def _client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api, timeout=5.0)

    def apply(self) -> None:
        """Make the server's proxies and toxics exactly the links' (and the
        cuts in force)."""
        with self._client() as client:
            existing = {p["name"]: p for p in client.get("/proxies").raise_for_status().json().values()}
            for link in self.links.values():
                proxy = existing.get(link.name)
                if proxy is None or proxy["listen"] != link.listen or proxy["upstream"] != link.upstream:
                    if proxy is not None:
                        client.delete(f"/proxies/{link.name}").raise_for_status()
                    client.post("/proxies", json={
                        "name": link.name, "listen": link.listen, "upstream": link.upstream, "enabled": True,
                    }).raise_for_status()
                self._set_toxics(client, link)

    def _set_toxics(self, client: httpx.Client, link: Link) -> None:
        wanted = {toxic["name"]: toxic for toxic in link.spec.toxics()}
        mode = self._cut.get(link.name)
        if mode == "drop":
            for stream in ("upstream", "downstream"):
                wanted[f"cut-{stream}"] = {
                    "name": f"cut-{stream}", "type": "timeout", "stream": stream, "toxicity": 1.0,
                    "attributes": {"timeout": 0},
                }
        proxy = client.get(f"/proxies/{link.name}").raise_for_status().json()
        if proxy["enabled"] != (mode != "refuse"):
            client.post(f"/proxies/{link.name}", json={"enabled": mode != "refuse"}).raise_for_status()
        for toxic in proxy.get("toxics") or []:
            if wanted.get(toxic["name"], {}).get("attributes") == toxic["attributes"]:
                wanted.pop(toxic["name"])  # already there
            else:
                client.delete(f"/proxies/{link.name}/toxics/{toxic['name']}").raise_for_status()
        for toxic in wanted.values():
            client.post(f"/proxies/{link.name}/toxics", json=toxic).raise_for_status()

    def set(self, name: str, spec: LinkSpec) -> None:
        """Change a running link's delay, jitter or rate."""
        link = self._link(name)
        link.spec = LinkSpec(name, spec.delay_ms, spec.jitter_ms, spec.rate_kbit)
        with self._client() as client:
            self._set_toxics(client, link)

    def cut(self, name: str, mode: str = "drop") -> None:
        """Partition one link. ``drop``: connections stay open and every byte
        is dropped (a black hole: the far side learns of it only by its own
        timeouts); ``refuse``: open connections are closed and new ones
        refused (a node that is down)."""
        if mode not in ("drop", "refuse"):
            raise ValueError(f"cut mode {mode!r}: drop or refuse")
        link = self._link(name)
        self._cut[name] = mode
        with self._client() as client:
            self._set_toxics(client, link)

    def heal(self, name: str) -> None:
        """End a cut. Connections a ``drop`` cut held open have lost bytes
        and are closed, so both sides reconnect cleanly."""
        link = self._link(name)
        mode = self._cut.pop(name, None)
        with self._client() as client:
            if mode == "drop":
                # Disable then enable: closes the connections whose bytes were
                # dropped (their streams cannot continue).
                client.post(f"/proxies/{name}", json={"enabled": False}).raise_for_status()
            self._set_toxics(client, link)

    def is_cut(self, name: str) -> bool:
        return name in self._cut

    def _link(self, name: str) -> Link:
        try:
            return self.links[name]
        except KeyError:
            raise KeyError(f"no link named {name!r} (links: {', '.join(self.links) or 'none'})") from None

    @classmethod
    def attach(cls, api_port: int, saved: dict) -> "Links":
        """The links of a running toxiproxy (``broadsheet link``, in another
        process than the ``up`` that started it): ``saved`` is cluster.json's
        ``links`` section; what is cut is read from the proxy itself."""
        links = cls(api_port)
        for name, link in saved.items():
            links.add(LinkSpec.parse(link["spec"]), link["listen"], link["upstream"])
        with links._client() as client:
            proxies = client.get("/proxies").raise_for_status().json()
        for name in links.links:
            proxy = proxies.get(name)
            if proxy is None:
                continue  # toxiproxy restarted meanwhile: up puts it back
            if not proxy["enabled"]:
                links._cut[name] = "refuse"
            elif any(t["name"] == "cut-upstream" for t in proxy.get("toxics") or []):
                links._cut[name] = "drop"
        return links

    def as_dict(self) -> dict:
        return {
            name: {"spec": str(link.spec), "listen": link.listen, "upstream": link.upstream,
                   "cut": self._cut.get(name)}
            for name, link in self.links.items()
        }

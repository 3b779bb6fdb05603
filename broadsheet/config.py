"""Reading a node's settings from environment variables.

Every broadsheet process is configured by environment variables alone (a
container, a Fly machine and the local cluster set them the same way); these
helpers turn a variable into a value or into an error that names it.
"""

from __future__ import annotations

import ipaddress
import math
import os
from typing import Mapping

# Where a node keeps its data unless BROADSHEET_ROOT says otherwise: the
# image's volume.
DEFAULT_ROOT = "/var/lib/broadsheet"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


class Env:
    """Typed reads of one environment (``os.environ`` by default)."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        self.environ = os.environ if environ is None else environ

    def str(self, name: str, default: str | None = None) -> str:
        value = self.environ.get(name, "")
        if value:
            return value
        if default is None:
            raise ConfigError(f"{name} is not set")
        return default

    def optional(self, name: str) -> str | None:
        return self.environ.get(name) or None

    def int(self, name: str, default: int) -> int:
        value = self.environ.get(name, "")
        if not value:
            return default
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, not {value!r}") from None

    def at_least(self, name: str, default: int, minimum: int, what: str | None = None) -> int:
        """An integer of at least ``minimum``; ``what`` says what it must be
        in the error (default: "at least MINIMUM")."""
        value = self.int(name, default)
        if value < minimum:
            raise ConfigError(f"{name} must be {what or f'at least {minimum}'}, not {value}")
        return value

    def seconds(self, name: str, default: float, positive: bool = False, at_most: float | None = None) -> float:
        """A duration in seconds (a decimal number): more than 0 if
        ``positive``, at most ``at_most`` if given."""
        value = self.environ.get(name, "")
        if not value:
            return default
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds):
            raise ConfigError(f"{name} must be a number of seconds, not {value!r}")
        if positive and seconds <= 0:
            raise ConfigError(f"{name} must be more than 0 seconds, not {value!r}")
        if at_most is not None and seconds > at_most:
            raise ConfigError(f"{name} must be at most {at_most:g} seconds, not {value!r}")
        return seconds

    def port(self, name: str, default: int) -> int:
        port = self.int(name, default)
        if not 0 < port < 65536:
            raise ConfigError(f"{name} must be a TCP port (1-65535), not {port}")
        return port

    def url(self, name: str, default: str = "") -> str:
        """An http(s) URL, or ``default`` when unset."""
        value = self.str(name, default)
        if value and not value.startswith(("http://", "https://")):
            raise ConfigError(f"{name} must be an http:// URL, not {value!r}")
        return value

    def urls(self, name: str) -> list[str]:
        """A comma-separated list of http(s) URLs (empty when unset)."""
        values = [v.strip() for v in self.str(name, "").split(",") if v.strip()]
        for value in values:
            if not value.startswith(("http://", "https://")):
                raise ConfigError(f"{name} must be http:// URLs separated by commas, not {value!r}")
        return values

    def bool(self, name: str, default: bool) -> bool:
        value = self.environ.get(name, "").strip().lower()
        if not value:
            return default
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, not {value!r}")


def http_url(host: str, port: int) -> str:
    """``http://host:port``, with an IPv6 address in brackets; a wildcard bind
    address becomes loopback, which is how the node's own processes reach it."""
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a host name
    return f"http://{host}:{port}"


def listen_host(host: str) -> str:
    """The host a server (uvicorn, Datasette) is told to bind for a
    ``BROADSHEET_HOST``: ``::`` means every address, IPv6 and IPv4, as it
    does for LiteFS (Go); asyncio would bind ``::`` for IPv6 alone, and binds
    both families for an empty host."""
    return "" if host.strip("[]") == "::" else host


def split_addr(addr: str, name: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as a pair; ``:port`` binds every
    interface."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{name} must be host:port, not {addr!r}")
    return host.strip("[]") or "0.0.0.0", int(port)

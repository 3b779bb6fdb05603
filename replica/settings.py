"""A read node's settings, from environment variables with defaults that make
the local cluster work."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache
from typing import Mapping

import datasette

import broadsheet
from broadsheet import plugins
from broadsheet.config import ConfigError, Env
from broadsheet.h2relay import silence_from_env

_BYTES = "a number of bytes (0 or more)"

# Part of every ETag, so that a deploy that changes pages invalidates them.
BUILD = f"{datasette.__version__}-{getattr(broadsheet, '__version__', '0')}".replace('"', "")


@dataclass(frozen=True)
class Settings:
    node_name: str
    region: str
    public_url: str  # how visitors reach this node, when the node knows
    primary_url: str
    bookmark_timeout: float
    cache_max_age: int
    # The one database this node serves (its LiteFS mount's public.db);
    # Datasette refuses to start on anything else.
    public_db: str = ""
    # Requests parked on a bookmark at once; beyond it, 503.
    max_bookmark_waits: int = 64
    # Requests running visitors' SQL at once; beyond it, 429. Below
    # Datasette's num_sql_threads (3), so table pages always find a thread.
    max_sql_concurrency: int = 2
    # Position streams (/-/replication/stream) at once; beyond it, 503. The
    # primary's control plane needs one.
    max_position_streams: int = 4
    # Whole responses kept in memory per position (replica/cache.py): at most
    # this many bytes in all (0: none), and none bigger than the second.
    cache_bytes: int = 64 * 1024 * 1024
    cache_max_entry: int = 1024 * 1024
    # The team's Datasette plugins for read nodes (broadsheet/plugins.py):
    # package names, and Datasette's ``plugins`` configuration block.
    plugins: tuple[str, ...] = ()
    plugins_config: dict = field(default_factory=dict)
    # Seconds a read of the LiteFS mount may take before the node counts
    # LiteFS as stalled and answers what it cannot serve from memory with
    # 503 (replica/position.py).
    stall_timeout: float = 2.0
    # The node's LiteFS data directory: when set, every position is served
    # only once a signed release covers it (replica/releases.py), checked
    # against BROADSHEET_RELEASE_KEY when set, else the key pinned first.
    litefs_data_dir: str = ""
    release_key: str = ""
    # Seconds without a word from the primary (LiteFS's heartbeat comes
    # every second) after which the node says it is cut off from it; the
    # gate gives up the connection after as long (broadsheet/h2relay.py).
    replication_timeout: float = 5.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = Env(environ)
        bookmark_timeout = env.seconds("BROADSHEET_BOOKMARK_TIMEOUT", 5.0)
        stall_timeout = env.seconds("BROADSHEET_STALL_TIMEOUT", 2.0, positive=True)
        return cls(
            node_name=env.str("BROADSHEET_NODE_NAME", os.uname().nodename),
            region=env.str("BROADSHEET_REGION", ""),
            public_url=env.str("BROADSHEET_PUBLIC_URL", ""),
            primary_url=env.str("BROADSHEET_PRIMARY_URL", ""),
            bookmark_timeout=bookmark_timeout,
            cache_max_age=env.int("BROADSHEET_CACHE_MAX_AGE", 1),
            public_db=env.str("BROADSHEET_PUBLIC_DB", ""),
            max_bookmark_waits=env.at_least("BROADSHEET_MAX_BOOKMARK_WAITS", 64, minimum=1),
            max_sql_concurrency=env.at_least("BROADSHEET_MAX_SQL_CONCURRENCY", 2, minimum=1),
            max_position_streams=env.at_least("BROADSHEET_MAX_POSITION_STREAMS", 4, minimum=1),
            cache_bytes=env.at_least("BROADSHEET_CACHE_BYTES", 64 * 1024 * 1024, minimum=0, what=_BYTES),
            cache_max_entry=env.at_least("BROADSHEET_CACHE_MAX_ENTRY", 1024 * 1024, minimum=0, what=_BYTES),
            plugins=_plugins(env),
            plugins_config=plugins.config(env.optional(plugins.CONFIG_VAR)),
            stall_timeout=stall_timeout,
            litefs_data_dir=env.str("BROADSHEET_LITEFS_DATA_DIR", ""),
            release_key=_release_key(env.str("BROADSHEET_RELEASE_KEY", "")),
            replication_timeout=silence_from_env(environ),
        )

    @property
    def write_error(self) -> str:
        where = f" at {self.primary_url}" if self.primary_url else ""
        return (
            "This is a broadsheet read node: public.db is a read-only LiteFS replica."
            f" Write to the private primary instead{where}."
        )


def _release_key(text: str) -> str:
    from broadsheet.release import PublicKey

    if text:
        try:
            PublicKey.parse(text)
        except ValueError as exc:
            raise ConfigError(f"BROADSHEET_RELEASE_KEY: {exc}") from None
    return text


def _plugins(env: Env) -> tuple[str, ...]:
    wanted = plugins.requirements(env.optional(plugins.PLUGINS_VAR))
    plugins.check_installed(wanted)
    return wanted


@cache
def settings() -> Settings:
    return Settings.from_env()

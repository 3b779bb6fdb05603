"""A read node's settings, from environment variables with defaults that make
the local cluster work."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache

import datasette

import broadsheet

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

    @property
    def write_error(self) -> str:
        where = f" at {self.primary_url}" if self.primary_url else ""
        return (
            "This is a broadsheet read node: public.db is a read-only LiteFS replica."
            f" Write to the private primary instead{where}."
        )


@cache
def settings() -> Settings:
    return Settings(
        node_name=os.environ.get("BROADSHEET_NODE_NAME") or os.uname().nodename,
        region=os.environ.get("BROADSHEET_REGION", ""),
        public_url=os.environ.get("BROADSHEET_PUBLIC_URL", ""),
        primary_url=os.environ.get("BROADSHEET_PRIMARY_URL", ""),
        bookmark_timeout=float(os.environ.get("BROADSHEET_BOOKMARK_TIMEOUT", "5")),
        cache_max_age=int(os.environ.get("BROADSHEET_CACHE_MAX_AGE", "1")),
    )

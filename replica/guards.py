"""What one read node shares between all its visitors' requests: the
position watcher, the limits on waits, visitors' SQL and position streams,
the response cache and the stall watchdog, made once per Datasette."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

from broadsheet.litefs import Pos

from . import stall, stream
from .cache import ResponseCache
from .custom_sql import Slots
from .position import PositionWatcher, SharedRead
from .releases import Releases
from .settings import settings


@dataclass
class Guards:
    """What one read node shares between all its visitors' requests."""

    position: PositionWatcher  # bookmark waits
    custom_sql: Slots  # visitors' own SQL
    streams: stream.Streams  # the primary following this node's position
    responses: ResponseCache  # whole responses at the current position
    watchdog: stall.Watchdog  # requests a stalled LiteFS holds up
    sized_at: Pos | None = None  # the position public.db's size was read at
    visible_at: Pos | None = None  # the last position SQLite was seen to show
    unconfirmed_at: Pos | None = None  # a position SQLite did not show in time (never cached)
    releases: Releases | None = None  # signed releases checked (on LiteFS)
    heard: SharedRead = field(default_factory=SharedRead)  # how long since LiteFS heard from the primary


_guards: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def guards(datasette) -> Guards:
    if datasette not in _guards:
        conf = settings()
        position = PositionWatcher(conf.public_db, conf.max_bookmark_waits, stall_timeout=conf.stall_timeout)
        _guards[datasette] = Guards(
            position=position,
            custom_sql=Slots(conf.max_sql_concurrency),
            streams=stream.Streams(conf.max_position_streams),
            responses=ResponseCache(conf.cache_bytes, conf.cache_max_entry),
            watchdog=stall.Watchdog(position),
            releases=Releases(conf.public_db, conf.litefs_data_dir, conf.release_key) if conf.litefs_data_dir else None,
        )
    return _guards[datasette]

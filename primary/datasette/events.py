"""Events of the team's Datasette: every one (logins, writes, publishes) to
the process log, and the publish events of every flip, whichever path made
it, fired by following the audit log (primary/publisher/events.py)."""

from __future__ import annotations

import asyncio
import json

from broadsheet.log import log

from ..publisher import cycle_log_path
from ..publisher.events import AuditFollower
from ..publisher.events import cursor_file as events_cursor_file
from ..settings import settings
from .data_db import data_db_name

_followers: dict = {}


def follow_audit_log(datasette) -> None:
    """In the team's Datasette (the one serving data.db, not the control
    plane's permission checker) only, once."""
    if data_db_name() not in datasette.databases or datasette in _followers:
        return
    follower = AuditFollower(
        datasette, settings().data_db, events_cursor_file(settings().watermark_file), data_db_name(),
        cycle_log=cycle_log_path(settings().watermark_file),
    )
    _followers[datasette] = asyncio.get_running_loop().create_task(follower.run())


def log_event(event) -> None:
    """One JSON line in the process log, for whoever reads the logs."""
    actor = event.actor.get("id") if isinstance(event.actor, dict) else None
    log("event", json.dumps({"event": event.name, "actor": actor, **event.properties()}, default=str))
